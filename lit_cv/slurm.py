"""SLURM helpers: the job to requeue, the ``scontrol requeue`` call, and the node count from the environment.

Lightning's own SLURM auto-requeue (``SLURMEnvironment(auto_requeue=True)``) saves the checkpoint and runs
``scontrol`` *inside* the SIGUSR1 handler. Three known failures follow from that (Lightning issue tracker):

- #21406: a signal handler can run between any two bytecodes (mid-backward, mid-write); checkpointing there
  sometimes hangs until SLURM kills the job.
- #20542: SLURM sends SIGTERM after SIGUSR1 (at the time limit, or because of the requeue itself); Lightning then
  stops at the next batch, and a checkpoint or requeue that had not happened yet never happens.
- #21404: inside containers ``scontrol`` is often missing; the requeue fails with a shell error and no hint.

:class:`callbacks.SLURMRequeue` avoids all three: its handlers only set a flag, and the checkpoint + requeue run at
the next batch boundary through the functions below (``requeue_job`` never raises and never waits forever).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess

log = logging.getLogger(__name__)

# SLURM_JOB_NAME values for which Lightning treats the allocation as interactive (no SLURMEnvironment).
INTERACTIVE_JOB_NAMES = ("bash", "interactive")
# How to continue by hand when the requeue failed (the scripts name the log directory after the job id).
RESUBMIT_HINT = "resubmit with `--trainer.logger.init_args.version slurm-{job_id}` appended to continue from it"


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` needs: ``<array job>_<task>`` for array jobs, else ``SLURM_JOB_ID``."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_job(job_id: str, timeout: float = 60.0) -> bool:
    """Run ``scontrol requeue JOB_ID``; log the outcome and return whether SLURM accepted it.

    Never raises and never blocks longer than ``timeout`` seconds: a missing ``scontrol`` (typical inside
    containers), a non-zero exit or a hung controller are logged as errors with the fix, and ``False`` is returned.
    """
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job_id):
        log.error(f"Not requeueing: {job_id!r} is not a SLURM job id (expected digits, or <array>_<task>).")
        return False
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        log.error(
            f"Cannot requeue SLURM job {job_id}: `scontrol` is not on PATH inside the job (common in containers, "
            "Lightning issue #21404). The checkpoint was saved; " + RESUBMIT_HINT.format(job_id=job_id)
            + ", or make scontrol available in the container (bind-mount it and the SLURM config)."
        )
        return False
    try:
        result = subprocess.run(
            [scontrol, "requeue", job_id], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        log.error(f"Requeueing SLURM job {job_id} failed: {error}; " + RESUBMIT_HINT.format(job_id=job_id) + ".")
        return False
    if result.returncode != 0:
        log.error(
            f"`scontrol requeue {job_id}` exited with {result.returncode}: {result.stderr.strip()}. "
            "Does the job allow requeueing (`#SBATCH --requeue`)? Else " + RESUBMIT_HINT.format(job_id=job_id) + "."
        )
        return False
    log.info(f"Requeued SLURM job {job_id}; it will resume from the checkpoint when it restarts.")
    return True


def launched_by_srun() -> bool:
    """True when this process is a task started by ``srun`` in a batch job (Lightning's SLURMEnvironment test)."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in INTERACTIVE_JOB_NAMES


def num_nodes_from_env() -> int:
    """Number of nodes of the job this process belongs to: ``SLURM_NNODES`` under ``srun``, ``WORLD_SIZE //
    LOCAL_WORLD_SIZE`` under ``torchrun``, else 1. Lightning requires ``num_nodes`` to match exactly."""
    if launched_by_srun():
        return int(os.environ.get("SLURM_NNODES", "1"))
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:
        return max(1, int(os.environ["WORLD_SIZE"]) // int(os.environ["LOCAL_WORLD_SIZE"]))
    return 1
