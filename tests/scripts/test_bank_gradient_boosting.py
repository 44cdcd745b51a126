"""scripts/bank_gradient_boosting.py: the reference scores the held-out rows of both bank formats, with and without
``duration``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import fake_data
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bank_gradient_boosting.py"


def _script():
    spec = importlib.util.spec_from_file_location("bank_gradient_boosting", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_duration_drives_the_generated_labels_and_dropping_it_loses_them(tmp_path, capsys):
    fake_data.make_bank_kaggle(tmp_path, n=600)
    fake_data.make_bank_uci(tmp_path, n=600, seed=1)
    results = _script().main(["--data-dir", str(tmp_path)])
    assert set(results) == {f"{f} {w} duration" for f in ("bank.csv", "bank-full.csv") for w in ("with", "without")}
    for name in ("bank.csv", "bank-full.csv"):  # labels are `duration > 600`, every 7th flipped
        assert results[f"{name} with duration"] > 0.75 > results[f"{name} without duration"]
    assert "bank-full.csv with duration: test ROC-AUC" in capsys.readouterr().out


def test_a_folder_without_bank_files_is_one_message(tmp_path):
    with pytest.raises(SystemExit, match="no bank.csv / bank-full.csv / bank-additional-full.csv in"):
        _script().main(["--data-dir", str(tmp_path)])
