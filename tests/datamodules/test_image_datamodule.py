"""ImageDataModule and ImageSplitDataset on a tiny in-memory subclass that has no files at all."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from datamodules.image_cache import CachedImages
from datamodules.image_datamodule import ImageDataModule, ImageSplitDataset
from datamodules.normalization import Normalization, course_stats
from datamodules.transforms import BorderFillAffine

IMAGES = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
LABELS = torch.arange(12) % 2


class Arrays(ImageDataModule):
    """Twelve random images in memory, two classes; every split is the same data."""

    CLASS_NAMES = ("even", "odd")
    DOWNLOAD_NAME = "arrays"
    LAYOUT = "  nothing on disk"

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int = 4,
        num_workers: int | None = None,
        image_size: int | None = 8,
        augment: bool | str = False,
        normalize: str = "train",
        cache_dir: str | Path | None = None,
        download: bool = False,
    ) -> None:
        super().__init__(
            data_dir, batch_size, num_workers, image_size, augment, normalize, cache_dir, download
        )
        self.loads = 0
        self.present = True
        self.labels = LABELS

    def _data_present(self) -> bool:
        return self.present

    def _load_splits(self) -> dict[str, CachedImages]:
        self.loads += 1
        data = CachedImages(labels=self.labels, images=IMAGES, key="arrays")
        return {"train": data, "val": data, "test": data}


def arrays(tmp_path: Path, **kwargs) -> Arrays:
    return Arrays(tmp_path / "data", cache_dir=tmp_path / "cache", num_workers=0, **kwargs)


def test_setup_normalises_with_train_statistics_and_loads_once(tmp_path):
    dm = arrays(tmp_path)
    assert (
        dm.num_classes == 2 and dm.class_names == ["even", "odd"] and (dm.crop_size, dm.resize_size) == (8, 8)
    )
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert dm.loads == 1 and set(dm.datasets) == {"train", "val", "test"}
    mean, std, _ = course_stats([IMAGES])
    assert (dm.normalization.mean, dm.normalization.std) == (mean, std)
    x, y = dm.datasets["val"][5]
    expected = (IMAGES[5].float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5) and y == 1
    batch_x, batch_y = next(iter(dm.val_dataloader()))
    assert batch_x.shape == (4, 3, 8, 8) and batch_y.tolist() == [0, 1, 0, 1]
    assert list((tmp_path / "cache").glob("stats-*.json"))


def test_batched_reads_equal_single_reads_with_and_without_the_normalised_cache():
    data = CachedImages(labels=LABELS, images=IMAGES, key="k")
    norm = Normalization("train", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    plain = ImageSplitDataset(data, norm)
    batch = plain.__getitems__([3, 1, 7])
    assert all(
        torch.allclose(x, plain[i][0], atol=1e-6) and y == LABELS[i] for (x, y), i in zip(batch, [3, 1, 7])
    )
    assert plain._normalized is not None  # normalised once for the whole in-memory split
    assert pickle.loads(pickle.dumps(plain))._normalized is None  # workers rebuild it
    flipped = ImageSplitDataset(data, norm, transform=lambda img: img.flip(-1))
    assert torch.allclose(flipped.__getitems__([2])[0][0], plain[2][0].flip(-1), atol=1e-6)
    assert flipped._normalized is None  # augmented splits are normalised per image


def test_loaders_slice_whole_batches_only_without_augmentation(tmp_path):
    dm = arrays(tmp_path, augment=True)
    dm.setup("fit")
    assert dm.datasets["train"].tensors is None and dm.datasets["val"].tensors is not None
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert type(train.dataset).__name__ == "ImageSplitDataset"  # per-sample augmentation, collated
    assert type(val.dataset).__name__ == "TensorBatches" and val.dataset.data is dm.splits["val"]
    per_sample = [torch.stack([dm.datasets["val"][i][0] for i in range(start, start + 4)]) for start in (0, 4, 8)]
    sliced = [x for x, _ in val]
    assert all(torch.equal(a, b) for a, b in zip(sliced, per_sample)) and len(sliced) == 3
    assert torch.equal(torch.cat([y for _, y in val]), LABELS)


def test_augmentation_only_on_the_train_split(tmp_path):
    dm = arrays(tmp_path, augment=True)
    dm.setup("fit")
    assert dm.datasets["train"].transform is not None
    assert dm.datasets["val"].transform is None and dm.datasets["test"].transform is None


@pytest.mark.parametrize(("augment", "degrees", "shift"), [(True, 10, 0.1), ("light", 10, 0.1), ("strong", 40, 0.2)])
def test_augmentation_strength(tmp_path, augment, degrees, shift):
    dm = arrays(tmp_path, augment=augment)
    dm.setup("fit")
    (affine,) = [t for t in dm.datasets["train"].transform.transforms if isinstance(t, BorderFillAffine)]
    assert affine.degrees == [-degrees, degrees] and affine.translate == (shift, shift)
    x, _ = dm.datasets["train"][0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32


def test_an_unknown_augmentation_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"augment must be true, false or one of \('light', 'strong'\), got 'heavy'"):
        arrays(tmp_path, augment="heavy")


def test_checkpoint_normalisation_wins_over_the_data(tmp_path):
    saved = {
        "class_names": ["even", "odd"],
        "normalization": {"method": "train", "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    dm = arrays(tmp_path)
    dm.load_state_dict(saved)
    dm.setup("validate")
    assert dm.normalization.mean == (0.5, 0.5, 0.5) and dm.state_dict() == {
        "class_names": ["even", "odd"],
        "normalization": {"method": "train", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    }
    assert not list((tmp_path / "cache").glob("stats-*.json"))  # nothing computed
    dm.load_state_dict({})  # an old checkpoint without the key changes nothing
    assert dm.normalization.mean == (0.5, 0.5, 0.5)


def test_fixed_normalisation_needs_no_statistics(tmp_path):
    dm = arrays(tmp_path, normalize="imagenet")
    dm.prepare_data()  # nothing to compute for a fixed normalisation
    assert dm.loads == 0
    dm.setup("fit")
    assert dm.normalization.method == "imagenet"


def test_download_only_when_asked_and_missing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(Arrays, "_download", lambda self: calls.append(self.present))
    for download, present in ((False, False), (True, True), (True, False)):
        dm = arrays(tmp_path, download=download, normalize="none")
        dm.present = present
        dm.prepare_data()
    assert calls == [False]


def test_a_class_without_images_names_layout_and_download(tmp_path):
    dm = arrays(tmp_path)
    dm.labels = torch.zeros(12, dtype=torch.long)
    with pytest.raises(
        FileNotFoundError,
        match=r"(?s)train split has no readable image of class\(es\) \['odd'\].*"
        r"nothing on disk.*lit-cv download arrays",
    ):
        dm.setup("fit")
    assert dm.splits == {}  # not half set up


def test_workers_auto_for_in_memory_data(tmp_path):
    if not torch.cuda.is_available():
        assert Arrays(tmp_path)._num_workers() == 0
    assert Arrays(tmp_path, num_workers=3)._num_workers() == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
        ({"image_size": 0}, "image_size must be a positive int"),
        ({"image_size": None}, r"needs normalize='timm:<model_name>'"),
        ({"normalize": "zscore"}, "normalize='zscore' is not supported"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Arrays(tmp_path, **kwargs)


def test_timm_input_size(tmp_path):
    dm = Arrays(tmp_path, image_size=None, normalize="timm:vit_base_patch16_224")
    assert (dm.crop_size, dm.resize_size) == (224, int(224 / 0.9))
