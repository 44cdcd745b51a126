"""``lit-cv download NAME --data-dir DIR``: fetch and verify a dataset (e.g. on a cluster's login node).

Afterwards ``fit`` works offline with ``data.init_args.data_dir: DIR`` (``data_dir`` for bank).
"""

from __future__ import annotations

import argparse

from datamodules.download import DATASETS, ChecksumError, UnsafeArchiveError, download_dataset


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lit-cv download",
        description="Download, verify (SHA-256/MD5) and safely extract a dataset so that training works offline.",
    )
    parser.add_argument("name", choices=sorted(DATASETS), help="dataset to fetch")
    parser.add_argument("--data-dir", required=True, help="folder to put it in (the datamodule's data_dir)")
    parser.add_argument(
        "--force", action="store_true", help="download and extract again over an existing copy"
    )
    args = parser.parse_args(argv)
    try:
        data_dir = download_dataset(args.name, args.data_dir, force=args.force)
    except (OSError, ChecksumError, UnsafeArchiveError) as err:
        print(f"lit-cv download {args.name}: {err}")
        return 1
    print(f"{args.name} is ready in {data_dir}; set data_dir: {data_dir} in the data config.")
    return 0
