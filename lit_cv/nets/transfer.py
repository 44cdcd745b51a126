"""TransferNet: a pretrained backbone (timm, or torchvision's VGG / ResNet) with a new head, trained three ways.

Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS 2014. The course's recipes:

- ``finetune: all``: train every parameter;
- ``finetune: head``: freeze the backbone, train a new head from scratch (its VGG16 recipe replaces
  ``classifier[6]`` by Linear(4096, 512) -> ReLU -> Dropout -> Linear(512, 1): ``head_hidden: 512``);
- ``finetune: last_n``: train the last ``unfreeze_last`` stages of the backbone and the head.

Gradual unfreezing during training is ``callbacks.BackboneFinetuning`` on ``net.backbone``. A frozen backbone runs in
eval mode (its features never change, so ``callbacks.FeatureCache`` can compute them once); frozen BatchNorm layers
of a partly trained one stay in eval mode too, so their running statistics stay pretrained.

Weights (``pretrained``) come from :mod:`lit_cv.nets.weights`: a registered offline source
(``efficientnet_lite0.imagenet`` with ``model_name: tf_efficientnet_lite0``), a local file (read with safetensors or
``torch.load(weights_only=True)``, e.g. fetched by ``lit-cv download weights NAME --dir DIR``), or ``true`` for
timm's / torchvision's download or cache; offline with nothing cached the error names the file and where to put it.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections import OrderedDict
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from callbacks.backbone_finetuning import batchnorm_param_names, set_frozen_bn_eval
from lit_cv.nets.weights import (
    TORCHVISION_PREFIX,
    WEIGHT_SOURCES,
    hub_offline,
    hub_weights,
    load_pretrained,
    load_weights_file,
)

Finetune = Literal["all", "head", "last_n"]
FINETUNE_MODES = ("all", "head", "last_n")
TORCHVISION_FAMILIES = ("vgg", "resnet")


def ignore_eval_mode_warning() -> None:
    """Hide Lightning's "Found N module(s) in eval mode at the start of training": a frozen backbone (and frozen
    BatchNorm) runs in eval mode on purpose, so the warning only repeats what the config asked for."""
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


ignore_eval_mode_warning()


def _timm_backbone(model_name: str, pretrained: bool | str) -> nn.Module:
    """timm model without classifier (returns pooled features)."""
    import timm

    if pretrained is True:
        hub = hub_weights(model_name)
        if hub_offline() and not hub.cached():
            raise hub.missing_error()
        try:
            return timm.create_model(model_name, pretrained=True, num_classes=0)
        except Exception as err:  # the hub raises many network error types
            raise hub.missing_error() from err
    model = timm.create_model(model_name, pretrained=False, num_classes=0)
    if pretrained in WEIGHT_SOURCES:
        load_pretrained(model, pretrained)
    elif isinstance(pretrained, str):
        _load_backbone_state(model, load_weights_file(pretrained), model_name, pretrained)
    return model


def _timm_stages(model: nn.Module) -> list[str]:
    """EfficientNets: each stage of ``blocks`` and ``conv_head`` (timm's ``feature_info`` keeps only the 5 stages that
    downsample, which puts 79% of Lite0's parameters in the last); other models: the ``feature_info`` modules."""
    from timm.models.efficientnet import EfficientNet

    if isinstance(model, EfficientNet):
        return [f"blocks.{i}" for i in range(len(model.blocks))] + ["conv_head"]
    return [info["module"] for info in getattr(model, "feature_info", [])]


def _torchvision_backbone(arch: str, pretrained: bool | str) -> tuple[nn.Module, list[str], int]:
    """torchvision VGG / ResNet as a feature extractor; returns (backbone, stage names, feature width)."""
    import torchvision

    if not arch.startswith(TORCHVISION_FAMILIES) or arch not in torchvision.models.list_models():
        raise ValueError(
            f"Unsupported torchvision model {arch!r}; use a vgg* or resnet* name from "
            "torchvision.models.list_models(), or a timm model name without the `torchvision/` prefix."
        )
    if pretrained in WEIGHT_SOURCES:
        raise ValueError(
            f"Weight source {pretrained!r} is for timm's {WEIGHT_SOURCES[pretrained].timm_model!r}; set "
            f"`model_name: {WEIGHT_SOURCES[pretrained].timm_model}`, or `pretrained: true` for torchvision's weights."
        )
    model = torchvision.models.get_model(arch, weights=None)
    what = f"torchvision model {arch!r}"
    if isinstance(pretrained, str):
        _load_state(model, load_weights_file(pretrained), what, pretrained)
    elif pretrained:
        hub = hub_weights(TORCHVISION_PREFIX + arch)
        if hub.cached():
            _load_state(model, load_weights_file(hub.cache), what, hub.cache)
        elif hub_offline():
            raise hub.missing_error()
        else:
            try:
                weights = torchvision.models.get_model_weights(arch).DEFAULT
                state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
            except (RuntimeError, pickle.UnpicklingError) as err:  # hash mismatch, or objects other than tensors
                raise ValueError(
                    f"Refusing the download of {hub.files[0][0]}: it is damaged or not the published file ({err})."
                ) from err
            except Exception as err:  # urllib raises many network error types
                raise hub.missing_error() from err
            model.load_state_dict(state)
    if arch.startswith("resnet"):
        width = model.fc.in_features
        model.fc = nn.Identity()
        return model, ["maxpool", "layer1", "layer2", "layer3", "layer4"], width
    # VGG: the conv blocks end at each MaxPool; the first six classifier layers (4096 features) are the last stage.
    backbone = nn.Sequential(
        OrderedDict(
            features=model.features, avgpool=model.avgpool, flatten=nn.Flatten(1), fc=model.classifier[:6]
        )
    )
    pools = [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    return backbone, [*pools, "fc"], model.classifier[6].in_features


def _load_backbone_state(
    model: nn.Module, state: dict[str, torch.Tensor], model_name: str, path: str
) -> None:
    """Load a full-model state dict into a classifier-less timm model (the classifier's keys are dropped)."""
    classifier = model.pretrained_cfg.get("classifier", "fc")
    classifiers = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    state = {k: v for k, v in state.items() if not any(k.startswith(f"{c}.") for c in classifiers)}
    _load_state(model, state, f"timm model {model_name!r}", path)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], what: str, path: str | os.PathLike) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"Weights in {str(path)!r} do not fit {what}; save the weights of the same architecture. {err}"
        ) from err


def stage_of_parameters(backbone: nn.Module, stages: list[str]) -> dict[str, int]:
    """Index in ``stages`` of the stage each backbone parameter belongs to.

    A stage is named by a module and ends at that module's last descendant: it holds its module and the layers
    before it back to the previous stage (the stem goes with the first stage); layers after the last (final norms)
    go with the last.
    """
    order = [name for name, _ in backbone.named_modules()]
    ends = [max(i for i, name in enumerate(order) if name == s or name.startswith(f"{s}.")) for s in stages]
    return {
        f"{module}.{param}" if module else param: next((k for k, end in enumerate(ends) if i <= end), len(ends) - 1)
        for i, (module, m) in enumerate(backbone.named_modules())
        for param, _ in m.named_parameters(recurse=False)
    }


def frozen_param_names(backbone: nn.Module, stages: list[str], unfreeze_last: int) -> set[str]:
    """Names of the backbone parameters of all but the last ``unfreeze_last`` stages (:func:`stage_of_parameters`)."""
    if not 1 <= unfreeze_last <= len(stages):
        raise ValueError(
            f"unfreeze_last must be between 1 and the number of stages ({len(stages)}: {stages}), "
            f"got {unfreeze_last}."
        )
    return {name for name, k in stage_of_parameters(backbone, stages).items() if k < len(stages) - unfreeze_last}


class TransferNet(nn.Module):
    """A pretrained backbone (``self.backbone``, pooled features) and a new head (``self.head``).

    Args:
        model_name: a timm model name (``tf_efficientnet_lite0``, ``resnet18``, ``convnext_tiny.fb_in1k``, ...) or
            ``torchvision/<name>`` for torchvision's VGG / ResNet (``torchvision/vgg16``, ``torchvision/resnet50``).
        num_classes: output logits (1 for a binary task).
        pretrained: a registered offline source (``efficientnet_lite0.imagenet``, for ``tf_efficientnet_lite0``;
            ``pip install -e ".[pretrained]"``), the path of a local weights file of the original model
            (``.safetensors`` or a ``torch.save``d state dict, e.g. from ``lit-cv download weights NAME --dir DIR``),
            ``true`` (timm / torchvision download or cache) or ``false`` (random init).
        finetune: ``all``, ``head`` (frozen backbone) or ``last_n`` (last ``unfreeze_last`` stages trainable).
        unfreeze_last: number of trailing backbone stages trained with ``finetune: last_n``. Stages (``stages``):
            EfficientNets ``blocks.0`` .. ``blocks.6`` and ``conv_head``; ResNets ``maxpool``, ``layer1`` ..
            ``layer4``; VGG each conv block and ``fc``; other timm models their ``feature_info`` modules.
        backbone_lr_ratio: learning rate of the backbone's trainable parameters relative to the head's, applied
            through :meth:`param_groups` (the ``Classifier`` builds its optimizer from them).
        train_bn: ``false`` keeps the backbone's BatchNorm layers as pretrained while the rest fine-tunes: their
            affine parameters frozen and their ImageNet running statistics in use (eval mode), as
            ``BackboneFinetuning(train_bn=False)`` does when it unfreezes.
        head_hidden: if set, the head is Linear(F, head_hidden) -> ReLU -> Dropout -> Linear(head_hidden,
            num_classes) (the course's VGG16 head uses 512); otherwise one Linear.
        head_dropout: dropout of the hidden head.

    Raises:
        ValueError: unknown ``finetune`` mode or model, ``unfreeze_last`` out of range, a non-positive
            ``backbone_lr_ratio``, weights that do not fit (the first tensor that does not).
        FileNotFoundError: a missing local weights file, or weights not downloadable offline (the message names the
            file and where to place it).
        ModuleNotFoundError: a registered source whose pip package is not installed (the message names it).

    Example::

        model:
          task: binary
          net:
            class_path: lit_cv.nets.TransferNet
            init_args: {model_name: tf_efficientnet_lite0, pretrained: efficientnet_lite0.imagenet,
                        finetune: last_n, unfreeze_last: 2, backbone_lr_ratio: 0.1}
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        num_classes: int = 1,
        pretrained: bool | str = True,
        finetune: Finetune = "head",
        unfreeze_last: int = 1,
        backbone_lr_ratio: float = 1.0,
        train_bn: bool = True,
        head_hidden: int | None = None,
        head_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"Unknown finetune mode {finetune!r}; use one of {FINETUNE_MODES}.")
        if not 0.0 <= head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {head_dropout}.")
        if backbone_lr_ratio <= 0:
            raise ValueError(f"backbone_lr_ratio must be > 0 (e.g. 0.1), got {backbone_lr_ratio}.")
        if model_name.startswith(TORCHVISION_PREFIX):
            self.backbone, self.stages, width = _torchvision_backbone(
                model_name[len(TORCHVISION_PREFIX) :], pretrained
            )
        else:
            self.backbone = _timm_backbone(model_name, pretrained)
            self.stages = _timm_stages(self.backbone)
            width = self.backbone.num_features
        self.num_features = width
        self.backbone_lr_ratio = backbone_lr_ratio
        self._lr_ratio_checked = False  # by param_groups() or the first training forward
        if head_hidden:
            self.head: nn.Module = nn.Sequential(
                nn.Linear(width, head_hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(head_dropout),
                nn.Linear(head_hidden, num_classes),
            )
        else:
            self.head = nn.Linear(width, num_classes)

        if finetune == "head":
            frozen = {name for name, _ in self.backbone.named_parameters()}
        elif finetune == "last_n":
            if not self.stages:
                raise ValueError(
                    f"{model_name!r} reports no stages (timm feature_info); use finetune all or head."
                )
            frozen = frozen_param_names(self.backbone, self.stages, unfreeze_last)
        else:
            frozen = set()
        if not train_bn:
            frozen |= batchnorm_param_names(self.backbone)
        for name, param in self.backbone.named_parameters():
            param.requires_grad_(name not in frozen)
        self.train()

    @property
    def frozen_features(self) -> bool:
        """True when no backbone parameter trains: the backbone runs in eval mode and an image's features never
        change, so they can be computed once (``callbacks.FeatureCache`` reads this)."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def param_groups(self) -> list[dict]:
        """The trainable parameters as optimizer param groups: the head, then the backbone with ``lr_scale:
        backbone_lr_ratio``, which the ``Classifier`` multiplies into that group's learning rate."""
        self._lr_ratio_checked = True
        head = [p for p in self.head.parameters() if p.requires_grad]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        groups = [{"params": head}] if head else []
        return groups + ([{"params": backbone, "lr_scale": self.backbone_lr_ratio}] if backbone else [])

    def parameter_table(self) -> str:
        """Trainable and frozen parameter counts per backbone stage (:func:`stage_of_parameters`) and of the head."""
        stage_of = stage_of_parameters(self.backbone, self.stages) if self.stages else {}
        rows: dict[str, list[int]] = {}
        for part, module in (("backbone", self.backbone), ("head", self.head)):
            for name, p in module.named_parameters():
                label = f"backbone.{self.stages[stage_of[name]]}" if part == "backbone" and stage_of else part
                rows.setdefault(label, [0, 0])[0 if p.requires_grad else 1] += p.numel()
        width = max(map(len, [*rows, "part"]))
        lines = [f"{'part':<{width}}  {'trainable':>11}  {'frozen':>11}"]
        lines += [f"{label:<{width}}  {trained:>11,}  {frozen:>11,}" for label, (trained, frozen) in rows.items()]
        return "\n".join(lines)

    def train(self, mode: bool = True) -> TransferNet:
        """Like ``nn.Module.train``, but a frozen backbone stays in eval mode, and so do the BatchNorm layers whose
        parameters are all frozen."""
        super().train(mode)
        if mode:
            if self.frozen_features:
                self.backbone.eval()
            else:
                set_frozen_bn_eval(self.backbone)
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, num_features)."""
        return self.backbone(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of images (N, C, H, W), or of their features (N, num_features) from ``forward_features`` (what
        ``callbacks.FeatureCache`` feeds the head)."""
        if self.training and not self._lr_ratio_checked:
            self._check_lr_ratio()
        if x.ndim == 2:
            return self.forward_head(x)
        return self.forward_head(self.forward_features(x))

    def _check_lr_ratio(self) -> None:
        self._lr_ratio_checked = True
        if self.backbone_lr_ratio != 1.0 and not self.frozen_features:
            rank_zero_warn(
                f"TransferNet: backbone_lr_ratio={self.backbone_lr_ratio} has no effect: the optimizer was not "
                "built from `net.param_groups()`."
            )
