"""Runner helpers that need no training: time to target, a test-set target met or not, the flip rule."""

from __future__ import annotations

import pytest

from lit_cv.experiments.runners import flip_wins, target_reached, time_to_target

HISTORY = [{"epoch": 0, "seconds": 6.337, "val/acc": 0.6}, {"epoch": 1, "seconds": 12.71, "val/acc": 0.9},
           {"epoch": 2, "seconds": 19.0, "val/acc": 0.95}]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (None, {}),
        (("val/acc", 0.85), {"target": "val/acc >= 0.85", "target_epoch": 2, "target_seconds": 12.7}),
        (("val/acc", 0.99), {"target": "val/acc >= 0.99", "target_epoch": None, "target_seconds": None}),
        (("val/auroc", 0.5), {"target": "val/auroc >= 0.5", "target_epoch": None, "target_seconds": None}),
    ],
)
def test_time_to_target(target, expected):
    assert time_to_target(HISTORY, target) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (None, {}),
        (("val/acc", 0.9), {}),  # a validation target is timed per epoch instead
        (("test/acc", 0.98), {"target": "test/acc >= 0.98", "target_reached": True}),
        (("test/auroc", 0.95), {"target": "test/auroc >= 0.95", "target_reached": False}),
    ],
)
def test_target_reached(target, expected):
    assert target_reached({"test/acc": 0.9812, "val/acc": 1.0}, target) == expected


@pytest.mark.parametrize(
    ("flipped", "expected"),
    [
        ({"val/loss": 0.25, "val/acc": 0.90}, True),   # lower loss, same accuracy
        ({"val/loss": 0.25, "val/acc": 0.89}, False),  # lower loss but an image lost
        ({"val/loss": 0.30, "val/acc": 0.95}, False),  # the same loss is no gain
        ({"val/loss": 0.35, "val/acc": 0.95}, False),
    ],
)
def test_flip_wins_only_on_lower_loss_without_lower_accuracy(flipped, expected):
    assert flip_wins({"val/loss": 0.30, "val/acc": 0.90}, flipped) is expected
