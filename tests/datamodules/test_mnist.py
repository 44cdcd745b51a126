"""MNISTDataModule on fake IDX .gz / Kaggle CSV files (always) and on ../shared/data/mnist (real_data)."""

from __future__ import annotations

import gzip
import shutil
import struct

import fake_data
import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from datamodules import MNISTDataModule
from datamodules.mnist import read_idx


def test_read_idx_matches_torchvision_reader(tmp_path):
    root = fake_data.make_mnist_idx(tmp_path / "m", n_train=30, n_test=10)
    raw = root / "MNIST" / "raw"
    for name, reader in (
        ("train-images-idx3-ubyte", read_image_file),
        ("train-labels-idx1-ubyte", read_label_file),
    ):
        with gzip.open(raw / f"{name}.gz") as f_in, open(tmp_path / name, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
        expected = reader(str(tmp_path / name)).numpy()
        assert np.array_equal(read_idx(raw / f"{name}.gz"), expected)
        assert np.array_equal(read_idx(tmp_path / name), expected)  # uncompressed works too
    header = b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28)  # says 2 images, holds 100 bytes
    (tmp_path / "short.gz").write_bytes(gzip.compress(header + bytes(100)))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short.gz")


@pytest.mark.parametrize("layout", ["torchvision", "raw"])
def test_idx_shapes_split_and_test_set(tmp_path, layout):
    root = fake_data.make_mnist_idx(tmp_path / "m", n_train=60, n_test=20, layout=layout)
    dm = MNISTDataModule(root, batch_size=8, num_workers=0, val_split=0.2, cache_dir=tmp_path / "c")
    assert dm.num_classes == 10 and dm.class_names == [str(i) for i in range(10)]
    dm.setup("fit")
    n_val = sum(round(n * 0.2) for n in np.bincount(read_idx(next(root.rglob("train-labels*")))))  # per class
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [60 - n_val, n_val, 20]
    assert torch.bincount(dm.splits["val"].labels).min() >= 1  # stratified: every digit in validation
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    train, val = dm.splits["train"].images, dm.splits["val"].images
    assert not any(torch.equal(a, b) for a in train for b in val)  # the fake digits are all different
    expected = read_idx(next((tmp_path / "m").rglob("t10k-images-idx3-ubyte.gz")))
    assert np.array_equal(dm.splits["test"].images[:, 0].numpy(), expected)
    again = MNISTDataModule(root, val_split=0.2, cache_dir=tmp_path / "c")
    again.setup("fit")
    assert torch.equal(again.splits["val"].images, val)


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
    assert len(read_idx(shared_data / "mnist" / "raw" / "train-labels-idx1-ubyte.gz")) == 60000
