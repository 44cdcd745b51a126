"""Fixtures for the datamodule tests: fake datasets in the real on-disk formats (see tests/fake_data.py)."""

from __future__ import annotations

from pathlib import Path

import fake_data
import pytest
import torch
from torchvision import transforms


@pytest.fixture
def rps_dir(tmp_path: Path) -> Path:
    return fake_data.make_rps(tmp_path / "rps_data", per_class=6, size=40, test_per_class=3)


@pytest.fixture
def course_normalizer():
    """``f(paths, resize, crop=None) -> (mean, std)``: the course's normaliser computed independently."""
    return _course_normalizer


def _course_normalizer(
    paths: list[Path], resize: int, crop: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The course's pipeline, written independently: ImageFolder's loader + Resize + ToTensor, per-image
    per-channel mean/std averaged over the images."""
    from PIL import Image

    steps = (
        [transforms.Resize(resize)]
        + ([transforms.CenterCrop(crop)] if crop else [])
        + [transforms.ToTensor()]
    )
    tf = transforms.Compose(steps)
    means, stds = [], []
    for p in paths:
        with open(p, "rb") as f:
            x = tf(Image.open(f).convert("RGB"))
        means.append(x.mean(dim=(1, 2)))
        stds.append(x.std(dim=(1, 2)))
    return torch.stack(means).mean(0), torch.stack(stds).mean(0)
