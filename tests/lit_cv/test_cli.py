"""The ``lit-cv`` command end to end, in subprocesses, on the embedded digits quickstart."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")


def lit_cv(*args, cwd, timeout=300):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "lit_cv.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One short quickstart fit shared by the tests below (4 epochs)."""
    cwd = tmp_path_factory.mktemp("quickstart")
    result = lit_cv("fit", "--config", QUICKSTART, "--trainer.max_epochs", "4", "--trainer.enable_progress_bar",
                    "false", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


def test_fit_reaches_accuracy_and_writes_metrics_json(quick_run):
    cwd, result = quick_run
    run_dir = cwd / "runs" / "quickstart" / "version_0"
    report = json.loads((run_dir / "metrics.json").read_text())["fit"]
    assert report["metrics"]["val/acc"] >= 0.85
    assert report["epoch"] == 4
    per_class = report["per_class"]["val"]
    assert sum(c["total"] for c in per_class.values()) == 359  # 20% of 1,797
    assert f"metrics written to {Path('runs/quickstart/version_0/metrics.json')}" in result.stdout
    assert "val/acc" in result.stdout  # the printed table
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "config.yaml").is_file()


def test_hparams_and_final_metrics_reach_tensorboard(quick_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cwd, _ = quick_run
    events = EventAccumulator(str(cwd / "runs" / "quickstart" / "version_0"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"hp/val/acc", "val/acc", "train/loss", "lr-Adam"} <= scalars
    assert "_hparams_/experiment" in events.summary_metadata
    assert any(tag.startswith("val/confusion_matrix") for tag in events.Tags()["images"])


def test_checkpoint_reloads_without_net_and_predicts_same_probabilities(quick_run):
    from datamodules import DigitsDataModule
    from lit_cv import Classifier

    cwd, _ = quick_run
    ckpt = cwd / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    model = Classifier.load_from_checkpoint(ckpt).eval()
    dm = DigitsDataModule()
    dm.setup()
    x = torch.stack([dm.val_set[i][0] for i in range(len(dm.val_set))])
    with torch.no_grad():
        probs = model.predict_proba(x)

    result = lit_cv("predict", "--config", QUICKSTART, "--ckpt_path", str(ckpt), "--trainer.enable_progress_bar",
                    "false", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    csv_path = cwd / "runs" / "quickstart" / "version_1" / "predictions.csv"
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == len(x)
    written = torch.tensor([[float(r[f"prob_{c}"]) for c in range(10)] for r in rows])
    assert torch.allclose(written, probs, atol=1e-6)
    assert [int(r["pred"]) for r in rows] == probs.argmax(1).tolist()


def test_print_config_shows_resolved_config(tmp_path):
    result = lit_cv("fit", "--config", QUICKSTART, "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "class_path: lit_cv.nets.CNN2" in result.stdout
    assert "seed_everything: 13" in result.stdout
    assert "monitor: val/loss" in result.stdout


def test_misspelled_key_names_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART and Path(QUICKSTART).read_text().replace("n_feature: 32", "n_featur: 32"))
    result = lit_cv("fit", "--config", str(bad), cwd=tmp_path)
    assert result.returncode != 0
    assert "n_featur" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_type_names_the_key(tmp_path):
    result = lit_cv("fit", "--config", QUICKSTART, "--trainer.max_epochs", "many", cwd=tmp_path)
    assert result.returncode != 0
    assert "max_epochs" in result.stderr and "Traceback" not in result.stderr
