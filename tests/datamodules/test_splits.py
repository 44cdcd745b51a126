"""stratified_split: sizes, stratification, disjointness, seeded determinism, and bank's rows unchanged."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from datamodules.splits import check_val_split, stratified_split

LABELS = np.array([0] * 50 + [1] * 30 + [2] * 7)


@pytest.mark.parametrize("val_split", [0.1, 0.2, 0.5])
def test_sizes_cover_disjoint_sorted_and_stratified(val_split):
    train, val = stratified_split(LABELS, val_split, seed=13)
    assert len(val) == math.ceil(len(LABELS) * val_split)  # scikit-learn rounds the validation size up
    assert set(train).isdisjoint(val) and sorted([*train, *val]) == list(range(len(LABELS)))
    assert list(train) == sorted(train) and list(val) == sorted(val)
    expected = np.bincount(LABELS) * len(val) / len(LABELS)
    assert np.abs(np.bincount(LABELS[val], minlength=3) - expected).max() < 1  # every class in proportion


def test_seeded():
    first = stratified_split(LABELS, 0.2, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, stratified_split(list(LABELS), 0.2, seed=1)))
    assert not np.array_equal(first[1], stratified_split(LABELS, 0.2, seed=2)[1])


def test_same_rows_as_train_test_split_on_a_frame():
    """BankMarketingDataModule used to call train_test_split on its DataFrame: the rows per split are unchanged."""
    frame = pd.DataFrame({"x": np.arange(len(LABELS)), "y": np.where(LABELS == 0, "no", "yes")})
    old_train, old_val = train_test_split(frame, test_size=0.2, random_state=13, stratify=frame["y"])
    train, val = stratified_split(frame["y"].to_numpy(), 0.2, seed=13)
    assert sorted(old_val.index) == list(val) and sorted(old_train.index) == list(train)


@pytest.mark.parametrize("val_split", [0.0, 1.0, -0.1, 1.5])
def test_val_split_outside_the_open_interval(val_split):
    with pytest.raises(ValueError, match=rf"val_split must be in \(0, 1\), got {val_split}"):
        check_val_split(val_split)
    with pytest.raises(ValueError, match="val_split must be in"):
        stratified_split(LABELS, val_split, seed=0)


def test_validation_gets_one_sample_per_class_at_least():
    labels = np.arange(40) % 10  # ceil(40 * 0.2) = 8 would leave two digits out of validation
    train, val = stratified_split(labels, 0.2, seed=0)
    assert len(val) == 10 and sorted(labels[val]) == list(range(10)) and len(train) == 30


def test_too_few_samples_name_the_problem():
    with pytest.raises(
        ValueError, match=r"(?s)Cannot split 5 samples of 2 classes .*val_split=0.4.*least populated"
    ):
        stratified_split([0, 0, 0, 0, 1], 0.4, seed=0)
    with pytest.raises(ValueError, match=r"Cannot split 3 samples of 3 classes"):
        stratified_split([0, 1, 2], 0.5, seed=0)
