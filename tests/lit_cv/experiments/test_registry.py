"""The experiment registry: unique names, configs that exist, a runner for every kind."""

from __future__ import annotations

import pytest

from lit_cv.experiments.registry import EXPERIMENTS, KINDS, REPO, Experiment
from lit_cv.experiments.runners import RUNNERS


def test_names_are_unique_and_every_kind_has_a_runner():
    names = [e.name for e in EXPERIMENTS]
    assert len(names) == len(set(names))
    assert set(RUNNERS) == set(KINDS) == {e.kind for e in EXPERIMENTS}


@pytest.mark.parametrize("exp", EXPERIMENTS, ids=lambda e: e.name)
def test_every_config_exists(exp):
    assert all((REPO / config).is_file() for config in exp.configs), exp.configs
    assert exp.group in ("course", "beat")


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match=r"kind 'train' is not one of \('fit', 'lr-find', 'normaliser'\)"):
        Experiment("x", "train", "rps")
