"""``lit-cv reproduce --data-dir DIR``: the course experiments on real data, and the rows that beat them.

``DIR`` holds one folder per dataset, laid out like ``../shared/data``: ``rps/{rps,rps-test-set}``, ``mnist/raw``,
``cats_dogs/train``, ``bank/bank.csv``. Writes ``OUT/reproduce.md`` (the table) and ``OUT/reproduce.json`` (every
figure, the command and config of each row, seed, wall time, device, versions). See :mod:`lit_cv.experiments`.

Example::

    lit-cv reproduce --data-dir ../shared/data --only rps_cnn2_dropout mnist_beat
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lit_cv.experiments import EXPERIMENTS, reproduce
from lit_cv.experiments.registry import REPO


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lit-cv reproduce",
        description="Reproduce the course experiments on real data and write the results table.",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with rps/, mnist/, cats_dogs/, bank/")
    parser.add_argument("--only", nargs="+", default=None, choices=[e.name for e in EXPERIMENTS], metavar="NAME",
                        help="row names to run (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "results", help="output folder (default results/)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch of 2 batches per row")
    options = parser.parse_args(argv)
    results = reproduce(options.data_dir, options.out, only=options.only, quick=options.quick)
    print(f"wrote {options.out / 'reproduce.md'} and {options.out / 'reproduce.json'}")
    return 1 if any(row["status"] == "failed" for row in results["rows"].values()) else 0


if __name__ == "__main__":  # `python -m lit_cv.commands.reproduce`, the same as `lit-cv reproduce`
    sys.exit(main(sys.argv[1:]))
