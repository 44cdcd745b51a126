"""Peak memory (RSS) and cache size of a Cats-vs-Dogs fit at 224 px for each image cache mode.

Each measurement is one ``lit-cv fit`` in its own process (so peaks do not mix), started by a small wrapper that
reads its child's peak resident set size (``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Modes: ``memory`` (decoded
uint8 tensors in RAM), ``disk`` twice (``cold``: decodes and writes the memory-mapped ``.npy``; ``warm``: reuses it,
what every later run pays) and ``none`` (decoded on every read). Each run gets a fresh cache folder (``warm`` shares
``cold``'s)::

    .venv/bin/python benchmarks/memory.py --data-dir ../shared/data/cats_dogs --batches 5 [--json FILE]

Any further argument goes to ``lit-cv fit`` (default config ``configs/cats_dogs_convnet.yaml``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cats_dogs_convnet.yaml"
# Runs CMD... and prints the peak RSS of that child in KiB (Linux reports ru_maxrss in KiB).
WRAPPER = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
RUNS = (("memory", "memory", "memory"), ("disk cold", "disk", "disk"), ("disk warm", "disk", "disk"),
        ("none", "none", "none"))  # (label, cache mode, cache folder)


def peak_rss_gib(command: list[str], cwd: Path) -> float:
    """Peak RSS in GiB of ``command`` run to completion in ``cwd``; raises with its output tail if it fails."""
    done = subprocess.run([sys.executable, "-c", WRAPPER, *command], cwd=cwd, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1]) / 2**20


def folder_gib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**30 if folder.exists() else 0.0


def measure(data_dir: Path, batches: int, fit_args: list[str]) -> dict[str, Any]:
    lit_cv = str(Path(sys.executable).with_name("lit-cv"))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, mode, folder in RUNS:
            cache_dir = Path(tmp) / "cache" / folder
            command = [lit_cv, "fit", "--config", str(CONFIG), *fit_args, "--data.init_args.data_dir", str(data_dir),
                       "--data.init_args.image_size", "224", "--data.init_args.cache", mode,
                       "--data.init_args.cache_dir", str(cache_dir), "--trainer.max_epochs", "1",
                       "--trainer.limit_train_batches", str(batches), "--trainer.limit_val_batches", str(batches),
                       "--trainer.enable_progress_bar", "false"]  # output is captured, nobody watches it
            rss = peak_rss_gib(command, Path(tmp))
            results[label] = {"peak_rss_gib": round(rss, 3), "cache_dir_gib": round(folder_gib(cache_dir), 3)}
            print(f"{label:>10}: peak RSS {rss:.2f} GiB, cache folder {results[label]['cache_dir_gib']:.2f} GiB",
                  flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="Cats-vs-Dogs folder (with train/)")
    parser.add_argument("--batches", type=int, default=5, help="training and validation batches of the one epoch")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    options, fit_args = parser.parse_known_args(argv)
    results = {"config": str(CONFIG.relative_to(REPO)), "image_size": 224, "batches": options.batches,
               "runs": measure(options.data_dir.resolve(), options.batches, fit_args)}
    if options.json is not None:
        options.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
