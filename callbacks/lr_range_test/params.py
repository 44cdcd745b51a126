"""The parameters of the LR range test: one dataclass with the defaults, the help text and the validation."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

SUPPORTED_STEP_MODES = ("exp", "linear")
SUPPORTED_METHODS = ("steepest", "valley", "minimum")
DEFAULT_METHOD = "valley"  # the steadiest over seeds and datasets: results/lr_stability.md


def _param(default: Any, help: str, **metadata: Any) -> Any:
    """A field with its ``help`` (and optionally ``choices``) in the metadata, for ``lit-cv lr-find --help``."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class LRRangeTestParams:
    """What the range test tries and how it reads the curve; every value is checked on construction.

    ``callbacks.LRRangeTest`` takes these fields as keyword arguments and ``lit-cv lr-find`` as options
    (``--start-lr``, ...); the help text of each is in ``metadata["help"]``.

    Raises:
        ValueError: naming the field, the bad value and the valid range.
    """

    start_lr: float = _param(1e-6, "first LR tested")
    end_lr: float = _param(1.0, "last LR tested (reached unless the loss diverges first)")
    num_iter: int = _param(100, "number of LR increases; the test trains num_iter + 1 batches at most")
    step_mode: str = _param("exp", "growth of the LR: exp (the course's) or linear", choices=SUPPORTED_STEP_MODES)
    smoothing: float = _param(0.05, "weight of the newest loss in the exponential average (1 = raw loss)")
    diverge_th: float | None = _param(5.0, "stop when the smoothed loss exceeds this x the best so far (None: never)")
    val_batches: int = _param(0, "0: training loss; N: mean loss on the first N validation batches after each step")
    method: str = _param(
        DEFAULT_METHOD,
        "the suggestion used and applied: valley (fastai's: half-way down the longest descent), steepest (most "
        "negative slope against log-LR, the course's) - both before the smoothed minimum - or minimum (LR at the "
        "lowest loss / 10); all three are saved",
        choices=SUPPORTED_METHODS,
    )
    skip_begin: int = _param(10, "points ignored at the start of the curve when suggesting")
    skip_end: int = _param(1, "points ignored at the end of the curve when suggesting (0 keeps them all)")

    def __post_init__(self) -> None:
        check_range(self.start_lr, self.end_lr, self.num_iter, self.step_mode)
        check_smoothing(self.smoothing)
        check_method(self.method)
        check_skips(self.skip_begin, self.skip_end)
        if self.diverge_th is not None and self.diverge_th <= 1:
            raise ValueError(f"diverge_th must be > 1 (or None to never stop early), got {self.diverge_th}.")
        if self.val_batches < 0:
            raise ValueError(f"val_batches must be >= 0 (0 = use the training loss), got {self.val_batches}.")


# The help of each field, as the docstring's `Args:` that `lit-cv fit --help` (jsonargparse) reads.
LRRangeTestParams.__doc__ = f"{LRRangeTestParams.__doc__}\n    Args:\n" + "".join(
    f"        {f.name}: {f.metadata['help']}.\n" for f in fields(LRRangeTestParams)
)


def check_range(start_lr: float, end_lr: float, num_iter: int, step_mode: str) -> None:
    if step_mode not in SUPPORTED_STEP_MODES:
        raise ValueError(f"step_mode must be one of {SUPPORTED_STEP_MODES}, got {step_mode!r}.")
    if not start_lr > 0:
        raise ValueError(f"start_lr must be > 0, got {start_lr}.")
    if not end_lr > start_lr:
        raise ValueError(f"end_lr must be greater than start_lr ({start_lr}), got {end_lr}.")
    if int(num_iter) != num_iter or num_iter < 1:
        raise ValueError(f"num_iter must be a positive integer, got {num_iter}.")


def check_smoothing(smoothing: float) -> None:
    if not 0.0 < smoothing <= 1.0:
        raise ValueError(f"smoothing must be in (0, 1] (1 = no smoothing), got {smoothing}.")


def check_method(method: str) -> None:
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"method must be one of {SUPPORTED_METHODS}, got {method!r}.")


def check_skips(skip_begin: int, skip_end: int) -> None:
    if skip_begin < 0 or skip_end < 0:
        raise ValueError(f"skip_begin and skip_end must be >= 0, got {skip_begin} and {skip_end}.")
