"""``lit-cv download NAME --data-dir DIR``: fetch and verify a dataset (e.g. on a cluster's login node).

Afterwards ``fit`` works offline with ``data.init_args.data_dir: DIR`` (``data_dir`` for bank).
``lit-cv download weights MODEL --dir DIR`` fetches the pretrained weights of a timm or ``torchvision/`` model name
(:func:`lit_cv.nets.weights.download_weights`); ``TransferNet`` loads them offline with ``pretrained: DIR/FILE``.
"""

from __future__ import annotations

import argparse

from datamodules.download import (
    DATASETS,
    NO_NETWORK_HINT,
    ChecksumError,
    UnsafeArchiveError,
    download_dataset,
    reached_no_network,
)


def main(argv: list[str]) -> int:
    if argv[:1] == ["weights"]:
        return _weights(argv[1:])
    parser = argparse.ArgumentParser(
        prog="lit-cv download",
        description="Download, verify (SHA-256/MD5) and safely extract a dataset so that training works offline.",
        epilog="Pretrained weights: lit-cv download weights MODEL --dir DIR (see lit-cv download weights --help).",
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


def _weights(argv: list[str]) -> int:
    from lit_cv.nets.weights import download_weights

    parser = argparse.ArgumentParser(
        prog="lit-cv download weights",
        description="Download the pretrained weights of a timm model or torchvision/<name> into a folder, so that "
        "TransferNet loads them offline with `pretrained: DIR/FILE`.",
    )
    parser.add_argument("model", help="TransferNet's model_name: a timm name (resnet18) or torchvision/vgg16")
    parser.add_argument("--dir", required=True, help="folder to put the file in")
    args = parser.parse_args(argv)
    try:
        path = download_weights(args.model, args.dir)
    except (OSError, ValueError) as err:
        hint = ""
        if reached_no_network(err):
            hint = (NO_NETWORK_HINT.format(folder=args.dir) + "; offline, `pretrained: efficientnet_lite0.imagenet` "
                    "needs no download (the pretrained extra)")
        print(f"lit-cv download weights {args.model}: {err}{hint}")
        return 1
    print(
        f"{args.model} weights are in {path}; set model.net.init_args: {{model_name: {args.model}, "
        f"pretrained: {path}}}."
    )
    return 0

