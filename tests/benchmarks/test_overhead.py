"""benchmarks/overhead.py: the plain PyTorch loop, and the interleaved comparison with `lit-cv fit`, shortened."""

from __future__ import annotations

import json

import pytest
from conftest import REPO_ROOT

from benchmarks import overhead
from benchmarks.overhead import bare_lightning_seconds, compare, main, plain_loop

QUICKSTART = ["--config", str(REPO_ROOT / "configs" / "quickstart.yaml"), "--model.lr_scheduler", "null"]
SHORT = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
         "--model.net.init_args.n_feature", "4", "--model.net.init_args.image_size", "12",
         "--data.init_args.image_size", "12"]


def test_plain_loop_trains_and_writes_json(tmp_path):
    assert main([*QUICKSTART, *SHORT, "--plain-only", "--json", str(tmp_path / "overhead.json")]) == 0
    result = json.loads((tmp_path / "overhead.json").read_text())
    assert result["epochs"] == 2 and result["device"] == "cpu"
    assert result["plain_loop_seconds"] > 0 and 0.0 <= result["plain_loop_val/acc"] <= 1.0


def test_scheduler_is_refused():
    with pytest.raises(ValueError, match="no scheduler and no L1 penalty; add --model.lr_scheduler null"):
        plain_loop(["--config", str(REPO_ROOT / "configs" / "quickstart.yaml"), *SHORT])


@pytest.mark.slow
def test_interleaved_rounds_give_a_ratio_per_clock(tmp_path, capsys):
    assert main(["--rounds", "1", "--epochs", "1", "2", "--json", str(tmp_path / "o.json"), *QUICKSTART, *SHORT]) == 0
    result = json.loads((tmp_path / "o.json").read_text())
    (round_,) = result["rounds"]
    for clock in ("wall", "cpu"):
        assert round_[f"ratio_{clock}"] == pytest.approx(round_[f"cli_{clock}"] / round_[f"plain_{clock}"])
        assert round_[f"ratio_bare_{clock}"] == pytest.approx(round_[f"bare_{clock}"] / round_[f"plain_{clock}"])
    out = capsys.readouterr().out
    assert "ratio lit-cv / plain" in out and "ratio bare Lightning / plain" in out


def test_first_call_costs_of_every_arm_stay_out_of_the_rounds(monkeypatch):
    # Each arm costs 5 s more on its first call (imports, caches), then start-up + per-epoch seconds.
    per_epoch = {"plain": 0.5, "bare": 0.6, "cli": 0.7}
    calls: dict[str, int] = {}

    def arm(kind):
        def seconds(cli_args, epochs, *rest):
            calls[kind] = calls.get(kind, 0) + 1
            wall = 2.0 + per_epoch[kind] * epochs + (5.0 if calls[kind] == 1 else 0.0)
            return wall, wall
        return seconds

    monkeypatch.setattr(overhead, "plain_loop_seconds", arm("plain"))
    monkeypatch.setattr(overhead, "bare_lightning_seconds", arm("bare"))
    monkeypatch.setattr(overhead, "cli_fit_seconds", arm("cli"))
    result = compare([], rounds=3, e1=1, e2=4)
    for round_ in result["rounds"]:
        assert round_["ratio_wall"] == pytest.approx(1.4) and round_["ratio_bare_cpu"] == pytest.approx(1.2)
    assert calls == {"plain": 7, "bare": 7, "cli": 7}  # one warm-up, then two runs a round


def test_bare_lightning_trains_the_configs_net():
    wall, cpu = bare_lightning_seconds([*QUICKSTART, *SHORT], epochs=1)
    assert wall > 0 and cpu > 0


def test_bad_epochs_are_refused():
    with pytest.raises(SystemExit):
        main(["--epochs", "3", "3", *QUICKSTART])
