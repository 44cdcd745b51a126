"""DDP through Lightning on this CPU machine: ``strategy: ddp``, ``accelerator: cpu``, ``devices: 2`` (gloo).

A real ``lit-cv fit`` with two processes must report validation metrics over the *whole* validation set (each rank
sees half of it): they must equal a single-process ``lit-cv validate`` of the checkpoint it wrote, class by class.
And rank 0 alone writes files: exactly one run directory with one ``metrics.json``, one ``config.yaml``, one
TensorBoard events file and one pair of checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from subprocess_runs import QUICKSTART, fast_config, run

N_VAL = 180  # val_split 0.1 of the 1,797 digits: 90 per rank, so DistributedSampler pads nothing


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    fast_config(tmp_path, max_epochs=1, limit_train_batches=30, limit_val_batches=1.0, num_sanity_val_steps=0)
    common = ["--config", QUICKSTART, "--config", "fast.yaml", "--data.val_split", "0.1",  # 30 steps: ~40% accuracy
              "--model.net.init_args.n_feature", "8", "--model.net.init_args.image_size", "16",
              "--data.init_args.image_size", "16", "--model.optimizer.init_args.lr", "0.01"]
    ddp = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]

    run(["fit", *common, *ddp], cwd=tmp_path)

    runs = tmp_path / "runs" / "quickstart"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0"], "one run directory, not one per rank"
    run_dir = runs / "version_0"
    files = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    assert [f for f in files if not f.startswith("events.out.tfevents.")] == [
        "checkpoints/best-epoch000.ckpt", "checkpoints/last.ckpt", "config.yaml", "hparams.yaml", "metrics.json",
    ]
    assert len([f for f in files if f.startswith("events.out.tfevents.")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.yaml", "runs"], "nothing written elsewhere"

    fit = json.loads((run_dir / "metrics.json").read_text())["fit"]
    assert sum(c["total"] for c in fit["per_class"]["val"].values()) == N_VAL, "confusion matrix of one shard only"

    run(["validate", *common, "--ckpt_path", run_dir / "checkpoints" / "last.ckpt",
         "--trainer.logger.init_args.save_dir", tmp_path / "single"], cwd=tmp_path)

    single = json.loads((tmp_path / "single" / "quickstart" / "version_0" / "metrics.json").read_text())["validate"]
    assert fit["metrics"]["val/acc"] > 0.2, "a model that learned something, not a constant predictor"
    assert fit["per_class"]["val"] == single["per_class"]["val"]
    for name in ("val/acc", "val/f1", "val/loss", "val/acc_class/3"):
        assert fit["metrics"][name] == pytest.approx(single["metrics"][name], abs=1e-5), name
