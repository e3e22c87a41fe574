"""Command line: ``python -m stream_infer.tools.training engines|machines|all [--out-dir DIR]``."""

from __future__ import annotations

import argparse
import sys
import time

from stream_infer.tools.training.args import model_parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see ``--help``)."""
    parser = model_parser(
        "python -m stream_infer.tools.training",
        "Train the bundled models on the bundled data sets, export them to ONNX and "
        "write their metadata JSON (metrics computed with onnxruntime).",
        "<model>.onnx and <model>.json",
    )
    parser.add_argument(
        "target",
        choices=["engines", "machines", "all"],
        help="which model to rebuild: engines (C-MAPSS RUL), machines (AI4I failure) or all",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train the requested model(s); returns the process exit status."""
    args = parse_args(argv)
    # Imported here so `--help` works, and fails clearly, without the training extra installed.
    from . import engines, machines

    start = time.perf_counter()
    if args.target in ("engines", "all"):
        engines.train(args.out_dir)
    if args.target in ("machines", "all"):
        machines.train(args.out_dir)
    print(f"done in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
