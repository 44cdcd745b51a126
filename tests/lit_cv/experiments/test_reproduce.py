"""``reproduce()`` through ``lit-cv reproduce --quick`` on generated data laid out like ../shared/data, so the runner
never rots; and neither a fresh nor the committed report holds a path of the machine it ran on."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import fake_data
import pytest
from conftest import REPO_ROOT

from lit_cv.experiments import EXPERIMENTS, reproduce
from lit_cv.experiments.runners import flip_wins

ROWS = ["rps_normaliser", "rps_cnn2_dropout", "rps_lr_range_test", "bank_mlp_plain", "mnist_beat",
        "cats_dogs_convnet"]
# an absolute POSIX path of two or more parts (`/work/main`, `/tmp/x/y`); metric keys like `val/acc` do not match
ABSOLUTE_PATH = re.compile(r"(?<![\w$~.])/[\w.-]+/")


def assert_no_machine_paths(text: str, *folders: Path) -> None:
    found = sorted(set(ABSOLUTE_PATH.findall(text)))
    assert not found, f"absolute paths in the report: {found}"
    for folder in folders:
        assert str(folder) not in text


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    fake_data.make_rps(root / "rps", per_class=8, size=32, test_per_class=4)
    fake_data.make_mnist_idx(root / "mnist" / "raw", n_train=40, n_test=60, layout="raw", with_train_images=False)
    fake_data.make_bank_kaggle(root / "bank", n=120)
    # no cats_dogs folder: that row must be reported as skipped, not failed
    out = root / "results"
    result = subprocess.run(
        [sys.executable, "-m", "lit_cv.commands.reproduce", "--data-dir", str(root), "--out", str(out), "--quick",
         "--only", *ROWS],
        check=False, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, (out / "reproduce.json").read_text(), (out / "reproduce.md").read_text()


def test_every_requested_row_is_reported(quick_run):
    data = json.loads(quick_run[1])
    assert set(data["rows"]) == set(ROWS)
    statuses = {name: row["status"] for name, row in data["rows"].items()}
    assert statuses.pop("cats_dogs_convnet") == "skipped"
    assert set(statuses.values()) == {"ok"}, statuses
    assert data["quick"] is True and data["seed"] == 13 and "torch" in data["versions"]


def test_rows_carry_metrics_commands_and_course_figures(quick_run):
    rows = json.loads(quick_run[1])["rows"]
    fit = rows["rps_cnn2_dropout"]
    assert fit["command"].startswith("lit-cv fit --config configs/rps_cnn2_dropout.yaml --data.init_args.data_dir "
                                     "$DATA_DIR/rps")
    assert fit["run_dir"] == "$OUT/runs/rps_cnn2_dropout/version_0"
    assert 0.0 <= fit["metrics"]["val/acc"] <= 1.0
    assert fit["metrics"]["train_eval/total"] == 24  # 8 readable images x 3 classes, bad files skipped
    assert fit["plain_loop_seconds"] > 0 and fit["framework_overhead_ratio"] > 0
    assert fit["course"]["val/acc"] == pytest.approx(326 / 372)
    assert "class_path: lit_cv.nets.CNN2" in fit["config"] and "save_dir: $OUT/runs" in fit["config"]
    norm = rows["rps_normaliser"]["metrics"]
    assert set(norm) == {"mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b"}
    assert rows["rps_lr_range_test"]["command"].startswith("lit-cv lr-find")
    assert rows["mnist_beat"]["selected_epoch"] == 1
    assert "val/auroc" in rows["bank_mlp_plain"]["metrics"]
    assert rows["cats_dogs_convnet"]["error"] == "data missing: $DATA_DIR/cats_dogs"


def test_markdown_table_lists_rows(quick_run):
    markdown = quick_run[2]
    assert "QUICK SMOKE RUN" in markdown
    for name in ROWS:
        assert f"| {name} |" in markdown
    assert "data missing" in markdown
    assert "## Framework overhead" in markdown


def test_written_report_holds_no_machine_paths(quick_run):
    root, data, markdown = quick_run
    for text in (data, markdown):
        assert_no_machine_paths(text, root, REPO_ROOT, Path.home())


def test_committed_results_hold_no_machine_paths():
    for name in ("reproduce.json", "reproduce.md"):
        assert_no_machine_paths((REPO_ROOT / "results" / name).read_text())


def test_missing_data_is_skipped_and_named_relative_to_the_data_dir(tmp_path):
    results = reproduce(tmp_path / "empty", tmp_path / "out")
    assert set(results["rows"]) == {e.name for e in EXPERIMENTS}
    assert {row["status"] for row in results["rows"].values()} == {"skipped"}
    assert results["rows"]["mnist_convnet"]["error"] == "data missing: $DATA_DIR/mnist/raw"
    for name in ("reproduce.json", "reproduce.md"):
        assert_no_machine_paths((tmp_path / "out" / name).read_text(), tmp_path)


def test_only_keeps_earlier_rows_and_refuses_unknown_names(tmp_path):
    reproduce(tmp_path / "empty", tmp_path / "out", only=["rps_beat"])
    results = reproduce(tmp_path / "empty", tmp_path / "out", only=["bank_beat_duration"])
    assert set(results["rows"]) == {"rps_beat", "bank_beat_duration"}
    with pytest.raises(ValueError, match=r"unknown experiment\(s\) \['rps_best'\]; choose from .*'rps_beat'"):
        reproduce(tmp_path / "empty", tmp_path / "out", only=["rps_best"])


def test_a_row_written_meanwhile_by_another_run_is_kept(tmp_path, monkeypatch):
    """Two `--only` runs at once: each row is merged into the file as it is on disk when the row finishes."""
    module = importlib.import_module("lit_cv.experiments.reproduce")  # the package exports the function
    out = tmp_path / "out"
    reproduce(tmp_path / "empty", out, only=["rps_beat"])
    run_row = module._run_row

    def meanwhile(exp, *args):  # another run finishes mnist_beat while this one runs bank_beat_duration
        other = json.loads((out / "reproduce.json").read_text())
        other["rows"]["mnist_beat"] = {"status": "skipped", "group": "beat", "error": "from the other run"}
        (out / "reproduce.json").write_text(json.dumps(other))
        return run_row(exp, *args)

    monkeypatch.setattr(module, "_run_row", meanwhile)
    results = reproduce(tmp_path / "empty", out, only=["bank_beat_duration"])
    assert set(results["rows"]) == {"rps_beat", "mnist_beat", "bank_beat_duration"}
    on_disk = json.loads((out / "reproduce.json").read_text())
    assert list(on_disk["rows"]) == [e.name for e in EXPERIMENTS if e.name in on_disk["rows"]]  # registry order


def test_a_flip_candidate_is_validated_both_ways_and_tested_as_the_rule_chose(tmp_path):
    fake_data.make_rps(tmp_path / "rps", per_class=20, size=32, test_per_class=4)  # enough for a validation split
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "lit_cv.commands.reproduce", "--data-dir", str(tmp_path), "--out", str(out),
         "--quick", "--only", "rps_beat"],
        check=False, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    row = json.loads((out / "reproduce.json").read_text())["rows"]["rps_beat"]
    assert row["status"] == "ok", row
    without, flipped = row["flip_validation"]["without"], row["flip_validation"]["flipped"]
    assert without != flipped  # the flip changed the scores: the option reached the model
    assert row["test_time_flip"] == flip_wins(without, flipped)
    assert ("--model.test_time_flip true" in row["test_command"]) == row["test_time_flip"]
    assert "test-time flip" in (out / "reproduce.md").read_text()
