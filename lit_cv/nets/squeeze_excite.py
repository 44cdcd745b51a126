"""Squeeze-and-Excitation: learned channel-wise gating.

Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018 (https://arxiv.org/abs/1709.01507). timm's
``layers/squeeze_excite.py`` is the same block written with 1x1 convolutions; this one uses ``nn.Linear`` as the paper
(and the course) draw it, and exposes the gate so it can be inspected.
"""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """Global average pool -> Linear(c, c/r) -> ReLU -> Linear(c/r, c) -> sigmoid -> rescale each channel.

    Args:
        channels: channels ``c`` of the input (N, c, H, W).
        reduction: ratio ``r``; the bottleneck has ``max(1, c // r)`` units, so small nets (c < r) still work.

    Raises:
        ValueError: if ``channels`` or ``reduction`` is < 1.

    Example::

        se = SqueezeExcite(64)          # bottleneck of 4 units
        y = se(torch.randn(2, 64, 8, 8))  # same shape, each channel scaled by a gate in (0, 1)
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"SqueezeExcite channels must be >= 1, got {channels}.")
        if reduction < 1:
            raise ValueError(f"SqueezeExcite reduction must be >= 1, got {reduction}.")
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel gate in (0, 1), shape (N, c, 1, 1)."""
        squeezed = x.mean(dim=(2, 3))
        excited = torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))
        return excited[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
