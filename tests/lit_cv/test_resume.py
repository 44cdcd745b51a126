"""lit_cv.resume: ``--ckpt_path last`` finds the newest ``last.ckpt`` and reuses its logger version; runs from a
checkpoint skip the pretrained download. The real kill-and-resume run is in ``tests/e2e/test_resume.py``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from lit_cv.resume import find_last_checkpoint, reuse_last_version, skip_pretrained_download


def _touch_checkpoint(path: Path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))


def test_find_last_checkpoint_picks_the_newest(tmp_path: Path) -> None:
    now = time.time()
    _touch_checkpoint(tmp_path / "exp" / "version_0" / "checkpoints" / "last.ckpt", now - 30)
    _touch_checkpoint(tmp_path / "exp" / "version_2" / "checkpoints" / "last-v1.ckpt", now - 10)
    _touch_checkpoint(tmp_path / "exp" / "version_3" / "checkpoints" / "best-epoch001.ckpt", now)  # not a last
    _touch_checkpoint(tmp_path / "exp" / "slurm-77" / "checkpoints" / "last.ckpt", now - 20)

    version, path = find_last_checkpoint(tmp_path, "exp")
    assert (version, path.name) == (2, "last-v1.ckpt")

    _touch_checkpoint(tmp_path / "exp" / "slurm-77" / "checkpoints" / "last.ckpt", now)
    assert find_last_checkpoint(tmp_path, "exp")[0] == "slurm-77"
    assert find_last_checkpoint(tmp_path, "other") is None


def _fit_config(save_dir: Path, ckpt_path: str | None = "last", version: Any = None) -> Namespace:
    logger = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger",
                       init_args=Namespace(save_dir=str(save_dir), name="exp", version=version))
    return Namespace(ckpt_path=ckpt_path, trainer=Namespace(logger=logger, default_root_dir=None),
                     checkpoint=Namespace(dirpath=None))


def test_reuse_last_version_sets_the_logger_version(tmp_path: Path) -> None:
    _touch_checkpoint(tmp_path / "exp" / "version_1" / "checkpoints" / "last.ckpt", time.time())

    config = _fit_config(tmp_path)
    assert reuse_last_version(config) == 1
    assert config.trainer.logger.init_args.version == 1

    explicit = _fit_config(tmp_path, version="slurm-9")  # Lightning looks in an explicit version itself
    assert reuse_last_version(explicit) is None and explicit.trainer.logger.init_args.version == "slurm-9"
    fresh = _fit_config(tmp_path, ckpt_path=None)
    assert reuse_last_version(fresh) is None and fresh.trainer.logger.init_args.version is None
    empty = _fit_config(tmp_path / "nothing")  # first run: Lightning warns and starts version_0
    assert reuse_last_version(empty) is None and empty.trainer.logger.init_args.version is None


def test_checkpoint_runs_do_not_fetch_pretrained_weights() -> None:
    def config(ckpt_path: str | None, pretrained: bool) -> Namespace:
        net = Namespace(class_path="lit_cv.nets.TransferNet", init_args=Namespace(pretrained=pretrained))
        return Namespace(ckpt_path=ckpt_path, model=Namespace(net=net))

    with_ckpt = config("last.ckpt", True)
    skip_pretrained_download(with_ckpt)
    assert with_ckpt.model.net.init_args.pretrained is False
    fresh = config(None, True)
    skip_pretrained_download(fresh)
    assert fresh.model.net.init_args.pretrained is True
