"""LightningDataModules, one per dataset; select them in YAML as ``data: class_path: datamodules.NAME``."""

from datamodules.bank import BankMarketingDataModule
from datamodules.cats_dogs import CatsDogsDataModule
from datamodules.digits import DigitsDataModule
from datamodules.image_datamodule import ImageDataModule
from datamodules.image_folder import ImageFolderDataModule
from datamodules.mnist import MNISTDataModule
from datamodules.rps import RPSDataModule

__all__ = [
    "BankMarketingDataModule",
    "CatsDogsDataModule",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "RPSDataModule",
]
