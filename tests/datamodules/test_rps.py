"""RPSDataModule on fake RGBA PNG trees (always) and on ../shared/data/rps (real_data)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import fake_data
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from callbacks import PredictionWriter
from datamodules import RPSDataModule
from datamodules.image_cache import decode_image
from lit_cv.classifier import Classifier
from lit_cv.nets import CNN2

REPO = Path(__file__).resolve().parents[2]


def good_train_files(root: Path) -> list[Path]:
    return sorted(
        p for p in (root / "rps").rglob("*.png") if p.stat().st_size > 0 and "truncated" not in p.name
    )


def test_shapes_dtypes_counts_and_classes(rps_dir, tmp_path):
    dm = RPSDataModule(rps_dir, batch_size=4, num_workers=0, cache_dir=tmp_path / "cache")
    assert dm.num_classes == 3 and dm.class_names == ["paper", "rock", "scissors"]  # readable before setup
    with pytest.warns(UserWarning, match="skipped 3 unreadable"):
        dm.setup("fit")
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [18, 9, 9]
    assert torch.bincount(dm.splits["train"].labels).tolist() == [6, 6, 6]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert dm.splits["train"].images.dtype == torch.uint8  # decoded once, cached as uint8


def test_bad_files_reported_once_with_paths(rps_dir, tmp_path):
    dm = RPSDataModule(rps_dir, num_workers=0, cache_dir=tmp_path / "cache")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.prepare_data()
        dm.setup("fit")
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(messages) == 1
    for name in ("rock-empty.png", "paper-truncated.png", "Thumbs.db"):
        assert name in messages[0]
    loaded = {p.name for p in dm.splits["train"].paths}
    assert not loaded & {"rock-empty.png", "paper-truncated.png", "Thumbs.db"}


def test_normalizer_matches_course_pipeline(rps_dir, tmp_path, course_normalizer):
    dm = RPSDataModule(rps_dir, num_workers=0, cache_dir=tmp_path / "cache")
    with pytest.warns(UserWarning):
        dm.setup("fit")
    mean, std = course_normalizer(good_train_files(rps_dir), 28)
    assert torch.allclose(torch.tensor(dm.normalization.mean), mean, atol=1e-5)
    assert torch.allclose(torch.tensor(dm.normalization.std), std, atol=1e-5)
    # the val images are normalised with the TRAIN numbers
    x, _ = dm.datasets["val"][0]
    raw = dm.splits["val"].images[0].float() / 255
    assert torch.allclose(x, (raw - mean.view(3, 1, 1)) / std.view(3, 1, 1), atol=1e-4)


def test_leakage_val_images_do_not_change_stats(rps_dir, tmp_path):
    def stats(cache: str) -> tuple:
        dm = RPSDataModule(rps_dir, num_workers=0, cache_dir=tmp_path / cache)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dm.setup("fit")
        return dm.normalization.mean, dm.normalization.std

    before = stats("a")
    rng = np.random.default_rng(5)
    for p in (rps_dir / "rps-test-set").rglob("*.png"):  # very different validation/test images
        fake_data.write_rgba_png(p, rng, (10, 250, 10), 40)
    assert stats("b") == before
    fake_data.write_rgba_png(rps_dir / "rps" / "rock" / "rock00-000.png", rng, (10, 250, 10), 40)
    assert stats("c") != before  # the check can fail: a train image does change them


def test_cache_modes_give_identical_batches(rps_dir, tmp_path):
    batches = {}
    for cache in ("memory", "disk", "none"):
        dm = RPSDataModule(rps_dir, num_workers=0, cache=cache, cache_dir=tmp_path / "cache")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dm.setup("fit")
        batches[cache] = next(iter(dm.val_dataloader()))[0]
        one_by_one = torch.stack([dm.datasets["val"][i][0] for i in range(len(batches[cache]))])
        assert torch.allclose(batches[cache], one_by_one, atol=1e-5)  # batched __getitems__ == __getitem__
    assert torch.allclose(batches["memory"], batches["disk"], atol=1e-6)
    assert torch.allclose(batches["memory"], batches["none"], atol=1e-6)
    assert list((tmp_path / "cache").glob("decoded-*.npy"))


def test_disk_cache_is_reused_without_decoding(rps_dir, tmp_path, monkeypatch):
    kwargs = {"num_workers": 0, "cache": "disk", "cache_dir": tmp_path / "cache"}
    with pytest.warns(UserWarning):
        RPSDataModule(rps_dir, **kwargs).setup("fit")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the disk cache exists")

    monkeypatch.setattr("datamodules.image_cache.decode_all", no_decoding)
    dm = RPSDataModule(rps_dir, **kwargs)
    with pytest.warns(UserWarning, match="skipped 3"):  # the bad-file list is cached too
        dm.setup("fit")
    assert len(dm.datasets["train"]) == 18 and isinstance(dm.splits["train"].images, Path)


def test_read_only_data_dir_falls_back_to_user_cache(rps_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("datamodules.image_cache.USER_CACHE", tmp_path / "user_cache")
    rps_dir.chmod(0o555)  # r-x like ../shared/data; honoured even when the tests run as root
    try:
        dm = RPSDataModule(rps_dir, num_workers=0)
        with pytest.warns(UserWarning):
            dm.setup("fit")
    finally:
        rps_dir.chmod(0o755)
    assert not (rps_dir / ".lit-cv-cache").exists()
    assert list((tmp_path / "user_cache").rglob("stats-*.json"))


def test_augment_only_on_train_and_deterministic_eval(rps_dir, tmp_path):
    dm = RPSDataModule(rps_dir, num_workers=0, augment=True, cache_dir=tmp_path / "cache")
    with pytest.warns(UserWarning):
        dm.setup("fit")
    assert dm.datasets["train"].transform is not None and dm.datasets["val"].transform is None
    torch.manual_seed(0)
    draws = torch.stack([dm.datasets["train"][0][0] for _ in range(5)])
    assert not all(torch.equal(draws[0], d) for d in draws[1:])
    assert torch.equal(dm.datasets["val"][0][0], dm.datasets["val"][0][0])


def test_missing_folder_error_names_layout_and_download(tmp_path):
    dm = RPSDataModule(tmp_path / "nowhere", cache_dir=tmp_path / "cache")
    with pytest.raises(
        FileNotFoundError, match=r"(?s)rps/\{paper,rock,scissors\}.*lit-cv download rps --data-dir"
    ):
        dm.setup("fit")


def test_class_without_readable_image_is_an_error(rps_dir, tmp_path):
    for p in (rps_dir / "rps-test-set" / "rock").iterdir():
        p.write_bytes(b"")
    dm = RPSDataModule(rps_dir, num_workers=0, cache_dir=tmp_path / "cache")
    with (
        pytest.raises(FileNotFoundError, match=r"no readable image of class\(es\) \['rock'\]"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        dm.setup("fit")


def test_invalid_arguments():
    with pytest.raises(ValueError, match="normalize='zscore' is not supported"):
        RPSDataModule("x", normalize="zscore")
    with pytest.raises(ValueError, match="cache='gpu' is not supported"):
        RPSDataModule("x", cache="gpu")
    with pytest.raises(ValueError, match="needs normalize='timm:<model_name>'"):
        RPSDataModule("x", image_size=None)


def test_timm_normalize_takes_model_mean_std_and_size(rps_dir, tmp_path):
    dm = RPSDataModule(
        rps_dir, image_size=None, normalize="timm:vit_base_patch16_224", cache_dir=tmp_path / "c"
    )
    assert (dm.crop_size, dm.resize_size) == (224, int(224 / 0.9))
    with pytest.warns(UserWarning):
        dm.setup("fit")
    assert dm.normalization.mean == (0.5, 0.5, 0.5) and dm.normalization.std == (0.5, 0.5, 0.5)
    assert dm.datasets["val"][0][0].shape == (3, 224, 224)
    with pytest.raises(ValueError, match="no pretrained config for model 'not_a_model'"):
        RPSDataModule(rps_dir, normalize="timm:not_a_model")


def test_num_workers_auto_and_loader_options(rps_dir, tmp_path):
    dm = RPSDataModule(rps_dir, cache="memory", cache_dir=tmp_path / "c")
    if not torch.cuda.is_available():
        assert dm._num_workers() == 0
    assert RPSDataModule(rps_dir, cache="none")._num_workers() >= 1
    with pytest.warns(UserWarning):
        dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.pin_memory == torch.cuda.is_available() and loader.batch_size == 16


def test_checkpoint_keeps_normalisation_for_validate(rps_dir, tmp_path, tiny_trainer_kwargs):
    """fit -> checkpoint; then the train images change, but validate(ckpt_path) uses the checkpoint's numbers."""
    kwargs = {"batch_size": 6, "num_workers": 0, "cache_dir": tmp_path / "cache"}
    dm = RPSDataModule(rps_dir, **kwargs)
    model = Classifier(net=CNN2(n_feature=4, in_channels=3, num_classes=3), num_classes=3)
    trainer = Trainer(**tiny_trainer_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    fitted = dm.normalization.state_dict()

    rng = np.random.default_rng(3)
    for p in good_train_files(rps_dir):
        fake_data.write_rgba_png(p, rng, (0, 0, 0), 40)  # the train statistics would now be very different
    dm2 = RPSDataModule(rps_dir, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(**tiny_trainer_kwargs).validate(
            model, datamodule=dm2, ckpt_path=ckpt, verbose=False, weights_only=True
        )
    assert dm2.normalization.state_dict() == fitted
    x, _ = dm2.datasets["val"][0]
    raw = dm2.splits["val"].images[0].float() / 255
    mean, std = torch.tensor(fitted["mean"]).view(3, 1, 1), torch.tensor(fitted["std"]).view(3, 1, 1)
    assert torch.allclose(x, (raw - mean) / std, atol=1e-5)


@pytest.mark.real_data
def test_real_rps_counts_and_course_normalizer(shared_data, tmp_path):
    dm = RPSDataModule(shared_data / "rps", num_workers=0, cache_dir=tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 2520 and len(dm.datasets["test"]) == 372
    assert torch.bincount(dm.splits["train"].labels).tolist() == [840, 840, 840]
    assert torch.bincount(dm.splits["test"].labels).tolist() == [124, 124, 124]
    course_mean, course_std = [0.8502, 0.8215, 0.8116], [0.2089, 0.2512, 0.2659]
    assert np.allclose(dm.normalization.mean, course_mean, atol=1e-3)
    assert np.allclose(dm.normalization.std, course_std, atol=1e-3)
    assert list((tmp_path / "cache").glob("stats-*.json"))
    assert not (shared_data / "rps" / ".lit-cv-cache").exists()


def test_cli_builds_it_from_the_course_config_with_linked_classes(rps_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lit-cv"])  # pytest's own arguments are not for the CLI
    from lit_cv.cli import LitCVCLI

    args = [
        "--config",
        str(REPO / "configs" / "rps_cnn2_no_dropout.yaml"),
        f"--data.init_args.data_dir={rps_dir}",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--trainer.logger=false",
    ]
    cli = LitCVCLI(args=args, run=False)
    assert isinstance(cli.datamodule, RPSDataModule)
    assert cli.model.num_classes == 3 and list(cli.model.hparams.class_names) == ["paper", "rock", "scissors"]


def test_load_state_dict_updates_already_built_loaders(rps_dir, tmp_path):
    """Lightning restores the datamodule after setup(): batches must then use the restored numbers."""
    dm = RPSDataModule(rps_dir, num_workers=0, cache_dir=tmp_path / "cache")
    with pytest.warns(UserWarning):
        dm.setup("fit")
    before = next(iter(dm.val_dataloader()))[0]  # builds the normalised cache with the computed numbers
    dm.load_state_dict(
        {"normalization": {"method": "train", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    )
    after = next(iter(dm.val_dataloader()))[0]
    raw = dm.splits["val"].images[: len(after)].float() / 255
    assert torch.allclose(after, (raw - 0.5) / 0.25, atol=1e-5)
    assert not torch.allclose(before, after)
    assert dm.state_dict()["normalization"]["mean"] == (0.5, 0.5, 0.5)


def test_predictions_name_their_source_files_and_skipped_files_shift_nothing(rps_dir, tmp_path, tiny_trainer_kwargs):
    test_set = rps_dir / "rps-test-set"
    (test_set / "paper" / "testpaper00-000.png").write_bytes(b"")  # unreadable files in the predict split, the
    fake_data.write_truncated(test_set / "rock" / "testrock00-001.png", test_set / "rock" / "testrock00-000.png")
    dm = RPSDataModule(rps_dir, batch_size=4, num_workers=0, cache_dir=tmp_path / "cache")
    model = Classifier(net=CNN2(n_feature=2, in_channels=3, num_classes=3), num_classes=3)
    writer = PredictionWriter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(**{**tiny_trainer_kwargs, "callbacks": [writer]}).predict(model, datamodule=dm)
    rows = list(csv.DictReader(writer.last_path.open()))
    assert len(rows) == 3 * 3 - 2 and len(dm.predict_ids()) == len(rows)
    for row in rows:
        source = Path(row["id"])
        assert source.is_file() and source.stat().st_size > 0 and source.parent.parent == test_set
        assert dm.class_names[int(row["label"])] == source.parent.name  # label and file of the same sample
        assert torch.equal(dm.splits["test"].images[int(row["index"])], decode_image(source, 28, 28))
