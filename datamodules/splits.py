"""The seeded, stratified train/validation split every datamodule of the package uses (scikit-learn's)."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
