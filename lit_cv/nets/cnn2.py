"""CNN2: the two-convolution network of the Rock-Paper-Scissors chapter.

From Daniel Voigt Godoy, *Deep Learning with PyTorch Step-by-Step*, chapter 5/6 ("CNN2"): two blocks of
Conv2d(k3, no padding) -> ReLU -> MaxPool(2), then dropout -> Linear(50) -> ReLU -> dropout -> Linear(num_classes).
Layer names (``conv1``, ``conv2``, ``fc1``, ``fc2``) match the course so its weights load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _cnn2_feature_side(image_size: int) -> int:
    """Spatial side after two (conv k3 valid -> maxpool 2) blocks: 28 -> 26 -> 13 -> 11 -> 5."""
    side = image_size
    for _ in range(2):
        side = (side - 2) // 2
    return side


class CNN2(nn.Module):
    """Two conv blocks and a two-layer classifier; 6,823 parameters with ``n_feature=5`` at 3x28x28.

    Args:
        n_feature: channels of both convolutions.
        p: dropout probability before each linear layer (no dropout layer is applied when 0).
        in_channels: input channels (3 for RGB, 1 for digits).
        num_classes: output logits (1 for a binary task).
        image_size: input side; the flattened feature size is derived from it.

    Raises:
        ValueError: if ``image_size`` is too small for two conv/pool blocks, or an argument is out of range.
    """

    def __init__(
        self,
        n_feature: int = 5,
        p: float = 0.0,
        in_channels: int = 3,
        num_classes: int = 3,
        image_size: int = 28,
        hidden: int = 50,
    ) -> None:
        super().__init__()
        if n_feature < 1:
            raise ValueError(f"CNN2 n_feature must be >= 1, got {n_feature}.")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"CNN2 dropout p must be in [0, 1), got {p}.")
        side = _cnn2_feature_side(image_size)
        if side < 1:
            raise ValueError(
                f"CNN2 needs image_size >= 10 (two conv3 + maxpool2 blocks), got {image_size}. "
                "Resize the images (datamodule `image_size`)."
            )
        self.n_feature = n_feature
        self.p = p
        self.image_size = image_size
        self.conv1 = nn.Conv2d(in_channels, n_feature, kernel_size=3)
        self.conv2 = nn.Conv2d(n_feature, n_feature, kernel_size=3)
        self.fc1 = nn.Linear(n_feature * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.drop = nn.Dropout(p)

    def featurizer(self, x: torch.Tensor) -> torch.Tensor:
        """Conv blocks; returns the flattened features (N, n_feature * side * side)."""
        x = F.max_pool2d(F.relu(self.conv1(x)), kernel_size=2)
        x = F.max_pool2d(F.relu(self.conv2(x)), kernel_size=2)
        return torch.flatten(x, 1)

    def classifier(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden and output layers on flattened features; returns logits."""
        if self.p > 0:
            x = self.drop(x)
        x = F.relu(self.fc1(x))
        if self.p > 0:
            x = self.drop(x)
        return self.fc2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.featurizer(x)
        if features.shape[1] != self.fc1.in_features:
            raise ValueError(
                f"CNN2 was built for image_size {self.image_size} but got {x.shape[-2]}x{x.shape[-1]} images. "
                f"Build it with image_size={x.shape[-1]} (the lit-cv CLI sets it from data.image_size)."
            )
        return self.classifier(features)
