"""Checkpoint and requeue a SLURM job before its time limit; read the job id and node count from the environment;
make SIGTERM end a run within a bounded time, even one whose main thread is blocked in a collective operation."""

from __future__ import annotations

import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

# SLURM_JOB_NAME values for which Lightning treats the allocation as interactive (no SLURMEnvironment).
INTERACTIVE_JOB_NAMES = ("bash", "interactive")
# How to continue by hand when the requeue failed (the scripts name the log directory after the job id).
RESUBMIT_HINT = "resubmit with `--trainer.logger.init_args.version slurm-{job_id}` appended to continue from it"
# Seconds from SIGTERM (or Ctrl-C) to a forced exit when the run has not stopped by then. Long enough for the normal
# path (stop at the next batch, save last.ckpt), shorter than SLURM's default KillWait (30 s from SIGTERM to SIGKILL).
SIGTERM_TIMEOUT = 25.0
WATCHED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEBOUNCE = 1.0  # a second signal within this many seconds is the same event (`timeout` + Lightning both forward it)


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` needs: ``<array job>_<task>`` for array jobs, else ``SLURM_JOB_ID``."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_job(job_id: str, timeout: float = 60.0) -> bool:
    """Run ``scontrol requeue JOB_ID``; log the outcome and return whether SLURM accepted it.

    Never raises and never blocks longer than ``timeout`` seconds: a missing ``scontrol`` (typical inside
    containers), a non-zero exit or a hung controller are logged as errors with the fix, and ``False`` is returned.
    """
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job_id):
        log.error(f"Not requeueing: {job_id!r} is not a SLURM job id (expected digits, or <array>_<task>).")
        return False
    scontrol = shutil.which("scontrol")
    if scontrol is None:  # Workaround, see docs/lightning-workarounds.md (Lightning #21404).
        log.error(
            f"Cannot requeue SLURM job {job_id}: `scontrol` is not on PATH inside the job (common in containers, "
            "Lightning issue #21404). The checkpoint was saved; " + RESUBMIT_HINT.format(job_id=job_id)
            + ", or make scontrol available in the container (bind-mount it and the SLURM config)."
        )
        return False
    try:
        result = subprocess.run(
            [scontrol, "requeue", job_id], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        log.error(f"Requeueing SLURM job {job_id} failed: {error}; " + RESUBMIT_HINT.format(job_id=job_id) + ".")
        return False
    if result.returncode != 0:
        log.error(
            f"`scontrol requeue {job_id}` exited with {result.returncode}: {result.stderr.strip()}. "
            "Does the job allow requeueing (`#SBATCH --requeue`)? Else " + RESUBMIT_HINT.format(job_id=job_id) + "."
        )
        return False
    log.info(f"Requeued SLURM job {job_id}; it will resume from the checkpoint when it restarts.")
    return True


def launched_by_srun() -> bool:
    """True when this process is a task started by ``srun`` in a batch job (Lightning's SLURMEnvironment test)."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in INTERACTIVE_JOB_NAMES


def num_nodes_from_env() -> int:
    """Number of nodes of the job this process belongs to: ``SLURM_NNODES`` under ``srun``, ``WORLD_SIZE //
    LOCAL_WORLD_SIZE`` under ``torchrun``, else 1. Lightning requires ``trainer.num_nodes`` to match exactly."""
    if launched_by_srun():
        return int(os.environ.get("SLURM_NNODES", "1"))
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:
        return max(1, int(os.environ["WORLD_SIZE"]) // int(os.environ["LOCAL_WORLD_SIZE"]))
    return 1


def cluster_environment(trainer: Trainer) -> ClusterEnvironment | None:
    """The cluster environment plugin the Trainer runs under (``SLURMEnvironment`` in an ``srun`` job step)."""
    # Private: `trainer.strategy.cluster_environment` exists on parallel strategies only; a one-task job step runs
    # a SingleDeviceStrategy, and the connector (what Lightning's own signal handling reads) covers both.
    return trainer._accelerator_connector.cluster_environment


def _main_thread_location() -> str:
    """Where the main thread is now: ``barrier (distributed_c10d.py:4820), called from classifier.py:210
    on_train_epoch_end`` (its innermost frame, and the innermost one outside torch and Lightning)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return "an unknown place"
    stack = traceback.extract_stack(frame)
    here = stack[-1]
    caller = next((f for f in reversed(stack) if not {"torch", "lightning"} & set(Path(f.filename).parts)), here)
    text = f"{here.name} ({Path(here.filename).name}:{here.lineno})"
    return text if caller is here else f"{text}, called from {Path(caller.filename).name}:{caller.lineno} {caller.name}"


class TerminationWatchdog:
    """Ends the process ``timeout`` seconds after a SIGTERM or SIGINT if it is still running (at once on a second
    one), even while its main thread is blocked.

    Python runs signal handlers in the main thread between bytecodes. A main thread blocked in a C call (a
    collective operation that another rank never joins, a wait on a hung GPU kernel) runs neither Lightning's
    SIGTERM handler nor :class:`SLURMRequeue`'s until the call returns, so ``timeout``, ``scancel`` and preemption
    would have no effect. The C-level handler still writes the signal number to the ``signal.set_wakeup_fd`` pipe;
    a daemon thread reads it, waits ``timeout`` seconds for the normal shutdown, then writes where the main thread
    is blocked to stderr, calls ``on_expire`` (e.g. to kill child ranks) and ends the process with
    ``os._exit(128 + signal)``. The deadline stays armed after :meth:`stop` once a signal has arrived.

    Only one watchdog is active per process; forked children (DataLoader workers) drop the wakeup pipe.

    Args:
        timeout: seconds from the first signal to the forced exit.
        on_expire: called (from the watchdog thread) right before the forced exit.

    Raises:
        ValueError: for a ``timeout`` <= 0.
    """

    _active: ClassVar[TerminationWatchdog | None] = None

    def __init__(self, timeout: float = SIGTERM_TIMEOUT, on_expire: Callable[[], Any] | None = None) -> None:
        if timeout <= 0:
            raise ValueError(f"sigterm_timeout must be > 0 seconds, got {timeout}.")
        self.timeout = timeout
        self.on_expire = on_expire
        self._pipe: tuple[int, int] | None = None
        self._previous_fd = -1
        self._thread: threading.Thread | None = None
        self._first: tuple[int, float] | None = None  # (signal, monotonic time) of the first signal

    @property
    def active(self) -> bool:
        return TerminationWatchdog._active is self

    def start(self) -> bool:
        """Start watching (main thread only); returns whether it started."""
        if TerminationWatchdog._active is not None or threading.current_thread() is not threading.main_thread():
            return False
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._pipe = (read_fd, write_fd)
        TerminationWatchdog._active = self
        self._thread = threading.Thread(target=self._watch, name="lit-cv-sigterm-watchdog", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Give the wakeup fd back; the thread ends unless a signal already armed the deadline."""
        if not self.active:
            return
        signal.set_wakeup_fd(self._previous_fd)
        TerminationWatchdog._active = None
        if self._first is None:
            os.write(self._pipe[1], b"\0")  # 0 is no signal number: the thread's stop request
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        read_fd, write_fd = self._pipe
        try:
            while True:
                wait = None if self._first is None else max(0.0, self._first[1] + self.timeout - time.monotonic())
                ready, _, _ = select.select([read_fd], [], [], wait)
                if not ready:  # the deadline passed
                    self._expire(self._first[0], f"received {self.timeout:.0f} s ago")
                for number in os.read(read_fd, 64):
                    if number == 0:
                        return
                    if number not in WATCHED_SIGNALS:
                        continue
                    now = time.monotonic()
                    if self._first is None:
                        self._first = (number, now)
                    elif now - self._first[1] > DEBOUNCE:
                        self._expire(number, "received twice")
        finally:
            if self._first is None:
                os.close(read_fd)
                os.close(write_fd)

    def _expire(self, number: int, when: str) -> None:
        name = signal.Signals(number).name
        message = (
            f"lit-cv: {name} {when} and the run has not stopped: its main thread is blocked in "
            f"{_main_thread_location()} (e.g. a collective operation another rank never joins). "
            f"Exiting now with code {128 + number}.\n"
        )
        os.write(2, message.encode(errors="replace"))
        if self.on_expire is not None:
            try:
                self.on_expire()
            except Exception as error:  # noqa: BLE001 - the exit below must happen regardless
                os.write(2, f"lit-cv: while exiting: {error!r}\n".encode(errors="replace"))
        os._exit(128 + number)


def _drop_wakeup_fd_in_child() -> None:
    """A forked child (DataLoader worker) must not report its own signals into the parent's watchdog pipe."""
    if TerminationWatchdog._active is not None:
        TerminationWatchdog._active = None
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:  # forked from a thread other than the main one: Python keeps no wakeup fd there
            pass


os.register_at_fork(after_in_child=_drop_wakeup_fd_in_child)


class SLURMRequeue(Callback):
    """On SLURM's requeue signal, save ``last.ckpt`` at the next batch boundary and requeue the job.

    Active when the Trainer runs under ``SLURMEnvironment(auto_requeue=True)`` (Lightning's default for a job step
    started with ``srun``); otherwise it does nothing. SLURM sends the signal before the time limit
    (``#SBATCH --signal=SIGUSR1@90``). The signal handlers only set a flag. At the next training or validation batch
    all ranks agree, save ``last.ckpt`` in the checkpoint directory (where ``lit-cv fit --ckpt_path last`` looks),
    rank 0 runs ``scontrol requeue <job id>`` (:func:`requeue_job`) and training stops. A SIGTERM that arrives in
    between does not cancel this; a SIGTERM alone (``scancel``, a time limit without warning) saves the checkpoint
    without requeueing. A failed requeue is logged with the fix, and training continues until SLURM stops it.

    In every run (SLURM or not, every stage) it also bounds how long SIGTERM or Ctrl-C can go unanswered: a run still
    alive ``sigterm_timeout`` seconds after the signal (its main thread blocked, e.g. in a collective operation
    another rank never joins), or signalled twice, ends with a message saying where it was blocked, after killing
    the child ranks it launched (:class:`TerminationWatchdog`); a rank that fails with an error kills the ranks it
    launched (Lightning's DDP launcher on rank 0), which would otherwise wait for it until the collective timeout.

    Args:
        timeout: seconds to wait for ``scontrol requeue`` before giving up.
        sigterm_timeout: seconds from SIGTERM / SIGINT to the forced exit of a run that has not stopped.

    Raises:
        ValueError: for a ``timeout`` or ``sigterm_timeout`` <= 0.

    Example (the ``lit-cv`` CLI adds this callback to every run, or uses the one in ``trainer.callbacks``)::

        trainer:
          callbacks:
            - class_path: callbacks.SLURMRequeue
              init_args: {timeout: 60, sigterm_timeout: 25}

        trainer = Trainer(callbacks=[SLURMRequeue()], plugins=[SLURMEnvironment(auto_requeue=True)])
    """

    def __init__(self, timeout: float = 60.0, sigterm_timeout: float = SIGTERM_TIMEOUT) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}.")
        if sigterm_timeout <= 0:
            raise ValueError(f"sigterm_timeout must be > 0 seconds, got {sigterm_timeout}.")
        self.timeout = timeout
        self.sigterm_timeout = sigterm_timeout
        self._watchdog: TerminationWatchdog | None = None
        self.requeue_requested = False  # set by the requeue signal
        self.terminate_requested = False  # set by SIGTERM
        self.checkpoint_path: str | None = None  # the checkpoint written on preemption
        self.requeued = False
        self._original_handlers: dict[int, Any] = {}  # non-empty while active (during fit)
        self._previous_handlers: dict[int, Any] = {}

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        launcher = trainer.strategy.launcher  # Lightning's DDP launcher on rank 0 owns the other ranks' processes
        kill_children = None if launcher is None else lambda: launcher.kill(signal.SIGKILL)
        self._watchdog = TerminationWatchdog(self.sigterm_timeout, on_expire=kill_children)
        self._watchdog.start()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        environment = cluster_environment(trainer)
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            # Workaround, see docs/lightning-workarounds.md (Lightning #21406).
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
        self._stop_watchdog()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore()
        self._stop_watchdog()  # Lightning calls no teardown hook after an exception
        launcher = trainer.strategy.launcher
        if launcher is not None and not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            # The ranks this process started would wait for it in their next collective until the timeout (Lightning
            # kills them only on Ctrl-C; on SIGTERM it forwards the signal itself).
            launcher.kill(signal.SIGKILL)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None

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
        # Workaround, see docs/lightning-workarounds.md (Lightning #20542): checked before Lightning's SIGTERM exit.
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
