"""Log conv filters and the feature maps of a fixed validation batch as image grids (TensorBoard and PNG).

The course's ``visualize_filters`` / ``visualize_outputs`` (Godoy, "Deep Learning with PyTorch Step-by-Step",
chapter 5) as a callback.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn
from torchvision.utils import make_grid

from callbacks.run_dir import run_dir

GRID_PADDING = 2  # pixels between tiles (white)
MIN_TILE_SIDE = 32  # pixels: small tiles (3x3 kernels, 11x11 maps) are enlarged by an integer factor
TILES_PER_ROW = 8  # wrap of one-image-per-tile grids (RGB filters, single-input-channel filters)


def normalize_each(tiles: torch.Tensor) -> torch.Tensor:
    """Min-max scale every item of the first dimension to [0, 1] over all its other dimensions.

    A constant item (e.g. a zero-initialised filter) becomes 0.5 (mid grey) instead of dividing by zero.
    """
    flat = tiles.detach().float().flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.5)
    return scaled.view_as(tiles)


def upscale_factor(height: int, width: int, min_side: int = MIN_TILE_SIDE) -> int:
    """Integer nearest-neighbour enlargement bringing the larger tile side up to about ``min_side`` pixels."""
    return max(1, min_side // max(height, width))


def _enlarge(tiles: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return tiles
    return tiles.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def filter_grid(
    weight: torch.Tensor, rgb: bool = False, scale: int = 1, padding: int = GRID_PADDING
) -> torch.Tensor:
    """A ``(3, H, W)`` image in [0, 1] of the filters of a conv weight ``(out, in, kh, kw)``.

    Each filter (``weight[o]``, all its input channels together) is normalised to its own range. Tiles are
    separated by ``padding`` white pixels (none around a single tile, as in ``make_grid``).

    - ``rgb=True`` (needs ``in == 3``): one colour tile per filter, ``TILES_PER_ROW`` tiles per row.
    - ``rgb=False``: greyscale, one row per filter and one column per input channel (the course's layout);
      with a single input channel, one tile per filter wrapped like the RGB grid.

    Args:
        weight: the conv weight, ``(out_channels, in_channels / groups, kh, kw)``.
        rgb: show each filter as one RGB image.
        scale: integer nearest-neighbour enlargement of every kernel pixel.
        padding: white pixels between tiles.

    Raises:
        ValueError: if ``weight`` is not 4-D, or ``rgb`` is asked for a weight without 3 input channels.
    """
    if weight.ndim != 4:
        raise ValueError(
            f"filter_grid needs a 4-D conv weight (out, in, kh, kw), got shape {tuple(weight.shape)}."
        )
    out_channels, in_channels, kh, kw = weight.shape
    if rgb and in_channels != 3:
        raise ValueError(f"rgb=True needs 3 input channels, the weight has {in_channels}; use rgb=False.")
    tiles = normalize_each(weight.detach().cpu())
    if rgb:
        nrow = TILES_PER_ROW
    else:
        tiles = tiles.reshape(out_channels * in_channels, 1, kh, kw)
        nrow = in_channels if in_channels > 1 else TILES_PER_ROW
    return make_grid(_enlarge(tiles, scale), nrow=nrow, padding=padding, pad_value=1.0)


def feature_map_grid(maps: torch.Tensor, scale: int = 1, padding: int = GRID_PADDING) -> torch.Tensor:
    """A ``(3, H, W)`` greyscale grid of layer outputs ``(images, channels, h, w)``: one row per image, one
    column per channel, each map normalised to its own range.

    Raises:
        ValueError: if ``maps`` is not 4-D.
    """
    if maps.ndim != 4:
        raise ValueError(
            f"feature_map_grid needs (images, channels, h, w) outputs, got shape {tuple(maps.shape)}."
        )
    n_images, channels, h, w = maps.shape
    tiles = normalize_each(maps.detach().cpu().reshape(n_images * channels, 1, h, w))
    return make_grid(_enlarge(tiles, scale), nrow=channels, padding=padding, pad_value=1.0)


def tile_centres(count: int, tile: int, padding: int = GRID_PADDING) -> list[float]:
    """Pixel centres of ``count`` tiles of side ``tile`` along one axis of a ``make_grid`` image."""
    return [padding + i * (tile + padding) + (tile - 1) / 2 for i in range(count)]


PNG_MIN_WIDTH = 450  # pixels: small grids are enlarged (nearest neighbour) by an integer factor up to this
PNG_FONT_SIZE = 12  # pixels


def save_grid_png(
    grid: torch.Tensor,
    path: Path,
    title: str,
    rows: tuple[str, int, int] | None = None,
    cols: tuple[str, int, int] | None = None,
) -> Path:
    """Write ``grid`` (3, H, W) in [0, 1] as a PNG with a title and optional labelled axes.

    ``rows`` / ``cols`` are ``(label, tile count, tile side in pixels)``; their tiles get index ticks (at most ~16).
    Drawn with PIL, not matplotlib: ~3 ms instead of 35-70 ms CPU a file, which matters when it runs every epoch.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=PNG_FONT_SIZE)
    height, width = grid.shape[1:]
    factor = max(1, PNG_MIN_WIDTH // width)
    # numpy, not torch: small torch ops can stall on a busy CPU (see docs/lightning-workarounds.md)
    pixels = (np.clip(grid.detach().cpu().permute(1, 2, 0).numpy(), 0, 1) * 255 + 0.5).astype(np.uint8)
    picture = Image.fromarray(np.ascontiguousarray(pixels)).resize((width * factor, height * factor), Image.NEAREST)
    line = font.getbbox("Ag")[3] + 4
    left = 2 * line + 8 if rows else 8
    top, bottom = line + 8, (2 * line + 8 if cols else 8)
    canvas_width = left + max(picture.width, int(font.getlength(title))) + 8
    canvas = Image.new("RGB", (canvas_width, top + picture.height + bottom), "white")
    canvas.paste(picture, (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((left, 4), title, fill="black", font=font)
    for spec, vertical in ((cols, False), (rows, True)):
        if spec is None:
            continue
        label, count, tile = spec
        step = max(1, math.ceil(count / 16))
        for index, centre in zip(range(0, count, step), tile_centres(count, tile)[::step]):
            text, at = str(index), centre * factor
            text_width = draw.textlength(text, font=font)
            if vertical:
                draw.text((left - text_width - 4, top + at - line / 2), text, fill="black", font=font)
            else:
                draw.text((left + at - text_width / 2, top + picture.height + 2), text, fill="black", font=font)
        if vertical:  # the row label, rotated, centred on the left
            strip = Image.new("RGB", (int(draw.textlength(label, font=font)) + 2, line), "white")
            ImageDraw.Draw(strip).text((1, 0), label, fill="black", font=font)
            strip = strip.rotate(90, expand=True)
            canvas.paste(strip, (2, top + max(0, (picture.height - strip.height) // 2)))
        else:
            label_width = draw.textlength(label, font=font)
            draw.text((left + (picture.width - label_width) / 2, top + picture.height + line + 4), label,
                      fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, compress_level=1)  # zlib level 1: a fraction of the default's time, files ~20 % larger
    return path


def first_input_batch(batch: Any, num_images: int) -> torch.Tensor:
    """The first ``num_images`` inputs of a batch: the batch itself, or the first item of an ``(x, y)`` tuple.

    Raises:
        TypeError: for any other batch structure.
    """
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"FilterVisualization needs batches that are a tensor or an (x, y) tuple, got "
            f"{type(batch).__name__} whose first element is {type(x).__name__}. Set feature_maps: false to "
            "log filters only."
        )
    return x[:num_images].detach().cpu().clone()


def conv_layer_names(module: nn.Module) -> list[str]:
    """Names (as in ``module.named_modules()``) of every ``nn.Conv2d`` in ``module``, in definition order."""
    return [name for name, layer in module.named_modules() if isinstance(layer, nn.Conv2d)]


class FilterVisualization(Callback):
    """Logs conv filters and feature maps as image grids every ``every_n_epochs`` epochs and after fit.

    **Filters.** For each chosen ``Conv2d``: the first conv layer of the model is shown in colour (one RGB
    tile per filter) when it has 3 input channels; every other layer in greyscale with one row per filter and
    one column per input channel. Each filter is normalised to its own range, so tiles show patterns, not
    magnitudes.

    **Feature maps.** The layer outputs (before any activation) for a fixed set of ``num_images`` validation
    images: taken once, the first images of the first validation batch, read with the global RNG isolated so
    adding this callback never changes training. One row per image, one column per channel, each map
    normalised to its own range. The model runs in eval mode under ``no_grad`` and is put back in its previous
    mode.

    Output: TensorBoard images ``filters/<layer>`` and ``feature_maps/<layer>`` at the global step, and PNG
    files ``<trainer.log_dir>/filter_visualization/{filters,feature_maps}_<layer>_epoch<E>.png``
    (``..._final.png`` at the end of fit). Rank zero only. Tiles smaller than 32 px are enlarged by an integer
    factor so 3x3 kernels are visible.

    Args:
        layer_names: names of ``Conv2d`` layers as in ``LightningModule.named_modules()`` (e.g. ``net.conv1``
            for the :class:`~lit_cv.Classifier`); ``None`` takes every ``Conv2d``.
        every_n_epochs: log after every this many training epochs; ``0`` logs only at the end of fit.
        num_images: validation images whose feature maps are shown.
        max_channels: show at most this many filters, input channels and feature-map channels per layer (the
            first ones), so wide layers stay readable.
        feature_maps: also log feature maps (needs a validation dataloader; skipped with a warning
            without one).

    Raises:
        ValueError: in ``__init__`` for a negative ``every_n_epochs``, ``num_images`` or ``max_channels`` < 1,
            or empty ``layer_names``; in ``setup`` when a layer name does not exist (the message lists the
            Conv2d layers), the model has no Conv2d, or the Trainer has no ``TensorBoardLogger``.
        TypeError: in ``setup`` when a named layer is not a ``Conv2d``.

    Example (YAML for ``lit-cv fit --config``)::

        trainer:
          callbacks:
            - class_path: callbacks.FilterVisualization
              init_args:
                layer_names: [net.conv1, net.conv2]
                every_n_epochs: 5

    Python::

        trainer = Trainer(logger=TensorBoardLogger("runs"), callbacks=[FilterVisualization(every_n_epochs=5)])
    """

    def __init__(
        self,
        layer_names: list[str] | None = None,
        every_n_epochs: int = 1,
        num_images: int = 4,
        max_channels: int = 32,
        feature_maps: bool = True,
    ) -> None:
        if layer_names is not None:
            layer_names = list(layer_names)
            if not layer_names or not all(isinstance(name, str) and name for name in layer_names):
                raise ValueError(
                    f"layer_names must be a non-empty list of layer names, got {layer_names!r}; "
                    "omit it to visualise every Conv2d."
                )
        if every_n_epochs < 0:
            raise ValueError(
                f"every_n_epochs must be >= 0 (0 = only at the end of fit), got {every_n_epochs}."
            )
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}.")
        if max_channels < 1:
            raise ValueError(f"max_channels must be >= 1, got {max_channels}.")
        self.layer_names = layer_names
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.max_channels = max_channels
        self.feature_maps = feature_maps
        self.layers: dict[str, nn.Conv2d] = {}
        self.rgb_layer: str | None = None
        self.fixed_batch: torch.Tensor | None = None
        self.last_paths: list[Path] = []
        self._batch_missing_warned = False
        self._last_logged_step: int | None = None

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.layers = self._resolve_layers(pl_module)
        first = conv_layer_names(pl_module)[0]
        self.rgb_layer = first if first in self.layers and self.layers[first].in_channels == 3 else None
        if not _tensorboard_loggers(trainer):  # checked on every rank so all of them raise together
            found = ", ".join(type(logger).__name__ for logger in trainer.loggers) or "none"
            raise ValueError(
                "FilterVisualization logs images to TensorBoard but no TensorBoardLogger is configured; "
                f"loggers found: {found}. Add "
                "`trainer.logger: {class_path: lightning.pytorch.loggers.TensorBoardLogger}`."
            )

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_n_epochs == 0 or (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        self._visualize(trainer, pl_module, suffix=f"epoch{trainer.current_epoch:03d}")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._visualize(trainer, pl_module, suffix="final")

    # ------------------------------------------------------------------ work
    def _resolve_layers(self, pl_module: LightningModule) -> dict[str, nn.Conv2d]:
        available = conv_layer_names(pl_module)
        if not available:
            raise ValueError(
                f"FilterVisualization found no nn.Conv2d in {type(pl_module).__name__}; it only visualises "
                "conv nets."
            )
        names = self.layer_names or available
        modules = dict(pl_module.named_modules())
        layers = {}
        for name in names:
            if name not in modules:
                raise ValueError(
                    f"FilterVisualization layer {name!r} does not exist; Conv2d layers: "
                    f"{', '.join(available)}. Set layer_names to some of them."
                )
            if not isinstance(modules[name], nn.Conv2d):
                raise TypeError(
                    f"FilterVisualization layer {name!r} is a {type(modules[name]).__name__}, not an "
                    f"nn.Conv2d; Conv2d layers: {', '.join(available)}."
                )
            layers[name] = modules[name]
        return layers

    @rank_zero_only
    def _visualize(self, trainer: Trainer, pl_module: LightningModule, suffix: str) -> None:
        writers = [logger.experiment for logger in _tensorboard_loggers(trainer)]
        step = trainer.global_step
        if step == self._last_logged_step:  # the end of fit right after a periodic log: PNG files only
            writers = []
        out_dir = run_dir(trainer) / "filter_visualization"
        title_when = (
            f"epoch {trainer.current_epoch}, step {step}" if suffix != "final" else f"end of fit, step {step}"
        )
        maps = self._feature_maps(trainer, pl_module) if self.feature_maps else {}
        self.last_paths = []
        for name, layer in self.layers.items():
            grid, rows, cols = self._filter_figure(name, layer.weight)
            for writer in writers:
                writer.add_image(f"filters/{name}", grid, global_step=step)
            shape = "x".join(str(s) for s in layer.weight.shape)
            order = "" if cols else " in reading order"
            self.last_paths.append(
                save_grid_png(
                    grid,
                    out_dir / f"filters_{name}_{suffix}.png",
                    f"{name} filters ({shape}){order}, {title_when}",
                    rows=rows,
                    cols=cols,
                )
            )
            if name in maps:
                fmap = maps[name][:, : self.max_channels]
                scale = upscale_factor(*fmap.shape[-2:])
                grid = feature_map_grid(fmap, scale=scale)
                for writer in writers:
                    writer.add_image(f"feature_maps/{name}", grid, global_step=step)
                self.last_paths.append(
                    save_grid_png(
                        grid,
                        out_dir / f"feature_maps_{name}_{suffix}.png",
                        f"{name} outputs {tuple(maps[name].shape[1:])}, {title_when}",
                        rows=("image", fmap.shape[0], fmap.shape[-2] * scale),
                        cols=("channel", fmap.shape[1], fmap.shape[-1] * scale),
                    )
                )
        self._last_logged_step = step

    def _filter_figure(
        self, name: str, weight: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[str, int, int] | None, tuple[str, int, int] | None]:
        weight = weight.detach()[: self.max_channels, : self.max_channels]
        out_channels, in_channels, kh, kw = weight.shape
        scale = upscale_factor(kh, kw)
        rgb = name == self.rgb_layer
        grid = filter_grid(weight, rgb=rgb, scale=scale)
        if rgb or in_channels == 1:  # one tile per filter, wrapped: index ticks only when it fits on one row
            single_row = out_channels <= TILES_PER_ROW
            return grid, None, ("filter", out_channels, kw * scale) if single_row else None
        return grid, ("filter", out_channels, kh * scale), ("input channel", in_channels, kw * scale)

    def _feature_maps(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        if self.fixed_batch is None:
            self.fixed_batch = self._take_batch(trainer)
            if self.fixed_batch is None:
                return {}
        outputs: dict[str, torch.Tensor] = {}
        handles = [
            layer.register_forward_hook(
                lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach().cpu())
            )
            for name, layer in self.layers.items()
        ]
        was_training = pl_module.training
        try:
            pl_module.eval()
            with torch.no_grad(), isolate_rng():
                pl_module(self.fixed_batch.to(pl_module.device))
        finally:
            for handle in handles:
                handle.remove()
            pl_module.train(was_training)
        return outputs

    def _take_batch(self, trainer: Trainer) -> torch.Tensor | None:
        """The first ``num_images`` inputs of the first validation batch, read with the RNG isolated."""
        loaders = trainer.val_dataloaders
        if loaders is None and is_overridden("val_dataloader", trainer.datamodule):
            loaders = trainer.datamodule.val_dataloader()
        if isinstance(loaders, dict):
            loaders = list(loaders.values())
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            if not self._batch_missing_warned:
                rank_zero_warn(
                    "FilterVisualization: no validation dataloader, so feature maps are not logged."
                )
                self._batch_missing_warned = True
            return None
        with isolate_rng():
            batch = next(iter(loaders))
        return first_input_batch(batch, self.num_images)


def _tensorboard_loggers(trainer: Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
