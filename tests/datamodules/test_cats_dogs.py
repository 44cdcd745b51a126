"""CatsDogsDataModule on fake JPEG trees in both layouts (always) and on ../shared/data/cats_dogs (real_data)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import fake_data
import pytest
import torch

from datamodules import CatsDogsDataModule


def setup_quietly(dm: CatsDogsDataModule) -> CatsDogsDataModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("fit")
    return dm


def small(data_dir: Path, tmp_path: Path, **kwargs) -> CatsDogsDataModule:
    kwargs = {"image_size": 32, "num_workers": 0, "cache_dir": tmp_path / "cache", "batch_size": 4, **kwargs}
    return CatsDogsDataModule(data_dir, **kwargs)


@pytest.mark.parametrize("plural", [False, True])
def test_train_layout_split_is_stratified_disjoint_and_seeded(tmp_path, plural):
    root = fake_data.make_cats_dogs(tmp_path / "cd", per_class=10, plural=plural)
    dm = small(root, tmp_path)
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2
    with pytest.warns(UserWarning, match="skipped 3 unreadable"):  # cat.999.jpg (empty) + 2 Thumbs.db
        dm.setup("fit")
    train, val = dm.splits["train"], dm.splits["val"]
    # ceil(21 * 0.2) = 5 to validation, stratified: dogs 10 -> 8 + 2, cats 10 + the empty cat.999.jpg -> 8 + 3,
    # then the empty one is dropped from its split
    assert torch.bincount(train.labels)[1] == 8 and torch.bincount(val.labels)[1] == 2
    assert torch.bincount(train.labels)[0] + torch.bincount(val.labels)[0] == 10
    assert not set(train.paths) & set(val.paths)
    assert all(("cat" in p.name) == (y == 0) for p, y in zip(train.paths, train.labels.tolist()))
    assert dm.splits["test"] is val
    again = setup_quietly(small(root, tmp_path))
    assert again.splits["val"].paths == val.paths
    other = setup_quietly(small(root, tmp_path, seed=14))
    assert other.splits["val"].paths != val.paths
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long


def test_validation_and_test_folders_are_used(tmp_path):
    root = fake_data.make_cats_dogs(tmp_path / "cd", per_class=4, validation=2, test=3, bad_files=False)
    dm = setup_quietly(small(root, tmp_path))
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [8, 4, 6]
    assert all(p.parts[-3] == "validation" for p in dm.splits["val"].paths)
    assert all(p.parts[-3] == "test" for p in dm.splits["test"].paths)


@pytest.mark.parametrize("name", ["val", "valid"])
def test_a_val_or_valid_folder_validates(tmp_path, name):
    # Keras/Kaggle exports name it so; it used to be ignored, and validation was carved out of train instead.
    root = fake_data.make_cats_dogs(tmp_path / "cd", per_class=4, validation=2, test=3, bad_files=False)
    (root / "validation").rename(root / name)
    dm = setup_quietly(small(root, tmp_path))
    assert [len(dm.splits[s]) for s in ("train", "val")] == [8, 4]
    assert all(p.parts[-3] == name for p in dm.splits["val"].paths)
    shutil.copytree(root / name, root / "validation")
    with pytest.raises(ValueError, match=rf"has validation/ and {name}/: which validates is unclear"):
        setup_quietly(small(root, tmp_path / "again"))


def test_petimages_layout_with_bad_files(tmp_path):
    root = fake_data.make_cats_dogs(tmp_path / "cd", layout="petimages", per_class=10)
    dm = small(root, tmp_path, val_split=0.3)
    with pytest.warns(UserWarning, match=r"(?s)skipped 3 unreadable.*666\.jpg"):
        dm.setup("fit")
    # Thumbs.db never enters the split; 666.jpg is split (then found unreadable): ceil(21 * 0.3) = 7 to
    # validation, cats 11 -> 4, dogs 10 -> 3
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 20
    assert torch.bincount(dm.splits["val"].labels, minlength=2)[1] == 3
    assert {p.parent.name for p in dm.splits["train"].paths} == {"Cat", "Dog"}


def test_course_resize_255_crop_224_and_imagenet_default(tmp_path, course_normalizer):
    root = fake_data.make_cats_dogs(tmp_path / "cd", per_class=3, size=40, bad_files=False)
    dm = CatsDogsDataModule(root, image_size=24, resize_size=30, normalize="train", cache_dir=tmp_path / "c")
    setup_quietly(dm)
    mean, std = course_normalizer(dm.splits["train"].paths, 30, 24)  # Resize(30) + CenterCrop(24) + ToTensor
    assert torch.allclose(torch.tensor(dm.normalization.mean), mean, atol=1e-5)
    assert torch.allclose(torch.tensor(dm.normalization.std), std, atol=1e-5)
    assert CatsDogsDataModule(root).resize_size == 255  # image_size 224 -> the course's Resize(255)
    default = setup_quietly(small(root, tmp_path))
    assert default.normalization.mean == (0.485, 0.456, 0.406)


def test_missing_layout_error(tmp_path):
    (tmp_path / "cd" / "train" / "cats").mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError, match=r"(?s)Class folder 'dog' is missing.*lit-cv download cats_dogs"
    ):
        small(tmp_path / "cd", tmp_path).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"Neither .*train' nor .*PetImages' exists"):
        small(tmp_path / "empty", tmp_path).setup("fit")
    with pytest.raises(ValueError, match="val_split must be in"):
        CatsDogsDataModule(tmp_path, val_split=1.0)


@pytest.mark.real_data
def test_real_cats_dogs_layout_and_split(shared_data, tmp_path):
    dm = CatsDogsDataModule(shared_data / "cats_dogs", cache_dir=tmp_path / "cache")
    splits = dm._discover()  # file discovery only: decoding 2,002 full-size JPEGs is the benchmark's job
    assert len(splits["train"].paths) + len(splits["val"].paths) == 2002
    assert len(splits["val"].paths) == 401  # ceil(2002 * 0.2), scikit-learn's rounding
    assert sorted(torch.bincount(torch.tensor(splits["val"].labels)).tolist()) == [200, 201]  # stratified
    assert all(("cat." in p.name) == (y == 0) for p, y in zip(splits["train"].paths, splits["train"].labels))
