"""Freeze a backbone, then unfreeze it at a chosen epoch and train it with a rising learning rate; resumable."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BackboneFinetuning as _LightningBackboneFinetuning
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer


def set_frozen_bn_eval(module: nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` whose parameters are all frozen into eval mode (running stats)."""
    for m in module.modules():
        params = list(m.parameters(recurse=False))
        if isinstance(m, _BatchNorm) and params and not any(p.requires_grad for p in params):
            m.eval()


def batchnorm_param_names(module: nn.Module) -> set[str]:
    """Names of the parameters of ``module``'s BatchNorm layers (timm's BatchNormAct2d included)."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, m in module.named_modules()
        if isinstance(m, _BatchNorm)
        for name, _ in m.named_parameters(recurse=False)
    }


class _BackboneView:
    """Stands in for the LightningModule in the parent's hooks, which read ``pl_module.backbone``."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone


class BackboneFinetuning(_LightningBackboneFinetuning):
    """Freeze the backbone until ``unfreeze_backbone_at_epoch``, then train it with a rising learning rate.

    A drop-in replacement for Lightning's ``BackboneFinetuning`` that adds:

    - the backbone is the module at ``backbone`` (default ``net.backbone``, the ``TransferNet`` of a ``Classifier``),
      not necessarily ``pl_module.backbone``;
    - a run resumed after the unfreeze epoch trains the backbone again: the parameters of the param groups this
      callback added before the checkpoint are made trainable, so the resumed run has the ``requires_grad`` pattern
      and param groups it had when checkpointed;
    - with ``train_bn: false`` the backbone's BatchNorm layers stay frozen and in eval mode for the whole run (before
      and after unfreezing), keeping their pretrained running statistics (:func:`set_frozen_bn_eval`). With
      ``train_bn: true`` (the default) they train throughout, as in Lightning.

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
        self._resuming = False  # a checkpoint's state was loaded and the next fit has not started yet

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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._resuming = True

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        backbone = self._backbone(pl_module)
        resuming, self._resuming = self._resuming, False
        created = [len(optimizer.param_groups) for optimizer in trainer.optimizers]
        BaseFinetuning.on_fit_start(self, trainer, pl_module)  # the parent only adds the `backbone` check
        if resuming:  # Workaround, see docs/lightning-workarounds.md (Lightning #21901).
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
        backbone.train(trainer.lightning_module.training)  # a net may keep a frozen backbone in eval mode
        set_frozen_bn_eval(backbone)
