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
    steepest_index,
    suggest_lr,
    valley_index,
)
from callbacks.lr_range_test.params import DEFAULT_METHOD, LRRangeTestParams


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


# ------------------------------------------------------------------------------------------ descent before the minimum
LRS = np.geomspace(1e-5, 1.0, 101)  # the course's 100 steps, log10 steps of 0.05
SKIP = {"skip_begin": 10, "skip_end": 5}  # torch-lr-finder's, as in the course


def _old_rule(method: str, losses: list[float]) -> int:
    """The rules before the descent cut: steepest / valley over every point left after skipping."""
    kept = list(range(SKIP["skip_begin"], len(losses) - SKIP["skip_end"]))
    sub = [losses[i] for i in kept]
    return kept[steepest_index(LRS[kept], sub) if method == "steepest" else valley_index(sub)]


def _lowest(losses: list[float]) -> int:
    kept = range(SKIP["skip_begin"], len(losses) - SKIP["skip_end"])
    return min(kept, key=lambda i: losses[i])


def _spiked_curve(seed: int) -> list[float]:
    """Noisy raw losses falling from 2.3 to 1.3 around 10**-2.5, diverging past 10**-1.5, with one loss of 80 late
    in the divergence: its smoothed echo decays steeply, steeper than the descent (digits seed 3 in the benchmark)."""
    rng = np.random.default_rng(seed)
    x = np.log10(LRS)
    raw = 1.3 + 1.0 / (1.0 + np.exp(4.0 * (x + 2.5))) + np.where(x > -1.5, (x + 1.5) ** 2, 0.0)
    raw = raw + rng.normal(0.0, 0.05, x.size)
    raw[84 + seed % 8] += 80.0
    return smooth_losses(list(raw), 0.05)


@pytest.mark.parametrize("seed", range(8))
def test_noisy_curve_with_late_divergence_is_read_before_the_minimum(seed):
    losses = _spiked_curve(seed)
    lowest = _lowest(losses)
    assert max(losses[lowest:]) < 5 * losses[lowest]  # the range test's divergence stop would not have fired
    assert _old_rule("steepest", losses) > lowest  # the old steepest was the spike's echo, in the divergence
    for method in ("steepest", "valley"):
        found = suggest_lr(list(LRS), losses, method, **SKIP)
        assert SKIP["skip_begin"] <= found.index < lowest, method
        assert losses[found.index] > losses[lowest]  # on the way down
    assert 1e-3 < suggest_lr(list(LRS), losses, DEFAULT_METHOD, **SKIP).lr < 1e-2  # the descent is 10**-3.5..-1.5


def test_slow_descent_with_a_cliff_at_the_end_gets_the_valley_not_the_end():
    # RPS seeds 0 and 3 in the benchmark: the loss falls slowly, drops sharply right before divergence (inside the
    # last skipped points), so the steepest point is the end of the curve; the valley is half-way down.
    losses = list(np.concatenate([np.linspace(2.3, 1.5, 91), np.linspace(1.45, 1.0, 5), np.linspace(1.5, 5, 5)]))
    assert _old_rule("steepest", losses) == suggest_lr(list(LRS), losses, "steepest", **SKIP).index == 94
    found = suggest_lr(list(LRS), losses, DEFAULT_METHOD, **SKIP)
    assert found.method == "valley" and 45 <= found.index <= 55


def test_valley_does_not_run_on_through_a_plateau_above_the_minimum():
    # MNIST seed 3 in the benchmark: after the minimum (index 50) the loss bumps up and then creeps down on a long
    # plateau that stays above it; fastai's longest decreasing subsequence skips the minimum and runs on into it.
    losses = list(np.concatenate([np.linspace(2.3, 0.85, 51), np.linspace(0.95, 0.9, 45), np.linspace(1.5, 5, 5)]))
    assert _lowest(losses) == 50 and _old_rule("valley", losses) > 50
    found = suggest_lr(list(LRS), losses, "valley", **SKIP)
    assert found.index == 10 + valley_index(losses[10:51])  # fastai's valley on the descent alone
    assert 10 < found.index < 50


def test_steepest_before_the_minimum_is_torch_lr_finders_point():
    # On exponentially spaced LRs the gradient against log-LR is the gradient against the index, torch-lr-finder's
    # `np.gradient(losses[10:-5]).argmin()`: the same point whenever it lies before the minimum.
    rng = np.random.default_rng(0)
    x = np.log10(LRS)
    raw = 0.5 + 1.8 / (1.0 + np.exp(4.0 * (x + 2.5))) + np.where(x > -1.5, 3.0 * (x + 1.5) ** 2, 0.0)
    losses = smooth_losses(list(raw + rng.normal(0.0, 0.05, x.size)), 0.05)
    peer = 10 + int(np.gradient(np.asarray(losses[10:-5])).argmin())
    assert peer < _lowest(losses)
    assert suggest_lr(list(LRS), losses, "steepest", **SKIP).index == peer


def test_a_curve_without_descent_gives_a_message():
    losses = list(np.linspace(1.0, 3.0, 30))  # lowest at the first point considered
    for method in ("steepest", "valley"):
        found = suggest_lr(list(LRS[:30]), losses, method, **SKIP)
        assert found.lr is None and found.index is None
        assert "lowest at LR" in found.message and "Lower start_lr" in found.message
    assert suggest_lr(list(LRS[:30]), losses, "minimum", **SKIP).index == 10


def test_valley_is_the_default():
    # The benchmark (results/lr_stability.md) chose it: the steadiest over seeds on every dataset.
    assert DEFAULT_METHOD == "valley" == LRRangeTestParams().method
    lrs = list(np.geomspace(1e-4, 1.0, 81))
    losses = [3.0] * 20 + list(np.linspace(2.9, 1.0, 41)) + list(np.linspace(1.1, 3.0, 20))
    assert suggest_lr(lrs, losses, skip_begin=0, skip_end=0) == suggest_lr(lrs, losses, "valley", 0, 0)
    assert LRRangeTestResult.from_curve(lrs, losses, LRRangeTestParams(smoothing=1.0, skip_begin=0)).method == "valley"


# ------------------------------------------------------------------------------------------ result
def test_result_json_round_trip_and_non_finite_as_null(tmp_path):
    lrs = list(np.geomspace(1e-5, 1.0, 41))
    raw = _sigmoid_curve(np.asarray(lrs), -2.5)
    raw[-1] = float("nan")
    # pins the steepest point, so the method is named (the default is valley)
    params = LRRangeTestParams(smoothing=1.0, skip_begin=2, skip_end=0, method="steepest")
    result = LRRangeTestResult.from_curve(lrs, raw, params)
    assert result.suggestion == pytest.approx(lrs[20])  # 10**-2.5 is the 21st point
    assert set(result.suggestions) == {"steepest", "valley", "minimum"}
    path = result.save_json(tmp_path / "r.json")
    data = json.loads(path.read_text())  # strict JSON: NaN would not parse under allow_nan=False writers
    assert data["losses"][-1] is None and data["suggestion"] == result.suggestion
    back = LRRangeTestResult.from_dict(data)
    assert back.lrs == result.lrs and math.isnan(back.losses[-1]) and back.suggestion == result.suggestion
