"""image_cache: the cache folder, decoding, ImageCache's three modes and CachedImages, cached statistics."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import fake_data
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from datamodules import image_cache
from datamodules.image_cache import (
    CACHE_DIR_NAME,
    CachedImages,
    ImageCache,
    decode_all,
    decode_image,
    fingerprint,
    resolve_cache_dir,
    train_statistics,
)
from datamodules.normalization import course_stats


@pytest.fixture
def files(tmp_path: Path) -> tuple[list[Path], list[int]]:
    """Four RGBA PNGs (two per class), a zero-byte PNG, a truncated PNG and a Thumbs.db."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    root.mkdir()
    paths, labels = [], []
    for i in range(4):
        path = root / f"img{i}.png"
        fake_data.write_rgba_png(path, rng, (40 * i, 100, 200), 20 + 4 * i)
        paths.append(path)
        labels.append(i % 2)
    (root / "empty.png").write_bytes(b"")
    fake_data.write_truncated(root / "half.png", paths[0])
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(50))
    bad = [root / "empty.png", root / "half.png", root / "Thumbs.db"]
    (tmp_path / "cache").mkdir()  # resolve_cache_dir creates it in real use
    return paths[:2] + bad + paths[2:], [0, 1, 0, 1, 0, 0, 1]


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint([("a.png", 1, 2)], 28) == fingerprint([("a.png", 1, 2)], 28)
    assert fingerprint([("a.png", 1, 2)], 28) != fingerprint([("a.png", 1, 3)], 28)
    assert len(fingerprint("x")) == 20


def test_cache_dir_order(tmp_path, monkeypatch):
    monkeypatch.setattr(image_cache, "USER_CACHE", tmp_path / "user")
    data, shared = tmp_path / "data", tmp_path / "shared"
    data.mkdir()
    shared.mkdir()
    assert resolve_cache_dir(data, tmp_path / "mine") == tmp_path / "mine"
    assert resolve_cache_dir(data) == data.resolve() / CACHE_DIR_NAME
    shared.chmod(0o555)  # read-only, like ../shared/data: honoured even as root
    try:
        fallback = resolve_cache_dir(shared)
    finally:
        shared.chmod(0o755)
    assert fallback.parent == tmp_path / "user" and fallback.name.startswith("shared-")
    assert not (shared / CACHE_DIR_NAME).exists()


def test_decode_image_matches_image_folder_resize_and_crop(files):
    path = files[0][6]  # img3.png, 32 x 32 RGBA
    with open(path, "rb") as f:
        pil = Image.open(f).convert("RGB")
    expected = transforms.Compose(
        [transforms.Resize(20), transforms.CenterCrop(16), transforms.PILToTensor()]
    )(pil)
    decoded = decode_image(path, 20, 16)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 16, 16)
    assert torch.equal(decoded, expected)
    with pytest.raises(OSError):
        decode_image(files[0][2], 20, 16)  # the zero-byte PNG


def test_decode_all_reports_bad_indices(files):
    paths, _ = files
    images, bad = decode_all(paths, 12, 12)
    assert bad == [2, 3, 4] and images.shape == (4, 3, 12, 12)
    assert decode_all(paths, 12, 12, keep=False) == (None, [2, 3, 4])


@pytest.mark.parametrize("mode", ["memory", "disk", "none"])
def test_modes_serve_the_same_pixels_without_the_bad_files(files, tmp_path, mode):
    paths, labels = files
    cache = ImageCache(tmp_path / "data", tmp_path / "cache", mode, 12, 12)
    data, bad = cache.load(paths, labels)
    assert [p.name for p in bad] == ["empty.png", "half.png", "Thumbs.db"]
    assert len(data) == 4 and data.labels.tolist() == [0, 1, 0, 1]
    expected, _ = decode_all(paths, 12, 12)
    assert torch.equal(torch.stack([data.image(i) for i in range(4)]), expected)
    assert torch.equal(torch.stack(data.batch([3, 0])), expected[[3, 0]])
    assert torch.equal(torch.cat(list(data.chunks(size=3))), expected)
    stored = {"memory": torch.Tensor, "disk": Path, "none": type(None)}[mode]
    assert isinstance(data.images, stored)
    assert cache.load(paths, labels)[0] is data  # memoised per file list


def test_disk_cache_is_reused_by_a_later_run_without_decoding(files, tmp_path, monkeypatch):
    paths, labels = files
    first, _ = ImageCache(tmp_path / "data", tmp_path / "cache", "disk", 12, 12).load(paths, labels)
    assert first.images.name == f"decoded-{first.key}.npy"
    assert json.loads((tmp_path / "cache" / f"files-{first.key}.json").read_text()) == {"bad": [2, 3, 4]}

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the disk cache exists")

    monkeypatch.setattr(image_cache, "decode_all", no_decoding)
    again, bad = ImageCache(tmp_path / "data", tmp_path / "cache", "disk", 12, 12).load(paths, labels)
    assert again.images == first.images and len(bad) == 3
    assert torch.equal(again.image(1), first.image(1))


def test_key_follows_files_and_preprocessing(files, tmp_path):
    paths, labels = files
    cache = ImageCache(tmp_path / "data", None, "memory", 12, 12)
    key = cache.load(paths, labels)[0].key
    assert ImageCache(tmp_path / "data", None, "memory", 14, 12).load(paths, labels)[0].key != key
    fake_data.write_rgba_png(paths[0], np.random.default_rng(9), (0, 0, 0), 25)  # the file changes
    assert ImageCache(tmp_path / "data", None, "memory", 12, 12).load(paths, labels)[0].key != key


def test_memory_map_is_not_pickled(files, tmp_path):
    paths, labels = files
    data, _ = ImageCache(tmp_path / "data", tmp_path / "cache", "disk", 12, 12).load(paths, labels)
    data.image(0)  # opens the memory map
    assert data._mmap is not None
    copy = pickle.loads(pickle.dumps(data))  # what a DataLoader worker receives
    assert copy._mmap is None and torch.equal(copy.image(2), data.image(2))


def test_unknown_mode():
    with pytest.raises(ValueError, match="cache='gpu' is not supported; use one of memory, disk, none"):
        ImageCache(Path("."), None, "gpu", 8, 8)


def test_train_statistics_are_computed_once_and_cached(tmp_path, monkeypatch):
    images = torch.randint(
        0, 256, (5, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    train = CachedImages(labels=torch.zeros(5, dtype=torch.long), images=images, key="k")
    norm = train_statistics(train, tmp_path, image_size=4)
    mean, std, _ = course_stats([images])
    assert (norm.method, norm.mean, norm.std) == ("train", mean, std)
    written = json.loads(next(tmp_path.glob("stats-*.json")).read_text())
    assert written["n_images"] == 5 and written["image_size"] == 4

    def no_stats(*args, **kwargs):
        raise AssertionError("computed again although the statistics are cached")

    monkeypatch.setattr(image_cache, "course_stats", no_stats)
    assert train_statistics(train, tmp_path).mean == pytest.approx(mean)
    other = CachedImages(labels=train.labels, images=images, key="other")
    with pytest.raises(AssertionError, match="computed again"):  # another split: another key
        train_statistics(other, tmp_path)


def test_unreadable_statistics_are_recomputed(tmp_path):
    images = torch.full((2, 1, 3, 3), 51, dtype=torch.uint8)
    train = CachedImages(labels=torch.zeros(2, dtype=torch.long), images=images, key="k")
    train_statistics(train, tmp_path)
    next(tmp_path.glob("stats-*.json")).write_text("{not json")
    assert train_statistics(train, tmp_path).mean == pytest.approx((0.2,))
    assert train_statistics(train, None).mean == pytest.approx((0.2,))  # no cache folder: computed every time


def test_16_bit_png_decodes_with_its_real_values(tmp_path):
    gradient = fake_data.write_png16(tmp_path / "gradient16.png", height=8, width=64)
    assert Image.open(tmp_path / "gradient16.png").mode == "I;16"
    img = decode_image(tmp_path / "gradient16.png", None, None)
    assert img.shape == (3, 8, 64) and img.dtype == torch.uint8
    assert (img.min(), img.max()) == (0, 255)
    assert (img == 255).float().mean() < 0.05  # before: PIL clipped every value above 255 to white (98%)
    expected = torch.from_numpy(np.round(gradient.astype(np.float64) * 255 / 65535).astype(np.uint8))
    assert torch.equal(img[0], expected) and torch.equal(img[1], img[2])
    assert (img[0, 0, 1:] >= img[0, 0, :-1]).all()  # still a gradient
    small = decode_image(tmp_path / "gradient16.png", 4, 4)  # through the resize too
    assert small.max() > small.min()


def test_eight_bit_images_are_unchanged_by_the_16_bit_path(tmp_path):
    rng = np.random.default_rng(3)
    array = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "grey8.png")
    Image.fromarray(array.astype(np.int32)).save(tmp_path / "int32.tif")  # mode I with values <= 255
    for name in ("grey8.png", "int32.tif"):
        assert torch.equal(decode_image(tmp_path / name, None, None)[0], torch.from_numpy(array)), name


# ---- cache files are data, never code --------------------------------------------------------------------------
def test_planted_or_foreign_disk_cache_files_are_decoded_again(files, tmp_path):
    paths, labels = files
    first, _ = ImageCache(tmp_path / "data", tmp_path / "cache", "disk", 12, 12).load(paths, labels)
    expected = torch.stack([first.image(i) for i in range(len(first))])
    npy, meta = first.images, tmp_path / "cache" / f"files-{first.key}.json"
    marker = tmp_path / "marker"
    for planted_npy, planted_meta in [
        (np.array([fake_data.Payload(marker)], dtype=object), None),  # a pickle inside the .npy
        (np.zeros((4, 3, 5, 5), dtype=np.uint8), None),  # another shape
        (np.zeros((4, 3, 12, 12), dtype=np.float32), None),  # another dtype
        (None, '{"bad": "__import__(\'os\')"}'),  # a foreign files list
        (None, '{"bad": [99]}'),
    ]:
        if planted_npy is not None:
            np.save(npy, planted_npy, allow_pickle=True)
        if planted_meta is not None:
            meta.write_text(planted_meta)
        data, bad = ImageCache(tmp_path / "data", tmp_path / "cache", "disk", 12, 12).load(paths, labels)
        assert len(bad) == 3 and torch.equal(torch.stack([data.image(i) for i in range(len(data))]), expected)
    assert not marker.exists()


def test_foreign_statistics_are_recomputed(tmp_path):
    images = torch.full((2, 3, 3, 3), 51, dtype=torch.uint8)
    train = CachedImages(labels=torch.zeros(2, dtype=torch.long), images=images, key="k")
    train_statistics(train, tmp_path)
    stats = next(tmp_path.glob("stats-*.json"))
    for planted in ('{"mean": "0.5", "std": [1, 1, 1]}', '{"mean": [NaN, 0, 0], "std": [1, 1, 1]}',
                    '{"mean": [0.1, 0.2], "std": [1, 1, 1]}', '{"mean": [0.1, 0.2, 0.3], "std": [1, 1, {}]}'):
        stats.write_text(planted)
        assert train_statistics(train, tmp_path).mean == pytest.approx((0.2, 0.2, 0.2)), planted
