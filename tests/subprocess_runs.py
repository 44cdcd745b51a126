"""Run ``lit-cv`` as a real subprocess on the digits quickstart, shrunk to a few small batches (for the DDP, SLURM
and resume tests, which need separate processes, signals or several ranks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = REPO_ROOT / "configs" / "quickstart.yaml"
LIT_CV = Path(sys.executable).parent / "lit-cv"


def fast_config(tmp_path: Path, name: str = "fast.yaml", **trainer: Any) -> Path:
    """A second ``--config`` making the quickstart tiny: small net and images, few batches, logs under tmp_path."""
    config = {
        "trainer": {
            "max_epochs": 2,
            "limit_train_batches": 4,
            "limit_val_batches": 2,
            "num_sanity_val_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "deterministic": True,
            "logger": {"init_args": {"save_dir": str(tmp_path / "runs")}},
            **trainer,
        },
        "model": {"net": {"init_args": {"n_feature": 4, "image_size": 12}}},
        "data": {"init_args": {"batch_size": 16, "image_size": 12}},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lit_cv_env(**extra: str) -> dict[str, str]:
    """The current environment without SLURM / torchrun variables, one thread per process, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "PL_")) and key not in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "MASTER_PORT")
    }
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MASTER_PORT": str(free_port())})
    env.update(extra)
    return env


def lit_cv_command(*args: str | Path) -> list[str]:
    return [str(LIT_CV), *(str(arg) for arg in args)]


def start(args: list[str | Path], cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``lit-cv ARGS`` in ``cwd`` without waiting; stdout and stderr go to the file ``log``."""
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(lit_cv_command(*args), cwd=cwd, env=env or lit_cv_env(), stdout=handle, stderr=handle)


def run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run ``lit-cv ARGS`` to completion; return its combined output; fail with that output on a non-zero exit."""
    result = subprocess.run(
        lit_cv_command(*args), check=False, cwd=cwd, env=env or lit_cv_env(), capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f"lit-cv {' '.join(map(str, args))} exited with {result.returncode}:\n{output[-4000:]}")
    return output
