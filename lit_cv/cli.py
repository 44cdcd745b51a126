"""The ``lit-cv`` command: LightningCLI wired with lit-cv's model, callbacks and defaults, plus extra commands.

``lit-cv fit|validate|test|predict --config X.yaml`` are LightningCLI subcommands; the extra commands in
``EXTRA_COMMANDS`` (dataset download, LR range test, schedule plot, ...) are dispatched before LightningCLI parses.

User errors end in one line, ``lit-cv COMMAND: error: <what is wrong, the value, the fix>``, and exit code 1: the
``ValueError`` / ``TypeError`` / ``FileNotFoundError`` that lit-cv's own code raises for bad input (a ``raise`` in
``lit_cv/``, ``datamodules/`` or ``callbacks/``), a constructor built from the config rejecting its arguments
(``torch.optim.Adam(lr=-1)``), Lightning's ``MisconfigurationException``, and a collective operation that timed out.
Everything else is a bug and keeps its traceback; ``LIT_CV_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from datetime import timedelta
from inspect import signature
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml
from jsonargparse.typing import PositiveFloat
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.metrics_report import MetricsReport
from callbacks.model_checkpoint import ModelCheckpoint
from callbacks.prediction_writer import PredictionWriter
from callbacks.progress_bar import RichProgressBar
from callbacks.rng_state import RNGState
from callbacks.slurm_requeue import SLURMRequeue, launched_by_srun, num_nodes_from_env
from datamodules.download import NoNetworkError
from lit_cv.classifier import Classifier
from lit_cv.resume import (
    LINKED_NET_ARGS,
    check_checkpoint_fits,
    last_checkpoint_of,
    read_ckpt_path,
    resolve_last_for_evaluation,
    reuse_last_version,
    skip_pretrained_download,
)

SEED = 13
RUNS_DIR = "runs"
# Seconds a rank waits in a collective operation (all_reduce, broadcast, barrier) for the others before it fails
# with an error: torch's NCCL default, a third of its gloo default; far above any legitimate wait (rank 0 writing a
# checkpoint or figures). Applies to a strategy given by name (`ddp`, as in configs/trainer/*.yaml).
COLLECTIVE_TIMEOUT = 600.0
DEBUG_ENV = "LIT_CV_DEBUG"  # LIT_CV_DEBUG=1: user errors show their traceback too
SUBCOMMANDS = tuple(LightningCLI.subcommands())  # fit, validate, test, predict

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": RUNS_DIR, "name": "default", "default_hp_metric": False},
    },
}

CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "checkpoint.monitor": "val/loss",
    "checkpoint.mode": "min",
    "checkpoint.save_last": True,
    "checkpoint.filename": "best-epoch{epoch:03d}",
    "checkpoint.auto_insert_metric_name": False,
}

# name -> "module:function"; the function takes the remaining argv and returns an exit code (or None).
EXTRA_COMMANDS: dict[str, str] = {
    "download": "lit_cv.commands.download:main",
    "lr-find": "lit_cv.commands.lr_find:main",
    "plot-schedule": "lit_cv.commands.plot_schedule:main",
    "reproduce": "lit_cv.commands.reproduce:main",
}


class LitCVCLI(LightningCLI):
    """LightningCLI for :class:`lit_cv.Classifier` and any datamodule (``data: class_path: ...``).

    Defaults: seed 13; TensorBoard under ``runs/<name>/version_N`` (set ``trainer.logger.init_args.name``);
    ModelCheckpoint on ``val/loss`` plus ``last.ckpt`` (configurable under ``checkpoint:``); LearningRateMonitor
    (``lr_monitor:``); a rich progress bar; ``metrics.json`` + table after fit/validate/test; ``predictions.csv``
    after predict. ``data.num_classes`` and ``data.class_names`` are linked into the model.
    Resume and scale-out: ``fit --ckpt_path last`` continues the newest run in its own version directory
    (:mod:`lit_cv.resume`); RNG states ride along in checkpoints (``RNGState``); under ``srun`` SIGUSR1 checkpoints
    and requeues the job (``SLURMRequeue``) and ``trainer.num_nodes`` defaults to the job's node count.
    ``data.image_size`` is linked into nets that take an ``image_size``. ``collective_timeout`` (seconds, default
    600) bounds every collective operation of a DDP run; a SIGTERM ends a run within 25 s even when it is blocked
    (``SLURMRequeue(sigterm_timeout)``). ``--ckpt_path FILE`` is checked before anything runs: a file that is not a
    readable checkpoint, or one of another net or other classes, is refused with a message naming both.
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("parser_kwargs", {"description": _description()})
        super().__init__(
            model_class=Classifier,
            datamodule_class=LightningDataModule,
            subclass_mode_data=True,
            seed_everything_default=SEED,
            trainer_defaults=TRAINER_DEFAULTS,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        # The input side, given once by the data: tabular nets' `in_features` (the datamodule's `num_features`), image
        # nets' `image_size` (CNN2, ConvNet, DenseNet). jsonargparse skips a link when the datamodule lacks the
        # attribute or the net the argument (image data, tabular nets, TransferNet), so both suit every config.
        for net_arg, attribute in LINKED_NET_ARGS.items():
            parser.link_arguments(f"data.{attribute}", f"model.net.init_args.{net_arg}", apply_on="instantiate")
        # srun / torchrun jobs: Lightning requires num_nodes to equal the job's node count, so default to it.
        parser.set_defaults({"trainer.num_nodes": num_nodes_from_env()})
        parser.add_argument(
            "--collective_timeout", type=PositiveFloat, default=COLLECTIVE_TIMEOUT,
            help="seconds a DDP rank waits for the others in a collective operation before failing with an error "
            "(applies to `trainer.strategy` given by name, e.g. ddp)",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        check_config_files(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)
        # Before LightningCLI replaces the model config with the checkpoint's hyperparameters (and unpickles it).
        subcommand = self.config.get("subcommand")
        if subcommand in ("test", "validate", "predict"):  # `last` = the newest run's, not the new version's
            resolve_last_for_evaluation(self.config[subcommand])
        self.ckpt_summary = read_ckpt_path(self.config[subcommand]) if subcommand else None

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit":  # `--ckpt_path last` continues the newest run in its own version directory
            resumed = reuse_last_version(self.config["fit"])
            if resumed is not None:  # the same checks as for a named file: the right net, plain values only
                named = self.config["fit"].clone()
                named["ckpt_path"] = str(last_checkpoint_of(named))
                self.ckpt_summary = read_ckpt_path(named)
        if self.subcommand is not None:
            skip_pretrained_download(self.config[self.subcommand])

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        run_config = self.config_init.get(str(self.subcommand), self.config_init)
        config = run_config.get("trainer", {})
        callbacks = list(config.get("callbacks") or [])
        defaults = [MetricsReport(), PredictionWriter(), RNGState(), SLURMRequeue()]
        callbacks += [d for d in defaults if not any(isinstance(c, type(d)) for c in callbacks)]  # configured wins
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(RichProgressBar())
        kwargs.setdefault("callbacks", callbacks)
        timeout = run_config.get("collective_timeout") or COLLECTIVE_TIMEOUT
        kwargs.setdefault("strategy", with_collective_timeout(config.get("strategy", "auto"), timeout))
        return super().instantiate_trainer(**kwargs)

    def after_instantiate_classes(self) -> None:
        """The checkpoint given as ``--ckpt_path`` fits the model and data just built (before Lightning loads it)."""
        if self.ckpt_summary is not None:
            check_checkpoint_fits(self.ckpt_summary, self.model, self.datamodule)


def with_collective_timeout(strategy: Any, seconds: float) -> Any:
    """``strategy`` with a process-group timeout of ``seconds``: a registered name (``ddp``, ``ddp_spawn``, ``fsdp``,
    ...) whose strategy takes a ``timeout`` becomes that strategy, built as the name would build it, with the timeout.
    Anything else (``auto``, an instance from ``class_path``, which sets its own ``timeout``) is returned unchanged."""
    if not isinstance(strategy, str) or strategy not in StrategyRegistry:
        return strategy
    entry = StrategyRegistry[strategy]
    if "timeout" not in signature(entry["strategy"]).parameters:
        return strategy
    return entry["strategy"](**entry["init_params"], timeout=timedelta(seconds=seconds))


def check_config_files(args: list[str]) -> None:
    """Every ``--config FILE`` in ``args`` is a readable YAML mapping; else one error naming the file and the problem.

    Raises:
        FileNotFoundError: a ``.yaml`` / ``.yml`` / ``.json`` path that does not exist.
        ValueError: an empty file, a binary file (a checkpoint?) or invalid YAML.
        TypeError: YAML that is not a mapping.
    """
    values = [b for a, b in pairwise(args) if a in ("--config", "-c")]
    values += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for value in values:
        path = Path(value)
        if not path.is_file():  # jsonargparse also takes a YAML string here
            if path.suffix in (".yaml", ".yml", ".json"):
                raise FileNotFoundError(f"Config file {value!r} does not exist (looked in {Path.cwd()}).")
            continue
        data = path.read_bytes()
        if not data.strip():
            raise ValueError(f"Config file {value!r} is empty. Give a YAML file such as configs/quickstart.yaml.")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            kind = "a zip archive (a checkpoint? pass it as --ckpt_path)" if data[:2] == b"PK" else "binary"
            raise ValueError(f"Config file {value!r} is not a YAML text file: it is {kind}.") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"Config file {value!r} is not valid YAML: {problem}{where}.") from None
        if not isinstance(loaded, dict):
            raise TypeError(
                f"Config file {value!r} holds a {type(loaded).__name__}, not a mapping of sections "
                "(trainer:, model:, data:, ...)."
            )


def _description() -> str:
    lines = ["lit-cv: classic computer-vision experiments on Lightning.", ""]
    if EXTRA_COMMANDS:
        lines.append("Extra commands (run `lit-cv COMMAND --help`): " + ", ".join(sorted(EXTRA_COMMANDS)))
    return "\n".join(lines)


def _load_command(target: str) -> Callable[[list[str]], Any]:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _command_list() -> str:
    return (f"commands: {', '.join(SUBCOMMANDS)} (LightningCLI: `lit-cv fit --help`); "
            f"{', '.join(sorted(EXTRA_COMMANDS))} (`lit-cv COMMAND --help`)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lit-cv`` console script: run the command; report user errors in one line (exit 1)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else None
    if command is None or not (command.startswith("-") or command in SUBCOMMANDS or command in EXTRA_COMMANDS):
        what = "no command given" if command is None else f"unknown command {command!r}"
        print(f"lit-cv: error: {what}; {_command_list()}.", file=sys.stderr)
        return 2
    try:
        if command in EXTRA_COMMANDS:
            # The command parses its own argv; LightningCLI(args=...) inside it must not also see sys.argv.
            saved, sys.argv = sys.argv, sys.argv[:1]
            try:
                code = _load_command(EXTRA_COMMANDS[command])(args[1:])
            finally:
                sys.argv = saved
            return int(code or 0)
        LitCVCLI(args=argv)  # None: LightningCLI reads sys.argv itself (no "args and sys.argv both given" warning)
        return 0
    except SIGTERMException:  # Lightning stopped at a batch boundary after SIGTERM (a SystemExit with code 0)
        print(f"lit-cv {command}: stopped by SIGTERM{_rank_note()}.", file=sys.stderr)
        return 143
    except (Exception, KeyboardInterrupt) as error:
        message = None if os.environ.get(DEBUG_ENV, "") not in ("", "0") else user_error_message(error)
        if message is None:
            raise
        print(f"lit-cv {command}: error{_rank_note()}: {message} (traceback: {DEBUG_ENV}=1)", file=sys.stderr)
        return 130 if isinstance(error, KeyboardInterrupt) else 1


# ---------------------------------------------------------------------------------------------- user errors
# Our packages: a `raise` of ValueError / TypeError / FileNotFoundError / NoNetworkError in them reports bad input.
PACKAGES = tuple(str(Path(__file__).resolve().parents[1] / name) + os.sep for name in ("lit_cv", "datamodules", "callbacks"))
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NoNetworkError)  # the last: `download: true` offline
# torch's messages for a collective that another rank never joined (gloo; NCCL with TORCH_NCCL_BLOCKING_WAIT=1)
# and for a rank that exited while this one waited for it.
COLLECTIVE_TIMED_OUT = ("timed out", "watchdog caught collective operation timeout")  # lower case
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def user_error_message(error: BaseException) -> str | None:
    """The one-line report of ``error`` if it is a user error (see the module docstring), else ``None``.

    Looks through the ``raise ... from`` chain, outermost first: jsonargparse wraps a constructor's error in its own.
    """
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    chain = [error]
    while chain[-1].__cause__ is not None and chain[-1].__cause__ not in chain:
        chain.append(chain[-1].__cause__)
    for exception in chain:
        if isinstance(exception, MisconfigurationException):
            return str(exception)
        if isinstance(exception, USER_ERRORS):
            owner = _validating_constructor(exception)
            if owner is not None:
                text = str(exception)
                if owner and not _raised_by_us(exception):  # torch.optim.Adam(lr=-0.1): "Invalid learning rate: -0.1"
                    return f"{owner}: {text.rstrip('.')}. Fix the {owner} arguments in the config."
                return text if not owner or owner in text else f"{owner}: {text}"
        if isinstance(exception, RuntimeError):
            text = str(exception)
            if "waiting for clients" in text:  # the rendezvous: DistStoreError "... 1/2 clients joined."
                return (f"not every rank started within the collective timeout ({_first_line(text)}): a rank failed "
                        "to start (see its output), or starts slowly; then raise --collective_timeout (seconds).")
            if any(marker in text.lower() for marker in COLLECTIVE_TIMED_OUT):
                return (
                    f"a collective operation timed out{_where(exception)}: another rank did not join it within the "
                    "collective timeout (it crashed, hangs, or runs a different code path; see its output). Raise "
                    f"--collective_timeout (seconds) only if a rank legitimately needs longer. torch: {_first_line(text)}"
                )
            if any(marker in text for marker in PEER_GONE):
                return (f"another rank exited while this one waited for it{_where(exception)}; its own output says "
                        f"why. torch: {_first_line(text)}")
    return None


def _validating_constructor(error: BaseException) -> str | None:
    """For an error from a ``raise`` statement that validates input (or a file our code opens that does not exist),
    the name of the class whose ``__init__`` raised it (``""`` outside a constructor); ``None`` for any other error
    (a bug)."""
    frames = list(traceback.walk_tb(error.__traceback__))
    if not frames:
        return None
    summaries = traceback.StackSummary.extract(frames, lookup_lines=True)
    opened = isinstance(error, FileNotFoundError) and _raised_by_us(error)  # open() of a missing file
    if not (opened or (summaries[-1].line or "").startswith("raise")):
        return None  # raised by the interpreter (unpacking, a bad call): a bug
    # The innermost constructor that jsonargparse called to build an object of the config, if any.
    built = [
        index for index in range(1, len(frames))
        if frames[index][0].f_code.co_name == "__init__" and _is_instantiator(summaries[index - 1].filename)
    ]
    owner = frames[built[-1]][0].f_locals.get("self") if built else None
    if _raised_by_us(error):
        return "" if owner is None else type(owner).__name__
    # A constructor built from the config (torch.optim.Adam) rejected its arguments: raised in its own __init__ chain.
    if built and all(frames[index][0].f_code.co_name == "__init__" for index in range(built[-1], len(frames))):
        return type(owner).__name__ if owner is not None else ""
    return None


def _raised_by_us(error: BaseException) -> bool:
    summaries = traceback.extract_tb(error.__traceback__)
    return bool(summaries) and summaries[-1].filename.startswith(PACKAGES)


def _is_instantiator(filename: str) -> bool:
    """jsonargparse's instantiation, or LightningCLI's instantiator on top of it."""
    parts = Path(filename).parts
    return "jsonargparse" in parts or parts[-3:] == ("lightning", "pytorch", "cli.py")


def _where(error: BaseException) -> str:
    """`` in all_reduce (classifier.py:210 on_train_epoch_end)``: the collective and the innermost caller outside
    torch and Lightning."""
    summaries = traceback.extract_tb(error.__traceback__)
    collective = next((f.name for f in reversed(summaries) if "distributed" in Path(f.filename).parts), None)
    caller = next((f for f in reversed(summaries) if not {"torch", "lightning"} & set(Path(f.filename).parts)), None)
    text = f" in {collective}" if collective else ""
    return text + (f" ({Path(caller.filename).name}:{caller.lineno} {caller.name})" if caller else "")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


def _rank_note() -> str:
    """`` (rank N)`` in a multi-process run (Lightning's DDP launcher sets WORLD_SIZE; srun SLURM_NTASKS)."""
    world = os.environ.get("WORLD_SIZE") or (os.environ.get("SLURM_NTASKS") if launched_by_srun() else None)
    return f" (rank {rank_zero_only.rank})" if int(world or 1) > 1 else ""


if __name__ == "__main__":
    sys.exit(main())
