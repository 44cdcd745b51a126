"""Per-channel normalisation for the image datamodules: the course's train-only statistics, ImageNet, timm, none.

``normalize: train`` uses the course's method: for every TRAIN image, the per-channel mean and standard deviation
of its pixels (in [0, 1]); both are then averaged over the images. The averaged per-image std is NOT the pooled std
of all pixels (it leaves out the spread of the image means), so it is smaller than ``torch.std`` over the whole
split; we keep the course's definition so numbers stay comparable with it. Validation and test images never enter.
(:mod:`datamodules.image_cache` caches the numbers.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SUPPORTED_NORMALIZE = ("train", "imagenet", "none", "timm:<model_name>")


@dataclass
class Normalization:
    """Mutable mean/std holder shared by a datamodule and its datasets (``load_state_dict`` updates it in place).

    ``mean``/``std`` of ``None`` means "scale to [0, 1] only" (``normalize: none``).
    """

    method: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _tensors: tuple[Any, torch.Tensor, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in [0, 1]) ``C x H x W`` or ``N x C x H x W`` -> normalised float32."""
        if self.mean is None or self.std is None:
            return image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()
        key = (self.mean, self.std)
        if self._tensors is None or self._tensors[0] != key:  # cached: torch.tensor() per image is costly
            mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
            self._tensors = (key, mean, std)
        _, mean, std = self._tensors
        if image.dtype == torch.uint8:  # (x / 255 - mean) / std == x * (1 / (255 std)) - mean / std
            return torch.addcmul(-mean / std, image.float(), 1.0 / (255.0 * std))
        return (image.float() - mean) / std

    def describe(self) -> str:
        """``train: mean [0.8502, ...], std [0.2089, ...]``, or ``none (scale to [0, 1] only)``."""
        if self.mean is None or self.std is None:
            return f"{self.method} (scale to [0, 1] only)"
        fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"
        return f"{self.method}: mean {fmt(self.mean)}, std {fmt(self.std)}"

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method, "mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method = state.get("method", self.method)
        self.mean = None if state.get("mean") is None else tuple(float(v) for v in state["mean"])
        self.std = None if state.get("std") is None else tuple(float(v) for v in state["std"])


def validate_normalize(normalize: str) -> None:
    """Raise a ``ValueError`` naming the valid choices when ``normalize`` is not one of them."""
    if normalize in ("train", "imagenet", "none"):
        return
    if normalize.startswith("timm:") and normalize[5:]:
        return
    raise ValueError(
        f"normalize={normalize!r} is not supported; use one of {', '.join(SUPPORTED_NORMALIZE)}."
    )


def timm_data_config(model_name: str) -> dict[str, Any]:
    """timm's eval data config (``input_size``, ``mean``, ``std``, ``crop_pct``) of ``model_name``; no download."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None:
        raise ValueError(
            f"timm has no pretrained config for model {model_name!r} (normalize='timm:{model_name}'); "
            "use a name from `timm.list_pretrained()`, e.g. 'timm:resnet18'."
        )
    return resolve_data_config(pretrained_cfg=cfg.to_dict())


def fixed_normalization(normalize: str) -> Normalization | None:
    """The normalisation for a data-independent ``normalize`` value; ``None`` for ``train`` (needs the data)."""
    validate_normalize(normalize)
    if normalize == "train":
        return None
    if normalize == "none":
        return Normalization("none")
    if normalize == "imagenet":
        return Normalization("imagenet", IMAGENET_MEAN, IMAGENET_STD)
    config = timm_data_config(normalize[5:])
    return Normalization(normalize, tuple(config["mean"]), tuple(config["std"]), extra=config)


def course_stats(batches: Iterable[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-image per-channel mean and std (unbiased, as ``Tensor.std``), averaged over all images.

    Args:
        batches: uint8 tensors N x C x H x W (values 0..255) or float tensors in [0, 1].

    Returns:
        ``(mean, std, n_images)``; mean and std are per-channel tuples.
    """
    mean_sum: torch.Tensor | None = None
    std_sum: torch.Tensor | None = None
    count = 0
    for batch in batches:
        x = batch.to(torch.float64)
        if batch.dtype == torch.uint8:
            x = x / 255.0
        flat = x.flatten(2)  # N x C x (H*W)
        means, stds = flat.mean(2).sum(0), flat.std(2).sum(0)
        mean_sum = means if mean_sum is None else mean_sum + means
        std_sum = stds if std_sum is None else std_sum + stds
        count += x.shape[0]
    if count == 0 or mean_sum is None or std_sum is None:
        raise ValueError("Cannot compute normalisation statistics from an empty train split.")
    return tuple((mean_sum / count).tolist()), tuple((std_sum / count).tolist()), count
