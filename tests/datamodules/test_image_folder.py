"""ImageFolderDataModule: class-folder discovery, skipped files, shared splits, cache modes (a tiny subclass)."""

from __future__ import annotations

from pathlib import Path

import fake_data
import numpy as np
import pytest
import torch

from datamodules.image_folder import FileSplit, ImageFolderDataModule, list_files


class Shapes(ImageFolderDataModule):
    """``train/{circle,square}`` (``squares`` accepted too) for training, ``eval/...`` for validation and test."""

    CLASS_NAMES = ("circle", "square")
    DOWNLOAD_NAME = "shapes"
    LAYOUT = "  DATA_DIR/{train,eval}/{circle,square}/*.png"

    def _discover(self) -> dict[str, FileSplit]:
        aliases = {"square": ("squares",)}
        train = self._class_tree(self.data_dir / "train", aliases)
        test = self._class_tree(self.data_dir / "eval", aliases)
        return {"train": train, "val": test, "test": test}


@pytest.fixture
def shapes_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    for split, n in (("train", 3), ("eval", 2)):
        for cls, folder, tint in (("circle", "Circle", (200, 40, 40)), ("square", "squares", (40, 40, 200))):
            (root / split / folder / "nested").mkdir(parents=True)
            for i in range(n):
                sub = "nested/" if i == 0 else ""  # files in sub-folders count
                fake_data.write_rgba_png(root / split / folder / f"{sub}{cls}{i}.png", rng, tint, 16)
    (root / "train" / "Circle" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / "squares" / "broken.png").write_bytes(b"")
    (root / "train" / "squares" / ".lit-cv-cache").mkdir()
    (root / "train" / "squares" / ".lit-cv-cache" / "decoded-x.npy").write_bytes(b"")  # never an input
    return root


def small(root: Path, tmp_path: Path, **kwargs) -> Shapes:
    return Shapes(root, image_size=8, num_workers=0, cache_dir=tmp_path / "cache", **kwargs)


def test_list_files_is_recursive_sorted_and_skips_the_cache(shapes_dir):
    names = [
        p.relative_to(shapes_dir / "train" / "squares").as_posix()
        for p in list_files(shapes_dir / "train" / "squares")
    ]
    assert names == ["broken.png", "nested/square0.png", "square1.png", "square2.png"]


def test_class_tree_matches_folders_case_insensitively_and_by_alias(shapes_dir, tmp_path):
    found = small(shapes_dir, tmp_path)._class_tree(shapes_dir / "train", {"square": ("squares",)})
    assert found.labels == [0, 0, 0, 1, 1, 1, 1]  # CLASS_NAMES order; broken.png is still an image file here
    assert all(p.parent.name in ("Circle", "nested", "squares") for p in found.paths)
    assert [p.name for p in found.skipped] == [".DS_Store"]  # non-images never enter a split
    assert (
        found.subset([0, 6]).paths == [found.paths[0], found.paths[6]]
        and found.subset([0]).skipped == found.skipped
    )


def test_splits_skip_bad_files_with_one_warning_and_share_objects(shapes_dir, tmp_path):
    dm = small(shapes_dir, tmp_path)
    with pytest.warns(
        UserWarning, match=r"(?s)Shapes: skipped 2 unreadable file\(s\).*\.DS_Store.*broken\.png"
    ):
        dm.setup("fit")
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [6, 4, 4]
    assert dm.splits["val"] is dm.splits["test"]  # one decode for a folder that serves twice
    assert torch.bincount(dm.splits["train"].labels).tolist() == [3, 3]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (6, 3, 8, 8) and y.dtype == torch.long


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_cache_modes_and_automatic_workers(shapes_dir, tmp_path, cache):
    dm = small(shapes_dir, tmp_path, cache=cache)
    with pytest.warns(UserWarning, match="skipped 2"):
        dm.setup("fit")
    stored = {"memory": torch.Tensor, "disk": Path, "none": type(None)}[cache]
    assert isinstance(dm.splits["train"].images, stored)
    auto = Shapes(shapes_dir, cache=cache)._num_workers()
    assert auto >= 1 if cache != "memory" or torch.cuda.is_available() else auto == 0


def test_missing_folders_name_the_layout(shapes_dir, tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"(?s)Folder '.*nowhere/train' does not exist.*lit-cv download shapes"
    ):
        small(tmp_path / "nowhere", tmp_path).setup("fit")
    (shapes_dir / "eval" / "squares").rename(shapes_dir / "eval" / "triangles")
    with pytest.raises(
        FileNotFoundError, match=r"(?s)Class folder 'square' is missing under .*eval'.*\{train,eval\}"
    ):
        small(shapes_dir, tmp_path).setup("fit")


def test_download_only_when_folders_are_missing(shapes_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(Shapes, "_download", lambda self: calls.append(self.data_dir))
    small(shapes_dir, tmp_path, download=True, normalize="none").prepare_data()
    small(tmp_path / "empty", tmp_path, download=True, normalize="none").prepare_data()
    assert calls == [tmp_path / "empty"]


def test_bad_cache_argument():
    with pytest.raises(ValueError, match="cache='ram' is not supported; use one of memory, disk, none"):
        Shapes("x", cache="ram")
