"""lit_cv.resume: ``--ckpt_path last`` finds the newest ``last.ckpt`` and reuses its logger version; runs from a
checkpoint skip the pretrained download. The real kill-and-resume run is in ``tests/e2e/test_resume.py``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from jsonargparse import Namespace

from lit_cv.resume import (
    check_checkpoint_fits,
    find_last_checkpoint,
    read_ckpt_path,
    resolve_last_for_evaluation,
    reuse_last_version,
    skip_pretrained_download,
)


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


def test_last_for_test_and_predict_is_the_newest_runs_checkpoint(tmp_path: Path) -> None:
    # test/predict write to a new version directory; Lightning's own `last` lookup there finds nothing.
    now = time.time()
    _touch_checkpoint(tmp_path / "exp" / "version_0" / "checkpoints" / "last.ckpt", now - 10)
    _touch_checkpoint(tmp_path / "exp" / "version_1" / "checkpoints" / "last.ckpt", now)
    config = _fit_config(tmp_path)
    found = resolve_last_for_evaluation(config)
    assert found == tmp_path / "exp" / "version_1" / "checkpoints" / "last.ckpt" and config.ckpt_path == str(found)

    given = _fit_config(tmp_path, ckpt_path="runs/x/last.ckpt")
    assert resolve_last_for_evaluation(given) is None and given.ckpt_path == "runs/x/last.ckpt"
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path last: no last.ckpt under .*nothing.*Run `lit-cv fit`"):
        resolve_last_for_evaluation(_fit_config(tmp_path / "nothing"))


def test_a_directory_as_ckpt_path_names_the_file_to_pass(tmp_path: Path) -> None:
    (tmp_path / "version_0" / "checkpoints").mkdir(parents=True)
    config = Namespace(ckpt_path=str(tmp_path / "version_0"), model=Namespace(net=None))
    with pytest.raises(FileNotFoundError, match=r"is a directory; pass a .ckpt file in it, e.g. .*checkpoints/last"):
        read_ckpt_path(config)


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


# ---------------------------------------------------------------------------------------------- --ckpt_path checks
CNN2_NET = {"class_path": "lit_cv.nets.CNN2",
            "init_args": {"n_feature": 4, "p": 0.0, "in_channels": 1, "num_classes": 10, "image_size": 28}}


def _save_checkpoint(path: Path, net: dict[str, Any] | None, class_names: list[str], model: Any = None) -> Path:
    import torch

    from lit_cv import Classifier
    from lit_cv.nets import CNN2

    model = model or Classifier(CNN2(**CNN2_NET["init_args"]), num_classes=len(class_names), class_names=class_names)
    hparams = {"class_names": class_names, **({"net": net} if net is not None else {})}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams}, path)
    return path


def _run_config(ckpt_path: Any, net: dict[str, Any]) -> Namespace:
    return Namespace(ckpt_path=ckpt_path, model=Namespace(net=Namespace(class_path=net["class_path"],
                                                                        init_args=Namespace(**net["init_args"]))))


@pytest.mark.parametrize("value", [None, "last", "best", "hpc", "registry", "registry:model:v1", "https://x/y.ckpt"])
def test_lightnings_own_ckpt_paths_are_left_to_it(value: Any) -> None:
    assert read_ckpt_path(_run_config(value, CNN2_NET)) is None


def test_a_missing_ckpt_path_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path 'gone.ckpt' does not exist"):
        read_ckpt_path(_run_config("gone.ckpt", CNN2_NET))


def test_a_checkpoint_of_another_net_class_names_both(tmp_path: Path) -> None:
    path = _save_checkpoint(tmp_path / "cnn2.ckpt", CNN2_NET, [str(i) for i in range(10)])
    convnet = {"class_path": "lit_cv.nets.ConvNet", "init_args": {"channels": [8]}}
    with pytest.raises(ValueError, match=r"holds a lit_cv.nets.CNN2\(n_feature=4.*the config builds a "
                                         r"lit_cv.nets.ConvNet\(channels=\[8\]\)"):
        read_ckpt_path(_run_config(str(path), convnet))


def test_other_net_arguments_are_reported_and_the_checkpoints_used(tmp_path: Path, caplog) -> None:
    path = _save_checkpoint(tmp_path / "cnn2.ckpt", CNN2_NET, [str(i) for i in range(10)])
    configured = {**CNN2_NET, "init_args": {**CNN2_NET["init_args"], "n_feature": 32, "image_size": 12}}
    summary = read_ckpt_path(_run_config(str(path), configured))
    assert summary is not None and summary.net == CNN2_NET and summary.shapes["net.conv1.weight"] == (4, 1, 3, 3)
    assert "n_feature 4 (config: 32)" in caplog.text
    assert "image_size" not in caplog.text  # set from the data: checked through the weights' shapes


def test_checkpoint_fits_checks_classes_then_shapes(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lit_cv import Classifier
    from lit_cv.nets import CNN2

    digits = [str(i) for i in range(10)]
    summary = read_ckpt_path(_run_config(str(_save_checkpoint(tmp_path / "a.ckpt", CNN2_NET, digits)), CNN2_NET))
    fits = Classifier(CNN2(**CNN2_NET["init_args"]), num_classes=10, class_names=digits)
    check_checkpoint_fits(summary, fits)

    rps = Classifier(CNN2(**CNN2_NET["init_args"]), num_classes=3, class_names=["paper", "rock", "scissors"])
    with pytest.raises(ValueError, match=r"trained on 10 classes \[0, 1, 2, 3, 4, 5, \.\.\.\], but the data has 3: "
                                         r"\[paper, rock, scissors\]"):
        check_checkpoint_fits(summary, rps)

    bigger = Classifier(CNN2(**{**CNN2_NET["init_args"], "image_size": 32}), num_classes=10, class_names=digits)
    with pytest.raises(ValueError, match=r"net.fc1.weight is \[50, 100\] in the checkpoint but \[50, 144\] in this "
                                         r"model.*trained with image_size 28; the data gives 32"):
        check_checkpoint_fits(summary, bigger, SimpleNamespace(image_size=32))
