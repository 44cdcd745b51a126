"""``lit-cv reproduce``: argument handling (the runs themselves: tests/lit_cv/experiments/test_reproduce.py)."""

from __future__ import annotations

import pytest

from lit_cv.commands.reproduce import main


def test_data_dir_is_required_and_names_are_checked(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "--data-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data-dir", str(tmp_path), "--only", "rps_best"])
    assert "invalid choice: 'rps_best'" in capsys.readouterr().err


def test_missing_data_is_skipped_not_failed(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "out"), "--only", "rps_beat"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "out" / "reproduce.md").is_file()
