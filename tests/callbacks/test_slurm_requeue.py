"""callbacks.slurm_requeue: the job id, ``scontrol requeue`` (a fake one on PATH), the node count from the
environment, and SLURMRequeue's flag-only signal handlers. A real signalled fit is in ``tests/e2e/test_slurm.py``."""

from __future__ import annotations

import logging
import signal
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
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
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
