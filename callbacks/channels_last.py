"""Store the model's 4-D weights in NHWC ("channels last") memory format for faster convolutions."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class ChannelsLast(Callback):
    """Converts the model to ``torch.channels_last`` when fitting, validating, testing or predicting starts.

    On NVIDIA tensor cores with mixed precision, cuDNN's NHWC convolution kernels are markedly faster (PyTorch's
    "Channels Last Memory Format" tutorial). Only 4-D parameters and buffers change layout; values, shapes and
    checkpoints (``state_dict`` tensors) stay the same. A convolution with channels-last weights returns a
    channels-last output whatever the input layout, so the batches are left as they are. Little gain on CPU.

    Example::

        trainer:
          callbacks+:
            - class_path: callbacks.ChannelsLast
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pl_module.to(memory_format=torch.channels_last)
