"""Lightning callbacks; use them in YAML under ``trainer.callbacks`` as ``class_path: callbacks.NAME``."""

from callbacks.metrics_report import MetricsReport
from callbacks.prediction_writer import PredictionWriter

__all__ = ["MetricsReport", "PredictionWriter"]
