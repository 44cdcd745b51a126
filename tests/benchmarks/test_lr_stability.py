"""benchmarks/lr_stability.py: the peer installed on demand, the tables, and both tools on the digits, shortened."""

from __future__ import annotations

import json
import sys

import pytest

import benchmarks.lr_stability as bench

TINY = ["--model.net.init_args.n_feature=3", "--model.net.init_args.image_size=12", "--data.init_args.image_size=12"]


def test_torch_lr_finder_is_installed_with_this_pip_when_missing(monkeypatch):
    calls, found = [], object()

    def import_module(name):
        if not calls:
            raise ImportError(name)
        return found

    monkeypatch.setattr(bench.importlib, "import_module", import_module)
    monkeypatch.setattr(bench.subprocess, "run", lambda command, check: calls.append((command, check)))
    assert bench.ensure_peer() is found
    assert calls == [([sys.executable, "-m", "pip", "install", "-q", "torch-lr-finder"], True)]


def _row(seed, ours, peer):
    curve = [2.0, 1.5, 1.0]
    return {"seed": seed, "lit_cv": ours, "lit_cv_method": "valley", "peer": peer, "lit_cv_points": 3,
            "lit_cv_methods": {"steepest": peer, "valley": ours, "minimum": ours}, "lit_cv_raw": curve,
            "peer_smoothed": [2.0, 1.975, 1.92625]}


def test_tables_show_each_seed_and_the_max_min_ratios():
    rows = [_row(0, 1e-3, 1e-2), _row(1, 2e-3, 5e-2)]
    text = bench.table("digits", bench.SETTINGS["digits"], rows, num_iter=2)
    assert text.splitlines()[0] == "### digits: configs/quickstart.yaml, 2 steps from 1e-05 to 1"
    assert "| seed | lit-cv valley (default) | torch-lr-finder steepest | lit-cv steepest | lit-cv minimum |" in text
    assert "| 1 | 0.002 | 0.05 | 0.05 | 0.002 | 3 | yes |" in text
    assert "| max/min | **2** | **5** | 5 | 2 | | |" in text
    results = {"digits": {"ratio_lit_cv": 2.0, "ratio_peer": 5.0}, "bank": {"ratio_lit_cv": None, "ratio_peer": 3.0}}
    assert "| digits | 2 | 5 | yes |" in bench.summary(results) and "| bank | - | 3 | no |" in bench.summary(results)
    assert bench.ratio([1e-3, None]) is None


def test_both_tools_run_on_the_same_curve(tmp_path):
    pytest.importorskip("torch_lr_finder")  # the benchmark would pip-install it; tests stay off the network
    out = tmp_path / "lr.json"
    assert bench.main(["--datasets", "digits", "--seeds", "0", "1", "--num-iter", "30", "--json", str(out), *TINY]) == 0
    rows = json.loads(out.read_text())["digits"]["rows"]
    assert [row["seed"] for row in rows] == [0, 1]
    for row in rows:
        assert row["lit_cv_method"] == "valley" and row["lrs"][0] == 1e-5
        assert row["peer_lrs"] == pytest.approx(row["lrs"])  # the same 31 LRs
        assert bench._same_curve(row)  # same data, init and RNG: the same losses, point for point
    assert rows[0]["lit_cv_raw"] != rows[1]["lit_cv_raw"]  # the seed changes the init
