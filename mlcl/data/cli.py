"""The ``mlcl data`` commands: ``synth``, ``check`` and ``download``.

``add_data_commands(subparsers)`` registers them on the main parser's sub-commands (``mlcl.cli``
mounts them); each parser sets ``func``, a handler ``handler(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse

from mlcl.data.build import DATASETS
from mlcl.data.synthetic_scenes import SETTINGS


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data synth | check | download`` to ``subparsers``; return the ``data`` parser."""
    data = subparsers.add_parser("data", help="generate, check or download data sets")
    commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    synth = commands.add_parser("synth", help="generate the built-in synthetic data set")
    synth.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    synth.add_argument("--num-train", type=int, default=2000)
    synth.add_argument("--num-val", type=int, default=500)
    synth.add_argument("--image-size", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--setting", choices=sorted(SETTINGS), default="classic")
    synth.add_argument("--workers", type=int, default=2, help="processes drawing images")
    synth.set_defaults(func=synth_command)

    check = commands.add_parser(
        "check", help="check that a data set's annotations parse and its images decode"
    )
    check.add_argument("dataset", choices=DATASETS)
    check.add_argument("--root", required=True, help="the data set's root folder")
    check.add_argument("--workers", type=int, default=4, help="threads decoding images")
    check.set_defaults(func=check_command)

    download = commands.add_parser("download", help="download a data set, or say how to get it")
    download.add_argument("dataset", choices=DATASETS)
    download.add_argument("--root", default="", help="folder to download into")
    download.add_argument(
        "--print-only", action="store_true", help="only print the instructions (URLs, terms)"
    )
    download.set_defaults(func=download_command)
    return data


def synth_command(args: argparse.Namespace) -> int:
    import time

    from mlcl.data.synthetic import generate

    start = time.perf_counter()
    try:
        out = generate(
            args.out,
            args.num_train,
            args.num_val,
            args.image_size,
            args.seed,
            args.workers,
            setting=args.setting,
        )
    except ValueError as err:
        print(f"mlcl data synth: {err}")
        return 2
    seconds = time.perf_counter() - start
    count = args.num_train + args.num_val
    print(f"wrote {count} images to {out} in {seconds:.1f} s ({count / seconds:.0f} images/s)")
    return 0


def check_command(args: argparse.Namespace) -> int:
    from mlcl.data.check import check_dataset

    report = check_dataset(args.dataset, args.root, workers=args.workers, progress=True)
    print(report.format())
    return 0 if report.ok else 1


def download_command(args: argparse.Namespace) -> int:
    from mlcl.data.download import ARCHIVES, download, instructions

    if args.print_only or args.dataset not in ARCHIVES:
        print(instructions(args.dataset), end="")
        # Nothing to download for the built-in data and your own; a failure for NUS-WIDE.
        return 0 if args.print_only or args.dataset in ("synthetic", "csv") else 1
    if not args.root:
        print("mlcl data download: --root is required to download (or use --print-only)")
        return 2
    root = download(args.dataset, args.root)
    print(
        f"downloaded {args.dataset} into {root}; check it: mlcl data check {args.dataset} --root {root}"
    )
    return 0
