"""Gradual unfreezing of a backbone: Lightning's ``BackboneFinetuning`` for lit-cv nets, resumable.

Two differences from ``lightning.pytorch.callbacks.BackboneFinetuning``:

- the backbone is found by an attribute path (default ``net.backbone``, the ``TransferNet`` of a ``Classifier``)
  instead of requiring ``pl_module.backbone``;
- resuming restores ``requires_grad`` of the parameters unfrozen before the checkpoint. Lightning's
  ``setup()`` re-freezes the backbone on every fit and ``on_fit_start()`` only restores the optimizer's param groups,
  so after the unfreeze epoch the backbone silently stops training (Lightning issue #21901, fix proposed in PR
  #21902). Here the parameters of the param groups the callback added before the checkpoint are made trainable
  again, so a resumed run has the requires_grad pattern and param groups it had when checkpointed.

With ``train_bn: false`` the backbone's BatchNorm layers stay frozen and in eval mode for the whole run (before and
after unfreezing), so their pretrained running statistics are kept; Lightning's own callback freezes them only
after the unfreeze epoch and leaves them trainable-but-unoptimized then. With ``train_bn: true`` (the default) they
train throughout, as in Lightning.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BackboneFinetuning as _LightningBackboneFinetuning
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from lit_cv.nets.transfer import set_frozen_bn_eval


class _BackboneView:
    """Stands in for the LightningModule in the parent's hooks, which read ``pl_module.backbone``."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone


class BackboneFinetuning(_LightningBackboneFinetuning):
    """Freeze the backbone until ``unfreeze_backbone_at_epoch``, then train it with a rising learning rate.

    All arguments of Lightning's ``BackboneFinetuning`` apply (``unfreeze_backbone_at_epoch``, ``lambda_func``,
    ``backbone_initial_ratio_lr``, ``backbone_initial_lr``, ``should_align``, ``initial_denom_lr``, ``train_bn``,
    ``verbose``, ``rounding``), plus:

    Args:
        backbone: dotted attribute path of the backbone module in the LightningModule.

    Raises:
        AttributeError: at setup, if the LightningModule has nothing at ``backbone``.
        TypeError: at setup, if ``backbone`` is not an ``nn.Module``.

    Example::

        trainer:
          callbacks:
            - class_path: callbacks.BackboneFinetuning
              init_args: {unfreeze_backbone_at_epoch: 2, train_bn: false}

        Trainer(callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=2)])
    """

    def __init__(self, *args: Any, backbone: str = "net.backbone", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backbone_path = backbone

    def _backbone(self, pl_module: LightningModule) -> nn.Module:
        module: Any = pl_module
        for part in self.backbone_path.split("."):
            module = getattr(module, part, None)
        if module is None:
            raise AttributeError(
                f"BackboneFinetuning found no module at `{self.backbone_path}` in {type(pl_module).__name__}. "
                "Use a net with a `backbone` (lit_cv.nets.TransferNet) or set `backbone:` to its attribute path."
            )
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"`{self.backbone_path}` is a {type(module).__name__}, not an nn.Module backbone."
            )
        return module

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        backbone = self._backbone(pl_module)
        self.freeze(backbone, train_bn=self.train_bn)
        set_frozen_bn_eval(backbone)

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        backbone = self._backbone(pl_module)
        super().finetune_function(_BackboneView(backbone), epoch, optimizer)  # type: ignore[arg-type]
        if epoch != self.unfreeze_backbone_at_epoch:
            return
        if not self.train_bn:  # make_trainable unfroze them, but they are not in the new param group
            for module in self.flatten_modules(backbone):
                if isinstance(module, _BatchNorm):
                    self.freeze_module(module)
        if pl_module.training:
            backbone.train()
        set_frozen_bn_eval(backbone)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        backbone = self._backbone(pl_module)
        restarting = self._restarting
        created = [len(optimizer.param_groups) for optimizer in trainer.optimizers]
        BaseFinetuning.on_fit_start(self, trainer, pl_module)  # the parent only adds the `backbone` check
        if restarting:
            self._restore_unfrozen(trainer, backbone, created)

    def _restore_unfrozen(self, trainer: Trainer, backbone: nn.Module, created: list[int]) -> None:
        """Make the parameters of the groups added in the previous run (past those configure_optimizers
        created) trainable again, with the BatchNorm bookkeeping ``make_trainable`` does."""
        restored = {
            id(param)
            for optimizer, n_created in zip(trainer.optimizers, created)
            for group in optimizer.param_groups[n_created:]
            for param in group["params"]
        }
        if not restored:
            return
        modules = [
            m
            for m in self.flatten_modules(backbone)
            if any(id(p) in restored for p in m.parameters(recurse=False))
        ]
        self.make_trainable(modules)
        set_frozen_bn_eval(backbone)
