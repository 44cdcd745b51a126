"""The experiment registry: unique names, configs that exist, a runner for every kind."""

from __future__ import annotations

import pytest

from lit_cv.experiments.holdout import HOLDOUTS
from lit_cv.experiments.registry import EXPERIMENTS, KINDS, REPO, Experiment
from lit_cv.experiments.runners import RUNNERS


def test_names_are_unique_and_every_kind_has_a_runner():
    names = [e.name for e in EXPERIMENTS]
    assert len(names) == len(set(names))
    assert set(RUNNERS) == set(KINDS) == {e.kind for e in EXPERIMENTS}


@pytest.mark.parametrize("exp", EXPERIMENTS, ids=lambda e: e.name)
def test_every_config_exists(exp):
    assert all((REPO / config).is_file() for config in exp.configs), exp.configs
    assert exp.group in ("course", "beat", "transfer")


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match=r"kind 'train' is not one of \('fit', 'lr-find', 'normaliser'\)"):
        Experiment("x", "train", "rps")


@pytest.mark.parametrize("exp", [e for e in EXPERIMENTS if e.group == "beat"], ids=lambda e: e.name)
def test_every_beat_row_selects_on_validation_and_reports_on_a_held_out_test_set(exp):
    assert exp.holdout and exp.select is not None and exp.select[0].startswith("val/")
    assert exp.target is not None and exp.target[0].startswith("test/")
    assert exp.data in HOLDOUTS
