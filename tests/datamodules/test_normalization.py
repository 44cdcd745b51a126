"""Normalization, validate_normalize, fixed_normalization and the course's statistics (course_stats)."""

from __future__ import annotations

import pytest
import torch

from datamodules.normalization import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalization,
    course_stats,
    fixed_normalization,
    validate_normalize,
)

IMAGES = torch.randint(0, 256, (6, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_normalises_uint8_and_float_alike_single_and_batched():
    norm = Normalization("train", (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    expected = (IMAGES.double() / 255 - torch.tensor(norm.mean).view(3, 1, 1).double()) / torch.tensor(
        norm.std
    ).view(3, 1, 1).double()
    assert torch.allclose(norm(IMAGES).double(), expected, atol=1e-5)  # N x C x H x W
    assert torch.allclose(norm(IMAGES[0]).double(), expected[0], atol=1e-5)  # C x H x W
    assert torch.allclose(norm(IMAGES.float() / 255), norm(IMAGES), atol=1e-5)
    assert norm(IMAGES).dtype == torch.float32


def test_none_only_scales_to_unit_range():
    norm = fixed_normalization("none")
    assert norm is not None and norm.mean is None
    assert torch.equal(norm(IMAGES), IMAGES.float() / 255)
    assert norm.describe() == "none (scale to [0, 1] only)"


def test_load_state_dict_updates_in_place_and_round_trips():
    norm = Normalization("train", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    before = norm(IMAGES[0])  # fills the cached mean/std tensors
    norm.load_state_dict({"method": "train", "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]})
    assert norm.mean == (0.1, 0.2, 0.3) and norm.std == (1.0, 1.0, 1.0)
    assert not torch.allclose(norm(IMAGES[0]), before)  # the cached tensors follow the new numbers
    copy = Normalization("?")
    copy.load_state_dict(norm.state_dict())
    assert copy == norm
    assert norm.describe() == "train: mean [0.1000, 0.2000, 0.3000], std [1.0000, 1.0000, 1.0000]"


@pytest.mark.parametrize("good", ["train", "imagenet", "none", "timm:resnet18"])
def test_validate_accepts(good):
    validate_normalize(good)


@pytest.mark.parametrize("bad", ["zscore", "timm:", "Train", ""])
def test_validate_names_the_choices(bad):
    with pytest.raises(
        ValueError, match=r"is not supported; use one of train, imagenet, none, timm:<model_name>"
    ):
        validate_normalize(bad)


def test_fixed_normalizations():
    assert fixed_normalization("train") is None  # needs the data
    imagenet = fixed_normalization("imagenet")
    assert (imagenet.mean, imagenet.std) == (IMAGENET_MEAN, IMAGENET_STD)
    vit = fixed_normalization("timm:vit_base_patch16_224")
    assert vit.mean == (0.5, 0.5, 0.5) and vit.extra["input_size"] == (3, 224, 224)
    with pytest.raises(ValueError, match="no pretrained config for model 'not_a_model'"):
        fixed_normalization("timm:not_a_model")


def test_course_stats_average_per_image_statistics():
    x = IMAGES.double() / 255
    mean, std, n = course_stats([IMAGES[:4], IMAGES[4:]])  # chunks do not change the result
    assert n == 6
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), x.mean(dim=(2, 3)).mean(0), atol=1e-9)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), x.flatten(2).std(2).mean(0), atol=1e-9)
    float_mean, float_std, _ = course_stats([IMAGES.float() / 255])  # float input too
    assert float_mean == pytest.approx(mean, abs=1e-6) and float_std == pytest.approx(std, abs=1e-6)


def test_course_std_is_smaller_than_the_pooled_std_when_image_means_differ():
    dark, bright = (
        torch.full((1, 1, 4, 4), 20, dtype=torch.uint8),
        torch.full((1, 1, 4, 4), 220, dtype=torch.uint8),
    )
    dark[0, 0, 0, 0], bright[0, 0, 0, 0] = 30, 230
    _, (std,), _ = course_stats([dark, bright])
    pooled = (torch.cat([dark, bright]).double() / 255).std().item()
    assert std < pooled / 10


def test_course_stats_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="empty train split"):
        course_stats([])
