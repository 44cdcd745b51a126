"""FilterVisualization: grid shapes against the make_grid layout formula, per-filter normalisation, PNG files,
TensorBoard images and feature maps in a real ``Trainer.fit`` with CNN2 on RGB and on greyscale data."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.filter_visualization import FilterVisualization, feature_map_grid, filter_grid, save_grid_png
from datamodules.digits import DigitsDataModule
from lit_cv.classifier import Classifier
from lit_cv.nets import CNN2

PAD = 2  # the callback's padding between tiles


class TinyRGBDataModule(LightningDataModule):
    """48 random RGB 28x28 images in 3 classes; validation is a fixed slice."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.x = torch.rand(48, 3, 28, 28, generator=generator)
        self.y = torch.randint(0, 3, (48,), generator=generator)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[:16], self.y[:16]), batch_size=8)


def grid_side(n_tiles: int, per_row: int, tile: int, pad: int = PAD) -> tuple[int, int]:
    """(height, width) of a make_grid image: ceil(n / per_row) rows and min(n, per_row) columns of tiles."""
    cols = min(n_tiles, per_row)
    rows = math.ceil(n_tiles / cols)
    return rows * (tile + pad) + pad, cols * (tile + pad) + pad


MakeTrainer = Callable[..., Trainer]  # the `make_trainer` fixture (tests/callbacks/conftest.py)


def read_images(log_dir: str) -> dict[str, list]:
    events = EventAccumulator(log_dir, size_guidance={IMAGES: 0})
    events.Reload()
    return {  # the Classifier logs its confusion matrix as an image too
        tag: events.Images(tag)
        for tag in events.Tags()["images"]
        if tag.startswith(("filters/", "feature_maps/"))
    }


def decode(event) -> np.ndarray:
    return (
        np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"), dtype=np.float32) / 255
    )


# ---------------------------------------------------------------------- plain functions
@pytest.mark.parametrize(
    ("shape", "rgb", "scale", "expected_tiles", "per_row", "tile"),
    [
        ((5, 3, 3, 3), True, 1, 5, 8, 3),  # CNN2 conv1 on RGB: one colour tile per filter
        ((5, 3, 3, 3), False, 4, 15, 3, 12),  # same weight in greyscale: 5 rows x 3 input channels
        ((5, 5, 3, 3), False, 10, 25, 5, 30),  # CNN2 conv2: 5 rows x 5 input channels
        ((12, 1, 5, 5), False, 2, 12, 8, 10),  # single input channel: wrapped, 8 per row
        ((16, 3, 7, 7), True, 1, 16, 8, 7),  # two rows of RGB tiles
    ],
)
def test_filter_grid_shape(shape, rgb, scale, expected_tiles, per_row, tile) -> None:
    grid = filter_grid(torch.randn(shape), rgb=rgb, scale=scale)
    assert tuple(grid.shape) == (3, *grid_side(expected_tiles, per_row, tile))
    assert float(grid.min()) >= 0.0 and float(grid.max()) <= 1.0


def test_each_filter_normalised_to_its_own_range() -> None:
    weight = torch.zeros(2, 2, 3, 3)
    weight[0, 0] = torch.arange(9.0).view(3, 3)  # filter 0 spans 0..8 on channel 0 ...
    weight[0, 1] = 4.0  # ... and channel 1 is its mid value
    weight[1] = -1000 * torch.arange(18.0).view(2, 3, 3)  # a filter a thousand times larger, negative
    grid = filter_grid(weight, rgb=False, scale=1)[0]  # rows = filters, columns = input channels

    def tile(row: int, col: int) -> torch.Tensor:
        top, left = PAD + row * (3 + PAD), PAD + col * (3 + PAD)
        return grid[top : top + 3, left : left + 3]

    torch.testing.assert_close(tile(0, 0), torch.arange(9.0).view(3, 3) / 8)
    torch.testing.assert_close(tile(0, 1), torch.full((3, 3), 0.5))  # shares filter 0's range, not its own
    whole = (-1000 * torch.arange(18.0) - (-17000)) / 17000
    torch.testing.assert_close(torch.cat([tile(1, 0).flatten(), tile(1, 1).flatten()]), whole)
    # a constant filter is mid grey; a single tile is returned unpadded (make_grid's behaviour)
    assert torch.equal(filter_grid(torch.zeros(1, 1, 3, 3)), torch.full((3, 3, 3), 0.5))


def test_feature_map_grid_shape_rows_are_images() -> None:
    maps = torch.randn(4, 6, 11, 11)
    grid = feature_map_grid(maps, scale=2)
    assert tuple(grid.shape) == (3, *grid_side(24, 6, 22))
    # row 2, column 5 is image 2's channel 5, min-max scaled to [0, 1]
    top, left = PAD + 2 * (22 + PAD), PAD + 5 * (22 + PAD)
    expected = (maps[2, 5] - maps[2, 5].min()) / (maps[2, 5].max() - maps[2, 5].min())
    torch.testing.assert_close(grid[0, top : top + 22 : 2, left : left + 22 : 2], expected)


def test_png_holds_the_grid_enlarged_under_a_title(tmp_path: Path) -> None:
    grid = filter_grid(torch.randn(5, 3, 3, 3), rgb=True, scale=10)  # 3 x 30 x 158
    path = save_grid_png(grid, tmp_path / "f.png", "net.conv1 filters", cols=("filter", 5, 30))
    png = np.asarray(Image.open(path).convert("RGB"))
    factor = 450 // grid.shape[2]  # small grids are enlarged to at least 450 px wide
    big = np.repeat(np.repeat((grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8), factor, 0), factor, 1)
    height, width = big.shape[:2]
    found = [
        (y, x)
        for y in range(png.shape[0] - height + 1)
        for x in range(png.shape[1] - width + 1)
        if (png[y : y + height, x : x + width] == big).all()
    ]
    assert len(found) == 1 and found[0][0] > 10  # once, below the title
    assert (png[: found[0][0]] < 128).any() and (png[found[0][0] + height :] < 128).any()  # title; ticks + label


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_epochs": -1}, "every_n_epochs must be >= 0"),
        ({"num_images": 0}, "num_images must be >= 1"),
        ({"max_channels": 0}, "max_channels must be >= 1"),
        ({"layer_names": []}, "layer_names must be a non-empty list"),
    ],
)
def test_init_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        FilterVisualization(**kwargs)


def test_filter_grid_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match=r"rgb=True needs 3 input channels, the weight has 5"):
        filter_grid(torch.randn(5, 5, 3, 3), rgb=True)
    with pytest.raises(ValueError, match=r"4-D conv weight .* got shape \(5, 3\)"):
        filter_grid(torch.randn(5, 3))


# ---------------------------------------------------------------------- in Trainer.fit
def test_fit_rgb_cnn2_logs_filters_and_feature_maps(tmp_path: Path, make_trainer: MakeTrainer) -> None:
    seed_everything(0)
    model = Classifier(CNN2(n_feature=5, in_channels=3, num_classes=3, image_size=28), num_classes=3)
    callback = FilterVisualization(every_n_epochs=1, num_images=4)
    fit = make_trainer([callback])
    datamodule = TinyRGBDataModule()
    fit.fit(model, datamodule)

    assert tuple(model.net.conv1.weight.shape) == (5, 3, 3, 3)
    assert tuple(model.net.conv2.weight.shape) == (5, 5, 3, 3)
    images = read_images(fit.log_dir)
    # 3x3 kernels enlarged x10 (32 // 3); conv1 outputs are 26x26 (x1), conv2 outputs 11x11 (x2)
    expected = {
        "filters/net.conv1": grid_side(5, 8, 30),  # RGB: 5 tiles in one row
        "filters/net.conv2": grid_side(25, 5, 30),  # greyscale: 5 filters x 5 input channels
        "feature_maps/net.conv1": grid_side(4 * 5, 5, 26),  # 4 images x 5 channels
        "feature_maps/net.conv2": grid_side(4 * 5, 5, 22),
    }
    assert set(images) == set(expected)
    for tag, (height, width) in expected.items():
        # epochs 0 and 1 (steps 4 and 8); the end of fit is at step 8 too, so TensorBoard gets no duplicate
        assert [event.step for event in images[tag]] == [4, 8], tag
        assert all((event.height, event.width) == (height, width) for event in images[tag]), tag

    # the logged RGB image is the final conv1 weight, each filter min-max scaled, 10x10 pixels per value
    logged = decode(images["filters/net.conv1"][-1])
    weight = model.net.conv1.weight.detach()
    for f in range(5):
        w = weight[f]
        expected_tile = ((w - w.min()) / (w.max() - w.min())).permute(1, 2, 0).numpy()  # (3, 3, RGB)
        left = PAD + f * (30 + PAD)
        tile = logged[PAD : PAD + 30 : 10, left : left + 30 : 10]
        np.testing.assert_allclose(tile, expected_tile, atol=1 / 255 + 1e-6)

    # the fixed batch is the first 4 validation images, taken once
    torch.testing.assert_close(callback.fixed_batch, datamodule.x[:4])
    out_dir = Path(fit.log_dir) / "filter_visualization"
    names = {
        f"{kind}_net.{layer}_{when}.png"
        for kind in ("filters", "feature_maps")
        for layer in ("conv1", "conv2")
        for when in ("epoch000", "epoch001", "final")
    }
    assert {p.name for p in out_dir.iterdir()} == names
    assert all((out_dir / name).stat().st_size > 1000 for name in names)


def test_fit_greyscale_digits_named_layer(tmp_path: Path, make_trainer: MakeTrainer) -> None:
    net = CNN2(n_feature=6, in_channels=1, num_classes=10, image_size=16)
    callback = FilterVisualization(layer_names=["net.conv1"], every_n_epochs=0, num_images=3, max_channels=4)
    fit = make_trainer([callback], max_epochs=1)
    fit.fit(Classifier(net, num_classes=10), DigitsDataModule(batch_size=16, image_size=16))

    images = read_images(fit.log_dir)
    assert set(images) == {"filters/net.conv1", "feature_maps/net.conv1"}  # conv2 not asked for
    # every_n_epochs=0: only the end of fit. One input channel: 4 of 6 filters (max_channels), one row
    assert [(e.step, e.height, e.width) for e in images["filters/net.conv1"]] == [(4, *grid_side(4, 8, 30))]
    # 3 images x 4 channels of 14x14 outputs, enlarged x2
    assert [(e.height, e.width) for e in images["feature_maps/net.conv1"]] == [grid_side(12, 4, 28)]
    files = sorted(p.name for p in (Path(fit.log_dir) / "filter_visualization").iterdir())
    assert files == ["feature_maps_net.conv1_final.png", "filters_net.conv1_final.png"]


def test_without_validation_logs_filters_only(tmp_path: Path, make_trainer: MakeTrainer) -> None:
    class TrainOnly(TinyRGBDataModule):
        val_dataloader = None  # no validation loader at all

    callback = FilterVisualization(every_n_epochs=0)
    fit = make_trainer([callback], max_epochs=1)
    model = Classifier(CNN2(n_feature=3, in_channels=3, num_classes=3), num_classes=3)
    with pytest.warns(UserWarning, match="no validation dataloader, so feature maps are not logged"):
        fit.fit(model, TrainOnly())
    assert set(read_images(fit.log_dir)) == {"filters/net.conv1", "filters/net.conv2"}
    assert callback.fixed_batch is None


def test_does_not_change_training(tmp_path: Path, make_trainer: MakeTrainer) -> None:
    """Taking the fixed batch and running the feature-map forward pass leave the RNG and the weights alone."""

    def final_weights(callbacks: list, sub: str) -> dict[str, torch.Tensor]:
        seed_everything(3)
        model = Classifier(CNN2(n_feature=4, p=0.3, in_channels=3, num_classes=3), num_classes=3)
        make_trainer(callbacks, root=tmp_path / sub).fit(model, TinyRGBDataModule())
        return model.state_dict()

    plain = final_weights([], "plain")
    visualised = final_weights([FilterVisualization(every_n_epochs=1)], "visualised")
    assert plain.keys() == visualised.keys()
    for key in plain:
        assert torch.equal(plain[key], visualised[key]), key


def test_setup_errors(tmp_path: Path, make_trainer: MakeTrainer) -> None:
    model = Classifier(CNN2(n_feature=4, in_channels=3, num_classes=3), num_classes=3)
    with pytest.raises(ValueError, match=r"'net.conv9' does not exist; Conv2d layers: net.conv1, net.conv2"):
        make_trainer([FilterVisualization(layer_names=["net.conv9"])]).fit(model, TinyRGBDataModule())
    with pytest.raises(TypeError, match=r"'net.fc1' is a Linear, not an nn.Conv2d"):
        make_trainer([FilterVisualization(layer_names=["net.fc1"])]).fit(model, TinyRGBDataModule())
    with pytest.raises(ValueError, match=r"no TensorBoardLogger is configured; loggers found: CSVLogger"):
        make_trainer([FilterVisualization()], logger=CSVLogger(tmp_path)).fit(model, TinyRGBDataModule())
    with pytest.raises(ValueError, match=r"loggers found: none"):
        make_trainer([FilterVisualization()], logger=False).fit(model, TinyRGBDataModule())
    mlp = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 3)), num_classes=3)
    with pytest.raises(ValueError, match=r"found no nn.Conv2d in Classifier"):
        make_trainer([FilterVisualization()]).fit(mlp, TinyRGBDataModule())
