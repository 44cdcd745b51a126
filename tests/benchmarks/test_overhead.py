"""benchmarks/overhead.py: the plain PyTorch loop on the quickstart config, shortened as `lit-cv fit` would be."""

from __future__ import annotations

import json

import pytest
from conftest import REPO_ROOT

from benchmarks.overhead import main, plain_loop

QUICKSTART = ["--config", str(REPO_ROOT / "configs" / "quickstart.yaml"), "--model.lr_scheduler", "null"]
SHORT = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2"]


def test_plain_loop_trains_and_writes_json(tmp_path):
    assert main([*QUICKSTART, *SHORT, "--json", str(tmp_path / "overhead.json")]) == 0
    result = json.loads((tmp_path / "overhead.json").read_text())
    assert result["epochs"] == 2 and result["device"] == "cpu"
    assert result["plain_loop_seconds"] > 0 and 0.0 <= result["plain_loop_val/acc"] <= 1.0


def test_scheduler_is_refused():
    with pytest.raises(ValueError, match="no scheduler and no L1 penalty; add --model.lr_scheduler null"):
        plain_loop(["--config", str(REPO_ROOT / "configs" / "quickstart.yaml"), *SHORT])
