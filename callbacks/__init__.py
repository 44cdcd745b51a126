"""Lightning callbacks; use them in YAML under ``trainer.callbacks`` as ``class_path: callbacks.NAME``."""

from callbacks.early_stopping import EarlyStopping
from callbacks.filter_visualization import FilterVisualization
from callbacks.gradient_capture import GradientCapture
from callbacks.metrics_report import MetricsReport
from callbacks.prediction_writer import PredictionWriter

__all__ = ["EarlyStopping", "FilterVisualization", "GradientCapture", "MetricsReport", "PredictionWriter"]
