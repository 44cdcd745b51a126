"""The range test's figure and files: every recorded point drawn, the suggestion marked, PNG and JSON written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from callbacks.figures import pyplot
from callbacks.lr_range_test.curve import LRRangeTestResult
from callbacks.lr_range_test.params import LRRangeTestParams
from callbacks.lr_range_test.report import plot_curve, write_report


def test_plot_of_a_short_curve_draws_every_point(tmp_path):
    """torch-lr-finder draws a blank plot when num_iter is below its skip counts; ours draws what was recorded."""
    lrs = list(np.geomspace(1e-3, 1.0, 5))
    result = LRRangeTestResult.from_curve(lrs, [1.0, 0.9, 0.8, 0.7, 0.6], LRRangeTestParams(skip_begin=10))
    assert result.suggestion is None
    fig = plot_curve(result)
    lines = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 1]
    assert lines and all(len(line.get_xdata()) == 5 for line in lines)
    assert fig.axes[0].get_xscale() == "log"
    assert "no suggestion" in fig.axes[0].get_title()
    pyplot().close(fig)
    paths = write_report(result, tmp_path / "out", "short")
    assert paths["png"] == tmp_path / "out" / "short.png" and paths["png"].stat().st_size > 0
    assert json.loads(paths["json"].read_text())["suggestion"] is None


def test_plot_marks_the_suggestion():
    lrs = np.geomspace(1e-5, 1.0, 41)
    losses = list(2.0 / (1.0 + np.exp(4.0 * (np.log10(lrs) + 2.5))))  # steepest at lr = 10**-2.5
    result = LRRangeTestResult.from_curve(list(lrs), losses, LRRangeTestParams(smoothing=1.0, skip_begin=0))
    fig = plot_curve(result)
    marker = [line for line in fig.axes[0].get_lines() if line.get_marker() == "o"]
    assert len(marker) == 1 and marker[0].get_xdata()[0] == pytest.approx(result.suggestion)
    pyplot().close(fig)
