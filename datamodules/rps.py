"""Rock-Paper-Scissors (Laurence Moroney's CGI hands, CC BY 2.0) as a LightningDataModule.

2,520 training and 372 test images, 300x300 RGBA PNG, three classes. As in the course, the test set serves as both
the validation and the test split, images are resized to 28x28 and normalised with the course's train statistics.
"""

from __future__ import annotations

from datamodules.image_folder import FileSplit, ImageFolderDataModule


class RPSDataModule(ImageFolderDataModule):
    """Rock-Paper-Scissors: ``rps/`` for training, ``rps-test-set/`` for validation and test.

    Class indices follow ``ImageFolder`` (alphabetical): paper=0, rock=1, scissors=2. Images are RGBA PNGs,
    converted to RGB, resized to ``image_size`` and cached as uint8 tensors (``cache``); see
    :class:`~datamodules.image_folder.ImageFolderDataModule` for the arguments. With ``normalize: train`` the
    course's per-image statistics of the 2,520 training images at 28 px are mean [0.8502, 0.8215, 0.8116],
    std [0.2089, 0.2512, 0.2659].

    Example::

        data:
          class_path: datamodules.RPSDataModule
          init_args: {data_dir: data/rps, batch_size: 16, image_size: 28, augment: false}

    Get the data with ``lit-cv download rps --data-dir data/rps``.
    """

    CLASS_NAMES = ("paper", "rock", "scissors")
    DOWNLOAD_NAME = "rps"
    LAYOUT = (
        "  DATA_DIR/rps/{paper,rock,scissors}/*.png            (train, 840 per class)\n"
        "  DATA_DIR/rps-test-set/{paper,rock,scissors}/*.png   (validation and test, 124 per class)"
    )

    def _discover(self) -> dict[str, FileSplit]:
        train = self._class_tree(self.data_dir / "rps")
        test = self._class_tree(self.data_dir / "rps-test-set")
        return {"train": train, "val": test, "test": test}
