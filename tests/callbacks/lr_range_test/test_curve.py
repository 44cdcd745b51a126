"""The curve of the LR range test: LR sequence, smoothing, divergence, suggestions, result I/O."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from callbacks.lr_range_test.curve import (
    LRRangeTestResult,
    is_diverging,
    lr_sequence,
    make_lr_fn,
    smooth_losses,
    suggest_lr,
    valley_index,
)
from callbacks.lr_range_test.params import LRRangeTestParams


# ------------------------------------------------------------------------------------------ LR sequence
def test_exp_sequence_matches_the_issue_example():
    lrs = lr_sequence(0.01, 0.1, 10, "exp")
    assert len(lrs) == 11
    assert lrs[:3] == pytest.approx([0.01, 0.012589, 0.015849], abs=1e-6)
    assert lrs[-1] == 0.1
    np.testing.assert_allclose(lrs, [0.01 * (0.1 / 0.01) ** (i / 10) for i in range(11)], rtol=1e-12)


@pytest.mark.parametrize("start, end, n", [(1e-6, 1.0, 100), (1e-3, 0.5, 7)])
def test_exp_and_linear_sequences_equal_the_closed_forms(start, end, n):
    np.testing.assert_allclose(lr_sequence(start, end, n, "exp"), np.geomspace(start, end, n + 1), rtol=1e-10)
    np.testing.assert_allclose(lr_sequence(start, end, n, "linear"), np.linspace(start, end, n + 1), rtol=1e-10)


@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_make_lr_fn_drives_lambdalr_like_the_course(mode):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=make_lr_fn(0.01, 0.1, 10, mode))
    seen = []
    for _ in range(11):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(seen, lr_sequence(0.01, 0.1, 10, mode), rtol=1e-10)


@pytest.mark.parametrize(
    "args, match",
    [
        ((0.0, 1.0, 10, "exp"), "start_lr must be > 0"),
        ((0.1, 0.01, 10, "exp"), "end_lr must be greater than start_lr"),
        ((0.01, 0.1, 0, "exp"), "num_iter must be a positive integer"),
        ((0.01, 0.1, 10, "cosine"), r"step_mode must be one of \('exp', 'linear'\), got 'cosine'"),
    ],
)
def test_bad_ranges_are_refused_with_the_value(args, match):
    with pytest.raises(ValueError, match=match):
        lr_sequence(*args)


# ------------------------------------------------------------------------------------------ smoothing / divergence
def test_smoothing_is_the_courses_exponential_average():
    raw = [2.0, 1.0, 4.0, 3.0]
    alpha = 0.3
    expected = [2.0]
    for value in raw[1:]:
        expected.append(alpha * value + (1 - alpha) * expected[-1])
    assert smooth_losses(raw, alpha) == pytest.approx(expected)
    assert smooth_losses(raw, 1.0) == raw


def test_smoothing_skips_non_finite_points():
    out = smooth_losses([1.0, float("nan"), 3.0], 0.5)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"smoothing must be in \(0, 1\]"):
        smooth_losses([1.0], 0.0)


def test_divergence_threshold():
    assert not is_diverging(3.9, 1.0, 4.0)
    assert is_diverging(4.1, 1.0, 4.0)
    assert not is_diverging(100.0, 1.0, None)
    assert is_diverging(float("inf"), 1.0, None)


# ------------------------------------------------------------------------------------------ suggestions
def _sigmoid_curve(lrs: np.ndarray, centre: float) -> list[float]:
    """Loss falling from 2 to 0 in log-LR, steepest exactly at log10(lr) == centre."""
    return list(2.0 / (1.0 + np.exp(4.0 * (np.log10(lrs) - centre))))


def test_steepest_finds_the_known_steepest_point_in_log_lr():
    lrs = np.geomspace(1e-5, 1.0, 101)  # log10 steps of 0.05
    centre_index = 50  # log10(lr) == -2.5
    losses = _sigmoid_curve(lrs, np.log10(lrs[centre_index]))
    found = suggest_lr(list(lrs), losses, "steepest", skip_begin=0, skip_end=0)
    assert found.index == centre_index
    assert found.lr == pytest.approx(10**-2.5)
    # against linear LR spacing (what Lightning does) the answer moves to a smaller LR: ours is the log one
    linear_index = int(np.argmin(np.gradient(np.asarray(losses), lrs)))
    assert linear_index < centre_index


def test_valley_is_fastais_longest_descent_middle():
    # flat at 3 up to index 19, strictly decreasing 20..60, then rising: the longest descent ends at 60 with length
    # 42 (one flat point + 41), fastai's start is 60 - 42 = 18, sections = 14, index 18 + 14 + 7 = 39.
    losses = [3.0] * 20 + list(np.linspace(2.9, 1.0, 41)) + list(np.linspace(1.1, 3.0, 20))
    assert valley_index(losses) == 39
    lrs = list(np.geomspace(1e-4, 1.0, len(losses)))
    found = suggest_lr(lrs, losses, "valley", skip_begin=0, skip_end=0)
    assert found.index == 39 and found.lr == lrs[39]


def test_minimum_is_a_tenth_of_the_lowest_points_lr():
    lrs = list(np.geomspace(1e-4, 1.0, 30))
    losses = [abs(i - 21) + 1.0 for i in range(30)]
    found = suggest_lr(lrs, losses, "minimum", skip_begin=0, skip_end=0)
    assert found.index == 21 and found.lr == pytest.approx(lrs[21] / 10)


def test_nan_and_inf_points_are_dropped():
    lrs = np.geomspace(1e-5, 1.0, 101)
    losses = _sigmoid_curve(lrs, -2.5)
    losses[50] = float("nan")
    losses[-5:] = [float("inf")] * 5
    for method in ("steepest", "valley", "minimum"):
        found = suggest_lr(list(lrs), losses, method, skip_begin=0, skip_end=0)
        assert found.lr is not None and math.isfinite(found.lr)
        assert math.isfinite(losses[found.index])
    assert suggest_lr(list(lrs), losses, "steepest", skip_begin=0, skip_end=0).index in (49, 51)


def test_skip_end_zero_keeps_every_point():
    # Lightning slices [skip_begin:-skip_end]: with skip_end=0 that is empty. Here the steepest point is the last.
    lrs = list(np.geomspace(1e-3, 1.0, 20))
    losses = [1.0] * 19 + [0.0]
    found = suggest_lr(lrs, losses, "steepest", skip_begin=0, skip_end=0)
    assert found.index == 19 and found.lr == lrs[-1]
    assert suggest_lr(lrs, losses, "steepest", skip_begin=0, skip_end=1).index != 19


def test_too_short_curve_gives_a_message_not_an_exception():
    lrs = list(np.geomspace(1e-3, 1.0, 5))
    found = suggest_lr(lrs, [1.0, 0.9, 0.8, 0.7, 0.6], "steepest", skip_begin=10, skip_end=1)
    assert found.lr is None and found.index is None
    assert "0 finite point(s) of 5 remain" in found.message and "Raise num_iter" in found.message


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match=r"method must be one of \('steepest', 'valley', 'minimum'\), got 'fast'"):
        suggest_lr([1e-3, 1e-2, 1e-1], [1.0, 0.5, 0.2], "fast")


# ------------------------------------------------------------------------------------------ result
def test_result_json_round_trip_and_non_finite_as_null(tmp_path):
    lrs = list(np.geomspace(1e-5, 1.0, 41))
    raw = _sigmoid_curve(np.asarray(lrs), -2.5)
    raw[-1] = float("nan")
    result = LRRangeTestResult.from_curve(lrs, raw, LRRangeTestParams(smoothing=1.0, skip_begin=2, skip_end=0))
    assert result.suggestion == pytest.approx(lrs[20])  # 10**-2.5 is the 21st point
    assert set(result.suggestions) == {"steepest", "valley", "minimum"}
    path = result.save_json(tmp_path / "r.json")
    data = json.loads(path.read_text())  # strict JSON: NaN would not parse under allow_nan=False writers
    assert data["losses"][-1] is None and data["suggestion"] == result.suggestion
    back = LRRangeTestResult.from_dict(data)
    assert back.lrs == result.lrs and math.isnan(back.losses[-1]) and back.suggestion == result.suggestion
