"""Where a run's files go, readable from a single rank."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer


def run_dir(trainer: Trainer) -> Path:
    """The run's log directory (``runs/<name>/version_N`` with the default TensorBoard logger).

    Same answer as ``trainer.log_dir`` without its broadcast from rank 0: that is a collective call, so code that
    runs on rank zero only (figures, JSON files) would hang under DDP waiting for the other ranks.
    """
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is None:
        return Path(trainer.default_root_dir)
    return Path(getattr(logger, "log_dir", None) or logger.save_dir or trainer.default_root_dir)
