"""A SLURM job step without a cluster: the environment ``srun`` exports and a fake ``scontrol`` on ``PATH``.

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
