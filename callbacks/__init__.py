"""Lightning callbacks; use them in YAML under ``trainer.callbacks`` as ``class_path: callbacks.NAME``."""

from callbacks.backbone_finetuning import BackboneFinetuning
from callbacks.channels_last import ChannelsLast
from callbacks.compile import Compile
from callbacks.early_stopping import EarlyStopping
from callbacks.filter_visualization import FilterVisualization
from callbacks.gradient_capture import GradientCapture
from callbacks.lr_range_test import LRRangeTest
from callbacks.metrics_report import MetricsReport
from callbacks.model_checkpoint import ModelCheckpoint
from callbacks.prediction_writer import PredictionWriter
from callbacks.progress_bar import RichProgressBar
from callbacks.rng_state import RNGState
from callbacks.slurm_requeue import SLURMRequeue

__all__ = [
    "BackboneFinetuning",
    "ChannelsLast",
    "Compile",
    "EarlyStopping",
    "FilterVisualization",
    "GradientCapture",
    "LRRangeTest",
    "MetricsReport",
    "ModelCheckpoint",
    "PredictionWriter",
    "RNGState",
    "RichProgressBar",
    "SLURMRequeue",
]
