"""The curve of the LR range test: the LR sequence, smoothing, divergence, the three suggestions and the result."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from callbacks.lr_range_test.params import (
    DEFAULT_METHOD,
    SUPPORTED_METHODS,
    LRRangeTestParams,
    check_method,
    check_range,
    check_skips,
    check_smoothing,
)

MIN_POINTS = 3  # finite points left after skipping, needed for a slope with a neighbour on each side


def make_lr_fn(start_lr: float, end_lr: float, num_iter: int, step_mode: str = "exp") -> Callable[[int], float]:
    """The course's ``make_lr_fn``: the factor by which ``start_lr`` is multiplied at iteration ``i``.

    ``exp``: ``(end_lr / start_lr) ** (i / num_iter)``; ``linear``: ``1 + i * (end_lr / start_lr - 1) / num_iter``.
    Usable as ``LambdaLR(optimizer, lr_lambda=make_lr_fn(...))``.
    """
    check_range(start_lr, end_lr, num_iter, step_mode)
    if step_mode == "linear":
        factor = (end_lr / start_lr - 1.0) / num_iter
        return lambda i: 1.0 + i * factor
    log_factor = (math.log(end_lr) - math.log(start_lr)) / num_iter
    return lambda i: math.exp(log_factor * i)


def lr_sequence(start_lr: float, end_lr: float, num_iter: int, step_mode: str = "exp") -> list[float]:
    """The ``num_iter + 1`` LRs of the test, ``start_lr`` to ``end_lr`` inclusive, in ``num_iter`` steps.

    For ``(0.01, 0.1, 10, "exp")``: 0.01, 0.012589, 0.015849, ..., 0.1.
    """
    fn = make_lr_fn(start_lr, end_lr, num_iter, step_mode)
    lrs = [start_lr * fn(i) for i in range(num_iter + 1)]
    lrs[-1] = end_lr  # exact end despite floating-point rounding
    return lrs


def smooth_losses(losses: Sequence[float], smoothing: float = 0.05) -> list[float]:
    """The course's exponential smoothing: ``s_0 = l_0``, ``s_i = smoothing * l_i + (1 - smoothing) * s_{i-1}``.

    ``smoothing=1`` keeps the raw losses. A non-finite loss gives a NaN point and does not enter later averages.
    """
    check_smoothing(smoothing)
    out: list[float] = []
    previous: float | None = None
    for loss in losses:
        loss = float(loss)
        if not math.isfinite(loss):
            out.append(float("nan"))
            continue
        previous = loss if previous is None else smoothing * loss + (1.0 - smoothing) * previous
        out.append(previous)
    return out


def is_diverging(smoothed_loss: float, best_loss: float, diverge_th: float | None) -> bool:
    """True when the smoothed loss is non-finite or exceeds ``diverge_th`` times the best so far."""
    if not math.isfinite(smoothed_loss):
        return True
    return diverge_th is not None and smoothed_loss > diverge_th * best_loss


def steepest_index(lrs: Sequence[float], losses: Sequence[float], last: int | None = None) -> int:
    """Index of the most negative gradient of ``losses`` against ``log10(lr)`` (the course's and torch-lr-finder's
    rule), among indices ``0..last`` (all when None); the gradient is that of the whole curve, so a point keeps its
    slope whatever ``last`` is."""
    gradients = np.gradient(np.asarray(losses, dtype=float), np.log10(np.asarray(lrs, dtype=float)))
    return int(np.argmin(gradients if last is None else gradients[: last + 1]))


def valley_index(losses: Sequence[float]) -> int:
    """fastai's ``valley``: find the longest decreasing stretch of the curve (longest decreasing subsequence) and
    return the index half-way down it, at ``start + int(length / 3) + int(length / 6)`` exactly as fastai.
    :func:`suggest_lr` applies it to the descent only."""
    n = len(losses)
    lds = [1] * n  # length of the longest decreasing subsequence ending at i
    max_start, max_end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def minimum_index(losses: Sequence[float]) -> int:
    """Index of the lowest loss (the suggestion is that LR divided by 10)."""
    return int(np.argmin(np.asarray(losses, dtype=float)))


def descent(candidates: list[int], losses: Sequence[float]) -> list[int]:
    """The candidates up to and including the lowest loss: where ``steepest`` and ``valley`` may suggest.

    Past the smoothed minimum the loss rises towards divergence: a drop there is the echo of a spike, and fastai's
    longest decreasing subsequence can skip the minimum and run on through a noisy plateau above it. In
    results/lr_stability.md the first put steepest at 56x the other seeds' LR (digits), the second valley at 10x
    (MNIST).
    """
    return candidates[: minimum_index([losses[i] for i in candidates]) + 1]


@dataclass
class Suggestion:
    """A suggested LR (``None`` with a ``message`` when the curve is too short or has no descent) and its index."""

    method: str
    lr: float | None
    index: int | None
    message: str = ""


def suggest_lr(
    lrs: Sequence[float],
    losses: Sequence[float],
    method: str = DEFAULT_METHOD,
    skip_begin: int = 10,
    skip_end: int = 1,
) -> Suggestion:
    """Suggest an LR from a (smoothed) loss curve.

    The first ``skip_begin`` and last ``skip_end`` points are ignored (``skip_end=0`` keeps the end), then NaN/inf
    points are dropped. ``steepest`` and ``valley`` look only at the :func:`descent`, the points up to the lowest
    loss. ``index`` refers to the full ``lrs`` list; for ``minimum`` it is the minimum's index and the LR is a tenth
    of it.
    """
    check_method(method)
    check_skips(skip_begin, skip_end)
    if len(lrs) != len(losses):
        raise ValueError(f"lrs and losses differ in length: {len(lrs)} vs {len(losses)}.")
    candidates = [
        i
        for i in range(skip_begin, len(losses) - skip_end)
        if math.isfinite(losses[i]) and math.isfinite(lrs[i]) and lrs[i] > 0
    ]
    if len(candidates) < MIN_POINTS:
        return Suggestion(
            method,
            None,
            None,
            f"No {method} suggestion: {len(candidates)} finite point(s) of {len(losses)} remain after skipping the "
            f"first {skip_begin} and last {skip_end}; {MIN_POINTS} are needed. Raise num_iter (or end_lr / "
            "diverge_th if the test stopped early), or lower skip_begin / skip_end.",
        )
    if method == "minimum":
        index = candidates[minimum_index([losses[i] for i in candidates])]
        return Suggestion(method, float(lrs[index]) / 10.0, index)
    points = descent(candidates, losses)
    if len(points) < MIN_POINTS:
        lowest = points[-1]
        return Suggestion(
            method,
            None,
            None,
            f"No {method} suggestion: the smoothed loss is lowest at LR {lrs[lowest]:.3g}, point {len(points)} "
            f"after skipping the first {skip_begin}; a descent of {MIN_POINTS} points before the minimum is needed. "
            "Lower start_lr (or skip_begin), or use method 'minimum'.",
        )
    if method == "steepest":
        last = len(points) - 1
        index = candidates[steepest_index([lrs[i] for i in candidates], [losses[i] for i in candidates], last)]
    else:
        index = points[valley_index([losses[i] for i in points])]
    return Suggestion(method, float(lrs[index]), index)


def _finite_or_none(values: Sequence[float]) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


@dataclass
class LRRangeTestResult:
    """What a range test recorded: one LR, raw loss and smoothed loss per iteration, and the suggestions.

    ``suggestion`` is the one of ``method``; ``suggestions`` holds every method's LR (``None`` when impossible);
    ``params`` are the :class:`LRRangeTestParams` of the run, as a dict.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    method: str = DEFAULT_METHOD
    suggestion: float | None = None
    suggestion_index: int | None = None
    suggestions: dict[str, float | None] = field(default_factory=dict)
    message: str = ""
    stopped_early: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_curve(
        cls,
        lrs: Sequence[float],
        raw_losses: Sequence[float],
        params: LRRangeTestParams | None = None,
        stopped_early: bool = False,
    ) -> LRRangeTestResult:
        """Smooth ``raw_losses`` and suggest an LR by every method, as ``params`` say."""
        params = params or LRRangeTestParams()
        losses = smooth_losses(raw_losses, params.smoothing)
        found = {m: suggest_lr(lrs, losses, m, params.skip_begin, params.skip_end) for m in SUPPORTED_METHODS}
        chosen = found[params.method]
        return cls(
            lrs=[float(v) for v in lrs],
            losses=losses,
            raw_losses=[float(v) for v in raw_losses],
            method=params.method,
            suggestion=chosen.lr,
            suggestion_index=chosen.index,
            suggestions={m: s.lr for m, s in found.items()},
            message=chosen.message,
            stopped_early=stopped_early,
            params=asdict(params),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite losses become ``null``."""
        out = asdict(self)
        out["losses"] = _finite_or_none(self.losses)
        out["raw_losses"] = _finite_or_none(self.raw_losses)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LRRangeTestResult:
        nan = float("nan")
        return cls(
            lrs=[float(v) for v in data["lrs"]],
            losses=[nan if v is None else float(v) for v in data["losses"]],
            raw_losses=[nan if v is None else float(v) for v in data.get("raw_losses", data["losses"])],
            method=data.get("method", "steepest"),
            suggestion=data.get("suggestion"),
            suggestion_index=data.get("suggestion_index"),
            suggestions=dict(data.get("suggestions", {})),
            message=data.get("message", ""),
            stopped_early=bool(data.get("stopped_early", False)),
            params=dict(data.get("params", {})),
        )

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False))
        return path
