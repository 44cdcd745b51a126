"""TransferNet: a pretrained backbone (timm, or torchvision's VGG / ResNet) with a new head, trained three ways.

Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS 2014. The course's recipes:

- ``finetune: all``: train every parameter;
- ``finetune: head``: freeze the backbone, train a new head from scratch (its VGG16 recipe replaces
  ``classifier[6]`` by Linear(4096, 512) -> ReLU -> Dropout -> Linear(512, 1): ``head_hidden: 512``);
- ``finetune: last_n``: train the last ``unfreeze_last`` stages of the backbone and the head.

Gradual unfreezing during training is ``callbacks.BackboneFinetuning`` on ``net.backbone``. Frozen BatchNorm layers
(all their parameters frozen) are kept in eval mode by ``train()``, so their running statistics stay pretrained.

Weights (``pretrained``) never unpickle arbitrary objects: a local file is read with safetensors or
``torch.load(weights_only=True)``; ``true`` uses timm's / torchvision's download or cache, and with
``HF_HUB_OFFLINE=1`` and nothing cached the error names the file to fetch and where to put it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from callbacks.backbone_finetuning import set_frozen_bn_eval

Finetune = Literal["all", "head", "last_n"]
FINETUNE_MODES = ("all", "head", "last_n")
TORCHVISION_PREFIX = "torchvision/"
TORCHVISION_FAMILIES = ("vgg", "resnet")
TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set: no weight download is attempted (timm or torchvision)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file: ``.safetensors``, or a ``torch.save``d state dict read with
    ``weights_only=True`` (a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper is unwrapped).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        TypeError: if the file holds no mapping of tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Pretrained weights file {str(path)!r} does not exist. Set `pretrained:` to an existing "
            ".safetensors/.pth file, to true (download or cache), or to false (random init)."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TypeError(f"{str(path)!r} does not hold a state dict of tensors; save `model.state_dict()`.")
    return state


def _missing_weights_error(model_name: str, url: str, alternative: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"Pretrained weights for {model_name!r} are not available offline (HF_HUB_OFFLINE=1 or no internet) "
        f"and not cached. On a machine with internet download {url}, copy it to this machine and set "
        f"`pretrained: /path/to/{Path(url).name}`; {alternative}."
    )


def _timm_backbone(model_name: str, pretrained: bool | str) -> tuple[nn.Module, list[str]]:
    """timm model without classifier (returns pooled features) and the module names of its stages."""
    import timm

    if isinstance(pretrained, str):
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
        _load_backbone_state(model, load_weights_file(pretrained), model_name, pretrained)
    elif pretrained:
        cfg = timm.models.get_pretrained_cfg(model_name)
        if cfg is None:
            raise ValueError(f"timm has no pretrained weights for {model_name!r}; use `pretrained: false`.")
        if cfg.hf_hub_id:
            url = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{TIMM_HUB_FILES[0]}"
            cache = (
                f"or run `hf download {cfg.hf_hub_id} {TIMM_HUB_FILES[0]}` there and copy the Hugging Face cache "
                "folder (HF_HUB_CACHE) here"
            )
            cached = _in_hf_cache(cfg.hf_hub_id)
        else:
            url = cfg.url
            path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
            cache = _hub_alternative(path)
            cached = path.is_file()
        if hub_offline() and not cached:
            raise _missing_weights_error(model_name, url, cache)
        try:
            model = timm.create_model(model_name, pretrained=True, num_classes=0)
        except Exception as err:  # the hub raises many network error types
            raise _missing_weights_error(model_name, url, cache) from err
    else:
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
    stages = [info["module"] for info in getattr(model, "feature_info", [])]
    return model, stages


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in TIMM_HUB_FILES)


def _hub_alternative(path: Path) -> str:
    return f"or place it at {path} (the torch hub cache) and keep `pretrained: true`"


def _torchvision_backbone(arch: str, pretrained: bool | str) -> tuple[nn.Module, list[str], int]:
    """torchvision VGG / ResNet as a feature extractor; returns (backbone, stage names, feature width)."""
    import torchvision

    if not arch.startswith(TORCHVISION_FAMILIES) or arch not in torchvision.models.list_models():
        raise ValueError(
            f"Unsupported torchvision model {arch!r}; use a vgg* or resnet* name from "
            "torchvision.models.list_models(), or a timm model name without the `torchvision/` prefix."
        )
    model = torchvision.models.get_model(arch, weights=None)
    if isinstance(pretrained, str):
        _load_state(model, load_weights_file(pretrained), f"torchvision model {arch!r}", pretrained)
    elif pretrained:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if cache.is_file():
            _load_state(model, load_weights_file(cache), f"torchvision model {arch!r}", cache)
        elif hub_offline():
            raise _missing_weights_error(TORCHVISION_PREFIX + arch, weights.url, _hub_alternative(cache))
        else:
            try:
                model.load_state_dict(weights.get_state_dict(progress=False))
            except Exception as err:  # urllib raises many network error types
                raise _missing_weights_error(
                    TORCHVISION_PREFIX + arch, weights.url, _hub_alternative(cache)
                ) from err
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


def frozen_param_names(backbone: nn.Module, stages: list[str], unfreeze_last: int) -> set[str]:
    """Names of the backbone parameters before the last ``unfreeze_last`` stages (in module order).

    A stage is named by a module; it ends at that module's last descendant. Parameters of modules up to the end of
    stage ``-unfreeze_last - 1`` are frozen, everything after (the last stages, final norms) is trained.
    """
    if not 1 <= unfreeze_last <= len(stages):
        raise ValueError(
            f"unfreeze_last must be between 1 and the number of stages ({len(stages)}: {stages}), "
            f"got {unfreeze_last}."
        )
    if unfreeze_last == len(stages):
        return set()
    order = [name for name, _ in backbone.named_modules()]
    last_frozen = stages[-unfreeze_last - 1]
    end = max(i for i, name in enumerate(order) if name == last_frozen or name.startswith(f"{last_frozen}."))
    frozen_modules = set(order[: end + 1])
    return {
        f"{module}.{param}" if module else param
        for module, m in backbone.named_modules()
        if module in frozen_modules
        for param, _ in m.named_parameters(recurse=False)
    }


class TransferNet(nn.Module):
    """A pretrained backbone (``self.backbone``, pooled features) and a new head (``self.head``).

    Args:
        model_name: a timm model name (``resnet18``, ``efficientnet_b0``, ``convnext_tiny.fb_in1k``, ...) or
            ``torchvision/<name>`` for torchvision's VGG / ResNet (``torchvision/vgg16``, ``torchvision/resnet50``).
        num_classes: output logits (1 for a binary task).
        pretrained: ``true`` (timm / torchvision download or cache), ``false`` (random init) or the path of a
            local weights file of the original model (``.safetensors`` or a ``torch.save``d state dict).
        finetune: ``all``, ``head`` (frozen backbone) or ``last_n`` (last ``unfreeze_last`` stages trainable).
        unfreeze_last: number of trailing backbone stages trained with ``finetune: last_n``.
        head_hidden: if set, the head is Linear(F, head_hidden) -> ReLU -> Dropout -> Linear(head_hidden,
            num_classes) (the course's VGG16 head uses 512); otherwise one Linear.
        head_dropout: dropout of the hidden head.

    Raises:
        ValueError: unknown ``finetune`` mode or model, ``unfreeze_last`` out of range, weights that do not fit.
        FileNotFoundError: a missing local weights file, or weights not downloadable offline (the message names the
            file and where to place it).

    Example::

        model:
          task: binary
          net:
            class_path: lit_cv.nets.TransferNet
            init_args: {model_name: torchvision/vgg16, pretrained: weights/vgg16-397923af.pth,
                        finetune: head, head_hidden: 512}
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        num_classes: int = 1,
        pretrained: bool | str = True,
        finetune: Finetune = "head",
        unfreeze_last: int = 1,
        head_hidden: int | None = None,
        head_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"Unknown finetune mode {finetune!r}; use one of {FINETUNE_MODES}.")
        if not 0.0 <= head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {head_dropout}.")
        if model_name.startswith(TORCHVISION_PREFIX):
            self.backbone, self.stages, width = _torchvision_backbone(
                model_name[len(TORCHVISION_PREFIX) :], pretrained
            )
        else:
            self.backbone, self.stages = _timm_backbone(model_name, pretrained)
            width = self.backbone.num_features
        self.num_features = width
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
        for name, param in self.backbone.named_parameters():
            param.requires_grad_(name not in frozen)
        self.train()

    def train(self, mode: bool = True) -> TransferNet:
        """Like ``nn.Module.train``, but BatchNorm layers whose parameters are all frozen stay in eval mode."""
        super().train(mode)
        if mode:
            set_frozen_bn_eval(self.backbone)
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, num_features)."""
        return self.backbone(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

