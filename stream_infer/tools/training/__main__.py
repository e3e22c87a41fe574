"""Command line: ``python -m stream_infer.tools.training engines|machines|transactions|all|ulb [--out-dir DIR]``.

``ulb`` is not part of ``all``: its data set is fetched (``stream-infer datasets fetch ulb``), not
bundled, so it needs the network or a cached copy."""

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
        choices=["engines", "machines", "transactions", "all", "ulb"],
        help="which model to rebuild: engines (C-MAPSS RUL), machines (AI4I failure), transactions (card fraud on "
        "the simulator, features from demo.toml), all (those three), "
        "or ulb (card fraud on the ULB data set, fetched into the cache first)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train the requested model(s); returns the process exit status."""
    args = parse_args(argv)
    # Imported here so `--help` works, and fails clearly, without the training extra installed.
    from . import engines, machines

    start = time.perf_counter()
    if args.target == "ulb":
        from stream_infer.datasets.ulb import DatasetError, fetch

        from . import ulb

        try:
            csv = fetch()
        except (DatasetError, OSError) as err:
            print(f"error: cannot fetch the ULB data set: {err}", file=sys.stderr)
            return 1
        ulb.train(args.out_dir, csv_path=csv)
    if args.target in ("engines", "all"):
        engines.train(args.out_dir)
    if args.target in ("machines", "all"):
        machines.train(args.out_dir)
    if args.target in ("transactions", "all"):
        from . import transactions

        transactions.train(args.out_dir)
    print(f"done in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
