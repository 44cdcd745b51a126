"""The ``lit-cv`` command end to end, in subprocesses, on the embedded digits quickstart; and how it reports user
errors: one line ``lit-cv COMMAND: error: ...`` (what is wrong, the value, the fix), exit code 1, no traceback
(``LIT_CV_DEBUG=1`` shows it)."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fake_data
import pytest
import torch
from conftest import REPO_ROOT

QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")
RPS = str(REPO_ROOT / "configs" / "rps_cnn2_dropout.yaml")
SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]
EXTRA_COMMANDS = ("download", "lr-find", "plot-schedule", "reproduce")


def lit_cv(*args, cwd, timeout=300, **extra_env):
    env = {key: value for key, value in os.environ.items() if key != "LIT_CV_DEBUG"}
    env.update(PYTHONWARNINGS="ignore", **extra_env)
    return subprocess.run(
        [sys.executable, "-m", "lit_cv.cli", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
        check=False, timeout=timeout,
    )


def one_error(result, command="fit"):
    """The run failed with exactly one ``lit-cv COMMAND: error:`` message and no traceback; returns the message (with
    the lines of a multi-line message)."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"lit-cv {command}: error")]
    assert len(starts) == 1, result.stderr[-3000:]
    return "\n".join(lines[starts[0]:])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One short quickstart fit shared by the tests below (4 epochs), with every default on."""
    cwd = tmp_path_factory.mktemp("quickstart")
    result = lit_cv("fit", "--config", QUICKSTART, "--trainer.max_epochs", "4", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


def test_fit_reaches_accuracy_and_writes_metrics_json(quick_run):
    cwd, result = quick_run
    run_dir = cwd / "runs" / "quickstart" / "version_0"
    report = json.loads((run_dir / "metrics.json").read_text())["fit"]
    assert report["metrics"]["val/acc"] >= 0.85
    assert report["epoch"] == 4
    per_class = report["per_class"]["val"]
    assert sum(c["total"] for c in per_class.values()) == 359  # 20% of 1,797
    assert f"metrics written to {Path('runs/quickstart/version_0/metrics.json')}" in result.stdout
    assert "val/acc" in result.stdout  # the printed table
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "config.yaml").is_file()


def test_hparams_and_final_metrics_reach_tensorboard(quick_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cwd, _ = quick_run
    run_dir = cwd / "runs" / "quickstart" / "version_0"
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert {"val/acc", "train/loss", "lr-Adam"} <= set(events.Tags()["scalars"])
    assert any(tag.startswith("val/confusion_matrix") for tag in events.Tags()["images"])
    session = EventAccumulator(str(run_dir / "hparams"))  # callbacks.metrics_report.HPARAMS_RUN
    session.Reload()
    assert "hp/val/acc" in session.Tags()["scalars"]
    assert "_hparams_/session_start_info" in session.summary_metadata  # one HPARAMS session per run


def test_checkpoint_reloads_without_net_and_predicts_same_probabilities(quick_run):
    from datamodules import DigitsDataModule
    from lit_cv import Classifier

    cwd, _ = quick_run
    ckpt = cwd / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    model = Classifier.load_from_checkpoint(ckpt).eval()
    dm = DigitsDataModule()
    dm.setup()
    x = torch.stack([dm.val_set[i][0] for i in range(len(dm.val_set))])
    with torch.no_grad():
        probs = model.predict_proba(x)

    result = lit_cv("predict", "--config", QUICKSTART, "--ckpt_path", str(ckpt), cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    csv_path = cwd / "runs" / "quickstart" / "version_1" / "predictions.csv"
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == len(x)
    written = torch.tensor([[float(r[f"prob_{c}"]) for c in range(10)] for r in rows])
    assert torch.allclose(written, probs, atol=1e-6)
    assert [int(r["pred"]) for r in rows] == probs.argmax(1).tolist()


def test_test_with_ckpt_path_last_scores_the_newest_trained_run(quick_run, tmp_path):
    # Lightning's own `last` lookup lands in test's new, empty version directory and scores an untrained net.
    shutil.copytree(quick_run[0] / "runs", tmp_path / "runs")
    fitted = json.loads((tmp_path / "runs/quickstart/version_0/metrics.json").read_text())["fit"]["metrics"]
    before = set((tmp_path / "runs/quickstart").iterdir())  # other tests of the module may have added versions
    result = lit_cv("test", "--config", QUICKSTART, "--ckpt_path", "last", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (new,) = set((tmp_path / "runs/quickstart").iterdir()) - before
    tested = json.loads((new / "metrics.json").read_text())["test"]["metrics"]
    assert tested["test/acc"] >= 0.85 and tested["test/acc"] >= fitted["val/acc"] - 0.1  # chance is 0.1

    empty = tmp_path / "empty"
    empty.mkdir()
    message = one_error(lit_cv("test", "--config", QUICKSTART, "--ckpt_path", "last", cwd=empty), "test")
    assert "--ckpt_path last: no last.ckpt under" in message and "Run `lit-cv fit` with this config first" in message


def test_print_config_shows_resolved_config(tmp_path):
    result = lit_cv("fit", "--config", QUICKSTART, "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "class_path: lit_cv.nets.CNN2" in result.stdout
    assert "seed_everything: 13" in result.stdout
    assert "monitor: val/loss" in result.stdout


def test_misspelled_key_names_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART and Path(QUICKSTART).read_text().replace("n_feature: 32", "n_featur: 32"))
    result = lit_cv("fit", "--config", str(bad), cwd=tmp_path)
    assert result.returncode != 0
    assert "n_featur" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_type_names_the_key(tmp_path):
    result = lit_cv("fit", "--config", QUICKSTART, "--trainer.max_epochs", "many", cwd=tmp_path)
    assert result.returncode != 0
    assert "max_epochs" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------- user errors
# Before: each of these printed a long traceback (some with the clear message at the bottom, some with only a raw
# torch error). After: one line, exit code 1.
@pytest.fixture(scope="module")
def rps_layouts(tmp_path_factory):
    """RPS data in the real layout, nested one level too deep, and with a class folder missing."""
    root = tmp_path_factory.mktemp("rps")
    good = fake_data.make_rps(root / "good", per_class=3, size=32)
    nested = root / "nested" / "download"
    nested.parent.mkdir()
    good.rename(nested)
    good = fake_data.make_rps(root / "good", per_class=3, size=32)
    missing = fake_data.make_rps(root / "missing", per_class=3, size=32)
    for folder in missing.glob("*/paper"):
        for image in folder.iterdir():
            image.unlink()
        folder.rmdir()
    return {"nested": root / "nested", "missing": missing}


@pytest.mark.parametrize(
    ("layout", "expected"),
    [("nested", ["does not exist", "rps-test-set", "lit-cv download rps"]),
     ("missing", ["Class folder 'paper' is missing"])],
)
def test_a_wrong_dataset_layout_is_one_message(rps_layouts, tmp_path, layout, expected):
    result = lit_cv("fit", "--config", RPS, "--data.init_args.data_dir", rps_layouts[layout], *SHORT, cwd=tmp_path)
    message = one_error(result)
    assert all(text in message for text in expected), message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data.init_args.batch_size", "0"], "DigitsDataModule: batch_size must be >= 1, got 0"),
        (["--model.optimizer.init_args.lr", "-0.1"], "Adam: Invalid learning rate: -0.1"),
        (["--model.lr_scheduler", "torch.optim.lr_scheduler.CyclicLR", "--model.lr_scheduler.base_lr", "0.001",
          "--model.lr_scheduler.max_lr", "0.01", "--model.lr_scheduler.cycle_momentum", "false"],
         "CyclicLR counts its period in optimizer steps but scheduler_interval is 'epoch'"),
    ],
    ids=["batch_size-0", "negative-lr", "cyclic-lr-per-epoch"],
)
def test_a_bad_config_value_is_one_message(tmp_path, args, expected):
    message = one_error(lit_cv("fit", "--config", QUICKSTART, *SHORT, *args, cwd=tmp_path))
    assert expected in message
    assert "(traceback: LIT_CV_DEBUG=1)" in message


@pytest.mark.parametrize(
    "args",
    [["--data.init_args.batch_size", "0"], ["--model.optimizer.init_args.lr", "-0.1"]],
    ids=["ours", "torch's"],
)
def test_the_debug_switch_shows_the_traceback(tmp_path, args):
    result = lit_cv("fit", "--config", QUICKSTART, *SHORT, *args, cwd=tmp_path, LIT_CV_DEBUG="1")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "lit-cv fit: error" not in result.stderr


def test_image_size_is_given_once_by_the_data(tmp_path):
    """Before: the net kept its own image_size 28 and the first batch of 32x32 images failed in a raw matmul."""
    result = lit_cv("fit", "--config", QUICKSTART, *SHORT, "--data.init_args.image_size", "32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt",
                            weights_only=True)
    assert checkpoint["hyper_parameters"]["net"]["init_args"]["image_size"] == 32


def test_a_checkpoint_at_another_image_size_names_both(quick_run, tmp_path):
    cwd, _ = quick_run
    ckpt = cwd / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    result = lit_cv("validate", "--config", QUICKSTART, "--ckpt_path", ckpt, "--data.init_args.image_size", "32",
                    cwd=tmp_path)
    message = one_error(result, "validate")
    assert str(ckpt) in message and "image_size 28" in message and "gives 32" in message, message


def test_a_checkpoint_of_another_net_names_both_nets(quick_run, tmp_path):
    """Before: LightningCLI silently swapped in the checkpoint's net (or, for a net of other data, a raw conv2d
    shape error)."""
    cwd, _ = quick_run
    ckpt = cwd / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    result = lit_cv("validate", "--config", QUICKSTART, "--ckpt_path", ckpt, "--model.net", "lit_cv.nets.ConvNet",
                    cwd=tmp_path)
    message = one_error(result, "validate")
    assert "holds a lit_cv.nets.CNN2(" in message and "the config builds a lit_cv.nets.ConvNet(" in message, message
    assert f"--config {ckpt.parents[1] / 'config.yaml'}" in message


def test_fit_ckpt_path_last_of_another_net_is_the_same_one_message(quick_run, tmp_path):
    # `last` is resolved to a file late (the run's own version directory); it used to skip the check: a traceback.
    shutil.copytree(quick_run[0] / "runs", tmp_path / "runs")
    result = lit_cv("fit", "--config", QUICKSTART, "--ckpt_path", "last", "--model.net", "lit_cv.nets.ConvNet",
                    cwd=tmp_path)
    message = one_error(result, "fit")
    assert "holds a lit_cv.nets.CNN2(" in message and "the config builds a lit_cv.nets.ConvNet(" in message, message


def test_a_checkpoint_of_other_classes_names_both(quick_run, rps_layouts, tmp_path):
    """The digits checkpoint (10 classes) with RPS data (3 classes): before, a raw shape error."""
    cwd, _ = quick_run
    ckpt = cwd / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    data_dir = rps_layouts["missing"].parent / "good"
    result = lit_cv("test", "--config", RPS, "--ckpt_path", ckpt, "--model.net.init_args.n_feature", "32",
                    "--model.net.init_args.in_channels", "1", "--data.init_args.data_dir", data_dir, cwd=tmp_path)
    message = one_error(result, "test")
    assert "was trained on 10 classes [0, 1, 2, 3, 4, 5, ...], but the data has 3: [paper, rock, scissors]" in message


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, quick_run):
    """Files that are not what the option expects; the checkpoint in ``text.yaml`` is a real one."""
    root = tmp_path_factory.mktemp("bad")
    (root / "empty.ckpt").write_bytes(b"")
    (root / "notes.ckpt").write_text("these are not weights\n")
    real = quick_run[0] / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    (root / "truncated.ckpt").write_bytes(real.read_bytes()[:4000])
    torch.save({"fc.weight": torch.zeros(2, 2)}, root / "weights.pt")
    (root / "empty.yaml").write_text("")
    (root / "checkpoint.yaml").write_bytes(real.read_bytes())
    (root / "broken.yaml").write_text("trainer: [1, 2\n")
    (root / "list.yaml").write_text("- trainer\n")
    return root


@pytest.mark.parametrize(
    ("name", "expected"),
    [("empty.ckpt", "is empty (0 bytes)"), ("notes.ckpt", "is not a readable PyTorch checkpoint"),
     ("truncated.ckpt", "is not a readable PyTorch checkpoint"), ("weights.pt", "is not a Lightning checkpoint"),
     ("missing.ckpt", "does not exist")],
)
def test_a_file_that_is_no_checkpoint_is_named(bad_files, name, expected):
    message = one_error(lit_cv("validate", "--config", QUICKSTART, "--ckpt_path", name, cwd=bad_files), "validate")
    assert f"'{name}'" in message and expected in message, message
    assert "weights_only" not in message  # never the advice to unpickle it anyway


@pytest.mark.parametrize(
    ("name", "expected"),
    [("empty.yaml", "is empty"), ("checkpoint.yaml", "is not a YAML text file: it is a zip archive"),
     ("broken.yaml", "is not valid YAML"), ("list.yaml", "not a mapping"), ("missing.yaml", "does not exist")],
)
def test_a_config_that_is_no_yaml_mapping_is_named(bad_files, name, expected):
    message = one_error(lit_cv("fit", "--config", name, cwd=bad_files))
    assert f"Config file '{name}'" in message and expected in message, message


@pytest.mark.parametrize("args", [[], ["fitt"]], ids=["none", "misspelled"])
def test_no_or_a_wrong_command_lists_every_command(tmp_path, args):
    result = lit_cv(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert ("no command given" if not args else "unknown command 'fitt'") in line
    assert all(name in line for name in ("fit", "validate", "test", "predict", *EXTRA_COMMANDS)), line


# ---------------------------------------------------------------------------------------------- in-process units
def _raised(function, *args):
    try:
        function(*args)
    except Exception as error:  # noqa: BLE001 - the test inspects whatever was raised
        return error
    raise AssertionError("nothing raised")


def test_user_errors_are_the_raise_statements_of_our_code():
    from datamodules.loaders import check_loader_args
    from lit_cv.cli import user_error_message
    from lit_cv.nets import CNN2

    assert user_error_message(_raised(check_loader_args, 0, 0)) == "batch_size must be >= 1, got 0."
    wrapped = ValueError("Does not validate against any of the Union subtypes")  # jsonargparse's wrapper
    wrapped.__cause__ = _raised(check_loader_args, 0, 0)
    assert user_error_message(wrapped) == "batch_size must be >= 1, got 0."
    assert user_error_message(_raised(CNN2, "many")) is None  # a TypeError from `"many" < 1`: a bug, not a check
    assert user_error_message(_raised(int, "x")) is None  # a ValueError, but not raised by our code
    assert user_error_message(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


def test_collective_timeout_applies_to_strategies_given_by_name():
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    from lit_cv.cli import with_collective_timeout

    strategy = with_collective_timeout("ddp_find_unused_parameters_true", 30)
    assert isinstance(strategy, DDPStrategy) and strategy._timeout == timedelta(seconds=30)
    assert strategy._ddp_kwargs == {"find_unused_parameters": True}  # what the name alone builds
    explicit = DDPStrategy(timeout=timedelta(seconds=5))
    assert with_collective_timeout(explicit, 30) is explicit  # its own timeout wins
    assert with_collective_timeout("auto", 30) == "auto"
    assert with_collective_timeout("single_device", 30) == "single_device"  # no timeout to set


def test_a_datamodule_download_without_network_is_one_line(tmp_path, monkeypatch, capsys):
    import socket
    from urllib.error import URLError

    from lit_cv.cli import main

    def unreachable(url: str, timeout: float | None = None) -> None:
        raise URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr("urllib.request.urlopen", unreachable)
    data_dir = tmp_path / "rps"
    code = main(["fit", "--config", str(REPO_ROOT / "configs/rps_cnn2_dropout.yaml"),
                 "--data.init_args.data_dir", str(data_dir), "--data.init_args.download", "true"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "lit-cv fit: error: Could not download rps.zip:" in err
    assert (f"No network reached: run this command where there is internet (e.g. a cluster's login node), then copy "
            f"{data_dir} here") in err
