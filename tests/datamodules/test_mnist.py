"""MNISTDataModule on fake IDX .gz / Kaggle CSV files (always) and on ../shared/data/mnist (real_data)."""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
from pathlib import Path

import fake_data
import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from datamodules import MNISTDataModule
from datamodules.mnist import read_idx

REPO = Path(__file__).resolve().parents[2]


def test_read_idx_matches_torchvision_reader(tmp_path):
    root = fake_data.make_mnist_idx(tmp_path / "m", n_train=30, n_test=10)
    raw = root / "MNIST" / "raw"
    for name, kind, reader in (
        ("train-images-idx3-ubyte", "images", read_image_file),
        ("train-labels-idx1-ubyte", "labels", read_label_file),
    ):
        with gzip.open(raw / f"{name}.gz") as f_in, open(tmp_path / name, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
        expected = reader(str(tmp_path / name))
        assert torch.equal(read_idx(raw / f"{name}.gz", kind), expected)
        assert torch.equal(read_idx(tmp_path / name, kind), expected)  # uncompressed works too
    assert read_idx(tmp_path / "train-images-idx3-ubyte").dtype == torch.uint8
    assert read_idx(tmp_path / "train-labels-idx1-ubyte", "labels").dtype == torch.long
    with pytest.raises(ValueError, match="not a complete IDX file of MNIST images"):
        read_idx(tmp_path / "train-labels-idx1-ubyte", "images")  # 1-d labels are not images
    header = b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28)  # says 2 images, holds 100 bytes
    (tmp_path / "short.gz").write_bytes(gzip.compress(header + bytes(100)))
    with pytest.raises(ValueError, match="short.gz' is not a complete IDX file of MNIST images: truncated"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "notes.txt").write_text("not an IDX file")
    with pytest.raises(ValueError, match="not in the IDX format"):
        read_idx(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent.gz")


@pytest.mark.parametrize("layout", ["torchvision", "raw"])
def test_idx_shapes_split_and_test_set(tmp_path, layout):
    root = fake_data.make_mnist_idx(tmp_path / "m", n_train=60, n_test=20, layout=layout)
    dm = MNISTDataModule(root, batch_size=8, num_workers=0, val_split=0.2, cache_dir=tmp_path / "c")
    assert dm.num_classes == 10 and dm.class_names == [str(i) for i in range(10)]
    dm.setup("fit")
    n_val = math.ceil(60 * 0.2)  # scikit-learn's train_test_split rounds the validation size up
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [60 - n_val, n_val, 20]
    labels = read_idx(next(root.rglob("train-labels*")), "labels")
    per_class, val_per_class = (
        torch.bincount(labels, minlength=10),
        torch.bincount(dm.splits["val"].labels, minlength=10),
    )
    assert (val_per_class - per_class * 0.2).abs().max() <= 1  # stratified: each digit in proportion, +-1
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    train, val = dm.splits["train"].images, dm.splits["val"].images
    assert not any(torch.equal(a, b) for a in train for b in val)  # the fake digits are all different
    expected = read_idx(next((tmp_path / "m").rglob("t10k-images-idx3-ubyte.gz")))
    assert torch.equal(dm.splits["test"].images[:, 0], expected)
    again = MNISTDataModule(root, val_split=0.2, cache_dir=tmp_path / "c")
    again.setup("fit")
    assert torch.equal(again.splits["val"].images, val)  # seeded
    other = MNISTDataModule(root, val_split=0.2, seed=14, cache_dir=tmp_path / "c")
    other.setup("fit")
    assert not torch.equal(other.splits["val"].images, val)


def test_normalised_with_train_stats_only(tmp_path):
    root = fake_data.make_mnist_idx(tmp_path / "m", n_train=50, n_test=20)
    dm = MNISTDataModule(root, num_workers=0, cache_dir=tmp_path / "c")
    dm.setup("fit")
    imgs = dm.splits["train"].images.double().flatten(1) / 255
    assert dm.normalization.mean[0] == pytest.approx(imgs.mean(1).mean().item(), abs=1e-6)
    assert dm.normalization.std[0] == pytest.approx(imgs.std(1).mean().item(), abs=1e-6)
    x, _ = dm.datasets["test"][0]
    raw = dm.splits["test"].images[0].float() / 255
    assert torch.allclose(x, (raw - dm.normalization.mean[0]) / dm.normalization.std[0], atol=1e-5)


def test_train_from_test_when_train_images_are_missing(tmp_path):
    root = fake_data.make_mnist_idx(tmp_path / "m", n_test=50, layout="raw", with_train_images=False)
    with pytest.raises(
        FileNotFoundError, match=r"train-images-idx3-ubyte\[.gz\] is missing.*train_from='test'"
    ):
        MNISTDataModule(root, cache_dir=tmp_path / "c").setup("fit")
    dm = MNISTDataModule(root, train_from="test", val_split=0.2, cache_dir=tmp_path / "c")
    dm.setup("fit")
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [40, 10, 10]
    assert dm.splits["test"] is dm.splits["val"]


@pytest.mark.parametrize("scale, label, expected", [
    (1 / 255, None, r"line 2: every pixel must be a whole number 0-255"),  # pixels saved as floats in [0, 1]
    (1.0, 10, r"line 7: every label must be a whole number 0-9"),
])
def test_kaggle_csv_with_scaled_pixels_or_bad_labels_is_refused(tmp_path, scale, label, expected):
    import pandas as pd

    root = fake_data.make_mnist_csv(tmp_path / "k", n=40)
    frame = pd.read_csv(root / "train.csv")
    pixels = frame.columns[1:]
    frame[pixels] = frame[pixels].astype(float) * scale
    frame[pixels] = frame[pixels].where(frame[pixels] > 0, 0.5 * (scale < 1))  # a fraction in every row
    if label is not None:
        frame.loc[5, "label"] = label
    frame.to_csv(root / "train.csv", index=False)
    with pytest.raises(ValueError, match=expected):
        MNISTDataModule(root, source="csv", cache_dir=tmp_path / "c").setup("fit")


def test_kaggle_csv_source(tmp_path):
    root = fake_data.make_mnist_csv(tmp_path / "k", n=40)
    dm = MNISTDataModule(root, source="csv", val_split=0.25, num_workers=0, cache_dir=tmp_path / "c")
    dm.setup("fit")
    assert [len(dm.splits[s]) for s in ("train", "val")] == [30, 10]
    import pandas as pd

    frame = pd.read_csv(root / "train.csv")
    first_val = dm.splits["val"].images[0, 0].flatten().numpy()
    rows = frame.drop(columns="label").to_numpy()
    match = np.where((rows == first_val).all(1))[0]
    assert len(match) == 1 and frame["label"][match[0]] == dm.splits["val"].labels[0]


def test_missing_files_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)No MNIST IDX files.*lit-cv download mnist"):
        MNISTDataModule(tmp_path, cache_dir=tmp_path / "c").setup("fit")
    with pytest.raises(FileNotFoundError, match="train.csv"):
        MNISTDataModule(tmp_path, source="csv", cache_dir=tmp_path / "c").setup("fit")
    with pytest.raises(ValueError, match="normalize='imagenet' is not supported for grey MNIST"):
        MNISTDataModule(tmp_path, normalize="imagenet")
    with pytest.raises(ValueError, match="source='npz' is not supported"):
        MNISTDataModule(tmp_path, source="npz")


@pytest.mark.real_data
def test_real_mnist_counts(shared_data, tmp_path):
    dm = MNISTDataModule(
        shared_data / "mnist" / "raw", train_from="test", val_split=0.2, cache_dir=tmp_path / "c"
    )
    dm.setup("fit")
    assert [len(dm.splits[s]) for s in ("train", "val")] == [8000, 2000]
    labels = torch.cat([dm.splits["train"].labels, dm.splits["val"].labels])
    assert torch.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert len(read_idx(shared_data / "mnist" / "raw" / "train-labels-idx1-ubyte.gz", "labels")) == 60000
    counts = torch.bincount(dm.splits["val"].labels)
    assert (counts - torch.bincount(labels) * 0.2).abs().max() <= 1  # stratified


def test_cli_builds_it_from_the_config_and_it_sets_up(tmp_path, monkeypatch):
    """LightningCLI saves only MNIST's own arguments as hparams; the image base must not need any other."""
    monkeypatch.setattr("sys.argv", ["lit-cv"])  # pytest's own arguments are not for the CLI
    from lit_cv.cli import LitCVCLI

    root = fake_data.make_mnist_idx(tmp_path / "m", n_train=60, n_test=20)
    args = [
        "--config",
        str(REPO / "configs" / "mnist_beat.yaml"),
        f"--data.init_args.data_dir={root}",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--trainer.logger=false",
    ]
    dm = LitCVCLI(args=args, run=False).datamodule
    assert isinstance(dm, MNISTDataModule) and "cache" not in dm.hparams
    dm.setup("fit")
    n_val = max(math.ceil(60 * dm.hparams.val_split), 10)  # the config's val_split, rounded up, >= 1 per class
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [60 - n_val, n_val, 20]
    assert dm.datasets["train"].transform is not None  # augment: true in the config
    assert dm._num_workers() == (0 if not torch.cuda.is_available() else min(4, os.cpu_count() or 1))


@pytest.mark.parametrize("train_from", ["train", "test"])
def test_predict_ids_name_the_file_and_index_of_each_image(tmp_path, train_from):
    root = fake_data.make_mnist_idx(tmp_path / "m", n_train=40, n_test=20, layout="raw")
    dm = MNISTDataModule(root, normalize="none", train_from=train_from, cache_dir=tmp_path / "cache")
    dm.setup("predict")
    ids = dm.predict_ids()
    assert len(ids) == len(dm.datasets["test"])
    images = read_idx(root / "t10k-images-idx3-ubyte.gz", "images")
    for position, source in enumerate(ids):
        name, index = source.split("#")
        assert name == "t10k-images-idx3-ubyte.gz"  # the official test set, or (train_from: test) a part of it
        assert torch.equal(dm.splits["test"].images[position, 0], images[int(index)])
    if train_from == "train":
        assert ids == [f"t10k-images-idx3-ubyte.gz#{i}" for i in range(20)]
