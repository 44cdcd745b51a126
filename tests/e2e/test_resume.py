"""Resume loses nothing: ``lit-cv fit --ckpt_path last`` after a SIGKILL continues the run bit for bit.

The end-to-end test kills a real ``lit-cv fit`` right after its first checkpoint, resumes it, and compares the final
checkpoint with an uninterrupted run of the same config (``deterministic: true``, CPU): the weights must be
*bitwise* identical, and so must the epoch, global step, optimizer and per-step CyclicLR state, the early-stopping
counter and the random number generators; the resumed run writes into the killed run's log directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from subprocess_runs import QUICKSTART, fast_config, lit_cv_env, run, start

MAX_EPOCHS = 3
STEPS_PER_EPOCH = 6
# CyclicLR period of 2 x 4 steps: every epoch boundary (6, 12 steps) falls mid-cycle.
RESUME_OVERRIDES: dict[str, Any] = {
    "max_epochs": MAX_EPOCHS,
    "limit_train_batches": STEPS_PER_EPOCH,
    "deterministic": True,  # not a default: the comparison below is bitwise
    "callbacks": [
        {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val/loss", "patience": 50}}
    ],
}
CYCLIC_LR = [
    "--model.lr_scheduler", "torch.optim.lr_scheduler.CyclicLR",
    "--model.lr_scheduler.base_lr", "0.001", "--model.lr_scheduler.max_lr", "0.01",
    "--model.lr_scheduler.step_size_up", "4", "--model.lr_scheduler.cycle_momentum", "false",
    "--model.scheduler_interval", "step",
]


# ---------------------------------------------------------------------------------------------- kill, resume, compare
def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _callback_state(checkpoint: dict[str, Any], name: str) -> Any:
    (state,) = [value for key, value in checkpoint["callbacks"].items() if key.startswith(name)]
    return state


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    env = lit_cv_env()
    runs: dict[str, Path] = {}
    for name in ("straight", "killed"):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        fast_config(runs[name], **RESUME_OVERRIDES)
    args = ["fit", "--config", QUICKSTART, "--config", "fast.yaml", *CYCLIC_LR]

    straight = start(args, cwd=runs["straight"], log=runs["straight"] / "fit.log", env=env)
    killed = start(args, cwd=runs["killed"], log=runs["killed"] / "fit.log", env=lit_cv_env())
    version_dir = runs["killed"] / "runs" / "quickstart" / "version_0"
    try:
        deadline = time.monotonic() + 240
        while not (version_dir / "checkpoints" / "last.ckpt").exists():
            assert killed.poll() is None and time.monotonic() < deadline, (runs["killed"] / "fit.log").read_text()
            time.sleep(0.02)
        killed.kill()  # SIGKILL: no handler, no cleanup
        killed.wait(timeout=60)
        assert straight.wait(timeout=300) == 0, (runs["straight"] / "fit.log").read_text()[-3000:]
    finally:
        for process in (straight, killed):
            if process.poll() is None:
                process.kill()

    interrupted = _load(version_dir / "checkpoints" / "last.ckpt")
    assert interrupted["epoch"] < MAX_EPOCHS - 1, "killed too late: the run had already finished"
    lr_at_kill = interrupted["lr_schedulers"][0]["_last_lr"][0]
    assert 0.001 < lr_at_kill < 0.01, "the kill point must be mid-cycle"

    output = run([*args, "--ckpt_path", "last"], cwd=runs["killed"])

    assert f"Restoring states from the checkpoint path at {version_dir / 'checkpoints' / 'last.ckpt'}" in output
    assert sorted(p.name for p in version_dir.parent.iterdir()) == ["version_0"], "the logger version is reused"
    assert len(list(version_dir.glob("events.out.tfevents.*"))) == 2  # TensorBoard appends a file per process

    expected = _load(runs["straight"] / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt")
    resumed = _load(version_dir / "checkpoints" / "last.ckpt")
    assert (resumed["epoch"], resumed["global_step"]) == (expected["epoch"], expected["global_step"])
    assert resumed["global_step"] == MAX_EPOCHS * STEPS_PER_EPOCH
    for key, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), f"weights differ at {key} (bitwise)"
    exp_opt, res_opt = expected["optimizer_states"][0], resumed["optimizer_states"][0]
    assert exp_opt["param_groups"] == res_opt["param_groups"]
    for index, state in exp_opt["state"].items():
        for name, tensor in state.items():
            assert torch.equal(res_opt["state"][index][name], tensor), f"optimizer {name} of param {index} differs"
    assert resumed["lr_schedulers"] == expected["lr_schedulers"]
    assert _callback_state(resumed, "EarlyStopping") == _callback_state(expected, "EarlyStopping")
    rng_expected, rng_resumed = _callback_state(expected, "RNGState")["rng"], _callback_state(resumed, "RNGState")["rng"]
    assert torch.equal(rng_resumed["torch"], rng_expected["torch"])


def test_ckpt_path_last_without_a_run_starts_fresh(tmp_path: Path) -> None:
    """A first SLURM job runs with ``--ckpt_path last`` too: with nothing to resume it must start version_0."""
    fast_config(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    output = run(["fit", "--config", QUICKSTART, "--config", "fast.yaml", "--ckpt_path", "last"], cwd=tmp_path)
    assert "no last checkpoint available" in output
    assert (tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt").is_file()
