"""The one LightningModule of lit-cv: a classifier around an injected net.

Every experiment (RPS, MNIST, Cats-vs-Dogs, bank marketing, the digits quickstart) is ``Classifier(net=...)`` with a
plain ``nn.Module`` net; the module owns the loss, the metrics, the optimizer/scheduler wiring and the L1 penalty.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import nn
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR, ReduceLROnPlateau
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from callbacks.metrics_report import per_class_counts
from lit_cv.schedules import build_optimizer_and_scheduler, step_scheduler

Task = Literal["multiclass", "binary"]
Stage = Literal["train", "val", "test"]

SUPPORTED_TASKS = ("multiclass", "binary")
SUPPORTED_INTERVALS = ("epoch", "step")
# Schedulers whose period is counted in optimizer steps: stepping them once per epoch is a silent bug.
PER_STEP_SCHEDULERS = (CyclicLR, OneCycleLR)


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
    """Accuracy, macro precision / recall / F1 and AUROC for ``task``; inputs are probabilities and int labels.

    Binary metrics score the positive class (label 1), as the bank-marketing and cats-vs-dogs chapters do.
    """
    if task == "binary":
        return MetricCollection(
            {
                "acc": BinaryAccuracy(),
                "precision": BinaryPrecision(),
                "recall": BinaryRecall(),
                "f1": BinaryF1Score(),
                "auroc": BinaryAUROC(),
            }
        )
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "precision": MulticlassPrecision(num_classes, average="macro"),
            "recall": MulticlassRecall(num_classes, average="macro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
            "auroc": MulticlassAUROC(num_classes),
        }
    )


def build_confusion_matrix(task: Task, num_classes: int) -> BinaryConfusionMatrix | MulticlassConfusionMatrix:
    if task == "binary":
        return BinaryConfusionMatrix()
    return MulticlassConfusionMatrix(num_classes)


def _built_by_cli() -> bool:
    """True while LightningCLI instantiates the module: it then supplies the parsed config as hparams, in which
    the net is a ``class_path`` dict, so ``load_from_checkpoint`` can rebuild it without being given the net."""
    # Workaround, see docs/lightning-workarounds.md (LightningCLI hparams, Lightning #18105 / #20726)
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    return _given_hyperparameters.get() is not None


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

    Raises:
        ValueError: for an unknown task or interval, a binary task with ``num_classes != 2``, a negative
            ``l1_lambda``, or class names that do not match ``num_classes``.

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
        self.save_hyperparameters(ignore=[] if _built_by_cli() else ["net", "optimizer", "lr_scheduler"])
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

        metrics = build_metrics(task, num_classes)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_confusion = build_confusion_matrix(task, num_classes)
        self.test_confusion = build_confusion_matrix(task, num_classes)
        # Best validation accuracy so far; saved in checkpoints so a resumed run keeps it. Sanity-check
        # validation never updates it (see on_validation_epoch_end).
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)
        # Last computed confusion matrix per stage (rows = true class): read by reports and the per-class table.
        self.confusion: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ forward / loss
    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, probs, y = self._shared_step(batch)
        self.train_metrics.update(probs, y)
        if self.l1_lambda > 0:
            loss = loss + self.l1_lambda * l1_penalty(self.net)
        batch_size = y.shape[0]
        self.log("train/batch_loss", loss, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch_size)
        return loss

    def on_train_epoch_end(self) -> None:
        # Computed once per epoch (synchronised across ranks by torchmetrics) rather than logged as metric objects
        # every step: on small nets per-step logging costs more than the step itself.
        self.log_dict(self.train_metrics.compute())
        self.train_metrics.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, probs, y = self._shared_step(batch)
        self.val_metrics.update(probs, y)
        self.val_confusion.update(probs, y)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=y.shape[0])

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, probs, y = self._shared_step(batch)
        self.test_metrics.update(probs, y)
        self.test_confusion.update(probs, y)
        self.log("test/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=y.shape[0])

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
    def on_fit_start(self) -> None:
        # Runs after setup, so freezing by TransferNet / BackboneFinetuning is counted (the course prints both).
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        self.param_counts = {"params/total": total, "params/trainable": trainable}
        rank_zero_info(f"Parameters: {total:,} total, {trainable:,} trainable ({total - trainable:,} frozen)")
        for logger in self.loggers:
            logger.log_metrics(self.param_counts, step=self.global_step)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_dict(values, sync_dist=False)
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(values["val/acc"])
            self.log("val/acc_best", self.val_acc_best.compute())
        self._finish_confusion("val", self.val_confusion)

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        self.test_metrics.reset()
        self.log_dict(values, sync_dist=False)
        self._finish_confusion("test", self.test_confusion)

    def _finish_confusion(self, stage: Stage, metric: BinaryConfusionMatrix | MulticlassConfusionMatrix) -> None:
        """Compute the (rank-synchronised) confusion matrix, log per-class accuracy and the figure."""
        confusion = metric.compute()
        metric.reset()
        if self.trainer.sanity_checking:
            return
        self.confusion[stage] = confusion.detach().cpu()
        for name, counts in per_class_counts(confusion, self.class_names).items():
            acc = counts["correct"] / counts["total"] if counts["total"] else float("nan")
            self.log(f"{stage}/acc_class/{name}", acc)
        self._log_confusion_figure(stage, metric, confusion)

    @rank_zero_only
    def _log_confusion_figure(self, stage: Stage, metric: Any, confusion: torch.Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_figure"):
            return
        from callbacks.figures import pyplot  # imported here: matplotlib only when a figure is drawn

        plt = pyplot()
        fig, _ = metric.plot(val=confusion, labels=self.class_names)
        experiment.add_figure(f"{stage}/confusion_matrix", fig, global_step=self.global_step)
        plt.close(fig)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
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
