"""callbacks.ChannelsLast: NHWC weights after setup, same numbers."""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch import Trainer

from callbacks import ChannelsLast
from datamodules import DigitsDataModule
from lit_cv import Classifier
from lit_cv.nets import CNN2


def test_channels_last_converts_conv_weights_only(tiny_trainer_kwargs: dict[str, Any]) -> None:
    model = Classifier(net=CNN2(n_feature=4, in_channels=1, num_classes=10, image_size=12), num_classes=10)
    reference = copy.deepcopy(model).eval()
    trainer = Trainer(**{**tiny_trainer_kwargs, "max_epochs": 1, "limit_train_batches": 0, "callbacks": [ChannelsLast()]})
    trainer.validate(model, DigitsDataModule(batch_size=16, image_size=12), verbose=False)

    conv = model.net.conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert model.net.fc1.weight.is_contiguous()  # 2-D tensors keep their layout
    x = torch.rand(5, 1, 12, 12)
    torch.testing.assert_close(model.eval()(x), reference(x))
    assert model.state_dict().keys() == reference.state_dict().keys()
