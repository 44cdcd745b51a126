"""Cats vs. Dogs (Kaggle 2013 / Microsoft Research's Asirra PetImages) as a LightningDataModule.

Binary task, cat=0 and dog=1. The course's transforms: ``Resize(255)`` then ``CenterCrop(224)``, and ImageNet
normalisation when fine-tuning a pretrained backbone (``normalize: imagenet`` or ``timm:<model_name>``).
"""

from __future__ import annotations

from pathlib import Path

from datamodules.image_cache import CacheMode
from datamodules.image_datamodule import Augment
from datamodules.image_folder import FileSplit, ImageFolderDataModule
from datamodules.splits import check_val_split, stratified_split

VALIDATION_FOLDERS = ("validation", "val", "valid")  # names a validation folder goes by (Keras, Kaggle)
ALIASES = {"cat": ("cats",), "dog": ("dogs",)}


class CatsDogsDataModule(ImageFolderDataModule):
    """Cats vs. Dogs from either layout (class folders ``cat``/``cats``/``Cat`` and ``dog``/``dogs``/``Dog``):

    - ``train/{cat,dog}`` with optional ``validation/{cat,dog}`` (or ``val/``, ``valid/``) and ``test/{cat,dog}``; without a validation
      folder, ``val_split`` of ``train`` (stratified, seeded) validates; without a test folder, the validation
      split also tests;
    - Microsoft's ``PetImages/{Cat,Dog}`` (one folder, known to hold a few corrupt files, which are skipped with a
      warning), split by ``val_split``; the validation split also tests.

    Images are resized so the shorter side is ``resize_size`` (default ``round(image_size * 255 / 224)``: the
    course's 255 for 224) and centre-cropped to ``image_size``. ``cache: disk`` (the default) decodes the JPEGs once
    into a memory-mapped ``.npy`` (about 150 kB per image at 224 px); ``memory`` suits small subsets. Other
    arguments: see :class:`~datamodules.image_folder.ImageFolderDataModule` and
    :class:`~datamodules.image_datamodule.ImageDataModule`.

    Example::

        data:
          class_path: datamodules.CatsDogsDataModule
          init_args: {data_dir: data/cats_dogs, image_size: 224, normalize: imagenet, batch_size: 32}

    Get the data with ``lit-cv download cats_dogs --data-dir data/cats_dogs``.
    """

    CLASS_NAMES = ("cat", "dog")
    DOWNLOAD_NAME = "cats_dogs"
    LAYOUT = (
        "  DATA_DIR/train/{cat,dog}/*.jpg  (or cats/dogs), optional DATA_DIR/validation/ (or val/, valid/) and DATA_DIR/test/...\n"
        "  or DATA_DIR/PetImages/{Cat,Dog}/*.jpg  (Microsoft's kagglecatsanddogs zip), split by val_split"
    )

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int = 32,
        num_workers: int | None = None,
        image_size: int | None = 224,
        resize_size: int | None = None,
        augment: bool | Augment = False,
        normalize: str = "imagenet",
        cache: CacheMode = "disk",
        val_split: float = 0.2,
        seed: int = 13,
        cache_dir: str | Path | None = None,
        download: bool = False,
    ) -> None:
        check_val_split(val_split)
        data_dir, cache_dir = str(data_dir), None if cache_dir is None else str(cache_dir)  # plain hparams
        if resize_size is not None and image_size is not None and resize_size < image_size:
            raise ValueError(
                f"resize_size ({resize_size}) must be >= image_size ({image_size}) for the centre crop."
            )
        super().__init__(
            data_dir,
            batch_size,
            num_workers,
            image_size,
            augment,
            normalize,
            cache,
            seed,
            cache_dir,
            download,
        )

    def _resize_for(self, crop: int) -> int:
        return self.hparams.resize_size or round(crop * 255 / 224)

    def _discover(self) -> dict[str, FileSplit]:
        root = self.data_dir
        if (root / "PetImages").is_dir():
            train, val = self._split(self._class_tree(root / "PetImages", ALIASES))
            return {"train": train, "val": val, "test": val}
        if not (root / "train").is_dir():
            raise self._missing(f"Neither {str(root / 'train')!r} nor {str(root / 'PetImages')!r} exists")
        train = self._class_tree(root / "train", ALIASES)
        given = [name for name in VALIDATION_FOLDERS if (root / name).is_dir()]
        if len(given) > 1:
            raise ValueError(
                f"{str(root)!r} has {' and '.join(f'{name}/' for name in given)}: which validates is unclear. Keep "
                "one (or merge them into validation/)."
            )
        if given:
            val = self._class_tree(root / given[0], ALIASES)
        else:
            train, val = self._split(train)
        test = self._class_tree(root / "test", ALIASES) if (root / "test").is_dir() else val
        return {"train": train, "val": val, "test": test}

    def _split(self, pool: FileSplit) -> tuple[FileSplit, FileSplit]:
        """(train, val) of ``pool``: ``val_split`` of every class to validation (stratified, seeded)."""
        train_idx, val_idx = stratified_split(pool.labels, self.hparams.val_split, self.hparams.seed)
        return pool.subset(train_idx.tolist()), pool.subset(val_idx.tolist())
