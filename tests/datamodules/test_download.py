"""Verified downloads, zip-slip refusal, atomic extraction and `lit-cv download` (offline, file:// URLs)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import fake_data
import pytest

from datamodules import BankMarketingDataModule, RPSDataModule
from datamodules import download as dl
from lit_cv.commands.download import main as download_main


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def zip_tree(archive: Path, root: Path, folders: list[str]) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for folder in folders:
            for p in sorted((root / folder).rglob("*")):
                zf.write(p, p.relative_to(root).as_posix())
    return archive


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt", "C:\\evil.txt"])
def test_zip_slip_refused_and_nothing_written(tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good/a.txt", "fine")
        zf.writestr(member, "evil")
    dest = tmp_path / "out" / "inner"
    with pytest.raises(dl.UnsafeArchiveError, match="would be written outside"):
        dl.extract_atomic(archive, dest)
    assert list(dest.iterdir()) == []  # no half-extracted folder, no temp folder left
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_tar_with_parent_path_or_symlink_refused(tmp_path):
    for name, kind in (("../evil.txt", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)):
        archive = tmp_path / f"bad-{kind!r}.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            data = b"evil" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        with pytest.raises(dl.UnsafeArchiveError):
            dl.extract_atomic(archive, tmp_path / "out")


def test_extract_atomic_places_top_level_entries_and_keeps_existing(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("rps/rock/1.png", "new")
        zf.writestr("readme.txt", "hi")
    dest = tmp_path / "data"
    (dest / "rps").mkdir(parents=True)
    (dest / "rps" / "old.png").write_text("old")
    placed = dl.extract_atomic(archive, dest)
    assert sorted(p.name for p in placed) == ["readme.txt", "rps"]
    assert (dest / "rps" / "old.png").exists() and not (dest / "rps" / "rock").exists()  # complete copy kept
    dl.extract_atomic(archive, dest, force=True)
    assert (dest / "rps" / "rock" / "1.png").read_text() == "new" and not (dest / "rps" / "old.png").exists()
    assert sorted(p.name for p in dest.iterdir()) == ["readme.txt", "rps"]  # no .extract-* leftovers


def test_checksum_mismatch_refused_and_partial_removed(tmp_path):
    payload = b"x" * 1000
    resource = dl.Resource(
        ("https://example.org/f.bin",), "f.bin", sha256=hashlib.sha256(b"other").hexdigest()
    )
    with pytest.raises(dl.ChecksumError, match="f.bin: sha256"):
        dl.fetch(resource, tmp_path, opener=lambda url: io.BytesIO(payload))
    assert list(tmp_path.iterdir()) == []
    md5 = dl.Resource(("https://example.org/f.bin",), "f.bin", md5="0" * 32)
    with pytest.raises(dl.ChecksumError, match="md5"):
        dl.fetch(md5, tmp_path, opener=lambda url: io.BytesIO(payload))
    assert list(tmp_path.iterdir()) == []


def test_fetch_verifies_tries_mirrors_and_reuses_verified_copy(tmp_path, capsys):
    payload = b"mnist bytes"
    calls = []

    def opener(url):
        calls.append(url)
        if "dead" in url:
            raise OSError("mirror down")
        return io.BytesIO(payload)

    resource = dl.Resource(("https://dead/f", "https://alive/f"), "f", md5=hashlib.md5(payload).hexdigest())
    path = dl.fetch(resource, tmp_path, opener=opener)
    assert path.read_bytes() == payload and calls == ["https://dead/f", "https://alive/f"]
    dl.fetch(resource, tmp_path, opener=opener)
    assert len(calls) == 2  # verified copy on disk: no new download
    unknown = dl.Resource(("https://alive/g",), "g")
    dl.fetch(unknown, tmp_path, opener=opener)
    assert f"computed sha256 {hashlib.sha256(payload).hexdigest()}" in capsys.readouterr().out


def test_download_rps_end_to_end_then_datamodule_works_offline(tmp_path, monkeypatch):
    src = fake_data.make_rps(tmp_path / "src", per_class=3, size=16, test_per_class=2, bad_files=False)
    resources = []
    for folder in ("rps", "rps-test-set"):
        archive = zip_tree(tmp_path / f"{folder}.zip", src, [folder])
        resources.append(dl.Resource((archive.as_uri(),), archive.name, sha256=sha256(archive)))
    monkeypatch.setattr(dl, "RPS", tuple(resources))
    data_dir = tmp_path / "data"
    assert download_main(["rps", "--data-dir", str(data_dir)]) == 0
    assert sorted(p.name for p in data_dir.iterdir()) == ["rps", "rps-test-set"]  # archives removed
    dm = RPSDataModule(data_dir, num_workers=0)
    dm.setup("fit")
    assert (len(dm.datasets["train"]), len(dm.datasets["val"])) == (9, 6)

    bad = [dl.Resource(resources[0].urls, "rps.zip", sha256="0" * 64), resources[1]]
    monkeypatch.setattr(dl, "RPS", tuple(bad))
    assert download_main(["rps", "--data-dir", str(tmp_path / "data2")]) == 1
    assert not (tmp_path / "data2" / "rps").exists()
    assert not list((tmp_path / "data2").rglob("*.part"))


def _bank_resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kaggle's bank.csv and UCI's nested bank+marketing.zip (bank.zip inside) as file:// downloads."""
    kaggle = fake_data.make_bank_kaggle(tmp_path / "src", n=50)
    uci = fake_data.make_bank_uci(tmp_path / "src", n=60)
    inner = tmp_path / "bank.zip"
    with zipfile.ZipFile(inner, "w") as zf:
        zf.write(uci, "bank-full.csv")
        zf.writestr("bank-names.txt", "names")
    outer = tmp_path / "bank+marketing.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(inner, "bank.zip")
    monkeypatch.setattr(dl, "BANK_KAGGLE", dl.Resource((kaggle.as_uri(),), "bank.csv", sha256=sha256(kaggle)))
    monkeypatch.setattr(dl, "BANK_UCI", dl.Resource((outer.as_uri(),), "bank+marketing.zip"))


def test_download_bank_nested_uci_zip(tmp_path, monkeypatch):
    _bank_resources(tmp_path, monkeypatch)
    data_dir = dl.download_dataset("bank", tmp_path / "data")
    assert sorted(p.name for p in data_dir.iterdir()) == ["bank-full.csv", "bank-names.txt", "bank.csv"]
    assert BankMarketingDataModule(data_dir / "bank-full.csv").num_features > 0


def test_download_command_rejects_unknown_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        download_main(["imagenet", "--data-dir", str(tmp_path)])
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
        dl.download_dataset("imagenet", tmp_path)


def test_mnist_resources_are_torchvisions():
    from torchvision.datasets import MNIST

    resources = dl.mnist_resources()
    assert [(r.filename, r.md5) for r in resources] == list(MNIST.resources)
    assert all(len(r.urls) == len(MNIST.mirrors) for r in resources)


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(url, *args, **kwargs):
        raise OSError(f"<urlopen error [Errno -3] Temporary failure in name resolution> ({url})")

    monkeypatch.setattr(dl.urllib.request, "urlopen", no_network)


def test_force_offline_deletes_and_replaces_nothing(tmp_path, monkeypatch):
    _bank_resources(tmp_path, monkeypatch)
    data_dir = dl.download_dataset("bank", tmp_path / "data")
    (data_dir / "bank.csv").write_text((data_dir / "bank.csv").read_text() + "30,student,single\n")  # edited copy
    before = {p.name: p.read_bytes() for p in data_dir.iterdir()}
    _offline(monkeypatch)
    monkeypatch.setattr(dl, "BANK_KAGGLE", dl.Resource(("https://example.org/bank.csv",), "bank.csv",
                                                        sha256=dl.BANK_KAGGLE.sha256))
    assert download_main(["bank", "--data-dir", str(data_dir), "--force"]) == 1
    assert {p.name: p.read_bytes() for p in data_dir.iterdir()} == before  # before: bank.csv deleted
    with pytest.raises(OSError, match=r"(?s)Could not download bank.csv.*existing .*bank.csv was left as it is"):
        dl.fetch(dl.BANK_KAGGLE, data_dir)


def test_force_replaces_a_folder_only_with_a_complete_extraction(tmp_path, monkeypatch):
    src = fake_data.make_rps(tmp_path / "src", per_class=2, size=8, test_per_class=1, bad_files=False)
    data_dir = tmp_path / "data"
    (data_dir / "rps" / "rock").mkdir(parents=True)
    (data_dir / "rps" / "rock" / "mine.png").write_bytes(b"old")
    archive = zip_tree(tmp_path / "rps.zip", src, ["rps"])
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(dl.ChecksumError, match="corrupt.zip is neither a zip nor a tar archive"):
        dl.extract_atomic(corrupt, data_dir, force=True)
    assert (data_dir / "rps" / "rock" / "mine.png").read_bytes() == b"old"
    dl.extract_atomic(archive, data_dir, force=True)
    assert not (data_dir / "rps" / "rock" / "mine.png").exists() and len(list((data_dir / "rps").rglob("*.png"))) == 6
    assert sorted(p.name for p in data_dir.iterdir()) == ["rps"]


def test_leftovers_of_a_killed_download_are_removed_by_the_next_run(tmp_path, monkeypatch):
    _bank_resources(tmp_path, monkeypatch)
    data_dir = tmp_path / "data"
    dead = "999999999"
    leftovers = [
        data_dir / f".extract-{dead}-rps.zip-x1y2",  # killed mid-extraction
        data_dir / ".extract-bank-abc",  # an older lit-cv's name
        data_dir / dl.DOWNLOADS / f".rps.zip.{dead}.part",
        data_dir / dl.DOWNLOADS / "rps.zip.part",
    ]
    for path in leftovers:
        if path.suffix == ".part":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"half")
        else:
            (path / "rps" / "rock").mkdir(parents=True)
    running = data_dir / f".extract-{os.getppid()}-cats.zip-zz"  # another download, still running
    running.mkdir()
    dl.download_dataset("bank", data_dir)
    assert not any(p.exists() for p in leftovers)
    assert running.is_dir()
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(
        [running.name, "bank-full.csv", "bank-names.txt", "bank.csv"]
    )
