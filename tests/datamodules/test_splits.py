"""stratified_split: sizes, stratification, disjointness, seeded determinism, and bank's rows unchanged;
grouped_split: whole groups per side, a share of each class's groups, seeded; name_group."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from datamodules.splits import check_val_split, grouped_split, name_group, stratified_split

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


@pytest.mark.parametrize(("name", "group"), [
    ("rock01-003.png", "rock01"), ("rock05ck01-119.png", "rock05ck01"), ("rock07-k03-119.png", "rock07-k03"),
    ("testscissors02-117.png", "testscissors02"),
    ("IMG_0042.jpg", "IMG"), ("cat.123.jpg", "cat"), ("scan 7.png", "scan"), ("hand.png", "hand"), ("42.png", "42"),
])
def test_name_group_drops_the_trailing_frame_number(name, group):
    assert name_group(name) == group


def _hands(per_class: dict[int, int], poses: int = 5) -> tuple[np.ndarray, list[str]]:
    labels, groups = [], []
    for label, hands in per_class.items():
        for hand in range(hands):
            labels += [label] * poses
            groups += [f"c{label}h{hand}"] * poses
    return np.array(labels), groups


def test_grouped_split_keeps_each_group_on_one_side_and_takes_a_share_of_every_class():
    labels, groups = _hands({0: 7, 1: 7, 2: 10})
    train, val = grouped_split(labels, groups, 0.1, seed=13)
    assert set(train).isdisjoint(val) and sorted([*train, *val]) == list(range(len(labels)))
    val_groups = {groups[i] for i in val}
    assert not val_groups & {groups[i] for i in train}  # every group on one side only
    assert sorted(g[:2] for g in val_groups) == ["c0", "c1", "c2"]  # round(0.1 * 7 or 10) = 1 group of each class
    assert len(val) == 3 * 5
    _, val_half = grouped_split(labels, groups, 0.5, seed=13)
    assert len({groups[i] for i in val_half}) == 4 + 4 + 5


def test_grouped_split_is_seeded_and_never_takes_every_group():
    labels, groups = _hands({0: 7, 1: 7})
    first = grouped_split(labels, groups, 0.3, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, grouped_split(labels, groups, 0.3, seed=1)))
    assert any(not np.array_equal(first[1], grouped_split(labels, groups, 0.3, seed=s)[1]) for s in range(2, 6))
    two = _hands({0: 2, 1: 2})
    train, val = grouped_split(*two, 0.9, seed=0)
    assert len(train) == len(val) == 10  # one of two groups each side, however large val_split is


def test_grouped_split_refuses_a_class_with_one_group():
    labels, groups = _hands({0: 3, 1: 1})
    with pytest.raises(ValueError, match=r"Class 1 has 1 group\(s\) \(\['c1h0'\]\).*at least two per class"):
        grouped_split(labels, groups, 0.2, seed=0)
    with pytest.raises(ValueError, match="3 labels and 2 groups"):
        grouped_split([0, 0, 1], ["a", "b"], 0.2, seed=0)
    with pytest.raises(ValueError, match="0 labels and 0 groups"):
        grouped_split([], [], 0.2, seed=0)


def test_grouped_split_refuses_a_group_under_two_classes():
    """A subject with samples of two classes (patient p1 in both) could not sit on one side whole."""
    labels = np.array([0] * 6 + [1] * 6)
    groups = ["p1", "p1", "p2", "p2", "p3", "p3"] * 2
    with pytest.raises(ValueError, match=r"Group 'p1' has samples of classes \[0, 1\] \(3 such group"):
        grouped_split(labels, groups, 0.3, seed=0)


def test_grouped_split_takes_string_labels_and_numeric_group_names():
    labels = np.array(["cat"] * 6 + ["dog"] * 6)
    groups = np.array([1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6])
    train, val = grouped_split(labels, groups, 0.3, seed=0)
    assert len(val) == 4 and not set(groups[train]) & set(groups[val])
