"""Untrusted files never execute code: every path that reads a file a user may have been given (``--ckpt_path`` for
fit/validate/test/predict, EarlyStopping's restore from a resumed run folder, pretrained weight files, the image
cache's tensors and statistics) is fed a file whose unpickling would create a marker file; the marker never appears.

The runs are the README's ``lit-cv`` commands on the digits quickstart, shortened by ``tests/subprocess_runs.py``'s
``fast.yaml`` (few batches, tiny net; the progress bar is off only to keep the captured output short).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import fake_data
import numpy as np
import pytest
import torch
from subprocess_runs import QUICKSTART, fast_config

from lit_cv.cli import main as lit_cv

RESTORE = [{"class_path": "callbacks.EarlyStopping",
            "init_args": {"monitor": "val/loss", "mode": "min", "patience": 5, "restore_best_weights": True}}]


@contextlib.contextmanager
def _in(folder: Path):
    before, argv = Path.cwd(), sys.argv
    os.chdir(folder)
    sys.argv = ["lit-cv"]  # pytest's own arguments are not for the CLI
    try:
        yield
    finally:
        os.chdir(before)
        sys.argv = argv


def run_lit_cv(folder: Path, *args: str, capsys: pytest.CaptureFixture | None = None) -> str:
    """``lit-cv ARGS`` in ``folder`` (in this process); returns how it failed ('' on success): the exception, or the
    printed error of a non-zero exit."""
    with _in(folder):
        try:
            code = lit_cv([*args])
            failure = "" if not code else f"exit code {code}"
        except (Exception, SystemExit) as err:  # noqa: BLE001 - however the CLI reports, the text is checked
            failure = f"{type(err).__name__}: {err}"
    if failure and capsys is not None:
        captured = capsys.readouterr()
        failure += f"\n{captured.out}{captured.err}"
    return failure


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch quickstart run with EarlyStopping(restore_best_weights) in ``<root>/runs/quickstart``."""
    root = tmp_path_factory.mktemp("run")
    fast_config(root, callbacks=RESTORE)
    assert run_lit_cv(root, "fit", "--config", str(QUICKSTART), "--config", "fast.yaml") == ""
    return root


def _checkpoints(root: Path) -> Path:
    return root / "runs" / "quickstart" / "version_0" / "checkpoints"


def test_the_payload_is_real(tmp_path):
    """Sanity: a plain ``torch.load(weights_only=False)`` of a planted file does create the marker."""
    marker = tmp_path / "marker"
    torch.load(fake_data.plant_payload(tmp_path / "planted.ckpt", marker), weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("opt_in", [[], ["--weights_only", "false"]], ids=["default", "weights_only-false"])
def test_ckpt_path_refuses_a_planted_checkpoint(finished_run, tmp_path, capsys, subcommand, opt_in):
    marker = tmp_path / "marker"
    base = torch.load(_checkpoints(finished_run) / "last.ckpt", weights_only=True)
    planted = fake_data.plant_payload(tmp_path / "planted.ckpt", marker, base)
    fast_config(tmp_path)
    error = run_lit_cv(tmp_path, subcommand, "--config", str(QUICKSTART), "--config", "fast.yaml",
                       "--ckpt_path", str(planted), *opt_in, capsys=capsys)
    assert not marker.exists()  # before (--weights_only false): Lightning unpickled it and ran the payload
    assert "Refusing to load checkpoint" in error and "planted.ckpt" in error and "(exec)" in error
    assert "weights_only` set to `False`" not in error  # never the advice to turn the protection off


def test_torch_force_no_weights_only_load_cannot_switch_it_off(finished_run, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "marker"
    base = torch.load(_checkpoints(finished_run) / "last.ckpt", weights_only=True)
    planted = fake_data.plant_payload(tmp_path / "planted.ckpt", marker, base)
    fast_config(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    error = run_lit_cv(tmp_path, "validate", "--config", str(QUICKSTART), "--config", "fast.yaml",
                       "--ckpt_path", str(planted), capsys=capsys)
    assert not marker.exists() and "Refusing to load checkpoint" in error


def test_resuming_a_run_folder_with_a_planted_best_checkpoint(tmp_path, capsys):
    """Someone else's finished run folder: ``fit --ckpt_path last`` resumes it and EarlyStopping restores the best
    epoch from its ``best-*.ckpt`` at the end of fit. The planted file is refused (the last weights are kept)."""
    fast_config(tmp_path, callbacks=RESTORE)
    assert run_lit_cv(tmp_path, "fit", "--config", str(QUICKSTART), "--config", "fast.yaml") == ""
    marker = tmp_path / "marker"
    (best,) = _checkpoints(tmp_path).glob("best-*.ckpt")
    fake_data.plant_payload(best, marker, torch.load(best, weights_only=True))
    with pytest.warns(UserWarning, match=r"EarlyStopping: not restoring the best weights.*Refusing to load"):
        error = run_lit_cv(tmp_path, "fit", "--config", str(QUICKSTART), "--config", "fast.yaml",
                           "--ckpt_path", "last", capsys=capsys)
    assert error == ""  # the resumed run finishes; before: it ran the payload and loaded the planted weights
    assert not marker.exists()


def test_pretrained_weight_files_refuse_a_planted_file(tmp_path):
    from lit_cv.nets import TransferNet
    from lit_cv.nets.weights import load_weights_file

    marker = tmp_path / "marker"
    planted = fake_data.plant_payload(tmp_path / "weights.pth", marker, {"conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="Refusing to unpickle"):
        load_weights_file(planted)
    with pytest.raises(ValueError, match="Refusing to unpickle"):
        TransferNet(model_name="resnet18", num_classes=2, pretrained=str(planted))
    assert not marker.exists()


def test_downloaded_torchvision_weights_are_read_weights_only(tmp_path, monkeypatch):
    from lit_cv.nets import TransferNet

    marker = tmp_path / "marker"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def download(url: str, dst: str, *args: Any, **kwargs: Any) -> None:  # what a tampered mirror serves
        fake_data.plant_payload(Path(dst), marker, {"conv1.weight": torch.zeros(1)})

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with contextlib.suppress(Exception):
        TransferNet(model_name="torchvision/resnet18", num_classes=2, pretrained=True)
    assert not marker.exists()


def test_image_cache_tensors_and_statistics_are_never_unpickled(tmp_path):
    from datamodules import RPSDataModule

    data = fake_data.make_rps(tmp_path / "rps", per_class=3, size=16, test_per_class=2, bad_files=False)
    kwargs = {"cache": "disk", "num_workers": 0, "cache_dir": tmp_path / "cache", "image_size": 12}
    first = RPSDataModule(data, **kwargs)
    first.setup("fit")
    expected = {name: torch.cat([x for x, _ in first._loader(name)]) for name in ("train", "val")}
    marker = tmp_path / "marker"
    for npy in (tmp_path / "cache").glob("decoded-*.npy"):
        np.save(npy, np.array([fake_data.Payload(marker)], dtype=object), allow_pickle=True)
    for stats in (tmp_path / "cache").glob("stats-*.json"):
        stats.write_text('{"mean": "__import__(\'os\').system(\'touch pwned\')", "std": [1, 1, 1]}')
    again = RPSDataModule(data, **kwargs)
    again.setup("fit")  # before: the planted .npy could not be mapped and the run crashed
    for name, x in expected.items():
        assert torch.equal(torch.cat([b for b, _ in again._loader(name)]), x), name
    assert again.normalization.mean == first.normalization.mean
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [(b"", "is empty (0 bytes)"), (b"epoch: 3\nnot a checkpoint\n", "is not a readable PyTorch checkpoint"),
     (None, "corrupt, truncated")],
    ids=["zero-byte", "text", "truncated"],
)
def test_a_broken_ckpt_path_gets_one_message_naming_it(finished_run, tmp_path, capsys, content, says):
    broken = tmp_path / "broken.ckpt"
    last = (_checkpoints(finished_run) / "last.ckpt").read_bytes()
    broken.write_bytes(last[: len(last) // 2] if content is None else content)
    fast_config(tmp_path)
    error = run_lit_cv(tmp_path, "validate", "--config", str(QUICKSTART), "--config", "fast.yaml",
                       "--ckpt_path", str(broken), capsys=capsys)
    assert "broken.ckpt" in error and says in error
    assert "weights_only" not in error.replace("--weights_only", "")


PRODUCT_PACKAGES = ("lit_cv", "callbacks", "datamodules")
SAFE_LOADS = {"load": ("weights_only", True), "load_state_dict_from_url": ("weights_only", True),
              "load_file_from_url": ("weights_only", True)}


def _unsafe_loads(source: str, filename: str) -> list[str]:
    """``torch.load``-like calls in SOURCE that do not pass ``weights_only=True``, and ``np.load`` calls that do not
    pass ``allow_pickle=False``, as ``file:line``."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        keywords = {k.arg: k.value for k in node.keywords}
        if owner in ("np", "numpy") and node.func.attr == "load":
            wanted = ("allow_pickle", False)
        elif owner in ("torch", "hub") and node.func.attr in SAFE_LOADS:
            wanted = SAFE_LOADS[node.func.attr]
        else:
            continue
        value = keywords.get(wanted[0])
        if not (isinstance(value, ast.Constant) and value.value is wanted[1]):
            found.append(f"{filename}:{node.lineno}")
    return found


def test_the_static_check_finds_an_unsafe_load():
    source = "import torch, numpy as np\ntorch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p)\n" \
             "torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\n"
    assert _unsafe_loads(source, "x.py") == ["x.py:2", "x.py:3", "x.py:4"]


def test_product_code_loads_every_file_weights_only():
    root = Path(__file__).resolve().parents[2]
    unsafe = [hit for package in PRODUCT_PACKAGES for path in sorted((root / package).rglob("*.py"))
              for hit in _unsafe_loads(path.read_text(), str(path.relative_to(root)))]
    assert not unsafe, f"loads that may unpickle (pass weights_only=True / allow_pickle=False): {unsafe}"
