"""Honest "beat" rows: everything is selected on a validation split carved from the training data, and the selected
model is reported once on a test set it never saw.

The datamodules validate and test on the same split when a dataset has no separate test set (and RPS validates on
its official test set), so a row with ``holdout`` gets derived data folders, in the dataset's own format, under
``OUT/cache/holdout/<row>`` (symbolic links for image files):

- **rps**: whole hands of ``rps/`` become the validation set (the fit's ``rps-test-set/``):
  ``RPS_VAL_FRACTION`` of each class's rendered hands (``rock03-*.png`` is one hand in 120 poses; 1 of 7 per
  class, seeded), as the official test set shows other hands than training; the test pass reads the original
  folder, whose test split is the official 372 images. When a class has fewer than two hands (files not
  named by hand and pose), the split is by image (stratified) instead, with a warning.
- **mnist** (the 10,000 official test images, the training images being absent): ``TEST_FRACTION`` held out as
  ``t10k-*`` (the same 2,000 images the course row validates on), the rest as ``train-*`` (``train_from: train``),
  from which the datamodule carves its validation split.
- **cats_dogs**: ``TEST_FRACTION`` of ``train/`` held out as ``test/``; the datamodule carves validation from the rest.
- **bank**: the fit reads a CSV of the other lines, copied as they are; the test pass reads the original file with
  ``val_split: TEST_FRACTION``, whose validation (= test) split is then exactly the held-out rows: the datamodule's
  own stratified split (``datamodules.splits.stratified_split`` on the target), pinned by a test.

A datamodule option (``val_split`` carved from ``rps/``; ``test_split`` held out before the validation split) would
replace these folders by two CLI arguments.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from datamodules.cats_dogs import ALIASES
from datamodules.image_cache import CACHE_DIR_NAME
from datamodules.splits import grouped_split, name_group, stratified_split

SEED = 13  # the split seed of every datamodule
TEST_FRACTION = 0.2  # held out as the test set of data without one (the datamodules' default validation fraction)
RPS_VAL_FRACTION = 0.1  # of each class's hands in rps/: 1 of 7, i.e. 360 images validate, 2,160 train
RPS_CLASSES = ("paper", "rock", "scissors")


@dataclass
class Holdout:
    """Where the fit and the test pass of a row read their data.

    Args:
        fit_dir: the training data only; the fit's validation split is carved from it.
        test_dir: data whose test split (``lit-cv test``) is the held-out set.
        fit_args: CLI arguments of the fit (``--data.init_args.data_dir fit_dir`` included).
        test_args: CLI arguments of the test pass.
        sizes: images or rows per part, for the report (``train``, ``val``, ``test``; ``pool`` = train + val when
            the datamodule splits it).
    """

    fit_dir: Path
    test_dir: Path
    fit_args: list[str] = field(default_factory=list)
    test_args: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)


def _fresh(folder: Path) -> Path:
    """``folder`` emptied except for a datamodule cache (decoded images are reused across runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.name != CACHE_DIR_NAME:
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
    return folder


def _class_files(root: Path, classes: dict[str, tuple[str, ...]]) -> tuple[list[Path], np.ndarray]:
    """Images of ``root/<class folder>/`` (any of the class's names, case-insensitively), sorted, with labels; other
    files (``Thumbs.db``) are left out, as the datamodules leave them."""
    folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    paths: list[Path] = []
    labels: list[int] = []
    for label, names in enumerate(classes.values()):
        folder = next((folders[n] for n in names if n in folders), None)
        if folder is None:
            raise FileNotFoundError(f"No folder {' or '.join(names)} under {str(root)!r} (found {sorted(folders)}).")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels)


def _link(paths: list[Path], labels: np.ndarray, indices: np.ndarray, root: Path, classes: list[str]) -> int:
    for i in indices:
        target = root / classes[labels[i]] / paths[i].name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(paths[i].resolve())
    return len(indices)


def rps(data_dir: Path, work: Path) -> Holdout:
    classes = {c: (c,) for c in RPS_CLASSES}
    paths, labels = _class_files(data_dir / "rps", classes)
    try:  # other hands validate, as other hands test
        train, val = grouped_split(labels, [name_group(p) for p in paths], RPS_VAL_FRACTION, SEED)
    except ValueError as err:
        warnings.warn(f"RPS holdout: {err} Validating on images of the training hands instead.", stacklevel=2)
        train, val = stratified_split(labels, RPS_VAL_FRACTION, SEED)
    work = _fresh(work)
    sizes = {"train": _link(paths, labels, train, work / "rps", list(classes)),
             "val": _link(paths, labels, val, work / "rps-test-set", list(classes)),
             "test": sum(1 for p in (data_dir / "rps-test-set").rglob("*.png"))}
    return Holdout(work, data_dir, ["--data.init_args.data_dir", str(work)],
                   ["--data.init_args.data_dir", str(data_dir)], sizes)


def cats_dogs(data_dir: Path, work: Path) -> Holdout:
    classes = {c: (c, *ALIASES[c]) for c in ("cat", "dog")}
    paths, labels = _class_files(data_dir / "train", classes)
    pool, test = stratified_split(labels, TEST_FRACTION, SEED)
    work = _fresh(work)
    sizes = {"pool": _link(paths, labels, pool, work / "train", list(classes)),
             "test": _link(paths, labels, test, work / "test", list(classes))}
    args = ["--data.init_args.data_dir", str(work)]
    return Holdout(work, work, args, args, sizes)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file of uint8 ``array`` (magic: two zero bytes, type 0x08, the number of dimensions)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def mnist(data_dir: Path, work: Path) -> Holdout:
    from datamodules.mnist import IDX_FILES, read_idx

    def read(what: str, kind: str) -> np.ndarray:
        path = data_dir / IDX_FILES[what]
        return read_idx(path if path.is_file() else path.with_name(path.name + ".gz"), kind).numpy()

    images, labels = read("test_images", "images"), read("test_labels", "labels")
    pool, test = stratified_split(labels, TEST_FRACTION, SEED)
    work = _fresh(work)
    for prefix, part in (("train", pool), ("test", test)):
        _write_idx(work / IDX_FILES[f"{prefix}_images"], images[part])
        _write_idx(work / IDX_FILES[f"{prefix}_labels"], labels[part])
    args = ["--data.init_args.data_dir", str(work), "--data.init_args.train_from", "train"]
    return Holdout(work, work, args, args, {"pool": len(pool), "test": len(test)})


def bank(data_file: Path, work: Path) -> Holdout:
    from datamodules.bank import find_bank_file, read_bank_csv

    data_file = find_bank_file(data_file)
    frame, target = read_bank_csv(data_file)
    lines = data_file.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) - 1 != len(frame):
        raise ValueError(f"{str(data_file)!r}: {len(lines) - 1} lines after the header but {len(frame)} rows read.")
    pool, test = stratified_split(frame[target].to_numpy(), TEST_FRACTION, SEED)  # as the datamodule splits
    fit_file = _fresh(work) / data_file.name
    fit_file.write_text("".join([lines[0], *(lines[i + 1] for i in np.sort(pool))]), encoding="utf-8")  # as given
    test_args = ["--data.init_args.data_dir", str(data_file), "--data.init_args.val_split", str(TEST_FRACTION),
                 "--data.init_args.seed", str(SEED)]
    return Holdout(fit_file, data_file, ["--data.init_args.data_dir", str(fit_file)], test_args,
                   {"pool": len(pool), "test": len(test)})


HOLDOUTS: dict[str, Callable[[Path, Path], Holdout]] = {"rps": rps, "cats_dogs": cats_dogs, "mnist": mnist,
                                                        "bank": bank}
