"""BorderFillAffine: rotated and shifted images keep their background in the corners."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from datamodules.transforms import BorderFillAffine, border_colour


def hand_on(background: tuple[int, int, int]) -> torch.Tensor:
    """A dark square ("hand") in the middle of a 32 px uint8 image of one background colour."""
    image = torch.tensor(background, dtype=torch.uint8).view(3, 1, 1).repeat(1, 32, 32)
    image[:, 10:22, 10:22] = 20
    return image


def test_border_colour_is_the_per_channel_median_of_the_frame():
    image = hand_on((250, 240, 230))
    image[:, 0, :3] = 0  # a few odd border pixels do not move the median
    assert border_colour(image) == [250.0, 240.0, 230.0]
    assert border_colour(image.unsqueeze(0).repeat(2, 1, 1, 1)) == [250.0, 240.0, 230.0]  # a batch: one colour


@pytest.mark.parametrize("wrap", [lambda x: x, tv_tensors.Image])
def test_rotated_corners_take_the_background_not_black(wrap):
    image = wrap(hand_on((250, 240, 230)))
    rotated = BorderFillAffine(degrees=(40, 40))(image)
    assert type(rotated) is type(image) and rotated.dtype == torch.uint8
    assert rotated[:, 0, 0].tolist() == [250, 240, 230] and rotated[:, -1, -1].tolist() == [250, 240, 230]
    black = v2.RandomAffine(degrees=(40, 40))(image)  # what torchvision's default fill does: the case this fixes
    assert black[:, 0, 0].tolist() == [0, 0, 0]
    assert torch.equal(rotated[:, 12:20, 12:20], black[:, 12:20, 12:20])  # the same geometry inside


def test_shift_fills_with_each_images_own_background():
    shift = BorderFillAffine(degrees=0, translate=(0.3, 0.3))
    torch.manual_seed(0)
    for background in [(255, 255, 255), (0, 0, 0), (90, 120, 60)]:
        image = hand_on(background)
        out = shift(image)
        assert not torch.equal(out, image)  # it did shift
        colours = {tuple(c) for c in out.flatten(1).T.tolist()}
        assert colours == {background, (20, 20, 20)}  # background and hand only: nothing filled with another colour
