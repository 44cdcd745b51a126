"""Runs from a checkpoint: ``fit --ckpt_path last`` continues the newest run in its own log directory, a run
with ``--ckpt_path`` builds its net without downloading pretrained weights, and a ``--ckpt_path`` file that cannot
serve the configured run is refused with one message naming the file, both nets, or both sets of classes.

The first two edit the parsed LightningCLI config before anything is instantiated
(``LitCVCLI.before_instantiate_classes``); the checks run right after parsing (:func:`read_ckpt_path`) and right
before Lightning loads the weights (:func:`check_checkpoint_fits`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch import nn

from callbacks.model_checkpoint import load_checkpoint_safely

log = logging.getLogger(__name__)

LAST_CHECKPOINT = re.compile(r"last(-v?\d+)?\.ckpt")  # ModelCheckpoint's last.ckpt, last-v1.ckpt, ...
DEFAULT_LOGGER_NAME = "lightning_logs"  # TensorBoardLogger's and CSVLogger's default name
LIGHTNING_CKPT_PATHS = ("last", "best", "hpc", "registry")  # resolved by Lightning (also `registry:<name>`)
# Net arguments the CLI sets from the data (`data.image_size`, `data.num_features`): compared via the weights' shapes.
LINKED_NET_ARGS = {"image_size": "image_size", "in_features": "num_features"}  # net argument -> datamodule attribute


def find_last_checkpoint(save_dir: str | Path, name: str) -> tuple[int | str, Path] | None:
    """``(version, path)`` of the most recently written ``<save_dir>/<name>/<version>/checkpoints/last*.ckpt``;
    ``version`` is an int for ``version_N`` directories (as loggers take it), else the directory name."""
    candidates = [
        path
        for path in Path(save_dir, name).glob("*/checkpoints/last*.ckpt")
        if LAST_CHECKPOINT.fullmatch(path.name)
    ]
    if not candidates:
        return None
    newest = max(candidates, key=lambda path: path.stat().st_mtime)
    directory = newest.parents[1].name
    match = re.fullmatch(r"version_(\d+)", directory)
    return (int(match.group(1)) if match else directory), newest


def reuse_last_version(config: Any) -> int | str | None:
    """For a parsed ``fit`` config with ``ckpt_path: last``, a single logger with an automatic version and the
    default checkpoint directory: set ``trainer.logger.init_args.version`` to the version holding the newest
    ``last.ckpt`` and return it, so checkpoints, TensorBoard curves and ``metrics.json`` continue where they were.

    Otherwise change nothing and return ``None``. Lightning's own lookup then applies: it looks in the current
    version's ``checkpoints/`` (an explicit ``version``, like the SLURM scripts' job id, is found there), and
    without a last checkpoint it warns and starts a fresh run, which is what a first SLURM job wants. An automatic
    version (``version_N``) would otherwise get a new, empty ``version_N+1`` in which Lightning finds nothing."""
    if config.get("ckpt_path") != "last":
        return None
    logger = config.get("trainer", {}).get("logger")
    init_args = getattr(logger, "init_args", None)
    if init_args is None or "version" not in init_args or init_args.get("version") is not None:
        return None
    checkpoint = config.get("checkpoint")
    if checkpoint is not None and checkpoint.get("dirpath") is not None:
        return None
    save_dir, name = _run_root(config)
    found = find_last_checkpoint(save_dir, name)
    if found is None:
        log.warning(f"--ckpt_path last: no last.ckpt under {Path(save_dir, name)}/*/checkpoints; starting a new run.")
        return None
    init_args["version"] = found[0]
    log.info(f"--ckpt_path last: resuming {found[1]} in the same log directory (version {found[0]!r}).")
    return found[0]


def _run_root(config: Any) -> tuple[str, str]:
    """``(save_dir, name)`` under which a parsed config's logger writes ``<version>/checkpoints/``."""
    init_args = getattr(config.get("trainer", {}).get("logger"), "init_args", None) or {}
    save_dir = init_args.get("save_dir") or config.get("trainer", {}).get("default_root_dir") or "."
    return save_dir, init_args.get("name") or DEFAULT_LOGGER_NAME


def last_checkpoint_of(config: Any) -> Path | None:
    """The newest ``last.ckpt`` of the runs a parsed config's logger writes (see ``find_last_checkpoint``)."""
    found = find_last_checkpoint(*_run_root(config))
    return found[1] if found else None


def resolve_last_for_evaluation(config: Any) -> Path | None:
    """For a parsed ``test``/``validate``/``predict`` config with ``ckpt_path: last``: set ``ckpt_path`` to the newest
    ``<save_dir>/<name>/*/checkpoints/last.ckpt`` and return it (else ``None``, nothing changed). These commands
    write to a new version directory, where Lightning's own lookup finds no checkpoint and evaluates the untrained
    net with only a warning.

    Raises:
        FileNotFoundError: no run of this config has a last checkpoint.
    """
    if config.get("ckpt_path") != "last":
        return None
    checkpoint = config.get("checkpoint")
    dirpath = checkpoint.get("dirpath") if checkpoint is not None else None
    if dirpath is not None:
        candidates = [path for path in Path(dirpath).glob("last*.ckpt") if LAST_CHECKPOINT.fullmatch(path.name)]
        found = max(candidates, key=lambda path: path.stat().st_mtime) if candidates else None
        where = Path(dirpath)
    else:
        found = last_checkpoint_of(config)
        where = Path(*_run_root(config), "*", "checkpoints")
    if found is None:
        raise FileNotFoundError(
            f"--ckpt_path last: no last.ckpt under {where} (looked in {Path.cwd()}), so there are no trained weights "
            "to evaluate. Run `lit-cv fit` with this config first, or pass the .ckpt file itself."
        )
    config["ckpt_path"] = str(found)
    log.info(f"--ckpt_path last: using {found}.")
    return found


def skip_pretrained_download(config: Any) -> None:
    """With ``ckpt_path`` the checkpoint's weights replace the net's right after it is built, so a net that would
    fetch pretrained weights (``TransferNet(pretrained: true)``) is built without them: resuming, validating,
    testing or predicting from a checkpoint then works offline."""
    net = config.get("model", {}).get("net") if config.get("ckpt_path") else None
    init_args = getattr(net, "init_args", None)
    if init_args is not None and init_args.get("pretrained") not in (None, False):
        init_args["pretrained"] = False


@dataclass
class CheckpointSummary:
    """What the checks need of a ``--ckpt_path`` file: its net config, classes and weight shapes (not the weights)."""

    path: Path
    net: dict[str, Any] | None  # hyper_parameters["net"] as the CLI saved it: class_path + init_args
    class_names: list[str] | None
    shapes: dict[str, tuple[int, ...]]


def read_ckpt_path(config: Any) -> CheckpointSummary | None:
    """For a parsed subcommand config whose ``ckpt_path`` names a local file: read it safely (tensors and plain values
    only; a file that is not a readable checkpoint gets one message naming it) and check that it holds the configured
    net class, before LightningCLI replaces the config's model with the checkpoint's hyperparameters. Arguments of
    the net that differ are reported; the checkpoint's are used, as LightningCLI does. ``last``, ``best``, ``hpc``,
    ``registry`` and URLs are Lightning's to resolve: ``None``.

    Raises:
        FileNotFoundError: ``ckpt_path`` names no file.
        ValueError: an empty, corrupt or non-checkpoint file; one holding pickled objects; a checkpoint of another net.
    """
    ckpt_path = config.get("ckpt_path")
    text = str(ckpt_path) if ckpt_path else ""
    if not text or text in LIGHTNING_CKPT_PATHS or text.startswith("registry:") or "://" in text:
        return None
    path = Path(text)
    if path.is_dir():
        raise FileNotFoundError(
            f"--ckpt_path {text!r} is a directory; pass a .ckpt file in it, e.g. "
            f"{path / 'checkpoints' if (path / 'checkpoints').is_dir() else path}/last.ckpt, or `last` for the "
            "newest run of this config."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"--ckpt_path {text!r} does not exist (looked in {Path.cwd()}). Pass a .ckpt written by `lit-cv fit` "
            "(runs/<name>/version_N/checkpoints/), or `last` to continue the newest run."
        )
    checkpoint = load_checkpoint_safely(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    net = hparams.get("net") if isinstance(hparams.get("net"), dict) and "class_path" in hparams["net"] else None
    configured = _as_dict(config.get("model", {}).get("net"))
    if net is not None and isinstance(configured, dict) and "class_path" in configured:
        if net["class_path"] != configured["class_path"]:
            raise ValueError(
                f"Checkpoint {text!r} holds a {describe_net(net)}, but the config builds a "
                f"{describe_net(configured)}. {_config_hint(path)}"
            )
        _report_different_arguments(text, net, configured)
    names = hparams.get("class_names")
    shapes = {key: tuple(value.shape) for key, value in checkpoint["state_dict"].items() if hasattr(value, "shape")}
    return CheckpointSummary(path, net, list(names) if names is not None else None, shapes)


def check_checkpoint_fits(summary: CheckpointSummary, model: nn.Module, datamodule: Any = None) -> None:
    """The model and data built for this run can take the checkpoint: the same classes, the same weight shapes
    (image size and input features come from the data).

    Raises:
        ValueError: naming the file, what differs and both values.
    """
    text = str(summary.path)
    classes = getattr(model, "class_names", None)
    if summary.class_names is not None and classes is not None and list(summary.class_names) != list(classes):
        raise ValueError(
            f"Checkpoint {text!r} was trained on {len(summary.class_names)} classes {_short(summary.class_names)}, "
            f"but the data has {len(classes)}: {_short(classes)}. {_config_hint(summary.path)}"
        )
    current = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    differ = [key for key in current if key in summary.shapes and current[key] != summary.shapes[key]]
    missing = [key for key in current if key.startswith("net.") and key not in summary.shapes]
    unexpected = [key for key in summary.shapes if key.startswith("net.") and key not in current]
    if not (differ or missing or unexpected):
        return
    if differ:
        key = differ[0]
        what = (f"{key} is {list(summary.shapes[key])} in the checkpoint but {list(current[key])} in this model "
                f"({len(differ)} tensor{'s differ' if len(differ) > 1 else ' differs'})")
    else:
        what = (f"{len(missing)} weights of this model are not in the checkpoint (e.g. {(missing or ['-'])[0]}), "
                f"{len(unexpected)} of the checkpoint are not in the model (e.g. {(unexpected or ['-'])[0]})")
    net = getattr(model, "net", None)
    built = f"this run's {type(net).__name__}" if net is not None else "this run's model"
    trained = describe_net(summary.net) if summary.net is not None else "a net without saved hyperparameters"
    raise ValueError(
        f"Checkpoint {text!r} does not fit {built}: {what}.{_linked_differences(summary, datamodule)} "
        f"The checkpoint holds {trained}. {_config_hint(summary.path)}"
    )


def describe_net(net: dict[str, Any]) -> str:
    """``lit_cv.nets.CNN2(n_feature=32, p=0.3, ...)`` from a ``class_path`` / ``init_args`` config."""
    args = ", ".join(f"{key}={value!r}" for key, value in (net.get("init_args") or {}).items())
    return f"{net['class_path']}({args})"


def _as_dict(value: Any) -> Any:
    return value.as_dict() if hasattr(value, "as_dict") else value


def _report_different_arguments(text: str, net: dict[str, Any], configured: dict[str, Any]) -> None:
    saved, given = net.get("init_args") or {}, configured.get("init_args") or {}
    differences = [
        f"{key} {saved.get(key)!r} (config: {given.get(key)!r})"
        for key in sorted(set(saved) | set(given))
        if key not in LINKED_NET_ARGS and saved.get(key) != given.get(key)
    ]
    if differences and rank_zero_only.rank == 0:
        log.warning(f"--ckpt_path {text!r}: using the checkpoint's net arguments, which differ from the config's: "
                    + ", ".join(differences) + ".")


def _linked_differences(summary: CheckpointSummary, datamodule: Any) -> str:
    saved = (summary.net or {}).get("init_args") or {}
    notes = [
        f" It was trained with {arg} {saved[arg]}; the data gives {getattr(datamodule, attribute)}."
        for arg, attribute in LINKED_NET_ARGS.items()
        if saved.get(arg) is not None and getattr(datamodule, attribute, None) not in (None, saved[arg])
    ]
    return "".join(notes)


def _config_hint(path: Path) -> str:
    run_config = path.parent.parent / "config.yaml"  # <run>/checkpoints/x.ckpt -> <run>/config.yaml
    if run_config.is_file():
        return f"Use the config it was trained with: --config {run_config}"
    return "Use the config (net, data) it was trained with, or a checkpoint of this config."


def _short(names: list[Any], limit: int = 6) -> str:
    shown = ", ".join(map(str, list(names)[:limit]))
    return f"[{shown}{', ...' if len(names) > limit else ''}]"
