"""benchmarks/capture_overhead.py at its smallest, so it keeps up with GradientCapture's hooks it times."""

from __future__ import annotations

import json

from benchmarks.capture_overhead import main


def test_both_figures_are_measured(tmp_path):
    assert main(["--steps", "2", "--every", "2", "--repeats", "1", "--n-feature", "4",
                 "--out", str(tmp_path / "overhead.json")]) == 0
    result = json.loads((tmp_path / "overhead.json").read_text())
    assert result["in_run_share_percent"] > 0 and result["hook_ms_per_capture_step"] > 0
    assert len(result["ab_percent_per_pair"]) == 1
