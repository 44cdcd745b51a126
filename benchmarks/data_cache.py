"""RPS epoch time: lit-cv's decoded-tensor cache vs. the course's ImageFolder pipeline (re-decodes every epoch).

Both sides use the same batch size, workers and shuffling, are measured in the same run, and iterate the whole
training set (2,520 PNGs) each epoch without a model, so the number is the input pipeline alone::

    .venv/bin/python benchmarks/data_cache.py --data-dir ../shared/data/rps --epochs 3 --num-workers 0

The first cached epoch includes decoding into the cache (``setup``); later epochs index uint8 tensors.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from datamodules import RPSDataModule

SHARED = Path(os.environ.get("LIT_CV_SHARED_DATA", REPO.parent / "shared" / "data"))


def time_epochs(loader: DataLoader, epochs: int) -> list[float]:
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for _batch in loader:
            pass
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED / "rps")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads for both pipelines (default: torch's choice)",
    )
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        dm = RPSDataModule(
            args.data_dir,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            image_size=args.image_size,
            cache="memory",
            cache_dir=cache_dir,
        )
        dm.prepare_data()
        dm.setup("fit")
        setup_time = time.perf_counter() - start
        cached = time_epochs(dm.train_dataloader(), args.epochs)
        mean, std = dm.normalization.mean, dm.normalization.std

    plain_tf = transforms.Compose(
        [transforms.Resize(args.image_size), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )
    plain_set = datasets.ImageFolder(str(args.data_dir / "rps"), transform=plain_tf)
    plain_loader = DataLoader(
        plain_set,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.num_workers,
        persistent_workers=args.num_workers > 0,
    )
    plain = time_epochs(plain_loader, args.epochs)

    later_cached = statistics.median(cached[1:] or cached)
    later_plain = statistics.median(plain[1:] or plain)
    print(
        f"RPS train split: {len(plain_set)} images, batch {args.batch_size}, workers {args.num_workers}, "
        f"{args.image_size} px, {args.epochs} epochs, {torch.get_num_threads()} torch threads"
    )
    print("  ImageFolder (decodes PNGs every epoch): " + ", ".join(f"{t:.2f}s" for t in plain))
    print(
        f"  lit-cv cache: setup (decode once + stats) {setup_time:.2f}s, epochs "
        + ", ".join(f"{t:.3f}s" for t in cached)
    )
    print(
        f"  median epoch after the first: ImageFolder {later_plain:.3f}s vs cached {later_cached:.3f}s "
        f"-> {later_plain / later_cached:.1f}x faster"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
