"""SLURMRequeue: on SLURM's warning signal, checkpoint at the next batch boundary and requeue the job."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_cv.slurm import requeue_job, slurm_job_id

log = logging.getLogger(__name__)


class SLURMRequeue(Callback):
    """Preemption-safe SLURM auto-requeue, active when Lightning runs under ``SLURMEnvironment(auto_requeue=True)``
    (its default whenever a job step is started with ``srun``); otherwise it does nothing.

    SLURM sends the requeue signal (``#SBATCH --signal=SIGUSR1@90``: SIGUSR1 90 s before the time limit). The handler
    installed here only sets a flag, so Lightning does not install its own handler, which would checkpoint and run
    ``scontrol`` inside the signal handler (Lightning #21406). At the next training or validation batch boundary all
    ranks agree on the flag, save ``last.ckpt`` in the checkpoint directory (where ``lit-cv fit --ckpt_path last``
    looks), then rank 0 runs ``scontrol requeue <job id>`` and training stops. A SIGTERM that arrives before that
    (Lightning #20542) does not cancel it: this callback's check runs before Lightning's SIGTERM exit; a SIGTERM alone
    (time limit without warning, ``scancel``) saves the checkpoint but does not requeue. A missing ``scontrol``
    (containers, Lightning #21404) is logged with the fix; training then continues until SLURM stops it.

    Args:
        timeout: seconds to wait for ``scontrol requeue`` before giving up.

    Example (the ``lit-cv`` CLI adds this callback to every run; for a plain Trainer)::

        trainer = Trainer(callbacks=[SLURMRequeue()], plugins=[SLURMEnvironment(auto_requeue=True)])
    """

    def __init__(self, timeout: float = 60.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}.")
        self.timeout = timeout
        self.requeue_requested = False  # set by the requeue signal
        self.terminate_requested = False  # set by SIGTERM
        self.checkpoint_path: str | None = None  # the checkpoint written on preemption
        self.requeued = False
        self._original_handlers: dict[int, Any] = {}  # non-empty while active (during fit)
        self._previous_handlers: dict[int, Any] = {}

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            # Runs before Lightning registers its handlers; seeing ours, it skips its own requeue handler.
            self._install({environment.requeue_signal or signal.SIGUSR1: self._on_requeue_signal,
                           signal.SIGTERM: self._on_sigterm})

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._maybe_preempt(trainer)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if not trainer.sanity_checking:
            self._maybe_preempt(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore()

    # ------------------------------------------------------------------ signal handlers: flags only
    def _on_requeue_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._original_handlers:
            self.requeue_requested = True
        else:
            self._pass_on(signum, frame)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._original_handlers:
            self.terminate_requested = True
        else:
            self._pass_on(signum, frame)

    def _pass_on(self, signum: int, frame: FrameType | None) -> None:
        """After fit (Lightning re-installs these handlers when it tears down after an exception): behave as before."""
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    # ------------------------------------------------------------------ work, outside the handlers
    def _maybe_preempt(self, trainer: Trainer) -> None:
        if not self._original_handlers or self.checkpoint_path is not None:
            return
        local = self.requeue_requested or self.terminate_requested
        if not trainer.strategy.reduce_boolean_decision(local, all=False):
            return
        requeue = trainer.strategy.reduce_boolean_decision(self.requeue_requested, all=False)
        self.checkpoint_path = str(self._checkpoint_file(trainer))
        log.warning(f"SLURM {'requeue signal' if requeue else 'SIGTERM'}: saving {self.checkpoint_path}")
        trainer.save_checkpoint(self.checkpoint_path)
        if not requeue:
            return
        if trainer.is_global_zero:
            job_id = slurm_job_id()
            if job_id is None:
                log.error("Not requeueing: SLURM_JOB_ID is not set.")
            else:
                self.requeued = requeue_job(job_id, timeout=self.timeout)
        self.requeued = trainer.strategy.broadcast(self.requeued, src=0)
        if self.requeued:
            trainer.should_stop = True

    @staticmethod
    def _checkpoint_file(trainer: Trainer) -> Path:
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            directory = Path(callback.dirpath)
            name = callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
        else:
            directory, name = Path(trainer.default_root_dir) / "checkpoints", "last.ckpt"
        path = directory / name
        if trainer.is_global_zero and path.is_symlink():  # ModelCheckpoint(save_last="link"): do not write through
            path.unlink()
        return path

    def _install(self, handlers: dict[int, Any]) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("SLURMRequeue: not in the main thread, cannot install signal handlers; requeue disabled.")
            return
        for signum, handler in handlers.items():
            self._original_handlers[signum] = self._previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._original_handlers.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._original_handlers = {}
