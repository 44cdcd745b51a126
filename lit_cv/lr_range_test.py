"""The LR range test (Leslie N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017, sec. 3.3).

Train for a few batches while the learning rate grows from ``start_lr`` to ``end_lr`` (exponentially or linearly, as
the course's ``make_lr_fn``), record the smoothed loss at each LR, stop once it diverges, and suggest an LR from the
curve. The run leaves no trace: weights, optimizer and scheduler state, precision-plugin (grad scaler) state, RNG
states, train/eval modes, torchmetrics states and the trainer's dataloader position are exactly as before.

Plain functions (the LR sequence, smoothing, divergence, the three suggestion methods, plotting) are testable on their
own; :func:`run_lr_range_test` runs the test inside a set-up ``Trainer`` (the ``callbacks.LRRangeTest`` callback calls
it from ``on_fit_start``; ``lit-cv lr-find`` drives that callback).

What this adds over Lightning's ``LearningRateFinder`` / ``Tuner.lr_find`` and over torch-lr-finder:

- three suggestion methods (``steepest`` with the gradient taken against log-LR, fastai's ``valley``, ``minimum``/10)
  instead of one; all three are computed and saved, the chosen one is marked on the plot;
- the LR sequence is the course's closed form and contains both ends (``start_lr`` ... ``end_lr`` inclusive);
- ``skip_end=0`` keeps every point (Lightning slices ``[skip_begin:-0]``, which is empty); a curve too short for a
  suggestion returns ``suggestion=None`` with a message saying what to change, and the plot still shows every
  recorded point (torch-lr-finder draws a blank plot when ``num_iter`` is below its skip counts);
- the test does not run the trainer's fit loop: it draws batches from its own dataloader and steps the optimizer
  through the strategy and precision plugin, so the fit loop's epoch/batch counters and dataloader are never touched
  (no skipped epoch after the test, Lightning #15603) and no checkpoint file is written; state is saved in memory and
  restored in ``try/finally``, RNG included (Lightning's ``isolate_rng`` restores nothing when the body raises);
- the suggestion is applied after the restore to the live optimizer *and* to the module's optimizer/scheduler
  factories, so it is not lost with optimizers built by LightningCLI (Lightning #21030/#16787); it can set CyclicLR
  bounds or OneCycleLR's ``max_lr`` (see ``callbacks.LRRangeTest``);
- optional evaluation of the loss on a fixed set of validation batches instead of the noisy training loss;
- under multi-process DDP it refuses with a clear message (Lightning errors out obscurely there, #19611).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

SUPPORTED_STEP_MODES = ("exp", "linear")
SUPPORTED_METHODS = ("steepest", "valley", "minimum")
MIN_POINTS = 3  # finite points left after skipping, needed for a slope with a neighbour on each side


# ---------------------------------------------------------------------------------------------------- pure functions
def make_lr_fn(start_lr: float, end_lr: float, num_iter: int, step_mode: str = "exp") -> Callable[[int], float]:
    """The course's ``make_lr_fn``: the factor by which ``start_lr`` is multiplied at iteration ``i``.

    ``exp``: ``(end_lr / start_lr) ** (i / num_iter)``; ``linear``: ``1 + i * (end_lr / start_lr - 1) / num_iter``.
    Usable as ``LambdaLR(optimizer, lr_lambda=make_lr_fn(...))``.
    """
    validate_range(start_lr, end_lr, num_iter, step_mode)
    if step_mode == "linear":
        factor = (end_lr / start_lr - 1.0) / num_iter
        return lambda i: 1.0 + i * factor
    log_factor = (math.log(end_lr) - math.log(start_lr)) / num_iter
    return lambda i: math.exp(log_factor * i)


def lr_sequence(start_lr: float, end_lr: float, num_iter: int, step_mode: str = "exp") -> list[float]:
    """The ``num_iter + 1`` LRs of the test, ``start_lr`` to ``end_lr`` inclusive, in ``num_iter`` steps.

    For ``(0.01, 0.1, 10, "exp")``: 0.01, 0.012589, 0.015849, ..., 0.1.
    """
    fn = make_lr_fn(start_lr, end_lr, num_iter, step_mode)
    lrs = [start_lr * fn(i) for i in range(num_iter + 1)]
    lrs[-1] = end_lr  # exact end despite floating-point rounding
    return lrs


def validate_range(start_lr: float, end_lr: float, num_iter: int, step_mode: str) -> None:
    if step_mode not in SUPPORTED_STEP_MODES:
        raise ValueError(f"step_mode must be one of {SUPPORTED_STEP_MODES}, got {step_mode!r}.")
    if not start_lr > 0:
        raise ValueError(f"start_lr must be > 0, got {start_lr}.")
    if not end_lr > start_lr:
        raise ValueError(f"end_lr must be greater than start_lr ({start_lr}), got {end_lr}.")
    if int(num_iter) != num_iter or num_iter < 1:
        raise ValueError(f"num_iter must be a positive integer, got {num_iter}.")


def smooth_losses(losses: Sequence[float], smoothing: float = 0.05) -> list[float]:
    """The course's exponential smoothing: ``s_0 = l_0``, ``s_i = smoothing * l_i + (1 - smoothing) * s_{i-1}``.

    ``smoothing=1`` keeps the raw losses. A non-finite loss gives a NaN point and does not enter later averages.
    """
    if not 0.0 < smoothing <= 1.0:
        raise ValueError(f"smoothing must be in (0, 1] (1 = no smoothing), got {smoothing}.")
    out: list[float] = []
    previous: float | None = None
    for loss in losses:
        loss = float(loss)
        if not math.isfinite(loss):
            out.append(float("nan"))
            continue
        previous = loss if previous is None else smoothing * loss + (1.0 - smoothing) * previous
        out.append(previous)
    return out


def is_diverging(smoothed_loss: float, best_loss: float, diverge_th: float | None) -> bool:
    """True when the smoothed loss is non-finite or exceeds ``diverge_th`` times the best so far."""
    if not math.isfinite(smoothed_loss):
        return True
    return diverge_th is not None and smoothed_loss > diverge_th * best_loss


def steepest_index(lrs: Sequence[float], losses: Sequence[float]) -> int:
    """Index of the most negative gradient of ``losses`` against ``log10(lr)`` (the course's default)."""
    gradients = np.gradient(np.asarray(losses, dtype=float), np.log10(np.asarray(lrs, dtype=float)))
    return int(np.argmin(gradients))


def valley_index(losses: Sequence[float]) -> int:
    """fastai's ``valley``: find the longest decreasing stretch of the curve (longest decreasing subsequence) and
    return the index half-way down it, at ``start + int(length / 3) + int(length / 6)`` exactly as fastai."""
    n = len(losses)
    lds = [1] * n  # length of the longest decreasing subsequence ending at i
    max_start, max_end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def minimum_index(losses: Sequence[float]) -> int:
    """Index of the lowest loss (the suggestion is that LR divided by 10)."""
    return int(np.argmin(np.asarray(losses, dtype=float)))


@dataclass
class Suggestion:
    """A suggested LR (``None`` with a ``message`` when the curve is too short) and its index in the curve."""

    method: str
    lr: float | None
    index: int | None
    message: str = ""


def suggest_lr(
    lrs: Sequence[float],
    losses: Sequence[float],
    method: str = "steepest",
    skip_begin: int = 10,
    skip_end: int = 1,
) -> Suggestion:
    """Suggest an LR from a (smoothed) loss curve.

    The first ``skip_begin`` and last ``skip_end`` points are ignored (``skip_end=0`` keeps the end), then NaN/inf
    points are dropped. ``index`` refers to the full ``lrs`` list; for ``minimum`` it is the minimum's index and the
    LR is a tenth of it.
    """
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"method must be one of {SUPPORTED_METHODS}, got {method!r}.")
    if skip_begin < 0 or skip_end < 0:
        raise ValueError(f"skip_begin and skip_end must be >= 0, got {skip_begin} and {skip_end}.")
    if len(lrs) != len(losses):
        raise ValueError(f"lrs and losses differ in length: {len(lrs)} vs {len(losses)}.")
    candidates = [
        i
        for i in range(skip_begin, len(losses) - skip_end)
        if math.isfinite(losses[i]) and math.isfinite(lrs[i]) and lrs[i] > 0
    ]
    if len(candidates) < MIN_POINTS:
        return Suggestion(
            method,
            None,
            None,
            f"No {method} suggestion: {len(candidates)} finite point(s) of {len(losses)} remain after skipping the "
            f"first {skip_begin} and last {skip_end}; {MIN_POINTS} are needed. Raise num_iter (or end_lr / "
            "diverge_th if the test stopped early), or lower skip_begin / skip_end.",
        )
    sub_lrs = [lrs[i] for i in candidates]
    sub_losses = [losses[i] for i in candidates]
    if method == "steepest":
        index = candidates[steepest_index(sub_lrs, sub_losses)]
        return Suggestion(method, float(lrs[index]), index)
    if method == "valley":
        index = candidates[valley_index(sub_losses)]
        return Suggestion(method, float(lrs[index]), index)
    index = candidates[minimum_index(sub_losses)]
    return Suggestion(method, float(lrs[index]) / 10.0, index)


# ---------------------------------------------------------------------------------------------------- result
def _finite_or_none(values: Sequence[float]) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


@dataclass
class LRRangeTestResult:
    """What a range test recorded: one LR, raw loss and smoothed loss per iteration, and the suggestions.

    ``suggestion`` is the one of ``method``; ``suggestions`` holds every method's LR (``None`` when impossible).
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    method: str = "steepest"
    suggestion: float | None = None
    suggestion_index: int | None = None
    suggestions: dict[str, float | None] = field(default_factory=dict)
    message: str = ""
    stopped_early: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_curve(
        cls,
        lrs: Sequence[float],
        raw_losses: Sequence[float],
        smoothing: float = 0.05,
        method: str = "steepest",
        skip_begin: int = 10,
        skip_end: int = 1,
        stopped_early: bool = False,
        params: dict[str, Any] | None = None,
    ) -> LRRangeTestResult:
        losses = smooth_losses(raw_losses, smoothing)
        found = {m: suggest_lr(lrs, losses, m, skip_begin, skip_end) for m in SUPPORTED_METHODS}
        chosen = found[method]
        return cls(
            lrs=[float(v) for v in lrs],
            losses=losses,
            raw_losses=[float(v) for v in raw_losses],
            method=method,
            suggestion=chosen.lr,
            suggestion_index=chosen.index,
            suggestions={m: s.lr for m, s in found.items()},
            message=chosen.message,
            stopped_early=stopped_early,
            params=dict(params or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite losses become ``null``."""
        out = asdict(self)
        out["losses"] = _finite_or_none(self.losses)
        out["raw_losses"] = _finite_or_none(self.raw_losses)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LRRangeTestResult:
        nan = float("nan")
        return cls(
            lrs=[float(v) for v in data["lrs"]],
            losses=[nan if v is None else float(v) for v in data["losses"]],
            raw_losses=[nan if v is None else float(v) for v in data.get("raw_losses", data["losses"])],
            method=data.get("method", "steepest"),
            suggestion=data.get("suggestion"),
            suggestion_index=data.get("suggestion_index"),
            suggestions=dict(data.get("suggestions", {})),
            message=data.get("message", ""),
            stopped_early=bool(data.get("stopped_early", False)),
            params=dict(data.get("params", {})),
        )

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False))
        return path

    def plot(self, ax: Any = None) -> Any:
        """Smoothed (and faint raw) loss against LR on a log x-axis, the suggestion marked; returns the Figure.

        Every recorded point is drawn, whatever the skip counts; without a suggestion the title says why.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
        else:
            fig = ax.figure
        ax.plot(self.lrs, self.raw_losses, color="tab:blue", alpha=0.25, linewidth=1, label="loss")
        ax.plot(self.lrs, self.losses, color="tab:blue", linewidth=2, label="smoothed loss")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("loss")
        if self.suggestion is not None and self.suggestion_index is not None:
            i = self.suggestion_index
            ax.plot([self.lrs[i]], [self.losses[i]], "o", color="tab:red", markersize=9,
                    label=f"{self.method}: {self.suggestion:.3g}")
            ax.axvline(self.suggestion, color="tab:red", linestyle="--", linewidth=1)
            ax.set_title(f"LR range test: suggested LR {self.suggestion:.3g} ({self.method})")
        else:
            ax.set_title("LR range test: no suggestion (see message)", fontsize=10)
            ax.text(0.02, 0.02, self.message, transform=ax.transAxes, fontsize=7, wrap=True, va="bottom")
        ax.legend(loc="upper left")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        return fig

    def save_png(self, path: str | Path) -> Path:
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = self.plot()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


# ---------------------------------------------------------------------------------------------------- the run
def validate_params(
    start_lr: float, end_lr: float, num_iter: int, step_mode: str, smoothing: float, diverge_th: float | None,
    val_batches: int, method: str, skip_begin: int, skip_end: int,
) -> None:
    """Check every range-test parameter; the ``ValueError`` names the value and the valid range."""
    validate_range(start_lr, end_lr, num_iter, step_mode)
    if not 0.0 < smoothing <= 1.0:
        raise ValueError(f"smoothing must be in (0, 1] (1 = no smoothing), got {smoothing}.")
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"method must be one of {SUPPORTED_METHODS}, got {method!r}.")
    if diverge_th is not None and diverge_th <= 1:
        raise ValueError(f"diverge_th must be > 1 (or None to never stop early), got {diverge_th}.")
    if val_batches < 0:
        raise ValueError(f"val_batches must be >= 0 (0 = use the training loss), got {val_batches}.")
    if skip_begin < 0 or skip_end < 0:
        raise ValueError(f"skip_begin and skip_end must be >= 0, got {skip_begin} and {skip_end}.")


def check_supported(trainer: Any, pl_module: Any) -> None:
    """Refuse set-ups the test cannot leave without a trace; the messages say what to do instead."""
    if getattr(trainer, "world_size", 1) > 1:
        raise ValueError(
            f"The LR range test runs in a single process, but this trainer has world_size={trainer.world_size} "
            "(multi-process DDP). Run `lit-cv lr-find --config X.yaml --trainer.devices 1` and put the suggested "
            "LR into the config, then train on all devices."
        )
    if not getattr(pl_module, "automatic_optimization", True):
        raise ValueError(
            "The LR range test needs automatic optimization; this module sets automatic_optimization=False."
        )
    optimizers = getattr(trainer, "optimizers", [])
    if len(optimizers) != 1:
        raise ValueError(
            f"The LR range test needs exactly one optimizer; configure_optimizers returned {len(optimizers)}."
        )


def _metrics_of(module: torch.nn.Module) -> list[Any]:
    from torchmetrics import Metric

    return [m for m in module.modules() if isinstance(m, Metric)]


@contextmanager
def preserved_training_state(trainer: Any, pl_module: torch.nn.Module) -> Iterator[None]:
    """Save everything the test can change and restore it in ``finally``, bitwise.

    Weights and buffers, gradients, optimizer and scheduler state dicts, the precision plugin's state (AMP grad
    scaler), global RNG states (torch, CUDA, numpy, random), train/eval mode of every submodule, torchmetrics states,
    the trainer's callbacks list, the training loop's logged results and the module's current hook name.
    """
    from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection
    from lightning.pytorch.utilities.model_helpers import _ModuleMode

    rng = _collect_rng_states(include_cuda=torch.cuda.is_available())
    weights = {k: v.detach().clone() for k, v in pl_module.state_dict(keep_vars=True).items()}
    grads = {p: (None if p.grad is None else p.grad.detach().clone()) for p in pl_module.parameters()}
    optimizers = [(opt, copy.deepcopy(opt.state_dict())) for opt in trainer.optimizers]
    schedulers = [(cfg.scheduler, copy.deepcopy(cfg.scheduler.state_dict())) for cfg in trainer.lr_scheduler_configs]
    precision = trainer.precision_plugin
    precision_state = copy.deepcopy(precision.state_dict())
    modes = _ModuleMode()
    modes.capture(pl_module)
    metrics = [(m, m._copy_state_dict(), m._update_count, m._computed) for m in _metrics_of(pl_module)]
    callbacks = trainer.callbacks
    epoch_loop = trainer.fit_loop.epoch_loop
    results = epoch_loop._results
    fx_name = pl_module._current_fx_name
    try:
        trainer.callbacks = []  # other callbacks must not see the test's steps (gradient capture, EMA, ...)
        epoch_loop._results = _ResultCollection(training=True)  # `self.log` in training_step goes nowhere
        yield
    finally:
        trainer.callbacks = callbacks
        epoch_loop._results = results
        pl_module._current_fx_name = fx_name
        with torch.no_grad():
            pl_module.load_state_dict(weights)
            for p, g in grads.items():
                p.grad = g
        for opt, state in optimizers:
            opt.load_state_dict(state)
        for scheduler, state in schedulers:
            scheduler.load_state_dict(state)
        if precision_state:
            precision.load_state_dict(precision_state)
        modes.restore(pl_module)
        for metric, state, count, computed in metrics:
            for name, value in state.items():
                setattr(metric, name, value)
            metric._update_count = count
            metric._computed = computed
        _set_rng_states(rng)


def _loss_of(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and isinstance(output.get("loss"), torch.Tensor):
        return output["loss"]
    return None


def _to_device(trainer: Any, batch: Any) -> Any:
    from lightning.pytorch.trainer import call

    batch = trainer.precision_plugin.convert_input(batch)
    batch = trainer.lightning_module._on_before_batch_transfer(batch, dataloader_idx=0)
    return call._call_strategy_hook(trainer, "batch_to_device", batch, dataloader_idx=0)


def _endless(loader: Any) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("The training dataloader is empty: the LR range test has no batch to train on.")


def _train_step(trainer: Any, optimizer: torch.optim.Optimizer, batch: Any, index: int) -> float:
    """One optimisation step through the strategy and precision plugin; returns the batch loss before the step."""
    from lightning.pytorch.trainer import call

    holder: dict[str, float] = {}

    def closure() -> torch.Tensor | None:
        optimizer.zero_grad(set_to_none=True)
        loss = _loss_of(call._call_strategy_hook(trainer, "training_step", batch, index))
        if loss is None:
            holder["loss"] = float("nan")
            return None
        holder["loss"] = float(loss.detach())
        trainer.strategy.backward(loss, optimizer)
        return loss

    trainer.strategy.optimizer_step(optimizer, closure)
    return holder.get("loss", float("nan"))


@torch.no_grad()
def _eval_loss(trainer: Any, pl_module: torch.nn.Module, batches: list[Any]) -> float:
    """Mean ``training_step`` loss over fixed validation batches, in eval mode, without gradients."""
    from lightning.pytorch.trainer import call

    pl_module.eval()
    try:
        losses = [_loss_of(call._call_strategy_hook(trainer, "training_step", b, i)) for i, b in enumerate(batches)]
    finally:
        pl_module.train()
    if any(loss is None for loss in losses):
        return float("nan")
    return float(torch.stack([loss.detach().float() for loss in losses]).mean())


def run_lr_range_test(
    trainer: Any,
    pl_module: Any,
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    num_iter: int = 100,
    step_mode: str = "exp",
    smoothing: float = 0.05,
    diverge_th: float | None = 5.0,
    val_batches: int = 0,
    method: str = "steepest",
    skip_begin: int = 10,
    skip_end: int = 1,
) -> LRRangeTestResult:
    """Run the range test inside a trainer whose strategy is set up (``on_fit_start`` or later) and return the curve.

    Trains one batch per LR of :func:`lr_sequence` (batches from a fresh training dataloader, cycled if too short),
    records the batch loss, or with ``val_batches > 0`` the mean loss over that many validation batches after each
    step, smooths it and stops once :func:`is_diverging`. Everything is restored afterwards (see
    :func:`preserved_training_state`).
    """
    from lightning.pytorch.trainer.connectors.data_connector import _request_dataloader

    params = {
        "start_lr": start_lr, "end_lr": end_lr, "num_iter": num_iter, "step_mode": step_mode,
        "smoothing": smoothing, "diverge_th": diverge_th, "val_batches": val_batches,
        "skip_begin": skip_begin, "skip_end": skip_end,
    }
    validate_params(method=method, **params)
    check_supported(trainer, pl_module)
    optimizer = trainer.optimizers[0]
    lrs = lr_sequence(start_lr, end_lr, num_iter, step_mode)
    tested: list[float] = []
    raw: list[float] = []
    stopped_early = False
    with preserved_training_state(trainer, pl_module):
        val_set: list[Any] = []
        if val_batches:
            val_source = trainer.fit_loop.epoch_loop.val_loop._data_source
            if not val_source.is_defined():
                raise ValueError("val_batches > 0 needs a validation dataloader; the datamodule has none.")
            loader = _request_dataloader(val_source)
            for batch in loader:
                val_set.append(_to_device(trainer, batch))
                if len(val_set) == val_batches:
                    break
        batches = _endless(_request_dataloader(trainer.fit_loop._data_source))
        pl_module.train()
        smoothed: float | None = None
        best = math.inf
        for i, lr in enumerate(lrs):
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = _train_step(trainer, optimizer, _to_device(trainer, next(batches)), i)
            if val_set:
                loss = _eval_loss(trainer, pl_module, val_set)
            tested.append(lr)
            raw.append(loss)
            smoothed = loss if smoothed is None else smoothing * loss + (1 - smoothing) * smoothed
            if i > 0 and is_diverging(smoothed, best, diverge_th):
                stopped_early = i < num_iter
                break
            best = min(best, smoothed)
        batches.close()
    return LRRangeTestResult.from_curve(
        tested, raw, smoothing, method, skip_begin, skip_end, stopped_early=stopped_early, params=params
    )
