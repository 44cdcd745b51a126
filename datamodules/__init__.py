"""LightningDataModules, one per dataset; select them in YAML as ``data: class_path: datamodules.NAME``."""

from datamodules.digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
