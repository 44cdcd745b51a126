"""LRRangeTestParams: the defaults and the validation of the one parameter list."""

from __future__ import annotations

import dataclasses

import pytest

from callbacks.lr_range_test import LRRangeTestParams


def test_every_field_has_a_default_and_help():
    params = LRRangeTestParams()
    for field in dataclasses.fields(LRRangeTestParams):
        assert getattr(params, field.name) == field.default
        assert field.metadata["help"], field.name


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "fastest"}, r"method must be one of \('steepest', 'valley', 'minimum'\), got 'fastest'"),
        ({"step_mode": "log"}, r"step_mode must be one of \('exp', 'linear'\), got 'log'"),
        ({"diverge_th": 1.0}, "diverge_th must be > 1"),
        ({"val_batches": -1}, "val_batches must be >= 0"),
        ({"skip_end": -1}, "skip_begin and skip_end must be >= 0"),
        ({"start_lr": 1.0, "end_lr": 0.1}, "end_lr must be greater than start_lr"),
        ({"start_lr": 0.0}, "start_lr must be > 0"),
        ({"num_iter": 0}, "num_iter must be a positive integer"),
        ({"smoothing": 0.0}, r"smoothing must be in \(0, 1\]"),
    ],
)
def test_bad_values_are_refused_with_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRRangeTestParams(**kwargs)


def test_diverge_th_none_never_stops():
    assert LRRangeTestParams(diverge_th=None).diverge_th is None
