"""A SLURM job without a cluster: the environment ``srun`` exports, a fake ``scontrol`` and a fake ``srun`` on ``PATH``.

``import fake_slurm`` from any test (pytest's ``pythonpath = ["tests"]``), like ``fake_data``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

JOB_ID = "4242"
# What srun exports to a one-task job step (Lightning's SLURMEnvironment reads these).
SLURM_STEP_ENV = {
    "SLURM_JOB_ID": JOB_ID,
    "SLURM_JOB_NAME": "lit-cv-test",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "1",
    "SLURM_NODEID": "0",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODELIST": "localhost",
}


def fake_scontrol(bin_dir: Path, record: Path, exit_code: int = 0, then_sigterm: bool = False) -> Path:
    """An ``scontrol`` that appends its arguments to ``record``; like SLURM after a requeue it can SIGTERM its caller."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "scontrol"
    lines = ["#!/bin/sh", f'echo "$@" >> "{record}"']
    if then_sigterm:
        lines.append('kill -TERM "$PPID"')
    lines.append(f"exit {exit_code}")
    script.write_text("\n".join(lines) + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def path_without_scontrol(bin_dir: Path | None) -> str:
    """``PATH`` with ``bin_dir`` first and every directory that holds a real ``scontrol`` left out."""
    dirs = [str(bin_dir)] if bin_dir else []
    dirs += [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "scontrol").exists()]
    return os.pathsep.join(dirs)


FAKE_SRUN = """#!/bin/bash
# Fake srun: start SLURM_NTASKS copies of the command here, each with the variables srun gives a task; exit with the
# first failure. --kill-on-bad-exit[=1]: a failed task kills the others. SIGTERM is forwarded to every task.
kill_on_bad=0
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do
  case $1 in --kill-on-bad-exit|--kill-on-bad-exit=1|-K) kill_on_bad=1 ;; esac
  shift
done
n=${SLURM_NTASKS:-1}
per=${SLURM_NTASKS_PER_NODE:-$n}
pids=()
for ((i = 0; i < n; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$((i % per)) SLURM_NODEID=$((i / per)) "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
code=0
for ((i = 0; i < n; i++)); do
  wait -n
  status=$?
  if [ $status -ne 0 ] && [ $code -eq 0 ]; then
    code=$status
    [ $kill_on_bad -eq 1 ] && kill -KILL "${pids[@]}" 2>/dev/null
  fi
done
exit $code
"""


def fake_srun(bin_dir: Path) -> Path:
    """Put :data:`FAKE_SRUN` into ``bin_dir`` as ``srun``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "srun"
    script.write_text(FAKE_SRUN)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def job_env(nodes: int, tasks_per_node: int, job_id: str = "77") -> dict[str, str]:
    """What SLURM exports to a batch script of ``nodes`` x ``tasks_per_node`` tasks, all of them on this machine."""
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "lit-cv",
        "SLURM_NTASKS": str(nodes * tasks_per_node),
        "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NODELIST": "localhost",
        "SLURM_JOB_NODELIST": "localhost",
    }
