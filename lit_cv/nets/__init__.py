"""Plain ``nn.Module`` nets, one family per file; select them in YAML as ``class_path: lit_cv.nets.NAME``."""

from lit_cv.nets.cnn2 import CNN2
from lit_cv.nets.convnet import ConvNet
from lit_cv.nets.densenet import DenseNet
from lit_cv.nets.squeeze_excite import SqueezeExcite
from lit_cv.nets.tabular_mlp import TabularMLP
from lit_cv.nets.transfer import TransferNet

__all__ = ["CNN2", "ConvNet", "DenseNet", "SqueezeExcite", "TabularMLP", "TransferNet"]
