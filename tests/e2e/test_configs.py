"""Every experiment YAML under configs/ runs as a user runs it: ``lit-cv fit --config X.yaml --data.init_args.data_dir
DIR`` with every default on (progress bar, logger, checkpoints, LR monitor, the config's own callbacks), shortened to
one epoch of two training and two validation batches, on generated data in the real on-disk format of its dataset,
from a temporary working directory (nothing is written to the repository). Found by glob, so a new config is
covered without editing this file."""

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
def test_config_fits_one_short_epoch(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's relative paths (runs/, caches) land here, as in a user's checkout
    make_data, extra = DATA[data_class(config)]
    args = ["fit", "--config", str(config), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "2", *extra]
    if make_data is not None:
        args += ["--data.init_args.data_dir", str(make_data(tmp_path / "data"))]
    if "TransferNet" in config.read_text():  # no pretrained weights can be downloaded in tests
        args += ["--model.net.init_args.pretrained", "false"]
    cli = LitCVCLI(args=args)
    assert cli.trainer.state.finished
    assert cli.trainer.current_epoch == 1 and 0 < cli.trainer.global_step <= 2
    assert cli.model.num_classes == len(cli.datamodule.class_names)
    log_dir = Path(cli.trainer.log_dir).resolve()  # relative to the working directory, as for a user
    assert log_dir.is_relative_to((tmp_path / "runs").resolve()), log_dir
    assert (log_dir / "checkpoints" / "last.ckpt").is_file() and (log_dir / "metrics.json").is_file()
    # the checkpoint's saved config parses again (before: TransferNet configs saved the linked `image_size`, which
    # TransferNet does not take, so `lit-cv test --ckpt_path` refused every checkpoint of theirs)
    given = args[args.index("--trainer.limit_val_batches"):]  # limit_val_batches, data_dir, pretrained
    validated = LitCVCLI(args=["validate", "--config", str(config), *given,
                               "--ckpt_path", str(log_dir / "checkpoints" / "last.ckpt")])
    assert validated.trainer.state.finished and validated.trainer.ckpt_path == str(log_dir / "checkpoints" / "last.ckpt")
