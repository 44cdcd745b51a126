"""Make the README's picture strip (``docs/img/*.png``) from a short real run of the offline digits quickstart.

    python scripts/make_docs_figures.py [--out docs/img] [--epochs 10] [--width 480]

Runs the public CLI on ``configs/quickstart.yaml`` (scikit-learn's bundled digits, no download), each command
logging under a temporary folder, then finds each picture where the command wrote it:

- ``lr_range_test.png``: ``lit-cv lr-find``'s loss-vs-LR curve;
- ``schedule.png``: ``lit-cv plot-schedule`` with ``configs/schedules/cosine_warm_restarts.yaml``;
- ``filters.png``: the first conv layer's filters at the end of ``lit-cv fit --trainer.callbacks+=
  callbacks.FilterVisualization``;
- ``confusion_matrix.png``: the validation confusion matrix that fit logs to TensorBoard, last epoch.

Each is cropped to its content, downscaled to ``--width`` pixels, reduced to a 256-colour palette and saved
optimised (under 100 KB).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = ["--config", "configs/quickstart.yaml"]
SCHEDULE = ["--config", "configs/schedules/cosine_warm_restarts.yaml"]
CONFUSION_TAG = "val/confusion_matrix"  # the TensorBoard figure Classifier logs after each validation
MAX_BYTES = 100_000
MARGIN = 6  # pixels of background kept around the cropped content


def lit_cv(args: list[str], save_dir: Path) -> Path:
    """Run ``lit-cv ARGS`` from the repository root with its logs under ``save_dir``; returns ``save_dir``."""
    command = [sys.executable, "-m", "lit_cv.cli", *args, "--trainer.logger.init_args.save_dir", str(save_dir),
               "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    print("$ lit-cv " + " ".join(args), flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    return save_dir


def newest(root: Path, pattern: str) -> Path:
    """The most recently written file under ``root`` matching ``pattern``.

    Raises:
        FileNotFoundError: when none matches (the message lists the PNGs that are there).
    """
    found = sorted(root.rglob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        pngs = sorted(str(p.relative_to(root)) for p in root.rglob("*.png")) or ["none"]
        raise FileNotFoundError(f"no {pattern} under {root}; PNGs there: {', '.join(pngs)}")
    return found[-1]


def tensorboard_image(root: Path, tag: str) -> bytes:
    """The last image logged under ``tag`` in the TensorBoard event files below ``root``.

    Raises:
        FileNotFoundError: when no event file holds ``tag``.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in sorted({p.parent for p in root.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["images"]:
            return accumulator.Images(tag)[-1].encoded_image_string
    raise FileNotFoundError(f"no TensorBoard image {tag!r} under {root}")


def shrink(source: Path | bytes, target: Path, width: int) -> Path:
    """Save ``source`` (a PNG file or its bytes) at ``target``: blank margins cropped, ``width`` px wide at most,
    a 256-colour palette, optimised.

    Raises:
        ValueError: when the result is still over ``MAX_BYTES``.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        image = image.convert("RGB")
        background = Image.new("RGB", image.size, image.getpixel((0, 0)))
        box = ImageChops.difference(image, background).getbbox()
        if box is not None:
            left, top, right, bottom = box
            image = image.crop((max(left - MARGIN, 0), max(top - MARGIN, 0), min(right + MARGIN, image.width),
                                min(bottom + MARGIN, image.height)))
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        image.quantize(colors=256).save(target, optimize=True)
    size = target.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"{target} is {size:,} bytes, over {MAX_BYTES:,}; use a smaller --width.")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img", help="folder for the PNGs (docs/img)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the quickstart fit (default 10)")
    parser.add_argument("--width", type=int, default=480, help="width of every PNG in pixels (default 480)")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lit_cv_docs_") as tmp:
        work = Path(tmp)
        lr_find = lit_cv(["lr-find", *QUICKSTART], work / "lr_find")
        schedule = lit_cv(["plot-schedule", *QUICKSTART, *SCHEDULE], work / "schedule")
        fit = lit_cv(["fit", *QUICKSTART, "--trainer.max_epochs", str(options.epochs),
                      "--trainer.callbacks+=callbacks.FilterVisualization"], work / "fit")
        filters = min(newest(fit, "filters_*_final.png").parent.glob("filters_*_final.png"))  # first conv
        written = [
            shrink(newest(lr_find, "*.png"), options.out / "lr_range_test.png", options.width),
            shrink(newest(schedule, "*.png"), options.out / "schedule.png", options.width),
            shrink(filters, options.out / "filters.png", options.width),
            shrink(tensorboard_image(fit, CONFUSION_TAG), options.out / "confusion_matrix.png", options.width),
        ]
    for path in written:
        with Image.open(path) as image:
            print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {image.width}x{image.height}, "
                  f"{path.stat().st_size / 1000:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
