"""ConvNet: a stack of the course's "convolutional units" followed by fully connected layers.

A unit is Conv2d(k3, stride 1, padding 1) -> BatchNorm2d -> ReLU -> MaxPool(2) (optionally followed by a
Squeeze-and-Excitation gate), so each unit keeps the channels it is given and halves the spatial side. The two
course nets are configurations of this one class (see ``configs/mnist_convnet.yaml`` and
``configs/cats_dogs_convnet.yaml``):

- MNIST: 1 x 28 x 28, units (32, 64), hidden (128,), 10 classes;
- Cats-vs-Dogs: 3 x 224 x 224, units (32, 64, 128, 128), hidden (512,), one logit for the binary task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_cv.nets.squeeze_excite import SqueezeExcite


class _ConvUnit(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, se: bool, se_reduction: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        if se:
            self.se = SqueezeExcite(out_channels, se_reduction)


class ConvNet(nn.Module):
    """Convolutional units -> flatten -> [dropout -> Linear -> ReLU] per hidden layer -> dropout -> Linear.

    The flattened feature size is ``channels[-1] * (image_size // 2**len(channels))**2``, computed here.

    Args:
        channels: output channels of each convolutional unit; the number of units is ``len(channels)``.
        hidden: sizes of the hidden fully connected layers (may be empty).
        in_channels: input channels (1 for MNIST, 3 for RGB).
        num_classes: output logits (1 for a binary task).
        image_size: input side (square images).
        p: dropout probability before each linear layer (0 disables it).
        se: add a Squeeze-and-Excitation gate at the end of every unit.
        se_reduction: SE reduction ratio ``r``.

    Raises:
        ValueError: if ``image_size`` is too small for the number of units, or an argument is out of range.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64),
        hidden: Sequence[int] = (128,),
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        p: float = 0.0,
        se: bool = False,
        se_reduction: int = 16,
    ) -> None:
        super().__init__()
        if not channels or min(channels) < 1:
            raise ValueError(
                f"ConvNet channels must be a non-empty list of positive ints, got {list(channels)}."
            )
        if hidden and min(hidden) < 1:
            raise ValueError(f"ConvNet hidden sizes must be positive, got {list(hidden)}.")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"ConvNet dropout p must be in [0, 1), got {p}.")
        side = image_size // 2 ** len(channels)
        if side < 1:
            raise ValueError(
                f"ConvNet with {len(channels)} units halves the image {len(channels)} times and needs "
                f"image_size >= {2 ** len(channels)}, got {image_size}. Use fewer units or larger images."
            )
        units = []
        for c_in, c_out in zip([in_channels, *channels[:-1]], channels):
            units.append(_ConvUnit(c_in, c_out, se, se_reduction))
        self.features = nn.Sequential(*units)
        self.image_size = image_size
        self.num_features = channels[-1] * side * side

        layers: list[nn.Module] = [nn.Flatten()]
        width = self.num_features
        for size in hidden:
            layers += [nn.Dropout(p), nn.Linear(width, size), nn.ReLU(inplace=True)]
            width = size
        layers += [nn.Dropout(p), nn.Linear(width, num_classes)]
        self.classifier = nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Convolutional units; returns (N, channels[-1], side, side)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x)
        if features[0].numel() != self.num_features:
            raise ValueError(
                f"ConvNet was built for image_size {self.image_size} but got {x.shape[-2]}x{x.shape[-1]} images. "
                f"Build it with image_size={x.shape[-1]} (the lit-cv CLI sets it from data.image_size)."
            )
        return self.forward_head(features)
