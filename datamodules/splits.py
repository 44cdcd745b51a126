"""Train/validation splits: the seeded, stratified one every datamodule of the package uses (scikit-learn's), and a
grouped one that keeps every subject (a file-name group) on one side, for data whose test set shows other subjects."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def check_val_split(val_split: float) -> None:
    """Raise a ``ValueError`` unless ``0 < val_split < 1``."""
    if not 0.0 < val_split < 1.0:
        raise ValueError(f"val_split must be in (0, 1), got {val_split}.")


def stratified_split(
    labels: Sequence[int] | np.ndarray, val_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices ``(train, val)`` of ``labels``, class proportions kept (scikit-learn's
    ``train_test_split(stratify=labels, random_state=seed)``): ``ceil(n * val_split)`` samples to validation, or
    one per class if that is more (every class must be in every split).

    Raises:
        ValueError: ``val_split`` outside (0, 1), or too few samples of a class to appear in both splits.
    """
    from sklearn.model_selection import train_test_split

    check_val_split(val_split)
    labels = np.asarray(labels)
    n_classes = len(np.unique(labels))
    n_val = max(math.ceil(val_split * len(labels)), n_classes)
    try:
        train, val = train_test_split(
            np.arange(len(labels)), test_size=n_val, random_state=seed, stratify=labels
        )
    except ValueError as err:
        raise ValueError(
            f"Cannot split {len(labels)} samples of {n_classes} classes into train and validation "
            f"(val_split={val_split}) with every class in both: {err} Use more data or another val_split."
        ) from err
    return np.sort(train), np.sort(val)


_FRAME_NUMBER = re.compile(r"[-_. ]?\d+$")


def name_group(path: str | Path) -> str:
    """The group of an image file named by subject and frame: its stem without a trailing frame number
    (``rock01-003.png`` -> ``rock01``, ``rock07-k03-119.png`` -> ``rock07-k03``, ``IMG_0042.jpg`` -> ``IMG``)."""
    stem = Path(path).stem
    return _FRAME_NUMBER.sub("", stem) or stem


def grouped_split(
    labels: Sequence[int] | np.ndarray, groups: Sequence[str], val_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices ``(train, val)`` with whole groups (e.g. one rendered hand, one patient) on one side: of each
    class, ``round(val_split * its groups)`` groups (at least one, never all), chosen by ``seed``, go to validation.
    Validation then holds subjects the model never trained on, as a test set of other subjects does.

    Raises:
        ValueError: ``val_split`` outside (0, 1), no samples, lengths that differ, a group under two classes, or a
            class with fewer than two groups.
    """
    check_val_split(val_split)
    labels, groups = np.asarray(labels), np.asarray(groups, dtype=object)
    if len(labels) != len(groups) or not len(labels):
        raise ValueError(f"grouped_split: {len(labels)} labels and {len(groups)} groups; need as many, at least one.")
    classes_of = {}
    for label, group in zip(labels.tolist(), groups.tolist()):
        classes_of.setdefault(group, set()).add(label)
    shared = {group: sorted(found) for group, found in classes_of.items() if len(found) > 1}
    if shared:
        group, found = next(iter(shared.items()))
        raise ValueError(
            f"Group {group!r} has samples of classes {found} ({len(shared)} such group(s)): a group must sit on one "
            "side whole, so give each class its own group names (rock01, paper01) or split by image instead."
        )
    rng = np.random.default_rng(seed)
    in_val = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        of_class = labels == label
        names = sorted(set(groups[of_class]))
        if len(names) < 2:
            raise ValueError(
                f"Class {label} has {len(names)} group(s) ({names}): a grouped validation split needs at least two "
                "per class. Name files by subject and frame (rock01-000.png) or split by image instead."
            )
        count = min(max(1, round(val_split * len(names))), len(names) - 1)
        chosen = rng.choice(np.array(names, dtype=object), size=count, replace=False)
        in_val |= of_class & np.isin(groups, chosen)
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)
