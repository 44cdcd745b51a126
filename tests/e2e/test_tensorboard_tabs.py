"""What TensorBoard shows after the shipped configs run as a user runs them (shortened), read back from the event
files: the course configs fill IMAGES and HISTOGRAMS with no extra flags, configs/callbacks/*.yaml append to an
experiment's callbacks, and the optimizer chapter's runs sit side by side under one experiment name."""

from __future__ import annotations

from pathlib import Path

import fake_data
import pytest
from conftest import REPO_ROOT

from lit_cv.cli import LitCVCLI

CONFIGS = REPO_ROOT / "configs"
SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
COURSE_IMAGES = {"filters/net.conv1", "filters/net.conv2", "feature_maps/net.conv1", "feature_maps/net.conv2"}
COURSE_HISTOGRAMS = {"gradients/net.conv1.weight", "parameters/net.conv1.weight", "gradients/net.fc2.bias"}
OPTIMIZERS = ("sgd", "sgd_momentum", "nesterov", "adam")


@pytest.fixture(scope="module")
def rps_dir(tmp_path_factory) -> Path:
    return fake_data.make_rps(tmp_path_factory.mktemp("rps"), per_class=8, size=32)


def cli_args(tmp_path: Path, rps_dir: Path | None, *configs: str) -> list[str]:
    args = [a for c in configs for a in ("--config", str(CONFIGS / c))]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    if rps_dir is not None:
        args += ["--data.init_args.data_dir", str(rps_dir), "--data.init_args.cache_dir", str(tmp_path / "cache")]
    return args


def tensorboard_tags(run_dir: str | Path) -> dict[str, set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    return {kind: set(tags) for kind, tags in events.Tags().items() if isinstance(tags, list)}


@pytest.mark.parametrize("config", ["rps_cnn2_dropout.yaml", "rps_cnn2_no_dropout.yaml", "quickstart.yaml"])
def test_course_config_fills_images_and_histograms(config, rps_dir, tmp_path):
    data = None if config == "quickstart.yaml" else rps_dir
    cli = LitCVCLI(args=["fit", *cli_args(tmp_path, data, config), *SHORT])
    tags = tensorboard_tags(cli.trainer.log_dir)
    assert COURSE_IMAGES <= tags["images"], tags["images"]
    assert COURSE_HISTOGRAMS <= tags["histograms"], tags["histograms"]
    assert {"grad_norm/net.conv1", "update_ratio/net.fc2"} <= tags["scalars"]


@pytest.mark.parametrize(
    ("experiment", "block", "added"),
    [
        ("rps_beat.yaml", "callbacks/visualize.yaml", ["FilterVisualization", "GradientCapture"]),
        ("rps_densenet_se.yaml", "callbacks/visualize.yaml", ["FilterVisualization", "GradientCapture"]),
        ("rps_beat.yaml", "callbacks/gradients.yaml", ["GradientCapture"]),
    ],
)
def test_callback_blocks_append_to_the_experiments_callbacks(experiment, block, added, rps_dir, tmp_path):
    """`callbacks+:` appends (rps_beat keeps its EarlyStopping), also to an experiment without callbacks."""
    cli = LitCVCLI(args=cli_args(tmp_path, rps_dir, experiment, block), run=False)
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    own = ["EarlyStopping"] if experiment == "rps_beat.yaml" else []
    assert names[: len(own) + len(added)] == own + added


def test_optimizer_runs_sit_side_by_side(rps_dir, tmp_path):
    for optimizer in OPTIMIZERS:
        LitCVCLI(args=["fit", *cli_args(tmp_path, rps_dir, "rps_optimizers.yaml", f"optim/{optimizer}.yaml"), *SHORT])
    experiment = tmp_path / "runs" / "rps_optimizers"
    assert sorted(p.name for p in experiment.iterdir()) == sorted(OPTIMIZERS)
    for optimizer in OPTIMIZERS:
        tags = tensorboard_tags(experiment / optimizer)
        assert {"gradients/net.conv1.weight", "parameters/net.fc2.weight"} <= tags["histograms"]
        assert "update_ratio/net.conv1" in tags["scalars"]
        assert (experiment / optimizer / "gradient_capture" / "evolution.png").is_file()
