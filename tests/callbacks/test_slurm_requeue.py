"""callbacks.slurm_requeue: the job id, ``scontrol requeue`` (a fake one on PATH), the node count from the
environment, and SLURMRequeue's flag-only signal handlers. A real signalled fit is in ``tests/e2e/test_slurm.py``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_slurm import SLURM_STEP_ENV, fake_scontrol, path_without_scontrol
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Trainer

from callbacks.slurm_requeue import (
    SLURMRequeue,
    cluster_environment,
    num_nodes_from_env,
    requeue_job,
    slurm_job_id,
)


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"SLURM_JOB_ID": "17"}, "17"), ({"SLURM_JOB_ID": "18", "SLURM_ARRAY_JOB_ID": "9", "SLURM_ARRAY_TASK_ID": "3"}, "9_3"),
     ({}, None)],
)
def test_slurm_job_id(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str | None) -> None:
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert slurm_job_id() == expected


def test_requeue_job_calls_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "calls.txt"
    fake_scontrol(tmp_path / "bin", record)
    monkeypatch.setenv("PATH", path_without_scontrol(tmp_path / "bin"))
    assert requeue_job("123_4") is True
    assert record.read_text().split() == ["requeue", "123_4"]


def test_requeue_job_reports_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="callbacks.slurm_requeue")
    monkeypatch.setenv("PATH", path_without_scontrol(None))
    assert requeue_job("123") is False
    assert "`scontrol` is not on PATH" in caplog.text and "#21404" in caplog.text

    fake_scontrol(tmp_path / "bin", tmp_path / "calls.txt", exit_code=1)
    monkeypatch.setenv("PATH", path_without_scontrol(tmp_path / "bin"))
    assert requeue_job("123") is False
    assert "exited with 1" in caplog.text

    assert requeue_job("123; rm -rf /") is False
    assert "is not a SLURM job id" in caplog.text
    assert (tmp_path / "calls.txt").read_text().split() == ["requeue", "123"]  # the bad id never reached scontrol


def test_requeue_job_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nsleep 30\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", path_without_scontrol(bin_dir))
    started = time.monotonic()
    assert requeue_job("5", timeout=0.5) is False
    assert time.monotonic() - started < 10
    assert "timed out" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 1),
        ({"SLURM_NTASKS": "8", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "train"}, 2),
        ({"SLURM_NTASKS": "8", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "interactive"}, 1),  # salloc shell, no srun
        ({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "4"}, 4),  # torchrun --nnodes 4 --nproc-per-node 4
    ],
)
def test_num_nodes_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: int) -> None:
    for key in ("SLURM_NTASKS", "SLURM_NNODES", "SLURM_JOB_NAME", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert num_nodes_from_env() == expected


@pytest.mark.parametrize("in_job_step", [True, False])
def test_cluster_environment_of_a_one_task_job_step(monkeypatch: pytest.MonkeyPatch, in_job_step: bool) -> None:
    """A one-task job step runs a SingleDeviceStrategy, which holds no cluster environment of its own."""
    for key in SLURM_STEP_ENV:
        monkeypatch.delenv(key, raising=False)
    if in_job_step:
        for key, value in SLURM_STEP_ENV.items():
            monkeypatch.setenv(key, value)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)  # never fits: only read
    environment = cluster_environment(trainer)
    assert isinstance(environment, SLURMEnvironment) == in_job_step
    assert not in_job_step or environment.auto_requeue


def test_slurm_requeue_rejects_bad_timeout() -> None:
    with pytest.raises(ValueError, match="timeout must be > 0 seconds, got 0"):
        SLURMRequeue(timeout=0)


def test_handlers_only_set_flags_while_active_then_pass_signals_on() -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    callback = SLURMRequeue()
    try:
        callback._install({signal.SIGUSR1: callback._on_requeue_signal})
        assert signal.getsignal(signal.SIGUSR1) == callback._on_requeue_signal
        callback._on_requeue_signal(signal.SIGUSR1, None)  # what Python runs on SIGUSR1: no I/O, just the flag
        assert callback.requeue_requested and received == []
        callback._restore()
        assert signal.getsignal(signal.SIGUSR1) not in (callback._on_requeue_signal, signal.SIG_DFL)
        callback._on_requeue_signal(signal.SIGUSR1, None)  # left installed by someone after fit: passed on
        assert received == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_slurm_requeue_rejects_bad_sigterm_timeout() -> None:
    with pytest.raises(ValueError, match="sigterm_timeout must be > 0 seconds, got -1"):
        SLURMRequeue(sigterm_timeout=-1)


# ---------------------------------------------------------------------------------------------- the SIGTERM watchdog
# A process with a flag-only SIGTERM handler (as Lightning's and SLURMRequeue's are) whose main thread never stops:
# each scenario runs in its own interpreter, since the watchdog ends the process with os._exit.
WATCHDOG_SCRIPT = """
import multiprocessing, os, signal, sys, time
from callbacks.slurm_requeue import TerminationWatchdog

signal.signal(signal.SIGTERM, lambda signum, frame: None)  # flag-only, like Lightning's
watchdog = TerminationWatchdog(float(sys.argv[2]), on_expire=lambda: print("on_expire", flush=True))
assert watchdog.start()
scenario = sys.argv[1]
if scenario == "stopped":
    watchdog.stop()
if scenario == "worker":  # a forked DataLoader worker gets SIGTERM, the main process does not
    worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(3,))
    worker.start()
    time.sleep(0.5)
    worker.terminate()
    worker.join()
else:
    os.kill(os.getpid(), signal.SIGTERM)
if scenario == "twice":
    time.sleep(1.5)
    os.kill(os.getpid(), signal.SIGTERM)
started = time.monotonic()
while time.monotonic() - started < 6:  # the main thread carries on: the handler only set a flag
    time.sleep(0.05)
print("still running", flush=True)
"""


@pytest.mark.parametrize(
    ("scenario", "timeout", "code"), [("once", 1.0, 143), ("twice", 30.0, 143), ("stopped", 1.0, 0), ("worker", 1.0, 0)]
)
def test_watchdog_ends_a_process_that_does_not_stop_after_sigterm(
    tmp_path: Path, scenario: str, timeout: float, code: int
) -> None:
    """Exit 143 before the main loop's 6 s are over: after ``timeout`` s, or at once on a second SIGTERM; never
    after :meth:`TerminationWatchdog.stop` or for a forked worker's own SIGTERM."""
    script = tmp_path / "watched.py"
    script.write_text(WATCHDOG_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run([sys.executable, str(script), scenario, str(timeout)], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == code, result.stderr[-2000:]
    if code == 0:
        assert "still running" in result.stdout and "has not stopped" not in result.stderr
        return
    assert "on_expire" in result.stdout and "still running" not in result.stdout
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("lit-cv: SIGTERM")]
    assert ("received twice" if scenario == "twice" else "received 1 s ago") in line
    assert "its main thread is blocked in <module> (watched.py:" in line and "Exiting now with code 143" in line
