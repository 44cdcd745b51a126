"""Image datamodules whose images are files in class folders: discover the files, skip bad ones, cache the pixels.

A subclass only says where the images of each split are (:meth:`ImageFolderDataModule._discover`, helped by
``_class_tree``); the files are decoded once through :class:`~datamodules.image_cache.ImageCache`
(``cache: memory``, ``disk`` or ``none``) and served by :class:`~datamodules.image_datamodule.ImageDataModule`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn
from torchvision.datasets.folder import IMG_EXTENSIONS

from datamodules.image_cache import CACHE_DIR_NAME, SUPPORTED_CACHE, CachedImages, CacheMode, ImageCache
from datamodules.image_datamodule import Augment, ImageDataModule

BAD_FILES_SHOWN = 5  # paths listed in the one "skipped files" warning


def list_files(folder: Path) -> list[Path]:
    """All regular files under ``folder`` (recursively), sorted; hidden files included so they get reported."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and CACHE_DIR_NAME not in p.parts)


@dataclass
class FileSplit:
    """Image files of one split with their class indices, and the non-image files found beside them."""

    paths: list[Path]
    labels: list[int]
    skipped: list[Path] = field(default_factory=list)

    def subset(self, indices: list[int]) -> FileSplit:
        return FileSplit([self.paths[i] for i in indices], [self.labels[i] for i in indices], self.skipped)


class ImageFolderDataModule(ImageDataModule):
    """Base of the class-folder image datamodules; subclasses implement ``_discover``.

    Args:
        cache: ``memory`` (decode once into RAM), ``disk`` (decode once into an ``.npy`` memory map in the cache
            folder, reused by later runs) or ``none`` (decode every epoch, like torchvision's ``ImageFolder``).
        seed: seed of the train/validation split, for a subclass that splits.
        image_size: side of the square images (``Resize`` + ``CenterCrop``).
        data_dir, batch_size, num_workers, augment, normalize, cache_dir, download: see
            :class:`~datamodules.image_datamodule.ImageDataModule`.
    """

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int = 16,
        num_workers: int | None = None,
        image_size: int | None = 28,
        augment: bool | Augment = False,
        normalize: str = "train",
        cache: CacheMode = "memory",
        seed: int = 13,
        cache_dir: str | Path | None = None,
        download: bool = False,
    ) -> None:
        if cache not in SUPPORTED_CACHE:
            raise ValueError(f"cache={cache!r} is not supported; use one of {', '.join(SUPPORTED_CACHE)}.")
        # hparams (saved in checkpoints) hold plain strings, so checkpoints load with torch.load(weights_only=True)
        data_dir, cache_dir = str(data_dir), None if cache_dir is None else str(cache_dir)
        super().__init__(
            data_dir, batch_size, num_workers, image_size, augment, normalize, cache_dir, download
        )

    def _discover(self) -> dict[str, FileSplit]:
        """Files of the ``train``, ``val`` and ``test`` splits; the same object may serve twice."""
        raise NotImplementedError

    def _data_present(self) -> bool:
        try:
            self._discover()
        except FileNotFoundError:
            return False
        return True

    def _in_memory(self) -> bool:
        return self.hparams.cache == "memory"

    def predict_ids(self) -> list[str]:
        """The source file of each sample that ``predict`` sees, in order (unreadable files are in no split, so
        they shift nothing); ``callbacks.PredictionWriter`` writes them into ``predictions.csv``."""
        self._prepare()
        return [str(p) for p in self.splits[self.TEST_SPLIT].paths or []]

    def _class_tree(self, root: Path, aliases: dict[str, tuple[str, ...]] | None = None) -> FileSplit:
        """Files of ``root/<class>/**`` for every class in ``CLASS_NAMES`` (folder names matched case-insensitively,
        also against ``aliases[class]``); a missing root or class folder raises the layout error."""
        if not root.is_dir():
            raise self._missing(f"Folder {str(root)!r} does not exist")
        folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
        split = FileSplit([], [])
        for index, name in enumerate(self.class_names):
            names = (name, *(aliases or {}).get(name, ()))
            folder = next((folders[n.lower()] for n in names if n.lower() in folders), None)
            if folder is None:
                raise self._missing(f"Class folder {name!r} is missing under {str(root)!r}")
            for path in list_files(folder):  # non-images (Thumbs.db, .DS_Store) never enter a split
                if path.suffix.lower() in IMG_EXTENSIONS:
                    split.paths.append(path)
                    split.labels.append(index)
                else:
                    split.skipped.append(path)
        return split

    def _load_splits(self) -> dict[str, CachedImages]:
        """Decode (or read from the cache) every split once, skipping unreadable files with one warning."""
        found = self._discover()
        cache = ImageCache(
            self.data_dir, self._cache_folder, self.hparams.cache, self.resize_size, self.crop_size
        )
        splits: dict[str, CachedImages] = {}
        bad: set[Path] = set()
        for name, files in found.items():
            splits[name], unreadable = cache.load(files.paths, files.labels)
            bad.update(unreadable, files.skipped)
        if bad:
            shown = "\n  ".join(str(p) for p in sorted(bad)[:BAD_FILES_SHOWN])
            more = f"\n  ... and {len(bad) - BAD_FILES_SHOWN} more" if len(bad) > BAD_FILES_SHOWN else ""
            rank_zero_warn(
                f"{type(self).__name__}: skipped {len(bad)} unreadable file(s) (zero-byte, truncated or not "
                f"an image):\n  {shown}{more}"
            )
        return splits
