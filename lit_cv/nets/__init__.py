"""Plain ``nn.Module`` nets, one family per file; select them in YAML as ``class_path: lit_cv.nets.NAME``."""

from lit_cv.nets.cnn2 import CNN2

__all__ = ["CNN2"]
