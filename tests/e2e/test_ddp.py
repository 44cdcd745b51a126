"""DDP as the README runs it, on this CPU machine: ``--trainer.accelerator cpu --trainer.devices 2 --trainer.strategy
ddp`` (two processes, gloo) with every default on (rich progress bar, TensorBoard logger, checkpoints, LR monitor),
shortened only by ``tests/subprocess_runs.py``'s ``fast.yaml``; then validate, test and predict from its checkpoint
the same way. And how a DDP run ends when a rank never joins a collective operation: with a clear error after
``--collective_timeout`` seconds, or, sooner, on SIGTERM.

The fit must report validation metrics over the *whole* validation set (each rank sees half of it): they must equal
a single-process ``lit-cv validate`` of its checkpoint, class by class. Rank 0 alone writes files: one run directory
with one ``metrics.json``, one ``config.yaml``, one TensorBoard events file and one pair of checkpoints.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from subprocess_runs import QUICKSTART, fast_config, kill_group, lit_cv_env, run, start

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
N_VAL = 180  # val_split 0.1 of the 1,797 digits: 90 per rank, so DistributedSampler pads nothing
TIMEOUT = 600  # seconds per run: a deadlock (issue 11) fails the test instead of hanging it
HERE = Path(__file__).resolve().parent  # skip_collective.py, the test-only callback


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _scalar_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


@pytest.mark.slow
@pytest.mark.timeout(5 * TIMEOUT)  # five runs, each bounded by TIMEOUT
def test_ddp_with_defaults_fit_then_validate_test_predict(tmp_path: Path) -> None:
    # The whole validation set (not fast.yaml's 2 batches) and val_split 0.1: the per-class counts are compared with
    # a single-process run, which needs every image and shards without padding.
    fast_config(tmp_path, max_epochs=1, limit_train_batches=10, limit_val_batches=1.0, limit_test_batches=2,
                limit_predict_batches=1.0)
    common = ["--config", QUICKSTART, "--config", "fast.yaml", "--data.val_split", "0.1"]

    output = run(["fit", *common, *DDP], cwd=tmp_path, timeout=TIMEOUT)

    runs = tmp_path / "runs" / "quickstart"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0"], "one run directory, not one per rank"
    run_dir = runs / "version_0"
    files = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    expected = ["checkpoints/best-epoch000.ckpt", "checkpoints/last.ckpt", "config.yaml", "hparams.yaml", "metrics.json"]
    assert set(expected) <= set(files), files
    assert len([f for f in files if f.startswith("events.out.tfevents.")]) == 1, files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.yaml", "runs"], "nothing written elsewhere"
    assert "Epoch 0" in output, "the progress bar ran"
    assert {"lr-Adam", "val/acc", "train/loss"} <= _scalar_tags(run_dir), "the logger and the LR monitor ran"

    fit = json.loads((run_dir / "metrics.json").read_text())["fit"]
    assert sum(c["total"] for c in fit["per_class"]["val"].values()) == N_VAL, "confusion matrix of one shard only"
    assert fit["metrics"]["val/acc"] > 0.2, "a model that learned something, not a constant predictor"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"

    run(["validate", *common, *DDP, "--ckpt_path", checkpoint], cwd=tmp_path, timeout=TIMEOUT)
    ddp_validate = json.loads((runs / "version_1" / "metrics.json").read_text())["validate"]
    run(["validate", *common, "--ckpt_path", checkpoint, "--trainer.logger.init_args.save_dir", "single"],
        cwd=tmp_path, timeout=TIMEOUT)
    single = json.loads((tmp_path / "single" / "quickstart" / "version_0" / "metrics.json").read_text())["validate"]
    for report in (fit, ddp_validate):
        assert report["per_class"]["val"] == single["per_class"]["val"]
        for name in ("val/acc", "val/f1", "val/loss", "val/acc_class/3"):
            assert report["metrics"][name] == pytest.approx(single["metrics"][name], abs=1e-5), name

    run(["test", *common, *DDP, "--ckpt_path", checkpoint], cwd=tmp_path, timeout=TIMEOUT)
    tested = json.loads((runs / "version_2" / "metrics.json").read_text())["test"]
    assert "test/acc" in tested["metrics"]

    run(["predict", *common, *DDP, "--ckpt_path", checkpoint], cwd=tmp_path, timeout=TIMEOUT)
    shards = sorted((runs / "version_3").glob("predictions_rank*.csv"))
    assert [p.name for p in shards] == ["predictions_rank0.csv", "predictions_rank1.csv"]
    rows = [row for shard in shards for row in csv.DictReader(shard.open())]
    assert len(rows) == N_VAL and len({row["index"] for row in rows}) == N_VAL, "each image predicted once"


def _start_blocked_run(tmp_path: Path, *args: str, **slurm_requeue: float) -> subprocess.Popen:
    """Start a DDP fit in which rank 0 enters a collective after the first step and rank 1 never does (the test-only
    callback; ``slurm_requeue`` configures a ``callbacks.SLURMRequeue``); return once rank 0 waits in it."""
    callbacks = [{"class_path": "skip_collective.SkipCollective", "init_args": {"marker_dir": str(tmp_path / "ranks")}}]
    if slurm_requeue:
        callbacks.append({"class_path": "callbacks.SLURMRequeue", "init_args": slurm_requeue})
    fast_config(tmp_path, max_epochs=1, limit_train_batches=4, callbacks=callbacks)
    process = start(["fit", "--config", QUICKSTART, "--config", "fast.yaml", *DDP, *args], cwd=tmp_path,
                    log=tmp_path / "fit.log", env=lit_cv_env(PYTHONPATH=str(HERE)))
    deadline = time.monotonic() + TIMEOUT
    while not (tmp_path / "ranks" / "waiting").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            kill_group(process)
            pytest.fail(f"the run ended or stalled before the collective:\n{(tmp_path / 'fit.log').read_text()[-3000:]}")
        time.sleep(0.1)
    return process


def _pids(tmp_path: Path) -> list[int]:
    return [int((tmp_path / "ranks" / f"rank{rank}.pid").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_a_collective_another_rank_skips_ends_in_a_clear_error_after_the_timeout(tmp_path: Path) -> None:
    """Before: both ranks waited for gloo's default 30 minutes, then a raw RuntimeError traceback."""
    timeout = 60  # > the seconds the second rank needs to start (the rendezvous shares this timeout)
    process = _start_blocked_run(tmp_path, "--collective_timeout", str(timeout))
    try:
        waiting = time.monotonic()
        code = process.wait(timeout=timeout + 120)
        waited = time.monotonic() - waiting
    finally:
        kill_group(process)
    output = (tmp_path / "fit.log").read_text()
    assert code == 1, output[-3000:]
    assert timeout - 5 < waited < timeout + 60, f"ended {waited:.0f} s after rank 0 began to wait"
    lines = [line for line in output.splitlines() if line.startswith("lit-cv fit: error")]
    assert len(lines) == 1, output[-3000:]
    (line,) = lines
    assert "a collective operation timed out" in line and "--collective_timeout" in line, line
    assert "Traceback" not in output
    assert not any(_alive(pid) for pid in _pids(tmp_path)), "every rank ended"


@pytest.mark.slow
@pytest.mark.parametrize("to_group", [False, True], ids=["kill-rank0", "timeout-or-scancel-all-ranks"])
def test_sigterm_ends_a_run_blocked_in_a_collective(tmp_path: Path, to_group: bool) -> None:
    """Before: the blocked main thread never ran the SIGTERM handler; the run stayed until the collective timeout."""
    process = _start_blocked_run(tmp_path, sigterm_timeout=5)  # lit-cv's default is 25 s
    try:
        time.sleep(1)  # rank 0 is inside the collective now
        signalled = time.monotonic()
        if to_group:  # what `timeout` and `scancel` do: every process of the job gets it
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
        took = time.monotonic() - signalled
        time.sleep(1)
        left = [pid for pid in _pids(tmp_path) if _alive(pid)]
    finally:
        kill_group(process)
    output = (tmp_path / "fit.log").read_text()
    assert code == 143, output[-3000:]
    assert took < 5 + 30, f"ended {took:.0f} s after SIGTERM"
    assert "SIGTERM received 5 s ago and the run has not stopped" in output and "blocked in" in output
    assert not left, "every rank ended"
