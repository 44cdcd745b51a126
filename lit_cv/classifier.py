"""The one LightningModule of lit-cv: a classifier around an injected net.

Every experiment (RPS, MNIST, Cats-vs-Dogs, bank marketing, the digits quickstart) is ``Classifier(net=...)`` with a
plain ``nn.Module`` net; the module owns the loss, the metrics, the optimizer/scheduler wiring and the L1 penalty.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR, ReduceLROnPlateau
from torchmetrics import MaxMetric, Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities.distributed import gather_all_tensors

from callbacks.metrics_report import per_class_counts
from lit_cv.schedules import build_optimizer_and_scheduler, step_scheduler

Task = Literal["multiclass", "binary"]
Stage = Literal["train", "val", "test"]

SUPPORTED_TASKS = ("multiclass", "binary")
SUPPORTED_INTERVALS = ("epoch", "step")
STAGES: tuple[Stage, ...] = ("train", "val", "test")
EPOCH_METRICS = ("loss", "acc", "precision", "recall", "f1", "auroc")  # logged per stage as `<stage>/<name>`
# Schedulers whose period is counted in optimizer steps: stepping them once per epoch is a silent bug.
PER_STEP_SCHEDULERS = (CyclicLR, OneCycleLR)

# Lightning's dataloader wrapper calls torch's deprecated LeafSpec() in every run; nothing a user can change.
# Workaround, see docs/lightning-workarounds.md (LeafSpec FutureWarning, Lightning #21326)
warnings.filterwarnings(
    "ignore", message=r".*isinstance\(treespec, LeafSpec\)", module="lightning.pytorch.utilities._pytree"
)


def l1_penalty(net: nn.Module) -> torch.Tensor:
    """Sum of |w| over the trainable weight tensors of ``net`` (conv/linear kernels: ``*.weight`` with ndim >= 2).

    Biases and normalisation scales are not penalised, as in the course's L1 regularisation.
    """
    terms = [
        p.abs().sum()
        for name, p in net.named_parameters()
        if p.requires_grad and name.rsplit(".", 1)[-1] == "weight" and p.ndim >= 2
    ]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def build_metrics(task: Task, num_classes: int) -> MetricCollection:
    """Accuracy and macro precision / recall / F1 for ``task``; inputs are probabilities and int labels.

    Binary metrics score the positive class (label 1), as the bank-marketing and cats-vs-dogs chapters do. They
    compute on the local states only (``sync_on_compute=False``): the :class:`Classifier` feeds them the
    predictions of every rank at once (see :func:`gather_rows`). ROC-AUC is :func:`defined_auroc`.
    """
    local = {"sync_on_compute": False}
    if task == "binary":
        return MetricCollection(
            {
                "acc": BinaryAccuracy(**local),
                "precision": BinaryPrecision(**local),
                "recall": BinaryRecall(**local),
                "f1": BinaryF1Score(**local),
            }
        )
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro", **local),
            "precision": MulticlassPrecision(num_classes, average="macro", **local),
            "recall": MulticlassRecall(num_classes, average="macro", **local),
            "f1": MulticlassF1Score(num_classes, average="macro", **local),
        }
    )


def build_confusion_matrix(task: Task, num_classes: int) -> BinaryConfusionMatrix | MulticlassConfusionMatrix:
    if task == "binary":
        return BinaryConfusionMatrix(sync_on_compute=False)
    return MulticlassConfusionMatrix(num_classes, sync_on_compute=False)


def flip_averaged_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean of ``net``'s logits for the images ``x`` (N, C, H, W) and for their horizontal mirrors.

    Raises:
        ValueError: when ``x`` is not a batch of images.
    """
    if x.ndim != 4:
        raise ValueError(
            f"test_time_flip mirrors images (N, C, H, W), but the batch has shape {tuple(x.shape)}. "
            "Set model.test_time_flip: false for non-image data."
        )
    return (net(x) + net(torch.flip(x, dims=(-1,)))) / 2


def defined_auroc(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ROC-AUC where it is defined: binary (``probs`` of shape (N,)) needs both labels present; multiclass
    (``probs`` (N, C)) averages the one-vs-rest AUROCs of the classes that have positive and negative samples
    (torchmetrics' macro ``MulticlassAUROC`` when every class is present). NaN when no class qualifies.

    torchmetrics scores an undefined class 0 (with a "No positive samples" warning), which pulls the macro mean
    down: e.g. on the sanity check, whose first validation batches hold one class.
    """
    columns = [(probs, labels == 1)] if probs.ndim == 1 else [(probs[:, c], labels == c) for c in range(probs.shape[1])]
    scores = [binary_auroc(p, t.long()) for p, t in columns if 0 < int(t.sum()) < len(t)]
    return torch.stack(scores).mean() if scores else torch.tensor(float("nan"), device=probs.device)


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """The ``rows`` of every rank, concatenated in rank order (first dimensions may differ); ``rows`` itself
    outside distributed runs. A collective: every rank must call it at the same point (see :class:`Classifier`)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    return torch.cat(gather_all_tensors(rows.contiguous()))


class ReducedValue(Metric):
    """A scalar that is already the same on every rank, logged as a Metric so that Lightning takes it as it is.

    A plain tensor logged with ``sync_dist=True`` is reduced by Lightning lazily, in whichever hook first reads the
    metrics (a progress bar on rank 0, a checkpoint callback, ...): a collective in rank-dependent code, which
    deadlocks DDP. With ``sync_dist=False`` Lightning warns that the value is not reduced. A Metric's ``compute``
    is Lightning's to call, and this one never synchronises.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__(sync_on_compute=False, compute_with_cache=False)
        self.add_state("value", default=torch.tensor(float("nan")), dist_reduce_fx=None)

    def update(self, value: torch.Tensor | float) -> None:
        self.value = torch.as_tensor(value, dtype=torch.float32).detach()

    def compute(self) -> torch.Tensor:
        return self.value


CONFUSION_FONT_SIZE = 13  # pixels
CONFUSION_BLUE = (31, 119, 180)  # matplotlib's C0: full colour = the whole row in that cell


def confusion_image(confusion: torch.Tensor, class_names: list[str]) -> torch.Tensor:
    """The confusion matrix (rows = true class, columns = predicted) as an RGB uint8 ``(3, H, W)`` image: the count
    in each cell, shaded by its share of the row, class names on both axes.

    Drawn with PIL rather than matplotlib: about 4 ms instead of 100 ms CPU for 3 classes (23 vs 280 ms for 10), so
    it can go to TensorBoard at every validation without costing the small nets a sixth of their epoch.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=CONFUSION_FONT_SIZE)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = lambda text: draw.textbbox((0, 0), text, font=font)[2:]
    counts = confusion.detach().cpu().long()
    shares = counts.float() / counts.sum(dim=1, keepdim=True).clamp_min(1)
    n, pad = len(class_names), 6
    cell = min(120, max(36, *(size(name)[0] + 2 * pad for name in class_names),
                        *(size(str(v))[0] + 2 * pad for v in counts.flatten().tolist())))
    line = size("Ag")[1] + pad
    left = max(size(name)[0] for name in [*class_names, "true"]) + 2 * pad
    top = 2 * line + pad
    image = Image.new("RGB", (left + n * cell + pad, top + n * cell + pad), "white")
    draw = ImageDraw.Draw(image)

    def centred(text: str, x: float, y: float, fill: Any = "black") -> None:
        width, height = size(text)
        draw.text((x - width / 2, y - height / 2), text, fill=fill, font=font)

    centred("predicted", left + n * cell / 2, line / 2 + pad / 2)
    draw.text((pad, top - line), "true", fill="black", font=font)
    for i, name in enumerate(class_names):
        centred(name, left + (i + 0.5) * cell, line * 1.5 + pad / 2)
        draw.text((left - pad - size(name)[0], top + (i + 0.5) * cell - size(name)[1] / 2), name, fill="black",
                  font=font)
        for j in range(n):
            share = float(shares[i, j])
            colour = tuple(round(255 + share * (c - 255)) for c in CONFUSION_BLUE)
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(200, 200, 200))
            centred(str(int(counts[i, j])), x0 + cell / 2, y0 + cell / 2, "white" if share > 0.5 else "black")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def _built_by_cli() -> bool:
    """True while LightningCLI instantiates the module: it then supplies the parsed config as hparams, in which
    the net is a ``class_path`` dict, so ``load_from_checkpoint`` can rebuild it without being given the net."""
    # Workaround, see docs/lightning-workarounds.md (LightningCLI hparams, Lightning #18105 / #20726)
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    return _given_hyperparameters.get() is not None


def drop_unaccepted_net_args(hparams: Any, net: nn.Module) -> None:
    """Remove from ``hparams["net"]["init_args"]`` the arguments ``type(net)`` does not take: the CLI links
    ``data.image_size`` into every net's config, and jsonargparse leaves it out when building a net without one
    (TransferNet), but not out of the config saved as hparams, which ``--ckpt_path`` parses again."""
    config = hparams.get("net") if hasattr(hparams, "get") else None
    init_args = config.get("init_args") if hasattr(config, "get") else None
    if not hasattr(init_args, "keys"):
        return
    parameters = inspect.signature(type(net).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for key in [key for key in list(init_args.keys()) if key not in parameters]:
        del init_args[key]


class Classifier(LightningModule):
    """Trains any net that maps images (or feature vectors) to class logits.

    Args:
        net: the network, a plain ``nn.Module`` returning logits: ``num_classes`` of them for ``multiclass``,
            one for ``binary``.
        task: ``multiclass`` (cross-entropy on logits, softmax probabilities) or ``binary`` (one logit,
            BCE-with-logits, sigmoid probability of class 1).
        num_classes: number of classes; linked from the datamodule by the ``lit-cv`` CLI. Must be 2 for binary.
        class_names: names for the per-class table and the confusion matrix (default ``"0"``, ``"1"``, ...).
        optimizer: any ``torch.optim`` optimizer, built on the trainable parameters.
        lr_scheduler: any ``torch.optim.lr_scheduler`` scheduler, or ``None``.
        scheduler_interval: ``epoch`` or ``step``: how often Lightning steps the scheduler. Per-batch schedules
            (CyclicLR, OneCycleLR) need ``step`` and are refused with ``epoch``. CosineAnnealingWarmRestarts
            counts ``T_0`` in epochs either way: ``step`` steps it every batch with the fractional epoch
            ``epoch + batch_idx / batches_per_epoch`` as in the course (smooth), ``epoch`` once per epoch
            (a staircase). Preview any schedule with ``lit-cv plot-schedule --config X.yaml``.
        scheduler_frequency: step the scheduler every this many intervals.
        scheduler_monitor: metric that ReduceLROnPlateau watches.
        l1_lambda: weight of the L1 penalty ``l1_lambda * sum|w|`` over conv/linear weights (not biases), added
            to the training loss. L2 is the optimizer's ``weight_decay``.
        test_time_flip: validation, test and prediction score each image by the mean of the logits of the image
            and of its horizontal mirror (test-time augmentation; training is unchanged). Images only.

    Raises:
        ValueError: for an unknown task or interval, a binary task with ``num_classes != 2``, a negative
            ``l1_lambda``, or class names that do not match ``num_classes``; with ``test_time_flip``, at the
            first evaluation batch that is not images (N, C, H, W).

    Example (YAML for ``lit-cv fit --config``)::

        model:
          net:
            class_path: lit_cv.nets.CNN2
            init_args: {n_feature: 5, p: 0.3}
          optimizer:
            class_path: torch.optim.Adam
            init_args: {lr: 3.0e-4}
          lr_scheduler:
            class_path: torch.optim.lr_scheduler.CyclicLR
            init_args: {base_lr: 1.0e-3, max_lr: 1.0e-2, step_size_up: 100, cycle_momentum: false}
          scheduler_interval: step
    """

    def __init__(
        self,
        net: nn.Module,
        task: Task = "multiclass",
        num_classes: int = 3,
        class_names: list[str] | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_frequency: int = 1,
        scheduler_monitor: str = "val/loss",
        l1_lambda: float = 0.0,
        test_time_flip: bool = False,
    ) -> None:
        super().__init__()
        if task not in SUPPORTED_TASKS:
            raise ValueError(f"Unknown task {task!r}; use one of {SUPPORTED_TASKS}.")
        if task == "binary" and num_classes != 2:
            raise ValueError(
                f"task: binary needs num_classes == 2 (the net outputs one logit), got {num_classes}. "
                "Use task: multiclass for more classes."
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if scheduler_interval not in SUPPORTED_INTERVALS:
            raise ValueError(
                f"scheduler_interval must be one of {SUPPORTED_INTERVALS}, got {scheduler_interval!r}."
            )
        if scheduler_frequency < 1:
            raise ValueError(f"scheduler_frequency must be >= 1, got {scheduler_frequency}.")
        if l1_lambda < 0:
            raise ValueError(f"l1_lambda must be >= 0, got {l1_lambda}.")
        class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names {class_names} but num_classes is {num_classes}."
            )
        # Built by the CLI, hparams are the parsed config (net and optimizer as class_path dicts), enough for
        # load_from_checkpoint on its own. Built in Python, the net is saved in the state_dict and the callables
        # would only make the checkpoint unloadable with torch.load(weights_only=True).
        # test_time_flip is left out: an evaluation setting, not the trained model's, so `lit-cv test --ckpt_path`
        # takes it from the command line (Lightning's CLI applies a checkpoint's hparams over the config).
        self.save_hyperparameters(ignore=["test_time_flip"] + ([] if _built_by_cli() else ["net", "optimizer",
                                                                                          "lr_scheduler"]))
        drop_unaccepted_net_args(self.hparams, net)
        self.net = net
        self.task: Task = task
        self.num_classes = num_classes
        self.class_names = class_names
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_frequency = scheduler_frequency
        self.scheduler_monitor = scheduler_monitor
        self.l1_lambda = l1_lambda
        self.test_time_flip = test_time_flip

        metrics = build_metrics(task, num_classes)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_confusion = build_confusion_matrix(task, num_classes)
        self.test_confusion = build_confusion_matrix(task, num_classes)
        # Best validation accuracy so far; saved in checkpoints so a resumed run keeps it. Sanity-check
        # validation never updates it (see on_validation_epoch_end). val/acc is the same on every rank: no sync.
        self.val_acc_best = MaxMetric(sync_on_compute=False)
        self.val_acc_best.persistent(True)
        # What the steps of the running epoch saw, per stage: (probabilities, labels, mean loss) per batch. Steps
        # only append; the epoch-end hooks gather them across ranks once and compute every metric (_epoch_values).
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {s: [] for s in STAGES}
        # One ReducedValue per logged epoch value (keys are indices: class names may hold dots).
        names = [f"{stage}/{name}" for stage in STAGES for name in EPOCH_METRICS] + ["val/acc_best"]
        names += [f"{stage}/acc_class/{name}" for stage in ("val", "test") for name in class_names]
        self._value_keys = {name: str(i) for i, name in enumerate(names)}
        self.epoch_values = nn.ModuleDict({key: ReducedValue() for key in self._value_keys.values()})
        # Last computed confusion matrix per stage (rows = true class): read by reports and the per-class table.
        self.confusion: dict[str, torch.Tensor] = {}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Classifier:
        """Lightning's ``load_from_checkpoint``, always reading tensors and plain values only: Lightning turns its
        default ``weights_only=None`` into ``False`` under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which runs any code
        pickled into the file (see ``callbacks.model_checkpoint.SafeCheckpointIO`` for the CLI's loads)."""
        kwargs["weights_only"] = True
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets `_current_fx_name` (a str) twice per hook call, 44 times a training step, through
        # nn.Module.__setattr__'s parameter/module/buffer checks; a plain attribute write is the same result at a
        # sixth of the cost. See docs/lightning-workarounds.md.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ forward / loss
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The net's logits; in eval mode with ``test_time_flip``, averaged with those of the mirrored images."""
        if self.test_time_flip and not self.training:
            return flip_averaged_logits(self.net, x)
        return self.net(x)

    def _logits_to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        if self.task == "binary":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)

    def _check_logits(self, logits: torch.Tensor) -> torch.Tensor:
        expected = 1 if self.task == "binary" else self.num_classes
        if logits.ndim != 2 or logits.shape[1] != expected:
            raise ValueError(
                f"The net returned logits of shape {tuple(logits.shape)}, but task {self.task!r} with "
                f"{self.num_classes} classes needs (batch, {expected}). Set the net's num_classes to {expected}"
                + (" (one logit for binary)." if self.task == "binary" else ".")
            )
        return logits.squeeze(1) if self.task == "binary" else logits

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities: (N, C) softmax for multiclass, (N,) probability of class 1 for binary."""
        return self._logits_to_probs(self._check_logits(self(x)))

    def compute_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "binary":
            return nn.functional.binary_cross_entropy_with_logits(logits, y.float())
        return nn.functional.cross_entropy(logits, y.long())

    def _shared_step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = self._check_logits(self(x))
        loss = self.compute_loss(logits, y)
        return loss, self._logits_to_probs(logits.detach()), y.long()

    # ------------------------------------------------------------------ steps
    # Steps do no metric work and no collective: they keep (probs, labels, loss) for the epoch end. The epoch
    # metrics (and the DDP synchronisation) happen in on_*_epoch_end, on every rank, in one fixed order.
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, probs, y = self._shared_step(batch)
        if self.l1_lambda > 0:
            loss = loss + self.l1_lambda * l1_penalty(self.net)
        self._outputs["train"].append((probs, y, loss.detach()))
        if self._logs_this_step():  # this rank's batch loss, unreduced: a collective per step costs too much
            self.log("train/batch_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=y.shape[0])
        return loss

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes step metrics after this training step (every ``log_every_n_steps`` optimizer
        steps, the last step, ``fast_dev_run``). ``self.log`` costs ~0.5 ms a call in Lightning 2.6 (it moves its
        record to the device every time): on a 3 ms step, logging values nobody writes is a sixth of the step."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        return bool(trainer.fast_dev_run) or trainer.should_stop or (every > 0 and (self.global_step + 1) % every == 0)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, probs, y = self._shared_step(batch)
        self._outputs["val"].append((probs, y, loss))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, probs, y = self._shared_step(batch)
        self._outputs["test"].append((probs, y, loss))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Returns ``probs`` (N, C), predicted labels ``preds`` and, when the batch has them, true ``labels``."""
        has_labels = isinstance(batch, (list, tuple)) and len(batch) > 1
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        probs = self.predict_proba(x)
        if self.task == "binary":
            preds = (probs >= 0.5).long()
            probs = torch.stack([1 - probs, probs], dim=1)
        else:
            preds = probs.argmax(dim=1)
        out = {"probs": probs, "preds": preds}
        if has_labels:
            out["labels"] = batch[1].long()
        return out

    # ------------------------------------------------------------------ epoch ends
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.example_input_array is None:
            self.example_input_array = self._example_input()

    def _example_input(self) -> torch.Tensor | None:
        """One training input as a batch of one, for the model summary's FLOPs and in/out sizes (without it the
        summary prints "Total FLOPs: 0"); read with the RNG isolated (augmentation must not shift training). None
        without a datamodule ``datasets["train"]`` or with a compiled net (the summary would compile it again)."""
        datasets = getattr(self.trainer.datamodule, "datasets", None)
        if not isinstance(datasets, dict) or "train" not in datasets or not len(datasets["train"]):
            return None
        if getattr(self.net, "_compiled_call_impl", None) is not None:  # set by nn.Module.compile (callbacks.Compile)
            return None
        with isolate_rng():
            sample = datasets["train"][0]
        x = sample[0] if isinstance(sample, (list, tuple)) else sample
        return x.unsqueeze(0) if isinstance(x, torch.Tensor) else None

    def on_fit_start(self) -> None:
        # Runs after setup, so freezing by TransferNet / BackboneFinetuning is counted (the course prints both).
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        self.param_counts = {"params/total": total, "params/trainable": trainable}
        rank_zero_info(f"Parameters: {total:,} total, {trainable:,} trainable ({total - trainable:,} frozen)")
        for logger in self.loggers:
            logger.log_metrics(self.param_counts, step=self.global_step)

    def on_train_epoch_start(self) -> None:
        self._outputs["train"] = []  # e.g. steps of an LR range test run before the epoch

    def on_validation_epoch_start(self) -> None:
        self._outputs["val"] = []

    def on_test_epoch_start(self) -> None:
        self._outputs["test"] = []

    def on_train_epoch_end(self) -> None:
        values = self._epoch_values("train")
        if values is not None:
            self._log_values(values[0])

    def on_validation_epoch_end(self) -> None:
        values = self._epoch_values("val")
        if values is None:
            return
        scalars, probs, labels = values
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(scalars["val/acc"])
            scalars["val/acc_best"] = self.val_acc_best.compute()
            scalars.update(self._finish_confusion("val", self.val_confusion, probs, labels))
        self._log_values(scalars, prog_bar=("val/loss",))

    def on_test_epoch_end(self) -> None:
        values = self._epoch_values("test")
        if values is None:
            return
        scalars, probs, labels = values
        scalars.update(self._finish_confusion("test", self.test_confusion, probs, labels))
        self._log_values(scalars)

    def _epoch_values(self, stage: Stage) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor] | None:
        """The epoch's loss and metrics over the batches of every rank, with those probabilities and labels; None
        when no rank ran a batch.

        The one place where ranks synchronise: a single gather of ``[probs | label | loss]`` rows, reached by every
        rank in the same epoch-end hook. Everything after it is local and gives the same values on every rank, so
        nothing that Lightning, a progress bar or a callback does later (on one rank or all) needs a collective.
        """
        outputs, self._outputs[stage] = self._outputs[stage], []
        width = 1 if self.task == "binary" else self.num_classes
        rows = torch.zeros(0, width + 2, device=self.device)
        if outputs:
            probs = torch.cat([p.reshape(len(y), width) for p, y, _ in outputs]).float()
            labels = torch.cat([y for _, y, _ in outputs]).float()
            losses = torch.cat([loss.float().expand(len(y)) for _, y, loss in outputs])  # the batch mean per row
            rows = torch.cat([probs, labels[:, None], losses[:, None]], dim=1)
        rows = gather_rows(rows)
        if not len(rows):
            return None
        probs = rows[:, :width].squeeze(1) if self.task == "binary" else rows[:, :width]
        labels, losses = rows[:, width].long(), rows[:, width + 1]
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        metrics.update(probs, labels)
        scalars = {f"{stage}/loss": losses.mean(), **metrics.compute(), f"{stage}/auroc": defined_auroc(probs, labels)}
        metrics.reset()
        return scalars, probs, labels

    def _log_values(self, values: dict[str, torch.Tensor], prog_bar: tuple[str, ...] = ()) -> None:
        """Log already reduced values through their :class:`ReducedValue` (see there why not as tensors)."""
        for name, value in values.items():
            metric = self.epoch_values[self._value_keys[name]]
            metric.update(value)
            self.log(name, metric, prog_bar=name in prog_bar)

    def _finish_confusion(
        self,
        stage: Stage,
        metric: BinaryConfusionMatrix | MulticlassConfusionMatrix,
        probs: torch.Tensor,
        labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The confusion matrix of all ranks' predictions: kept in ``confusion``, drawn to the logger (rank zero);
        returns the per-class accuracies ``<stage>/acc_class/<name>``."""
        metric.update(probs, labels)
        confusion = metric.compute()
        metric.reset()
        self.confusion[stage] = confusion.detach().cpu()
        self._log_confusion_figure(stage, confusion)
        return {
            f"{stage}/acc_class/{name}": torch.tensor(c["correct"] / c["total"] if c["total"] else float("nan"))
            for name, c in per_class_counts(confusion, self.class_names).items()
        }

    @rank_zero_only
    def _log_confusion_figure(self, stage: Stage, confusion: torch.Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        image = confusion_image(confusion, self.class_names)
        experiment.add_image(f"{stage}/confusion_matrix", image, global_step=self.global_step)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        # a net with param groups (TransferNet: the backbone at backbone_lr_ratio of the head's lr) sets them
        param_groups = getattr(self.net, "param_groups", None)
        params = param_groups() if callable(param_groups) else [p for p in self.parameters() if p.requires_grad]
        optimizer, scheduler = build_optimizer_and_scheduler(
            self.optimizer_factory, self.lr_scheduler_factory, params
        )
        if scheduler is None:
            return optimizer
        if isinstance(scheduler, PER_STEP_SCHEDULERS) and self.scheduler_interval != "step":
            raise ValueError(
                f"{type(scheduler).__name__} counts its period in optimizer steps but scheduler_interval is "
                f"{self.scheduler_interval!r}: it would advance once per epoch. "
                "Set `model.scheduler_interval: step`."
            )
        config: dict[str, Any] = {
            "scheduler": scheduler,
            "interval": self.scheduler_interval,
            "frequency": self.scheduler_frequency,
        }
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Lightning's stepping, except CosineAnnealingWarmRestarts with interval ``step``: it gets the course's
        fractional epoch ``epoch + batch_idx / batches_per_epoch`` (:func:`lit_cv.schedules.step_scheduler`)."""
        # Workaround, see docs/lightning-workarounds.md (warm restarts per batch, Lightning #2849)
        interval = next(
            (c.interval for c in self.trainer.lr_scheduler_configs if c.scheduler is scheduler), "epoch"
        )
        step_scheduler(
            scheduler, metric, interval=interval, epoch=self.current_epoch,
            batch_idx=self.trainer.fit_loop.epoch_loop.batch_idx,
            batches_per_epoch=self.trainer.num_training_batches,
        )
