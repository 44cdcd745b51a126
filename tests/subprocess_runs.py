"""Run ``lit-cv`` as a real subprocess on the digits quickstart, shortened to a few batches (for the DDP, SLURM
and resume tests, which need separate processes, signals or several ranks).

The runs are what a user runs: every user-facing default stays on (progress bar, TensorBoard logger under
``runs/`` of the working directory, checkpoints, LR monitor, model summary); :func:`fast_config` changes only
``max_epochs`` and ``limit_*_batches``. A test that overrides anything else says why.
"""

from __future__ import annotations

import contextlib
import os
import signal
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
    """A second ``--config`` shortening the quickstart to 2 epochs of 4 training and 2 validation batches, written to
    ``tmp_path / name``; ``trainer`` entries are added or replace these. Run it with ``cwd=tmp_path``: the logs go to
    ``runs/`` there, as they would for a user."""
    config = {"trainer": {"max_epochs": 2, "limit_train_batches": 4, "limit_val_batches": 2, **trainer}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lit_cv_env(**extra: str) -> dict[str, str]:
    """The current environment without SLURM / torchrun variables (nor rich's terminal switches: output is parsed),
    one thread per process, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "PL_"))
        and key not in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "MASTER_PORT", "TTY_COMPATIBLE", "FORCE_COLOR")
    }
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MASTER_PORT": str(free_port())})
    env.update(extra)
    return env


def lit_cv_command(*args: str | Path) -> list[str]:
    return [str(LIT_CV), *(str(arg) for arg in args)]


def start(args: list[str | Path], cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``lit-cv ARGS`` in ``cwd`` without waiting, in its own process group (with the ranks it launches); stdout
    and stderr go to the file ``log``. End it with :func:`kill_group`."""
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(lit_cv_command(*args), cwd=cwd, env=env or lit_cv_env(), stdout=handle, stderr=handle,
                                start_new_session=True)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL ``process`` and every process of its group (the DDP ranks it launched), if any are left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def run_lit_cv(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``lit-cv ARGS`` to completion in its own process group; past ``timeout`` seconds the whole group (every
    DDP rank) is killed and the test fails with the output so far, so a deadlock fails instead of hanging."""
    process = subprocess.Popen(lit_cv_command(*args), cwd=cwd, env=env or lit_cv_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        stdout, stderr = process.communicate()
        raise AssertionError(f"lit-cv {' '.join(map(str, args))} ran past {timeout} s:\n{(stdout + stderr)[-4000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # ranks left behind by a failed run
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run ``lit-cv ARGS`` to completion; return its combined output; fail with that output on a non-zero exit."""
    result = run_lit_cv(args, cwd, env, timeout)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f"lit-cv {' '.join(map(str, args))} exited with {result.returncode}:\n{output[-4000:]}")
    return output
