"""Log per-layer gradient norms, parameter norms, update/weight ratios and histograms every N optimizer steps.

The course's ``capture_gradients`` / ``capture_parameters`` (Godoy, "Deep Learning with PyTorch Step-by-Step",
chapter 5) as a callback; it can also keep the raw values of chosen layers and plot their evolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from callbacks.figures import pyplot, save
from callbacks.run_dir import run_dir

PERCENTILE_BANDS = ((0.05, 0.95), (0.25, 0.75))  # shaded bands of the evolution plot, outer to inner
HISTOGRAM_BINS = 64  # equal-width bins between the tensor's min and max


def total_norm(tensors: list[torch.Tensor]) -> float:
    """L2 norm of all ``tensors`` taken together, as if they were concatenated into one vector."""
    if not tensors:
        return float("nan")
    norms = torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors])
    return float(torch.linalg.vector_norm(norms))


def update_ratio(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """``||after - before|| / ||before||`` over a layer's parameters (NaN when the weights were all zero).

    The rule of thumb (Karpathy, CS231n) is ~1e-3: much lower means the layer barely learns, much higher that
    the learning rate is too large for it.
    """
    denominator = total_norm(before)
    if not denominator > 0:
        return float("nan")
    return total_norm([a.detach() - b for a, b in zip(after, before)]) / denominator


def histogram_summary(tensor: torch.Tensor, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Keyword arguments for TensorBoard's ``SummaryWriter.add_histogram_raw``: ``bins`` equal-width buckets
    between the min and max of ``tensor`` (a constant tensor gets one unit-wide range around its value),
    counted with ``torch.histc`` on the tensor's device. About 6x cheaper than ``add_histogram``'s NumPy
    binning."""
    values = tensor.detach().flatten().float()
    low, high = float(values.min()), float(values.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    counts = torch.histc(values, bins=bins, min=low, max=high)
    return {
        "min": low,
        "max": high,
        "num": values.numel(),
        "sum": float(values.sum()),
        "sum_squares": float(values.square().sum()),
        "bucket_limits": torch.linspace(low, high, bins + 1)[1:].tolist(),
        "bucket_counts": counts.tolist(),
    }


def layers_with_parameters(module: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """``{layer name: [(parameter name, parameter)]}`` for every module that directly owns parameters
    (names as in ``module.named_modules()``; the root module, if it owns any, is called ``"."``). Frozen
    parameters are included: they are skipped while they get no gradient, and picked up once unfrozen."""
    layers = {}
    for name, layer in module.named_modules():
        params = list(layer.named_parameters(recurse=False))
        if params:
            layers[name or "."] = params
    return layers


def plot_history(
    steps: dict[str, list[int]],
    gradients: dict[str, dict[str, list[torch.Tensor]]],
    parameters: dict[str, dict[str, list[torch.Tensor]]],
    title: str = "distribution over training",
) -> Any:
    """A matplotlib figure: one row per kept parameter (``layer.weight``, ``layer.bias``, ...), gradients on
    the left and parameter values on the right, each the median over the tensor's values per captured step
    with 25-75% and 5-95% percentile bands and the min/max as dotted lines. ``steps[layer]`` are the steps the
    layer was captured at; percentiles of tensors over a million values use an evenly strided subset
    (``torch.quantile``'s size limit)."""
    rows = [(layer, p_name) for layer, params in parameters.items() for p_name in params]
    fig, axes = pyplot().subplots(len(rows), 2, figsize=(11, 2.3 * len(rows) + 0.6), squeeze=False, sharex=True)
    for row, (layer, p_name) in enumerate(rows):
        for col, (kind, store) in enumerate((("gradient", gradients), ("value", parameters))):
            ax = axes[row, col]
            series = store.get(layer, {}).get(p_name, [])
            if not series:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
                continue
            x = steps[layer]
            values = torch.stack([t.float().flatten() for t in series])
            quantiles = torch.tensor([q for band in PERCENTILE_BANDS for q in band] + [0.5])
            stride = max(1, -(-values.shape[1] // 2**20))
            qs = torch.quantile(values[:, ::stride], quantiles, dim=1).numpy()
            for i, (alpha, (low, high)) in enumerate(zip((0.2, 0.35), PERCENTILE_BANDS)):
                ax.fill_between(
                    x,
                    qs[2 * i],
                    qs[2 * i + 1],
                    alpha=alpha,
                    color="C0",
                    label=f"{low:.0%}-{high:.0%}",
                    linewidth=0,
                )
            ax.plot(x, qs[-1], color="C0", label="median")
            ax.plot(x, values.min(dim=1).values.numpy(), ":", color="C1", label="min / max")
            ax.plot(x, values.max(dim=1).values.numpy(), ":", color="C1")
            ax.set_title(f"{layer}.{p_name} {kind} {tuple(series[0].shape)}", fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


class GradientCapture(Callback):
    """Every ``every_n_steps`` optimizer steps, records for each layer whose parameters got gradients:

    - ``grad_norm/<layer>``: L2 norm of the layer's gradients (all its parameters together), as the optimizer
      is about to use them: after AMP unscaling and gradient accumulation, before gradient clipping
      (Lightning's ``on_before_optimizer_step``);
    - ``param_norm/<layer>``: L2 norm of its parameters before the step;
    - ``update_ratio/<layer>``: ``||w_after - w_before|| / ||w_before||`` of that step, measured by a
      ``register_step_post_hook`` on each optimizer, so a step skipped by AMP's GradScaler records nothing;
    - histograms ``gradients/<layer>.<param>`` and ``parameters/<layer>.<param>`` (``histograms: true``).

    Scalars go to every logger (``log_metrics`` at the global step), histograms to every
    ``TensorBoardLogger``. With ``keep``, the raw gradients and parameters of those layers are also kept in
    memory (CPU copies, every ``every_n_steps`` steps: mind the memory for big layers) in ``gradients`` and
    ``parameters`` (``{layer: {param: [tensor per captured step]}}``, steps in ``captured_steps[layer]``),
    saved in checkpoints so a resumed run keeps its history, and plotted at the end of fit to
    ``<trainer.log_dir>/gradient_capture/evolution.png`` and TensorBoard (``plot: true``).

    The optimizer hooks are removed at the end of fit (``teardown``) and on exceptions. Rank zero only; with
    sharded strategies (FSDP, DeepSpeed) the norms cover the local shard only.

    Args:
        every_n_steps: capture every this many optimizer steps (steps 0, N, 2N, ...).
        layer_names: layers as in ``LightningModule.named_modules()`` (e.g. ``net.conv1`` for the
            :class:`~lit_cv.Classifier`); ``None`` takes every module that directly owns parameters.
        histograms: also log gradient and parameter histograms.
        keep: layers whose raw gradients and parameters are kept in memory (need not be in ``layer_names``).
        plot: write the evolution plot of the ``keep`` layers at the end of fit.

    Raises:
        ValueError: in ``__init__`` for ``every_n_steps`` < 1 or empty/non-string names; in ``setup`` for a
            layer name that does not exist or owns no parameters (the message lists the available layers), or
            when no logger is configured (or no ``TensorBoardLogger`` while ``histograms`` is on).

    Example (YAML for ``lit-cv fit --config``)::

        trainer:
          callbacks:
            - class_path: callbacks.GradientCapture
              init_args:
                every_n_steps: 50
                keep: [net.conv1, net.fc2]

    Python::

        trainer = Trainer(logger=TensorBoardLogger("runs"), callbacks=[GradientCapture(every_n_steps=50)])
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        layer_names: list[str] | None = None,
        histograms: bool = True,
        keep: list[str] | None = None,
        plot: bool = True,
    ) -> None:
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}.")
        for arg, names in (("layer_names", layer_names), ("keep", keep)):
            if names is not None and (not names or not all(isinstance(n, str) and n for n in names)):
                raise ValueError(f"{arg} must be a non-empty list of layer names or omitted, got {names!r}.")
        self.every_n_steps = every_n_steps
        self.layer_names = list(layer_names) if layer_names is not None else None
        self.histograms = histograms
        self.keep = list(keep) if keep is not None else []
        self.plot = plot
        self.layers: dict[str, list[tuple[str, nn.Parameter]]] = {}
        self.captured_steps: dict[str, list[int]] = {}
        self.gradients: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.parameters: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.plot_path: Path | None = None
        self._handles: list[RemovableHandle] = []
        self._trainer: Trainer | None = None
        # layer -> (its parameters, their values before the step being taken)
        self._pending: dict[str, tuple[list[nn.Parameter], list[torch.Tensor]]] = {}
        self._pending_step: int | None = None
        self._pending_optimizer: Optimizer | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            every_n_steps=self.every_n_steps, layer_names=self.layer_names, keep=self.keep
        )

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        available = layers_with_parameters(pl_module)
        for name in (self.layer_names or []) + self.keep:
            if name not in available:
                raise ValueError(
                    f"GradientCapture layer {name!r} does not exist or has no parameters of its own; layers "
                    f"with parameters: {', '.join(available)}. Fix layer_names / keep."
                )
        names = self.layer_names or list(available)
        self.layers = {name: available[name] for name in dict.fromkeys(names + self.keep)}
        self._check_loggers(trainer)  # on every rank, so all of them raise together

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hooks()
        if trainer.is_global_zero:
            self._trainer = trainer
            self._handles = [
                opt.register_step_post_hook(self._after_optimizer_step) for opt in trainer.optimizers
            ]

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        self._pending, self._pending_step = {}, None  # drop a snapshot whose step AMP skipped
        if not trainer.is_global_zero or trainer.global_step % self.every_n_steps != 0:
            return
        self._capture_before_step(trainer, optimizer)

    def _after_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self._pending_step is None or optimizer is not self._pending_optimizer:
            return
        self._capture_after_step()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.plot and self.captured_steps:
            self._plot(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()

    def state_dict(self) -> dict[str, Any]:
        if not self.keep:
            return {}
        return {
            "captured_steps": self.captured_steps,
            "gradients": self.gradients,
            "parameters": self.parameters,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.captured_steps = state_dict.get("captured_steps", {})
        self.gradients = state_dict.get("gradients", {})
        self.parameters = state_dict.get("parameters", {})

    # ------------------------------------------------------------------ work
    def _check_loggers(self, trainer: Trainer) -> None:
        if not trainer.loggers:
            raise ValueError(
                "GradientCapture logs scalars but the Trainer has no logger (logger=False). Add "
                "`trainer.logger: {class_path: lightning.pytorch.loggers.TensorBoardLogger}`."
            )
        if self.histograms and not _histogram_writers(trainer):
            found = ", ".join(type(logger).__name__ for logger in trainer.loggers)
            raise ValueError(
                f"GradientCapture histograms need a TensorBoardLogger; loggers found: {found}. Add a "
                "TensorBoardLogger or set histograms: false."
            )

    def _capture_before_step(self, trainer: Trainer, optimizer: Optimizer) -> None:
        step = trainer.global_step
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        metrics: dict[str, float] = {}
        self._pending = {}
        for layer, params in self.layers.items():
            # parameters this optimizer is about to update (frozen or unused ones have no gradient)
            params = [(p_name, p) for p_name, p in params if id(p) in owned and p.grad is not None]
            if not params:
                continue
            metrics[f"grad_norm/{layer}"] = total_norm([p.grad for _, p in params])
            metrics[f"param_norm/{layer}"] = total_norm([p for _, p in params])
            self._pending[layer] = ([p for _, p in params], [p.detach().clone() for _, p in params])
            if self.histograms:
                self._log_histograms(trainer, layer, params, step)
            if layer in self.keep:
                self._keep(layer, params, step)
        self._log_scalars(trainer, metrics, step)
        self._pending_step = step
        self._pending_optimizer = optimizer

    def _capture_after_step(self) -> None:
        metrics = {
            f"update_ratio/{layer}": update_ratio(before, after)
            for layer, (after, before) in self._pending.items()
        }
        self._log_scalars(self._trainer, metrics, self._pending_step)
        self._pending, self._pending_step = {}, None

    def _keep(self, layer: str, params: list[tuple[str, nn.Parameter]], step: int) -> None:
        self.captured_steps.setdefault(layer, []).append(step)
        for p_name, p in params:
            self.parameters.setdefault(layer, {}).setdefault(p_name, []).append(p.detach().cpu().clone())
            self.gradients.setdefault(layer, {}).setdefault(p_name, []).append(p.grad.detach().cpu().clone())

    @staticmethod
    def _log_scalars(trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    @staticmethod
    def _log_histograms(
        trainer: Trainer, layer: str, params: list[tuple[str, nn.Parameter]], step: int
    ) -> None:
        for writer in _histogram_writers(trainer):
            for p_name, p in params:
                writer.add_histogram_raw(
                    f"parameters/{layer}.{p_name}", global_step=step, **histogram_summary(p)
                )
                if p.grad is not None:
                    writer.add_histogram_raw(
                        f"gradients/{layer}.{p_name}", global_step=step, **histogram_summary(p.grad)
                    )

    @rank_zero_only
    def _plot(self, trainer: Trainer) -> None:
        title = f"GradientCapture: distribution over training (captured every {self.every_n_steps} steps)"
        fig = plot_history(self.captured_steps, self.gradients, self.parameters, title=title)
        path = save(fig, run_dir(trainer) / "gradient_capture" / "evolution.png", close=False)
        for writer in _histogram_writers(trainer):
            writer.add_figure("gradient_capture/evolution", fig, global_step=trainer.global_step, close=False)
        pyplot().close(fig)
        self.plot_path = path

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._pending, self._pending_step, self._pending_optimizer, self._trainer = {}, None, None, None


def _histogram_writers(trainer: Trainer) -> list[Any]:
    """The SummaryWriter of every TensorBoardLogger."""
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
