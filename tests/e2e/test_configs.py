"""Every experiment YAML under configs/ runs: a fast_dev_run fit through the CLI on generated data in the real
on-disk format of its dataset. Found by glob, so a new config is covered without editing this file."""

from __future__ import annotations

from pathlib import Path

import fake_data
import pytest
import yaml
from conftest import REPO_ROOT

from lit_cv.cli import LitCVCLI

CONFIGS = sorted(p for p in (REPO_ROOT / "configs").glob("*.yaml"))
SLOW = {"cats_dogs_vgg16_head"}  # builds the 138M-parameter VGG16 (like tests/lit_cv/nets/test_transfer.py)

# datamodule class -> (generator of a data_dir in the real format, extra CLI overrides)
DATA = {
    "datamodules.RPSDataModule": (lambda root: fake_data.make_rps(root, per_class=4, size=32), []),
    "datamodules.MNISTDataModule": (lambda root: fake_data.make_mnist_idx(root, n_train=40, n_test=20), []),
    "datamodules.CatsDogsDataModule": (lambda root: fake_data.make_cats_dogs(root, per_class=4, size=40), []),
    "datamodules.BankMarketingDataModule": (lambda root: fake_data.make_bank_kaggle(root, n=80), []),
    "datamodules.DigitsDataModule": (None, []),
}


def data_class(config: Path) -> str:
    data = yaml.safe_load(config.read_text())["data"]
    if isinstance(data, str):  # `data: data/rps.yaml`, relative to the config
        data = yaml.safe_load((config.parent / data).read_text())
    return data["class_path"]


def test_every_config_has_a_data_generator():
    assert CONFIGS, "no configs found"
    unknown = {c.name: data_class(c) for c in CONFIGS if data_class(c) not in DATA}
    assert not unknown, f"add a generator to DATA for {unknown}"


@pytest.mark.parametrize(
    "config", [pytest.param(c, id=c.stem, marks=[pytest.mark.slow] if c.stem in SLOW else []) for c in CONFIGS]
)
def test_config_fast_dev_run(config, tmp_path):
    make_data, extra = DATA[data_class(config)]
    args = ["fit", "--config", str(config), "--trainer.fast_dev_run", "true",
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--data.init_args.batch_size", "2", *extra]
    if make_data is not None:
        args += ["--data.init_args.data_dir", str(make_data(tmp_path / "data"))]
    text = config.read_text()
    if "TransferNet" in text:  # no pretrained weights can be downloaded in tests
        args += ["--model.net.init_args.pretrained", "false"]
    if "cache:" in text or data_class(config) in ("datamodules.RPSDataModule", "datamodules.CatsDogsDataModule"):
        args += ["--data.init_args.cache_dir", str(tmp_path / "cache")]
    cli = LitCVCLI(args=args)
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 1
    assert cli.model.num_classes == len(cli.datamodule.class_names)
