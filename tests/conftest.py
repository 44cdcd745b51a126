"""Shared fixtures: tiny CPU trainers, the shared real-data folder, marks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIT_CV_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    skip_data = pytest.mark.skip(reason=f"real data folder {SHARED_DATA} is absent")
    for item in items:
        if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if item.get_closest_marker("real_data") is not None and not SHARED_DATA.is_dir():
            item.add_marker(skip_data)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests run tiny convolutions: one intra-op thread avoids 10-15x slowdowns when other processes share the
    two cores (torch's threads then spin against each other). Subprocess runs are not affected."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (``../shared/data``); tests using it are marked ``real_data``."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def tiny_trainer_kwargs(tmp_path: Path) -> dict[str, Any]:
    """Keyword arguments for a fast, quiet CPU ``Trainer`` writing under ``tmp_path``."""
    return {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "limit_train_batches": 4,
        "limit_val_batches": 2,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "enable_checkpointing": False,
        "default_root_dir": str(tmp_path),
        "deterministic": True,
    }
