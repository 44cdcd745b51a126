"""The course experiments, reproduced on real data and beaten: the registry, their runners and the written report.

Run them with ``lit-cv reproduce --data-dir DIR``; the committed results are ``results/reproduce.{md,json}``.
"""

from lit_cv.experiments.registry import EXPERIMENTS, Experiment
from lit_cv.experiments.report import format_duration, portable, render_markdown
from lit_cv.experiments.reproduce import reproduce

__all__ = ["EXPERIMENTS", "Experiment", "format_duration", "portable", "render_markdown", "reproduce"]
