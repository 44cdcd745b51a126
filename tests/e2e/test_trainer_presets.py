"""configs/trainer/*.yaml: every preset composes with an experiment; the GPU ones build a Trainer (CUDA only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from callbacks import ChannelsLast
from lit_cv.cli import LitCVCLI, main

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = REPO_ROOT / "configs" / "quickstart.yaml"
PRESETS = sorted((REPO_ROOT / "configs" / "trainer").glob("*.yaml"))


def _class_paths(items: list[Any] | None) -> list[str]:
    return [item["class_path"] if isinstance(item, dict) else item for item in items or []]


def _print_config(capsys: pytest.CaptureFixture, *configs: Path) -> dict[str, Any]:
    args = ["fit", "--config", str(QUICKSTART)]
    for config in configs:
        args += ["--config", str(config)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_the_four_presets_exist() -> None:
    assert [p.stem for p in PRESETS] == ["cpu", "ddp", "gpu", "multinode"]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)  # not "gpu": conftest would read it as the mark
def test_preset_composes_with_an_experiment(preset: Path, capsys: pytest.CaptureFixture) -> None:
    trainer = _print_config(capsys, preset)["trainer"]
    for key, value in yaml.safe_load(preset.read_text())["trainer"].items():
        if key == "callbacks+":  # appended after the experiment's callbacks
            assert _class_paths(trainer["callbacks"])[-len(value):] == _class_paths(value)
        elif key == "plugins":
            assert _class_paths(trainer["plugins"]) == _class_paths(value)
        else:
            assert trainer[key] == value, key
    assert trainer["max_epochs"] == yaml.safe_load(QUICKSTART.read_text())["trainer"]["max_epochs"]  # experiment kept


@pytest.mark.parametrize(
    ("env", "num_nodes"),
    [({}, 1), ({"SLURM_NTASKS": "16", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "8"}, 2)],
)
def test_multinode_takes_num_nodes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, env: dict[str, str], num_nodes: int
) -> None:
    for key in ("SLURM_NTASKS", "SLURM_NNODES", "SLURM_JOB_NAME", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    multinode = REPO_ROOT / "configs" / "trainer" / "multinode.yaml"
    assert _print_config(capsys, multinode)["trainer"]["num_nodes"] == num_nodes


def _preset_params() -> list[Any]:
    return [pytest.param(p, id=p.name, marks=[pytest.mark.gpu] if p.stem != "cpu" else []) for p in PRESETS]


@pytest.mark.parametrize("preset", _preset_params())
def test_preset_builds_a_trainer(preset: Path, tmp_path: Path) -> None:
    """Instantiate the Trainer from the experiment + preset (the GPU presets only where CUDA is available)."""
    cli = LitCVCLI(
        args=["--config", str(QUICKSTART), "--config", str(preset), "--trainer.logger.init_args.save_dir", str(tmp_path)],
        run=False,
    )
    trainer = cli.trainer
    if preset.stem == "cpu":
        assert (trainer.precision, trainer.num_devices, type(trainer.accelerator).__name__) == (
            "32-true", 1, "CPUAccelerator")
        return
    assert trainer.precision == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed")
    assert any(isinstance(c, ChannelsLast) for c in trainer.callbacks)
    if preset.stem == "gpu":
        assert trainer.num_devices == 1
    else:
        assert trainer.num_devices == torch.cuda.device_count()
        assert type(trainer.strategy).__name__ == "DDPStrategy"
