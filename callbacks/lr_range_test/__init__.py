"""The LR range test (Leslie N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017, sec. 3.3).

Train a few batches while the LR grows from ``start_lr`` to ``end_lr``, record the smoothed loss at each LR, stop
once it diverges, suggest an LR from the curve, and leave no trace of the run. One home for the feature:

- ``params.py``: :class:`LRRangeTestParams`, the one parameter list (defaults, help, validation);
- ``curve.py``: the LR sequence, smoothing, divergence, the suggestions and :class:`LRRangeTestResult`;
- ``run.py``: :func:`run_lr_range_test`, the test inside a set-up ``Trainer``;
- ``report.py``: the figure and the PNG/JSON files;
- ``apply.py``: :func:`apply_suggestion`, the suggestion put into the optimizer, scheduler and factories;
- ``callback.py``: :class:`LRRangeTest`, the callback (``lit-cv lr-find`` drives it).
"""

from callbacks.lr_range_test.apply import apply_suggestion
from callbacks.lr_range_test.callback import LRRangeTest
from callbacks.lr_range_test.curve import LRRangeTestResult, lr_sequence, make_lr_fn, suggest_lr
from callbacks.lr_range_test.params import (
    DEFAULT_METHOD,
    SUPPORTED_METHODS,
    SUPPORTED_STEP_MODES,
    LRRangeTestParams,
)
from callbacks.lr_range_test.report import plot_curve, write_report
from callbacks.lr_range_test.run import run_lr_range_test

__all__ = [
    "DEFAULT_METHOD",
    "SUPPORTED_METHODS",
    "SUPPORTED_STEP_MODES",
    "LRRangeTest",
    "LRRangeTestParams",
    "LRRangeTestResult",
    "apply_suggestion",
    "lr_sequence",
    "make_lr_fn",
    "plot_curve",
    "run_lr_range_test",
    "suggest_lr",
    "write_report",
]
