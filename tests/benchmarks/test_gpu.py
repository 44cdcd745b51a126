"""benchmarks/gpu.py: a clean exit without CUDA, and the whole script on the CPU (tiny) so the GPU run cannot crash."""

from __future__ import annotations

import pytest
import torch

from benchmarks.gpu import main


def test_without_cuda_it_says_so_and_exits_cleanly(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([]) == 0
    assert "no CUDA GPU here" in capsys.readouterr().out


def test_the_script_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    assert main(["--device", "cpu", "--steps", "2", "--warmup", "1", "--workloads", "cnn2_rps",
                 "--variants", "fp32,bf16-mixed+channels_last", "--no-ddp", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| cnn2_rps")]
    assert len(rows) == 2 and not any("failed" in row for row in rows)
    lit, plain, ratio = (float(cell) for cell in rows[0].split("|")[4:7])
    assert lit > 0 and plain > 0 and ratio == pytest.approx(lit / plain, rel=0.02)


def test_unknown_variant_is_refused():
    with pytest.raises(SystemExit):
        main(["--variants", "fp8"])
