"""Command line: ``python -m stream_infer.tools.training engines|machines|all [--out-dir DIR]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from stream_infer.models import MODELS_DIR


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m stream_infer.tools.training",
        description="Train the bundled models on the bundled data sets, export them to ONNX and "
        "write their metadata JSON (metrics computed with onnxruntime).",
    )
    parser.add_argument(
        "target",
        choices=["engines", "machines", "all"],
        help="which model to rebuild: engines (C-MAPSS RUL), machines (AI4I failure) or all",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=MODELS_DIR,
        help="folder for <model>.onnx and <model>.json (default: the package's models/ folder)",
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
