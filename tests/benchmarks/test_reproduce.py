"""benchmarks/reproduce.py --quick on generated data laid out like ../shared/data, so the runner never rots."""

from __future__ import annotations

import json
import subprocess
import sys

import fake_data
import pytest
from conftest import REPO_ROOT

ROWS = ["rps_normaliser", "rps_cnn2_dropout", "rps_lr_range_test", "bank_mlp_plain", "mnist_beat",
        "cats_dogs_convnet"]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    fake_data.make_rps(root / "rps", per_class=8, size=32, test_per_class=4)
    fake_data.make_mnist_idx(root / "mnist" / "raw", n_train=40, n_test=60, layout="raw", with_train_images=False)
    fake_data.make_bank_kaggle(root / "bank", n=120)
    # no cats_dogs folder: that row must be reported as skipped, not failed
    out = root / "results"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "reproduce.py"), "--data-dir", str(root), "--out", str(out),
         "--quick", "--only", *ROWS],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "reproduce.json").read_text()), (out / "reproduce.md").read_text()


def test_every_requested_row_is_reported(quick_results):
    data, _ = quick_results
    assert set(data["rows"]) == set(ROWS)
    statuses = {name: row["status"] for name, row in data["rows"].items()}
    assert statuses.pop("cats_dogs_convnet") == "skipped"
    assert set(statuses.values()) == {"ok"}, statuses
    assert data["quick"] is True and data["seed"] == 13 and "torch" in data["versions"]


def test_rows_carry_metrics_commands_and_course_figures(quick_results):
    rows = quick_results[0]["rows"]
    fit = rows["rps_cnn2_dropout"]
    assert fit["command"].startswith("lit-cv fit --config") and "rps_cnn2_dropout.yaml" in fit["command"]
    assert 0.0 <= fit["metrics"]["val/acc"] <= 1.0
    assert fit["metrics"]["train_eval/total"] == 24  # 8 readable images x 3 classes, bad files skipped
    assert fit["plain_loop_seconds"] > 0 and fit["framework_overhead_ratio"] > 0
    assert fit["course"]["val/acc"] == pytest.approx(326 / 372)
    assert "class_path: lit_cv.nets.CNN2" in fit["config"]
    norm = rows["rps_normaliser"]["metrics"]
    assert set(norm) == {"mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b"}
    assert rows["rps_lr_range_test"]["command"].startswith("lit-cv lr-find")
    assert rows["mnist_beat"]["selected_epoch"] == 1
    assert "val/auroc" in rows["bank_mlp_plain"]["metrics"]


def test_markdown_table_lists_rows(quick_results):
    _, markdown = quick_results
    assert "QUICK SMOKE RUN" in markdown
    for name in ROWS:
        assert f"| {name} |" in markdown
    assert "data missing" in markdown
    assert "## Framework overhead" in markdown
