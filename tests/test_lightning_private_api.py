"""Every private Lightning / torch / torchmetrics symbol the product code uses, pinned in one place.

An upgrade that removes or renames one fails here, naming the symbol and the file that needs it, instead of deep
inside a training run. ``test_no_unlisted_private_symbols`` fails when product code starts using a private symbol
that is not listed below: add it to ``PRIVATE_SYMBOLS`` (and prefer a public API).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import lightning
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from packaging.version import Version
from torchmetrics import MeanMetric

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("lit_cv", "callbacks", "datamodules")
TESTED_LIGHTNING = ("2.6", "2.7")  # pyproject: lightning>=2.6,<2.7

# (where the symbol lives, attribute name, the product file that uses it)
MODULE_SYMBOLS = [
    ("lightning.pytorch.core.mixins.hparams_mixin", "_given_hyperparameters", "lit_cv/classifier.py"),
    ("lightning.pytorch.trainer.connectors.data_connector", "_request_dataloader", "callbacks/lr_range_test/run.py"),
    ("lightning.pytorch.trainer.connectors.logger_connector.result", "_ResultCollection",
     "callbacks/lr_range_test/run.py"),
    ("lightning.pytorch.utilities.exceptions", "_TunerExitException", "callbacks/lr_range_test/callback.py"),
    ("torch.nn.modules.batchnorm", "_BatchNorm", "callbacks/backbone_finetuning.py"),
]


def _trainer() -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


def _scheduler() -> torch.optim.lr_scheduler.LRScheduler:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)


# (description, factory of the object that must carry the attribute, attribute name, product file)
OBJECT_SYMBOLS = [
    ("Trainer._accelerator_connector", _trainer, "_accelerator_connector", "callbacks/slurm_requeue.py"),
    ("Trainer.fit_loop._data_source", lambda: _trainer().fit_loop, "_data_source", "callbacks/lr_range_test/run.py"),
    ("Trainer.fit_loop.epoch_loop.val_loop._data_source", lambda: _trainer().fit_loop.epoch_loop.val_loop,
     "_data_source", "callbacks/lr_range_test/run.py"),
    ("_DataLoaderSource.is_defined", lambda: _trainer().fit_loop._data_source, "is_defined",
     "callbacks/lr_range_test/run.py"),
    ("Trainer.fit_loop.epoch_loop._results", lambda: _trainer().fit_loop.epoch_loop, "_results",
     "callbacks/lr_range_test/run.py"),
    ("LightningModule._current_fx_name", LightningModule, "_current_fx_name",
     "callbacks/lr_range_test/run.py, lit_cv/classifier.py"),
    ("LightningModule._on_before_batch_transfer", LightningModule, "_on_before_batch_transfer",
     "callbacks/lr_range_test/run.py"),
    ("Callback._generate_state_key", lambda: EarlyStopping(monitor="val/loss"), "_generate_state_key",
     "callbacks/gradient_capture.py, callbacks/lr_range_test/callback.py"),
    ("EarlyStopping._run_early_stopping_check", lambda: EarlyStopping(monitor="val/loss"), "_run_early_stopping_check",
     "callbacks/early_stopping.py"),
    ("ModelCheckpoint._every_n_train_steps", ModelCheckpoint, "_every_n_train_steps", "callbacks/early_stopping.py"),
    ("ModelCheckpoint._train_time_interval", ModelCheckpoint, "_train_time_interval", "callbacks/early_stopping.py"),
    ("ModelCheckpoint._monitor_candidates", ModelCheckpoint, "_monitor_candidates", "callbacks/model_checkpoint.py"),
    ("ModelCheckpoint._save_last_checkpoint", ModelCheckpoint, "_save_last_checkpoint",
     "callbacks/model_checkpoint.py"),
    ("ModelCheckpoint._should_save_on_train_epoch_end", ModelCheckpoint, "_should_save_on_train_epoch_end",
     "callbacks/model_checkpoint.py"),
    ("ModelCheckpoint._should_skip_saving_checkpoint", ModelCheckpoint, "_should_skip_saving_checkpoint",
     "callbacks/model_checkpoint.py"),
    ("torchmetrics.Metric._update_count", MeanMetric, "_update_count", "callbacks/lr_range_test/run.py"),
    ("torchmetrics.Metric._computed", MeanMetric, "_computed", "callbacks/lr_range_test/run.py"),
    ("torch LRScheduler._last_lr", _scheduler, "_last_lr", "callbacks/lr_range_test/apply.py"),
    ("torch.nn.Module._compiled_call_impl", lambda: torch.nn.Linear(1, 1), "_compiled_call_impl",
     "callbacks/compile.py"),
]

LISTED_NAMES = {name for _, name, _ in MODULE_SYMBOLS} | {name for _, _, name, _ in OBJECT_SYMBOLS}


def test_lightning_is_the_tested_minor() -> None:
    low, high = (Version(v) for v in TESTED_LIGHTNING)
    assert low <= Version(lightning.__version__) < high, (
        f"lightning {lightning.__version__} is outside the tested range >={low},<{high} (pyproject.toml); "
        "run this file and the suite on the new version, then widen both together."
    )


@pytest.mark.parametrize(("module", "name", "used_in"), MODULE_SYMBOLS, ids=[s[1] for s in MODULE_SYMBOLS])
def test_private_module_symbol_exists(module: str, name: str, used_in: str) -> None:
    assert hasattr(importlib.import_module(module), name), (
        f"{module}.{name} is gone in this version; {used_in} uses it: port that code to the new API."
    )


@pytest.mark.parametrize(("symbol", "factory", "name", "used_in"), OBJECT_SYMBOLS, ids=[s[0] for s in OBJECT_SYMBOLS])
def test_private_attribute_exists(symbol: str, factory, name: str, used_in: str) -> None:
    obj = factory()
    assert hasattr(obj, name), f"{symbol} is gone in this version; {used_in} uses it: port that code to the new API."


def _private_names_used() -> dict[str, set[str]]:
    """Underscore names the product code imports from dependencies or reads on objects it does not own."""
    files = [p for package in PRODUCT_PACKAGES for p in (ROOT / package).rglob("*.py")]
    trees = {p: ast.parse(p.read_text()) for p in files}
    own: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.arg):
                own.add(node.arg)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                own.add(node.attr)
    used: dict[str, set[str]] = {}
    dependencies = ("lightning", "torch", "torchmetrics", "timm", "torchvision")
    for path, tree in trees.items():
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in dependencies:
                names = [a.name for a in node.names if a.name.startswith("_")]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                # os._exit and sys._current_frames are documented Python API, not a dependency's internals
                stdlib = isinstance(node.value, ast.Name) and node.value.id in ("os", "sys")
                names = [node.attr] if node.attr not in own and not stdlib else []
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                  and str(node.args[1].value).startswith("_") and node.args[1].value not in own):
                names = [str(node.args[1].value)]
            for name in names:
                used.setdefault(name, set()).add(where)
    return used


def test_no_unlisted_private_symbols() -> None:
    unlisted = {name: sorted(files) for name, files in _private_names_used().items() if name not in LISTED_NAMES}
    assert not unlisted, (
        f"Product code uses private symbols not pinned in {Path(__file__).name}: {unlisted}. "
        "Use a public API, or add each to MODULE_SYMBOLS / OBJECT_SYMBOLS with the file that needs it."
    )


def test_every_listed_symbol_is_still_used() -> None:
    listed = [(name, used_in) for _, name, used_in in MODULE_SYMBOLS] + [(n, u) for _, _, n, u in OBJECT_SYMBOLS]
    stale = [
        (name, used_in)
        for name, used_in in listed
        if not any(name in (ROOT / f.strip()).read_text() for f in used_in.split(","))
    ]
    assert not stale, f"Listed but no longer used by the file named: {stale}; update this file's tables."
