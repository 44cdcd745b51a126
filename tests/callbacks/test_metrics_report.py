import io
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from torch import nn

from callbacks import MetricsReport
from callbacks.metrics_report import (
    HPARAMS_RUN,
    compared_hparams,
    format_value,
    render_table,
    write_metrics_json,
)
from datamodules import DigitsDataModule, RPSDataModule
from lit_cv import Classifier
from lit_cv.cli import LitCVCLI

# what torch and the CLI add to every run, which the HPARAMS tab used to list
PLUMBING = ("_class_path", "_instantiator", "capturable", "differentiable", "foreach", "fused", "maximize",
            "data_dir", "num_workers", "class_names")


def _tiny_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return Classifier(net, num_classes=10)


def test_fit_then_test_merge_into_one_file(tiny_trainer_kwargs, tmp_path):
    report = MetricsReport()
    kwargs = {**tiny_trainer_kwargs, "logger": TensorBoardLogger(tmp_path, name="t"), "limit_val_batches": None,
              "limit_test_batches": None}
    trainer = Trainer(**kwargs, callbacks=[report])
    dm = DigitsDataModule(image_size=8)
    model = _tiny_model()
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    data = json.loads(report.last_path.read_text())
    assert report.last_path == tmp_path / "t" / "version_0" / "metrics.json"
    assert set(data) == {"fit", "test"}
    history = data["fit"]["history"]
    assert [h["epoch"] for h in history] == [0] and history[0]["val/acc"] == data["fit"]["metrics"]["val/acc"]
    assert data["fit"]["fit_seconds"] >= history[0]["seconds"] > 0
    assert report.state_dict()["history"] == history
    assert "val/acc" in data["fit"]["metrics"] and "val" in data["fit"]["per_class"]
    confusion = model.confusion["test"]
    per_class = data["test"]["per_class"]["test"]
    assert [per_class[str(c)]["correct"] for c in range(10)] == confusion.diag().tolist()
    assert sum(v["total"] for v in per_class.values()) == 359
    expected_acc = confusion.diag().sum().item() / confusion.sum().item()
    assert abs(data["test"]["metrics"]["test/acc"] - expected_acc) < 1e-6


def test_write_merges_and_keeps_other_stages(tmp_path):
    path = tmp_path / "metrics.json"
    write_metrics_json(path, "fit", {"metrics": {"val/acc": 0.5}})
    write_metrics_json(path, "test", {"metrics": {"test/acc": 0.7}})
    assert json.loads(path.read_text()) == {"fit": {"metrics": {"val/acc": 0.5}}, "test": {"metrics": {"test/acc": 0.7}}}


@pytest.mark.parametrize(
    ("value", "shown"),
    [(3e-4, "3.00e-04"), (1.5e-7, "1.50e-07"), (0.8790322, "0.8790"), (0.5, "0.5000"), (1.0, "1.000"),
     (12.3456, "12.35"), (0.0123, "0.01230"), (123456.0, "1.23e+05"), (-0.25, "-0.2500"), (0.0, "0"),
     (math.nan, "nan"), (math.inf, "inf")],
)
def test_format_value(value, shown):
    assert format_value(value) == shown


def test_table_prints_the_lr_readably():
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(render_table("fit", {"metrics": {"lr-Adam": 3e-4, "val/acc": 0.8790322, "val/loss": 1234.56}}))
    text = console.export_text()
    assert "3.00e-04" in text and "0.8790" in text and "1235" in text
    assert "0.0000" not in text


def test_table_prints_the_restored_epoch_as_an_integer():
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(render_table("fit", {"metrics": {"restored_epoch": 7.0, "val/acc": 1.0}}))
    text = console.export_text()
    assert " 7 " in text and "7.000" not in text and "1.000" in text


def cli_hparams(optimizer: dict, **net_args) -> dict:
    """``hparams_initial`` of a Classifier built by LitCVCLI: every init_arg, defaults included."""
    return {
        "_instantiator": "lightning.pytorch.cli.instantiate_module", "class_names": ["paper", "rock", "scissors"],
        "l1_lambda": 0.0, "lr_scheduler": None, "num_classes": 3, "scheduler_frequency": 1,
        "scheduler_interval": "epoch", "scheduler_monitor": "val/loss", "task": "multiclass",
        "net": {"class_path": "lit_cv.nets.CNN2", "init_args": {"hidden": 50, "image_size": 28, "in_channels": 3,
                                                                "n_feature": 5, "num_classes": 3, "p": 0.0,
                                                                **net_args}},
        "optimizer": optimizer,
    }


SGD_MOMENTUM = {"class_path": "torch.optim.SGD", "init_args": {
    "lr": 0.01, "momentum": 0.9, "dampening": 0, "weight_decay": 0, "nesterov": False, "maximize": False,
    "foreach": None, "differentiable": False, "fused": None}}
ADAM_DEFAULTS = {"class_path": "torch.optim.Adam", "init_args": {
    "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0.0, "amsgrad": False, "foreach": None,
    "maximize": False, "capturable": False, "differentiable": False, "fused": None, "decoupled_weight_decay": False}}
RPS_DATA = {"_class_path": "datamodules.RPSDataModule", "_instantiator": "lightning.pytorch.cli.instantiate_module",
            "augment": True, "batch_size": 16, "cache": "memory", "cache_dir": None, "data_dir": "/data/rps",
            "download": False, "image_size": 64, "normalize": "train", "num_workers": None, "seed": 13}


@pytest.mark.parametrize(
    ("optimizer", "net_args", "expected"),
    [
        (SGD_MOMENTUM, {"p": 0.3}, {"net": "CNN2", "net/p": 0.3, "optimizer": "SGD", "optimizer/lr": 0.01,
                                    "optimizer/momentum": 0.9}),
        # the LR is shown even at its default; betas [0.9, 0.999] equals the default tuple
        (ADAM_DEFAULTS, {}, {"net": "CNN2", "optimizer": "Adam", "optimizer/lr": 0.001}),
    ],
)
def test_compared_hparams_keeps_what_differs_from_the_defaults(optimizer, net_args, expected):
    params = compared_hparams(cli_hparams(optimizer, **net_args), Classifier, RPS_DATA, RPSDataModule, seed=13)
    assert params == {**expected, "lr_scheduler": "none", "data": "RPSDataModule", "data/augment": "True",
                      "data/batch_size": 16, "data/image_size": 64, "seed": 13}


def tensorboard_hparams(logdir: Path) -> tuple[set[str], set[str], dict[str, dict]]:
    """(hparam columns, metric columns, {session: hparams}) as TensorBoard's HPARAMS plugin computes them."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context, metadata

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    plugin = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), data_provider=provider,
                                                           multiplexer=multiplexer))
    ctx = context.RequestContext()
    content = plugin.hparams_metadata(ctx, "")
    experiment = plugin.experiment_from_metadata(ctx, "", True, content,
                                                 plugin.hparams_from_data_provider(ctx, "", None))
    sessions = {}
    for run, tags in content.items():
        if metadata.SESSION_START_INFO_TAG in tags:
            start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
            sessions[run] = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                             for k, v in start.hparams.items()}
    return {h.name for h in experiment.hparam_infos}, {m.name.tag for m in experiment.metric_infos}, sessions


def test_hparams_tab_compares_two_cli_runs(tmp_path):
    """Two quickstart runs (SGD with momentum, Adam) read back through TensorBoard's own HPARAMS code: the union of
    both runs' settings as columns, only the final validation metrics as metric columns, no plumbing."""
    for optimizer in ("sgd_momentum", "adam"):  # bar and callbacks off: only the HPARAMS event data is under test
        LitCVCLI(args=["fit", "--config", str(REPO_ROOT / "configs" / "quickstart.yaml"), "--config",
                       str(REPO_ROOT / "configs" / "optim" / f"{optimizer}.yaml"), "--trainer.max_epochs", "1",
                       "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                       "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
                       "--trainer.logger.init_args.save_dir", str(tmp_path)])
    columns, metrics, sessions = tensorboard_hparams(tmp_path)
    assert {"net", "net/n_feature", "optimizer", "optimizer/lr", "optimizer/momentum", "lr_scheduler",
            "lr_scheduler/T_max", "data", "data/batch_size", "seed"} <= columns
    assert not [c for c in columns if any(word in c for word in PLUMBING)], columns
    assert len(columns) <= 16
    assert metrics and all(m.startswith("hp/val/") for m in metrics), metrics
    sgd = sessions[f"quickstart/sgd_momentum/{HPARAMS_RUN}"]
    adam = sessions[f"quickstart/adam/{HPARAMS_RUN}"]
    assert (sgd["optimizer"], sgd["optimizer/momentum"], sgd["seed"]) == ("SGD", 0.9, 13)
    assert (adam["optimizer"], adam["optimizer/lr"]) == ("Adam", 3e-4) and "optimizer/momentum" not in adam
