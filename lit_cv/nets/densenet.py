"""A small DenseNet with optional Squeeze-and-Excitation, for 28x28 up to 224x224 inputs.

Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional Networks", CVPR 2017
(https://arxiv.org/abs/1608.06993); SE gates from Hu et al. 2018. Layout follows torchvision's ``models/densenet.py``:

- dense layer: BN -> ReLU -> Conv1x1(bn_size * k) -> BN -> ReLU -> Conv3x3(k) (without bottleneck: BN-ReLU-Conv3x3);
- dense block: each layer sees the concatenation of the block input and all previous layers' outputs, so a block of
  L layers turns c channels into c + L * k;
- transition: BN -> ReLU -> Conv1x1 halving the channels -> AvgPool(2) halving the spatial side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_cv.nets.squeeze_excite import SqueezeExcite

# Inputs at least this large get the ImageNet stem (conv7 stride 2 + maxpool, /4); smaller ones a conv3 stem.
LARGE_INPUT = 96


class _DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth_rate: int, bn_size: int | None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        if bn_size:
            layers += [
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, bn_size * growth_rate, kernel_size=1, bias=False),
            ]
            width = bn_size * growth_rate
        layers += [
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, growth_rate, kernel_size=3, padding=1, bias=False),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _DenseBlock(nn.Module):
    """``num_layers`` dense layers; returns the input concatenated with every layer's k new channels."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        bn_size: int | None,
        se: bool,
        se_reduction: int,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size) for i in range(num_layers)
        )
        self.out_channels = in_channels + num_layers * growth_rate
        self.se = SqueezeExcite(self.out_channels, se_reduction) if se else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return self.se(torch.cat(features, dim=1))


class _Transition(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """Stem -> dense blocks separated by transitions -> BN -> ReLU -> global average pool -> Linear.

    Args:
        block_layers: number of dense layers in each block, e.g. ``[4, 4, 4]``.
        growth_rate: channels ``k`` each dense layer adds.
        init_channels: channels of the stem convolution (default ``2 * growth_rate``).
        bn_size: bottleneck width factor (the 1x1 conv outputs ``bn_size * k``); ``null`` for no bottleneck.
        in_channels: input channels.
        num_classes: output logits (1 for a binary task).
        image_size: input side: >= 96 uses the ImageNet stem (/4), smaller inputs a stride-1 conv3 stem.
        se: Squeeze-and-Excitation gate at the end of every dense block.
        se_reduction: SE reduction ratio ``r`` (clamped so the bottleneck has at least one unit).
        p: dropout before the final linear layer.

    Raises:
        ValueError: if the transitions would shrink ``image_size`` below 1 pixel, or an argument is out of range.
    """

    def __init__(
        self,
        block_layers: Sequence[int] = (4, 4, 4),
        growth_rate: int = 12,
        init_channels: int | None = None,
        bn_size: int | None = 4,
        in_channels: int = 3,
        num_classes: int = 3,
        image_size: int = 28,
        se: bool = False,
        se_reduction: int = 16,
        p: float = 0.0,
    ) -> None:
        super().__init__()
        if not block_layers or min(block_layers) < 1:
            raise ValueError(f"DenseNet block_layers must be positive ints, got {list(block_layers)}.")
        if growth_rate < 1:
            raise ValueError(f"DenseNet growth_rate must be >= 1, got {growth_rate}.")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DenseNet dropout p must be in [0, 1), got {p}.")
        large = image_size >= LARGE_INPUT
        side = (image_size // 4 if large else image_size) // 2 ** (len(block_layers) - 1)
        if side < 1:
            raise ValueError(
                f"DenseNet with {len(block_layers)} blocks halves the image {len(block_layers) - 1} times "
                f"and image_size {image_size} becomes smaller than 1 pixel. Use fewer blocks or larger images."
            )
        width = init_channels or 2 * growth_rate
        if large:
            stem = [
                nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            ]
        else:
            stem = [nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)]
        self.stem = nn.Sequential(*stem)

        stages: list[nn.Module] = []
        for i, num_layers in enumerate(block_layers):
            block = _DenseBlock(num_layers, width, growth_rate, bn_size, se, se_reduction)
            stages.append(block)
            width = block.out_channels
            if i < len(block_layers) - 1:
                stages.append(_Transition(width, width // 2))
                width //= 2
        self.features = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(width)
        self.num_features = width
        self.head = nn.Sequential(nn.Dropout(p), nn.Linear(width, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and dense blocks; returns (N, num_features, side, side)."""
        return torch.relu(self.norm(self.features(self.stem(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
