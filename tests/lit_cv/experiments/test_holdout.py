"""The beat rows' data: the fit never sees the test set, and the test pass reads exactly the held-out part."""

from __future__ import annotations

import fake_data
import numpy as np
import pytest

from datamodules import BankMarketingDataModule, CatsDogsDataModule, MNISTDataModule, RPSDataModule
from datamodules.splits import name_group
from lit_cv.experiments import holdout


def linked(root, split):
    return {p.resolve() for p in (root / split).rglob("*") if p.is_file()}


def test_rps_validates_on_other_hands_and_tests_on_the_official_set(tmp_path):
    """Files named as the real ones (``rock03-017.png``: hand 3, pose 17): 1 of each class's 7 hands validates."""
    data = fake_data.make_rps(tmp_path / "rps", per_class=14, size=32, test_per_class=4, bad_files=False, per_hand=2)
    split = holdout.rps(data, tmp_path / "work")
    train, val = linked(split.fit_dir, "rps"), linked(split.fit_dir, "rps-test-set")
    assert split.sizes == {"train": 36, "val": 6, "test": 12} == {"train": len(train), "val": len(val), "test": 12}
    assert not train & val and train | val == {p.resolve() for p in (data / "rps").rglob("*.png")}
    hands = {side: {(p.parent.name, name_group(p)) for p in files} for side, files in (("train", train), ("val", val))}
    assert not hands["train"] & hands["val"]  # no hand on both sides
    assert sorted(cls for cls, _ in hands["val"]) == ["paper", "rock", "scissors"]  # one hand of each class
    assert split.test_dir == data


def test_rps_with_one_hand_per_class_is_split_by_image_with_a_warning(tmp_path):
    """Ten poses of one hand per class (``rock00-000`` .. ``-009``): no other hand can validate."""
    data = fake_data.make_rps(tmp_path / "rps", per_class=10, size=32, test_per_class=4, bad_files=False)
    with pytest.warns(UserWarning, match="at least two per class"):
        split = holdout.rps(data, tmp_path / "work")
    train, val = linked(split.fit_dir, "rps"), linked(split.fit_dir, "rps-test-set")
    assert split.sizes == {"train": 27, "val": 3, "test": 12} == {"train": len(train), "val": len(val), "test": 12}
    assert not train & val and train | val == {p.resolve() for p in (data / "rps").rglob("*.png")}
    assert split.test_dir == data
    fit = RPSDataModule(split.fit_dir, cache="none", cache_dir=tmp_path / "cache")
    fit.setup("fit")
    assert (len(fit.datasets["train"]), len(fit.datasets["val"])) == (27, 3)


def test_cats_dogs_holds_out_a_test_folder(tmp_path):
    data = fake_data.make_cats_dogs(tmp_path / "cd", per_class=10, size=40, bad_files=False)
    split = holdout.cats_dogs(data, tmp_path / "work")
    pool, test = linked(split.fit_dir, "train"), linked(split.fit_dir, "test")
    assert not pool & test and len(test) == split.sizes["test"] == 4
    dm = CatsDogsDataModule(split.fit_dir, image_size=32, cache="none", val_split=0.25)
    dm.setup("fit")
    assert len(dm.datasets["test"]) == 4
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == split.sizes["pool"]


def test_mnist_test_images_are_not_in_the_training_files(tmp_path):
    data = fake_data.make_mnist_idx(tmp_path / "raw", n_train=10, n_test=100, layout="raw", with_train_images=False)
    split = holdout.mnist(data, tmp_path / "work")
    assert split.sizes == {"pool": 80, "test": 20} and "train" in split.fit_args
    dm = MNISTDataModule(split.fit_dir, train_from="train", val_split=0.1, normalize="none")
    dm.setup("fit")
    train, test = dm.splits["train"].images, dm.splits["test"].images
    assert len(test) == 20 and len(train) + len(dm.splits["val"].images) == 80
    flat_train = {bytes(x.numpy()) for x in train}
    assert not any(bytes(x.numpy()) in flat_train for x in test)


def test_bank_test_pass_reads_exactly_the_held_out_rows(tmp_path):
    """Pins the assumption of ``holdout.bank``: the datamodule's validation split of the original file, with
    ``val_split: TEST_FRACTION`` and the seed, is the set of rows left out of the fit's file."""
    for make, name in ((fake_data.make_bank_kaggle, "bank.csv"), (fake_data.make_bank_uci, "bank-full.csv")):
        data = make(tmp_path / name.split(".")[0], n=200)
        split = holdout.bank(data, tmp_path / "work" / name)
        original = split.test_dir.read_text().splitlines()
        fit = split.fit_dir.read_text().splitlines()
        assert fit[0] == original[0] and split.fit_dir.name == name
        held_out = {i for i, line in enumerate(original[1:]) if line not in set(fit[1:])}
        dm = BankMarketingDataModule(split.test_dir, val_split=holdout.TEST_FRACTION, seed=holdout.SEED)
        dm.setup("fit")
        assert set(dm._frames["val"].index) == held_out  # the pin: private on purpose, see the docstring
        assert len(held_out) == split.sizes["test"] == 40 and len(fit) - 1 == split.sizes["pool"] == 160
        yes_rate = [dm.datasets[s].tensors[1].float().mean().item() for s in ("train", "val")]
        assert np.isclose(*yes_rate, atol=0.05)  # stratified
