"""``lit-cv lr-find``: argument handling in process, the whole command on the quickstart config in a subprocess."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from callbacks.lr_range_test import LRRangeTestParams
from lit_cv.commands.lr_find import build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = REPO_ROOT / "configs" / "quickstart.yaml"


def test_range_test_options_are_split_from_the_cli_arguments():
    options, rest = build_parser().parse_known_args(
        ["--config", "x.yaml", "--num-iter", "7", "--diverge-th", "none", "--step-mode", "linear",
         "--trainer.max_epochs=3", "--method", "valley"]
    )
    assert (options.num_iter, options.diverge_th, options.step_mode, options.method) == (7, None, "linear", "valley")
    assert rest == ["--config", "x.yaml", "--trainer.max_epochs=3"]


def test_every_range_test_parameter_is_an_option_with_its_default():
    defaults = vars(build_parser().parse_args([]))
    for field in dataclasses.fields(LRRangeTestParams):
        assert defaults.pop(field.name) == field.default
    assert defaults == {"output_dir": None}


def test_missing_config_and_bad_choices_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "lit-cv lr-find --config configs/quickstart.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", str(QUICKSTART), "--method", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", str(QUICKSTART), "--diverge-th", "1"])
    assert "diverge_th must be > 1" in capsys.readouterr().err


def test_too_short_curve_exits_1_with_the_reason(tmp_path, capsys):
    # progress bar and summary off: the assertions read the captured stdout, which they would flood
    code = main([
        "--config", str(QUICKSTART), "--num-iter", "3", "--output-dir", str(tmp_path / "out"),
        "--model.net.init_args.n_feature=3", "--model.net.init_args.image_size=12",
        "--data.init_args.image_size=12", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
    ])
    out = capsys.readouterr().out
    assert code == 1
    assert "Raise num_iter" in out and "steepest  -" in out
    assert json.loads((tmp_path / "out" / "lr_range_test.json").read_text())["suggestion"] is None
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # nothing trained, nothing saved


@pytest.mark.slow
def test_lr_find_on_quickstart_writes_json_and_png(tmp_path):
    lit_cv = Path(sys.executable).with_name("lit-cv")
    command = [  # progress bar off: stderr (the bar's stream) is the failure message asserted on
        # 20 steps: at 10 the smoothed curve is flat noise, lowest at its 2nd point, with no descent for valley
        str(lit_cv), "lr-find", "--config", str(QUICKSTART), "--num-iter", "20", "--skip-begin", "1",
        "--start-lr", "1e-5", "--end-lr", "1", "--output-dir", str(tmp_path / "out"),
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false",
    ]
    done = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "lr_range_test.json").read_text())
    assert (tmp_path / "out" / "lr_range_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_dirs = list((tmp_path / "runs" / "quickstart").glob("version_*"))
    assert len(run_dirs) == 1 and (run_dirs[0] / "lr_range_test.json").is_file()
    assert (run_dirs[0] / "lr_range_test.png").is_file()
    assert 2 <= len(data["lrs"]) <= 21 and data["lrs"][0] == 1e-5
    assert data["suggestion"] is not None and data["method"] == "valley"  # the default (results/lr_stability.md)
    printed = re.search(r"suggested LR (\S+) \(valley\)", done.stdout)
    assert printed and float(printed.group(1)) == pytest.approx(data["suggestion"], rel=1e-3)
    assert data["suggestions"]["valley"] == data["suggestion"]
