"""lit_cv.precision: bf16-mixed where the GPU supports bfloat16, else 16-mixed with a GradScaler."""

from __future__ import annotations

import pytest

from lit_cv.precision import BestMixedPrecision, best_mixed_precision


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_best_mixed_precision(bf16: bool, expected: str) -> None:
    assert best_mixed_precision(bf16) == expected


def test_best_mixed_precision_plugin_follows_the_device() -> None:
    plugin = BestMixedPrecision()
    assert plugin.precision == best_mixed_precision()
    assert (plugin.scaler is not None) == (plugin.precision == "16-mixed")  # fp16 needs loss scaling, bf16 not
