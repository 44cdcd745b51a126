"""Train-time transforms the datamodules share."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2


def border_colour(image: torch.Tensor) -> list[float]:
    """Per-channel median of the outermost pixels of a ``(..., C, H, W)`` image: its background colour."""
    frame = torch.cat([image[..., 0, :], image[..., -1, :], image[..., :, 0], image[..., :, -1]], dim=-1)
    return frame.movedim(-2, 0).reshape(image.shape[-3], -1).float().median(dim=1).values.tolist()


class BorderFillAffine(v2.RandomAffine):
    """:class:`torchvision.transforms.v2.RandomAffine` whose uncovered corners take the image's border colour
    (:func:`border_colour`) instead of black: a white-background RPS hand rotated by 40 degrees stays on white, as
    Keras' ``fill_mode="nearest"`` keeps it. Non-tensor inputs get the constructor's ``fill``."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, torch.Tensor) or inpt.ndim < 3:
            return super().transform(inpt, params)
        return v2.functional.affine(inpt, **params, interpolation=self.interpolation, fill=border_colour(inpt),
                                    center=self.center)
