"""GradientCapture in a real ``Trainer.fit`` with CNN2 on the digits: scalars and histograms per named layer,
the step-0 gradient norm / update ratio against an independent forward-backward pass, kept raw values, the
evolution PNG, resume from a checkpoint, and no optimizer/module/parameter hooks left after fit (also after an
exception)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from tensorboard.backend.event_processing.event_accumulator import HISTOGRAMS, SCALARS, EventAccumulator

from callbacks.gradient_capture import (
    GradientCapture,
    histogram_summary,
    layers_with_parameters,
    total_norm,
    update_ratio,
)
from datamodules.digits import DigitsDataModule
from lit_cv.classifier import Classifier
from lit_cv.nets import CNN2

LR = 0.05
LAYERS = ["net.conv1", "net.fc1"]


def make_model() -> Classifier:
    net = CNN2(n_feature=4, p=0.0, in_channels=1, num_classes=10, image_size=16, hidden=16)
    return Classifier(net, num_classes=10, optimizer=partial(torch.optim.SGD, lr=LR))


def datamodule() -> DigitsDataModule:
    return DigitsDataModule(batch_size=16, image_size=16)


MakeTrainer = Callable[..., Trainer]  # the `make_trainer` fixture (tests/callbacks/conftest.py)


def hook_counts(model: torch.nn.Module) -> dict[str, int]:
    """Every kind of hook torch keeps on modules and parameters."""
    counts = {"module": 0, "param": 0}
    for module in model.modules():
        counts["module"] += sum(
            len(getattr(module, attr))
            for attr in (
                "_forward_hooks",
                "_forward_pre_hooks",
                "_backward_hooks",
                "_backward_pre_hooks",
                "_state_dict_hooks",
                "_load_state_dict_pre_hooks",
            )
        )
    for p in model.parameters():
        counts["param"] += len(p._backward_hooks or {}) + len(
            getattr(p, "_post_accumulate_grad_hooks", None) or {}
        )
    return counts


def optimizer_hook_count(optimizer: torch.optim.Optimizer) -> int:
    return len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks)


class Probe(Callback):
    """At step 0, recomputes the conv1 gradient on a copy of the net; counts optimizer hooks during
    training."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}
        self.optimizer_hooks_during_fit: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != 0:
            return
        net = copy.deepcopy(pl_module.net)
        x, y = batch
        F.cross_entropy(net(x), y).backward()
        self.grads = {n: p.grad.detach().clone() for n, p in net.conv1.named_parameters()}
        self.weights = {n: p.detach().clone() for n, p in net.conv1.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.optimizer_hooks_during_fit.append(optimizer_hook_count(trainer.optimizers[0]))


def scalars(log_dir: str) -> tuple[dict[str, list], list[str]]:
    events = EventAccumulator(log_dir, size_guidance={SCALARS: 0, HISTOGRAMS: 0})
    events.Reload()
    return {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}, events.Tags()["histograms"]


def test_norm_functions() -> None:
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])
    assert total_norm([a, b]) == pytest.approx(5.0)
    assert update_ratio([a, b], [a + torch.tensor([0.0, 0.3]), b + 0.4]) == pytest.approx(0.5 / 5.0)
    assert math.isnan(update_ratio([torch.zeros(3)], [torch.ones(3)]))


def test_histogram_summary_matches_numpy() -> None:
    values = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3 + 1
    summary = histogram_summary(values, bins=10)
    edges = np.linspace(float(values.min()), float(values.max()), 11)
    counts, _ = np.histogram(values.numpy(), bins=edges)
    assert summary["bucket_counts"] == counts.tolist()
    np.testing.assert_allclose(summary["bucket_limits"], edges[1:], atol=1e-5)
    assert (summary["num"], summary["min"], summary["max"]) == (
        1000,
        float(values.min()),
        float(values.max()),
    )
    assert summary["sum"] == pytest.approx(float(values.sum()), rel=1e-5)
    assert summary["sum_squares"] == pytest.approx(float((values.double() ** 2).sum()), rel=1e-5)
    constant = histogram_summary(torch.full((7,), 2.0), bins=4)
    assert (constant["min"], constant["max"], sum(constant["bucket_counts"])) == (1.5, 2.5, 7)


def test_records_every_n_steps_for_each_named_layer(tmp_path: Path, make_trainer: MakeTrainer) -> None:
    seed_everything(0)
    model = make_model()
    hooks_before = hook_counts(model)
    probe = Probe()
    capture = GradientCapture(every_n_steps=3, layer_names=LAYERS, keep=["net.conv1"])
    fit = make_trainer([probe, capture])
    fit.fit(model, datamodule())

    # 2 epochs x 4 batches = steps 0..7; captured at 0, 3, 6
    logged, histograms = scalars(fit.log_dir)
    for layer in LAYERS:
        for metric in ("grad_norm", "param_norm", "update_ratio"):
            assert [e.step for e in logged[f"{metric}/{layer}"]] == [0, 3, 6], f"{metric}/{layer}"
        for kind in ("gradients", "parameters"):
            assert {f"{kind}/{layer}.weight", f"{kind}/{layer}.bias"} <= set(histograms)
    assert not any(tag.endswith(("net.conv2", "net.fc2")) for tag in logged)  # only the named layers

    # step 0 against the independent forward/backward on a copy of the net
    grad_norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in probe.grads.values()))
    weight_norm = math.sqrt(sum(float((w.double() ** 2).sum()) for w in probe.weights.values()))
    assert logged["grad_norm/net.conv1"][0].value == pytest.approx(grad_norm, rel=1e-5)
    assert logged["param_norm/net.conv1"][0].value == pytest.approx(weight_norm, rel=1e-5)
    # plain SGD: the update is -lr * grad, so the ratio is lr * |g| / |w|
    assert logged["update_ratio/net.conv1"][0].value == pytest.approx(LR * grad_norm / weight_norm, rel=1e-4)

    # raw values kept for net.conv1 only, one per captured step; step 0's gradient is the independent one
    assert capture.captured_steps == {"net.conv1": [0, 3, 6]}
    assert set(capture.gradients) == set(capture.parameters) == {"net.conv1"}
    assert [len(v) for v in capture.gradients["net.conv1"].values()] == [3, 3]
    torch.testing.assert_close(capture.gradients["net.conv1"]["weight"][0], probe.grads["weight"])
    torch.testing.assert_close(capture.parameters["net.conv1"]["weight"][0], probe.weights["weight"])
    assert capture.plot_path == Path(fit.log_dir) / "gradient_capture" / "evolution.png"
    assert capture.plot_path.stat().st_size > 10_000

    # the optimizer hook existed while training and is gone afterwards; no module/parameter hooks leaked
    assert set(probe.optimizer_hooks_during_fit) == {1}
    assert optimizer_hook_count(fit.optimizers[0]) == 0
    assert hook_counts(model) == hooks_before


def test_default_layers_and_no_histograms(tmp_path: Path, make_trainer: MakeTrainer) -> None:
    model = make_model()
    fit = make_trainer([GradientCapture(every_n_steps=4, histograms=False)], max_epochs=1)
    fit.fit(model, datamodule())
    logged, histograms = scalars(fit.log_dir)
    layers = ["net.conv1", "net.conv2", "net.fc1", "net.fc2"]
    assert list(layers_with_parameters(model)) == layers
    assert {tag for tag in logged if tag.startswith("grad_norm/")} == {f"grad_norm/{name}" for name in layers}
    assert all([e.step for e in logged[f"update_ratio/{name}"]] == [0] for name in layers)
    assert not [tag for tag in histograms if tag.startswith(("gradients/", "parameters/"))]


def test_hooks_removed_after_exception(tmp_path: Path, make_trainer: MakeTrainer) -> None:
    class Boom(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 2:
                raise RuntimeError("boom")

    model = make_model()
    fit = make_trainer([GradientCapture(every_n_steps=1), Boom()])
    with pytest.raises(RuntimeError, match="boom"):
        fit.fit(model, datamodule())
    assert optimizer_hook_count(fit.optimizers[0]) == 0


def test_resume_keeps_history(tmp_path: Path, make_trainer: MakeTrainer) -> None:
    seed_everything(0)
    first = GradientCapture(every_n_steps=2, layer_names=["net.fc2"], keep=["net.fc2"], plot=False)
    fit = make_trainer([first], max_epochs=1)
    fit.fit(make_model(), datamodule())
    ckpt = tmp_path / "one_epoch.ckpt"
    fit.save_checkpoint(ckpt)
    assert first.captured_steps == {"net.fc2": [0, 2]}

    resumed = GradientCapture(every_n_steps=2, layer_names=["net.fc2"], keep=["net.fc2"], plot=False)
    # weights_only=False: the model's hparams hold the optimizer factory (a functools.partial), not our state
    make_trainer([resumed], max_epochs=2).fit(make_model(), datamodule(), ckpt_path=ckpt, weights_only=False)
    assert resumed.captured_steps == {"net.fc2": [0, 2, 4, 6]}
    assert len(resumed.parameters["net.fc2"]["weight"]) == 4
    torch.testing.assert_close(
        resumed.parameters["net.fc2"]["weight"][1], first.parameters["net.fc2"]["weight"][1]
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": 0}, r"every_n_steps must be an integer >= 1, got 0"),
        ({"layer_names": []}, r"layer_names must be a non-empty list"),
        ({"keep": [""]}, r"keep must be a non-empty list"),
    ],
)
def test_init_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        GradientCapture(**kwargs)


def test_setup_errors(tmp_path: Path, make_trainer: MakeTrainer) -> None:
    with pytest.raises(
        ValueError, match=r"'net.conv3' does not exist .* net.conv1, net.conv2, net.fc1, net.fc2"
    ):
        make_trainer([GradientCapture(layer_names=["net.conv3"])]).fit(make_model(), datamodule())
    with pytest.raises(ValueError, match=r"'net.drop' does not exist or has no parameters of its own"):
        make_trainer([GradientCapture(keep=["net.drop"])]).fit(make_model(), datamodule())
    with pytest.raises(ValueError, match=r"no logger \(logger=False\)"):
        make_trainer([GradientCapture()], logger=False).fit(make_model(), datamodule())
    with pytest.raises(
        ValueError, match=r"histograms need a TensorBoardLogger; loggers found: CSVLogger.* histograms: false"
    ):
        make_trainer([GradientCapture()], logger=CSVLogger(tmp_path)).fit(make_model(), datamodule())
