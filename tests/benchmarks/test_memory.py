"""benchmarks/memory.py: the peak RSS it reports is the child's, and every cache mode is measured."""

from __future__ import annotations

import json
import sys

import fake_data
import pytest

from benchmarks.memory import folder_gib, main, peak_rss_gib


def test_peak_rss_is_the_childs(tmp_path):
    small = peak_rss_gib([sys.executable, "-c", "pass"], tmp_path)
    large = peak_rss_gib([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"],
                         tmp_path)
    assert 0 < small < 0.2 and large - small > 0.25


def test_a_failing_command_raises_with_its_output(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        peak_rss_gib([sys.executable, "-c", "raise SystemExit('boom')"], tmp_path)


def test_folder_size(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x" * 2**20)
    assert folder_gib(tmp_path) == pytest.approx(1 / 1024) and folder_gib(tmp_path / "missing") == 0.0


@pytest.mark.slow
def test_every_cache_mode_is_measured(tmp_path):
    data = fake_data.make_cats_dogs(tmp_path / "cats_dogs", per_class=4, size=40)
    assert main(["--data-dir", str(data), "--batches", "1", "--json", str(tmp_path / "memory.json"),
                 "--data.init_args.batch_size", "2"]) == 0
    runs = json.loads((tmp_path / "memory.json").read_text())["runs"]
    assert list(runs) == ["memory", "disk cold", "disk warm", "none"]
    assert all(r["peak_rss_gib"] > 0.1 for r in runs.values())
    assert runs["disk cold"]["cache_dir_gib"] > 0 and runs["memory"]["cache_dir_gib"] >= 0
