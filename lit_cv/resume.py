"""Runs from a checkpoint: ``fit --ckpt_path last`` continues the newest run in its own log directory, and a run
with ``--ckpt_path`` builds its net without downloading pretrained weights.

Both edit the parsed LightningCLI config before anything is instantiated (``LitCVCLI.before_instantiate_classes``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LAST_CHECKPOINT = re.compile(r"last(-v?\d+)?\.ckpt")  # ModelCheckpoint's last.ckpt, last-v1.ckpt, ...
DEFAULT_LOGGER_NAME = "lightning_logs"  # TensorBoardLogger's and CSVLogger's default name


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
    save_dir = init_args.get("save_dir") or config["trainer"].get("default_root_dir") or "."
    name = init_args.get("name") or DEFAULT_LOGGER_NAME
    found = find_last_checkpoint(save_dir, name)
    if found is None:
        log.warning(f"--ckpt_path last: no last.ckpt under {Path(save_dir, name)}/*/checkpoints; starting a new run.")
        return None
    init_args["version"] = found[0]
    log.info(f"--ckpt_path last: resuming {found[1]} in the same log directory (version {found[0]!r}).")
    return found[0]


def skip_pretrained_download(config: Any) -> None:
    """With ``ckpt_path`` the checkpoint's weights replace the net's right after it is built, so a net that would
    fetch pretrained weights (``TransferNet(pretrained: true)``) is built without them: resuming, validating,
    testing or predicting from a checkpoint then works offline."""
    net = config.get("model", {}).get("net") if config.get("ckpt_path") else None
    init_args = getattr(net, "init_args", None)
    if init_args is not None and init_args.get("pretrained") not in (None, False):
        init_args["pretrained"] = False
