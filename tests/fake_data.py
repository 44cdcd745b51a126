"""Tiny datasets in the EXACT on-disk formats of the real ones, for tests that must run without ../shared/data.

``import fake_data`` from any test (pytest's ``pythonpath = ["tests"]``). Every generator is seeded, writes under
``root`` and returns what to pass to the datamodule (``data_dir``, or the CSV path for bank marketing):

- :func:`make_rps` -> ``RPSDataModule(data_dir)``: RGBA PNG trees ``rps/`` + ``rps-test-set/``, with a zero-byte
  PNG, a truncated PNG and a ``Thumbs.db`` in the train tree when ``bad_files``;
- :func:`make_cats_dogs` -> ``CatsDogsDataModule(data_dir)``: JPEG trees ``train/{cat,dog}`` (or ``cats/dogs``)
  with optional ``validation/`` and ``test/``, or Microsoft's ``PetImages/{Cat,Dog}`` (with a zero-byte JPEG and
  ``Thumbs.db`` files, as the real archive has);
- :func:`make_mnist_idx` -> ``MNISTDataModule(data_dir)``: IDX ``.gz`` files in torchvision's ``MNIST/raw``;
- :func:`make_mnist_csv` -> ``MNISTDataModule(data_dir, source="csv")``: Kaggle's ``train.csv``;
- :func:`make_bank_kaggle` / :func:`make_bank_uci` -> ``BankMarketingDataModule(path)``: ``bank.csv`` (comma,
  ``deposit``) / ``bank-full.csv`` (semicolon, quoted strings, ``y``) with the real headers;
- :func:`make_bank_additional` -> ``BankMarketingDataModule(path)``: UCI's ``bank-additional-full.csv`` (semicolon,
  quoted strings, 20 features + ``y``, ``unknown`` values, ``pdays`` 999 = never contacted, the economic indicators);
- :func:`write_png16` -> a 16-bit greyscale PNG gradient (mode ``I;16``);
- :class:`Payload` / :func:`plant_payload` -> a file (checkpoint, weights, cache) whose unpickling writes a marker
  file: the untrusted-file tests check that the marker never appears.
"""

from __future__ import annotations

import csv
import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

RPS_CLASSES = ("paper", "rock", "scissors")
# class -> RGB tint, so a net can tell the fake classes apart
_TINTS = {
    "paper": (230, 200, 170),
    "rock": (120, 90, 80),
    "scissors": (90, 140, 220),
    "cat": (200, 120, 60),
    "dog": (60, 120, 200),
}

BANK_COLUMNS = (
    "age",
    "job",
    "marital",
    "education",
    "default",
    "balance",
    "housing",
    "loan",
    "contact",
    "day",
    "month",
    "duration",
    "campaign",
    "pdays",
    "previous",
    "poutcome",
)
BANK_CATEGORIES = {
    "job": (
        "admin.",
        "blue-collar",
        "entrepreneur",
        "housemaid",
        "management",
        "retired",
        "self-employed",
        "services",
        "student",
        "technician",
        "unemployed",
        "unknown",
    ),
    "marital": ("married", "single", "divorced"),
    "education": ("primary", "secondary", "tertiary", "unknown"),
    "default": ("no", "yes"),
    "housing": ("no", "yes"),
    "loan": ("no", "yes"),
    "contact": ("cellular", "telephone", "unknown"),
    "month": ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    "poutcome": ("failure", "other", "success", "unknown"),
}


def _image(rng: np.random.Generator, tint: tuple[int, int, int], height: int, width: int) -> np.ndarray:
    noise = rng.integers(-60, 60, size=(height, width, 3))
    return np.clip(np.asarray(tint)[None, None, :] + noise, 0, 255).astype(np.uint8)


def write_rgba_png(path: Path, rng: np.random.Generator, tint: tuple[int, int, int], size: int) -> None:
    """A ``size`` x ``size`` 8-bit RGBA PNG (the RPS originals are 300x300 RGBA), alpha 255 with a clear corner."""
    rgb = _image(rng, tint, size, size)
    alpha = np.full((size, size, 1), 255, np.uint8)
    alpha[: size // 8, : size // 8] = 0
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(path)


def write_truncated(path: Path, valid_image: Path) -> None:
    """The first half of ``valid_image``'s bytes: a file with a valid header that cannot be decoded."""
    data = valid_image.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_rps(
    root: Path,
    per_class: int = 6,
    size: int = 40,
    test_per_class: int = 3,
    bad_files: bool = True,
    seed: int = 0,
    per_hand: int = 100,
) -> Path:
    """RPS tree ``root/rps/{paper,rock,scissors}/*.png`` + ``root/rps-test-set/...``; returns ``root``.

    Files are named as the real ones, by hand and pose: ``rock01-003.png``, ``per_hand`` poses a hand.

    With ``bad_files``: ``rps/rock/rock-empty.png`` (zero bytes), ``rps/paper/paper-truncated.png`` (half a PNG)
    and ``rps/scissors/Thumbs.db``, i.e. 3 files the datamodule must skip (so ``per_class`` readable images remain).
    """
    rng = np.random.default_rng(seed)
    for split, n in (("rps", per_class), ("rps-test-set", test_per_class)):
        for cls in RPS_CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                prefix = "test" + cls if split == "rps-test-set" else cls
                write_rgba_png(folder / f"{prefix}{i // per_hand:02d}-{i % per_hand:03d}.png", rng, _TINTS[cls], size)
    if bad_files:
        (root / "rps" / "rock" / "rock-empty.png").write_bytes(b"")
        write_truncated(
            root / "rps" / "paper" / "paper-truncated.png", root / "rps" / "paper" / "paper00-000.png"
        )
        (root / "rps" / "scissors" / "Thumbs.db").write_bytes(
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500)
        )
    return root


def write_jpeg(
    path: Path, rng: np.random.Generator, tint: tuple[int, int, int], height: int, width: int
) -> None:
    Image.fromarray(_image(rng, tint, height, width), "RGB").save(path, quality=90)


def make_cats_dogs(
    root: Path,
    layout: str = "train",
    per_class: int = 6,
    size: int = 48,
    plural: bool = False,
    validation: int = 0,
    test: int = 0,
    bad_files: bool = True,
    seed: int = 0,
) -> Path:
    """Cats-vs-Dogs JPEGs (non-square, random sizes around ``size``); returns ``root``.

    ``layout="train"``: ``root/train/{cat,dog}/cat.N.jpg`` (``cats/dogs`` when ``plural``, as Kaggle's subsets),
    plus ``validation/`` and ``test/`` trees with ``validation`` / ``test`` images per class when > 0.
    ``layout="petimages"``: Microsoft's ``root/PetImages/{Cat,Dog}/N.jpg``.
    With ``bad_files``: one zero-byte JPEG (``Cat/666.jpg`` in PetImages, ``cat.999.jpg`` otherwise) and a
    ``Thumbs.db`` per class folder of the train/PetImages tree.
    """
    rng = np.random.default_rng(seed)
    if layout not in ("train", "petimages"):
        raise ValueError(f"layout must be 'train' or 'petimages', got {layout!r}")
    if layout == "petimages":
        trees = [(root / "PetImages", {"cat": "Cat", "dog": "Dog"}, per_class, True)]
    else:
        names = {"cat": "cats", "dog": "dogs"} if plural else {"cat": "cat", "dog": "dog"}
        trees = [(root / "train", names, per_class, True)]
        trees += [(root / "validation", names, validation, False)] if validation else []
        trees += [(root / "test", names, test, False)] if test else []
    start = 0
    for tree, names, n, is_train in trees:
        for cls, folder_name in names.items():
            folder = tree / folder_name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(start, start + n):
                h, w = (int(size * f) for f in rng.uniform(0.8, 1.5, size=2))
                name = f"{i}.jpg" if layout == "petimages" else f"{cls}.{i}.jpg"
                write_jpeg(folder / name, rng, _TINTS[cls], h, w)
            if bad_files and is_train:
                (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(100))
                if cls == "cat":
                    (folder / ("666.jpg" if layout == "petimages" else "cat.999.jpg")).write_bytes(b"")
        start += n
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (gzip-compressed when ``path`` ends in .gz): magic ``0 0 0x08 ndim``, big-endian dims, bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _digits(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 'digits' (a bright bar whose position encodes the label) and balanced labels."""
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 30, size=(n, 28, 28)).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 4 + 2 * y : 6 + 2 * y, 4:24] = 255
    return images, labels.astype(np.uint8)


def make_mnist_idx(
    root: Path,
    n_train: int = 60,
    n_test: int = 20,
    layout: str = "torchvision",
    with_train_images: bool = True,
    seed: int = 0,
) -> Path:
    """MNIST IDX ``.gz`` files; returns the ``data_dir`` to pass.

    ``layout="torchvision"``: files in ``root/MNIST/raw/`` (torchvision's root = ``root``, returned);
    ``layout="raw"``: files directly in ``root`` (like ``../shared/data/mnist/raw``; ``root`` returned).
    ``with_train_images=False`` leaves out ``train-images-idx3-ubyte.gz``, as the shared copy does.
    """
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw" if layout == "torchvision" else root
    raw.mkdir(parents=True, exist_ok=True)
    train_x, train_y = _digits(rng, n_train)
    test_x, test_y = _digits(rng, n_test)
    if with_train_images:
        write_idx(raw / "train-images-idx3-ubyte.gz", train_x)
    write_idx(raw / "train-labels-idx1-ubyte.gz", train_y)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", test_y)
    return root


def make_mnist_csv(root: Path, n: int = 60, seed: int = 0) -> Path:
    """Kaggle digit-recognizer ``root/train.csv`` (header ``label,pixel0..pixel783``); returns ``root``."""
    rng = np.random.default_rng(seed)
    images, labels = _digits(rng, n)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", *(f"pixel{i}" for i in range(784))])
        for y, img in zip(labels, images):
            writer.writerow([int(y), *img.reshape(-1).tolist()])
    return root


def bank_rows(n: int, seed: int = 0) -> list[dict[str, object]]:
    """``n`` plausible bank-marketing rows (target under key ``target``; long calls tend to say yes)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row: dict[str, object] = {c: str(rng.choice(v)) for c, v in BANK_CATEGORIES.items()}
        duration = int(rng.integers(5, 1500))
        row.update(
            age=int(rng.integers(18, 90)),
            balance=int(rng.integers(-2000, 20000)),
            day=int(rng.integers(1, 32)),
            duration=duration,
            campaign=int(rng.integers(1, 10)),
            pdays=int(rng.choice([-1, int(rng.integers(1, 400))])),
            previous=int(rng.integers(0, 5)),
        )
        row["target"] = "yes" if (duration > 600) != (i % 7 == 0) else "no"
        rows.append(row)
    return rows


def make_bank_kaggle(root: Path, n: int = 200, seed: int = 0, name: str = "bank.csv") -> Path:
    """Kaggle ``bank.csv``: comma separated, unquoted, 17 columns, target ``deposit``; returns the file path."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*BANK_COLUMNS, "deposit"])
        for row in bank_rows(n, seed):
            writer.writerow([*(row[c] for c in BANK_COLUMNS), row["target"]])
    return path


def make_bank_uci(root: Path, n: int = 200, seed: int = 0, name: str = "bank-full.csv") -> Path:
    """UCI ``bank-full.csv``: semicolon separated, strings and header quoted, target ``y``; returns the file path."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    lines = [";".join(f'"{c}"' for c in (*BANK_COLUMNS, "y"))]
    for row in bank_rows(n, seed):
        values = [*(row[c] for c in BANK_COLUMNS), row["target"]]
        lines.append(";".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values))
    path.write_text("\n".join(lines) + "\n")
    return path


BANK_ADDITIONAL_COLUMNS = (
    "age", "job", "marital", "education", "default", "housing", "loan", "contact", "month", "day_of_week",
    "duration", "campaign", "pdays", "previous", "poutcome", "emp.var.rate", "cons.price.idx", "cons.conf.idx",
    "euribor3m", "nr.employed",
)
BANK_ADDITIONAL_CATEGORIES = {
    "job": BANK_CATEGORIES["job"],
    "marital": ("divorced", "married", "single", "unknown"),
    "education": (
        "basic.4y", "basic.6y", "basic.9y", "high.school", "illiterate", "professional.course", "university.degree",
        "unknown",
    ),
    "default": ("no", "yes", "unknown"),
    "housing": ("no", "yes", "unknown"),
    "loan": ("no", "yes", "unknown"),
    "contact": ("cellular", "telephone"),
    "month": ("mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    "day_of_week": ("mon", "tue", "wed", "thu", "fri"),
}
# the quarterly indicators take a few fixed values in the real file: (emp.var.rate, cons.price.idx, cons.conf.idx,
# euribor3m, nr.employed); nr.employed is written without ".0" when whole (5191, 5228.1)
_ECONOMY = (
    ("1.1", "93.994", "-36.4", "4.857", "5191"),
    ("1.4", "93.918", "-42.7", "4.961", "5228.1"),
    ("-1.8", "92.893", "-46.2", "1.313", "5099.1"),
    ("-2.9", "92.201", "-31.4", "0.869", "5076.2"),
    ("-0.1", "93.2", "-42", "4.191", "5195.8"),
)


def make_bank_additional(root: Path, n: int = 300, seed: int = 0, name: str = "bank-additional-full.csv") -> Path:
    """UCI ``bank-additional-full.csv``: semicolon separated, header and strings quoted, numbers bare; 20 features and
    ``y``; ``pdays`` is 999 ("never contacted", then ``poutcome`` is ``nonexistent``) for most rows; ``unknown`` in
    the categorical columns. Returns the file path."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = [";".join(f'"{c}"' for c in (*BANK_ADDITIONAL_COLUMNS, "y"))]
    for i in range(n):
        row: dict[str, object] = {c: str(rng.choice(v)) for c, v in BANK_ADDITIONAL_CATEGORIES.items()}
        contacted = rng.random() < 0.15
        economy = _ECONOMY[int(rng.integers(len(_ECONOMY)))]
        duration = int(rng.integers(5, 1500))
        row.update(
            age=int(rng.integers(17, 98)),
            duration=duration,
            campaign=int(rng.integers(1, 10)),
            pdays=int(rng.integers(0, 28)) if contacted else 999,
            previous=int(rng.integers(1, 4)) if contacted else 0,
            poutcome=str(rng.choice(["failure", "success"])) if contacted else "nonexistent",
        )
        row.update(zip(("emp.var.rate", "cons.price.idx", "cons.conf.idx", "euribor3m", "nr.employed"), economy))
        target = "yes" if (duration > 600) != (i % 7 == 0) else "no"
        values = [row[c] for c in BANK_ADDITIONAL_COLUMNS]
        numeric = set(BANK_ADDITIONAL_COLUMNS) - set(BANK_ADDITIONAL_CATEGORIES) - {"poutcome"}
        cells = [str(v) if c in numeric else f'"{v}"' for c, v in zip(BANK_ADDITIONAL_COLUMNS, values)]
        lines.append(";".join([*cells, f'"{target}"']))
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def write_png16(path: Path, height: int = 16, width: int = 64) -> np.ndarray:
    """A 16-bit greyscale PNG (PIL mode ``I;16``): a horizontal gradient from 0 to 65535; returns the uint16 array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    row = np.linspace(0, 65535, width).round().astype(np.uint16)
    array = np.tile(row, (height, 1))
    Image.fromarray(array).save(path)  # uint16 -> mode I;16, a 16-bit PNG
    return array


class Payload:
    """Unpickling this object writes ``marker`` (via ``exec``): proof that a load executed code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def plant_payload(path: Path, marker: Path, base: dict[str, object] | None = None) -> Path:
    """``torch.save`` of ``base`` (e.g. a valid, resumable checkpoint) plus a :class:`Payload` under ``extra``."""
    import torch

    torch.save({**(base or {}), "extra": Payload(marker)}, path)
    return path
