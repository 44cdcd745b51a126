"""Mixed precision chosen when the Trainer is built: ``bf16-mixed`` on GPUs with bfloat16 (Ampere and newer), else
``16-mixed``, so one config runs on both (``configs/trainer/gpu.yaml`` uses it)."""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import rank_zero_info


def best_mixed_precision(bf16_supported: bool | None = None) -> str:
    """``"bf16-mixed"`` if the current CUDA device supports bfloat16, else ``"16-mixed"`` (which needs a GradScaler).

    ``bf16_supported`` overrides the detection (for tests and for forcing a choice).
    """
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bf16-mixed" if bf16_supported else "16-mixed"


class BestMixedPrecision(MixedPrecision):
    """Lightning's :class:`~lightning.pytorch.plugins.precision.MixedPrecision` with the dtype chosen by
    :func:`best_mixed_precision`: bfloat16 autocast (no loss scaling needed) where the GPU has it, float16 autocast
    with a ``GradScaler`` otherwise.

    Args:
        device: autocast device type.

    Example (YAML; leave ``trainer.precision`` unset)::

        trainer:
          accelerator: gpu
          plugins:
            - class_path: lit_cv.precision.BestMixedPrecision
    """

    def __init__(self, device: str = "cuda") -> None:
        precision = best_mixed_precision()
        super().__init__(precision=precision, device=device)  # type: ignore[arg-type]
        rank_zero_info(f"BestMixedPrecision: using precision={precision!r}")
