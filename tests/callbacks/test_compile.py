"""callbacks.Compile: the net is compiled in place, parameter names (checkpoint keys) unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer

from callbacks import Compile
from datamodules import DigitsDataModule
from lit_cv import Classifier
from lit_cv.nets import CNN2


def test_compile_in_place_keeps_checkpoint_keys(tiny_trainer_kwargs: dict[str, Any]) -> None:
    model = Classifier(net=CNN2(n_feature=4, in_channels=1, num_classes=10, image_size=12), num_classes=10)
    keys = list(model.state_dict())
    torch._dynamo.reset()
    trainer = Trainer(**{**tiny_trainer_kwargs, "limit_train_batches": 2, "callbacks": [Compile(backend="eager")]})
    trainer.fit(model, DigitsDataModule(batch_size=16, image_size=12))

    assert model.net._compiled_call_impl is not None
    assert list(model.state_dict()) == keys  # no `_orig_mod.` prefix
    assert trainer.global_step == 2


def test_compile_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="Unknown torch.compile mode 'fast'; use one of"):
        Compile(mode="fast")
