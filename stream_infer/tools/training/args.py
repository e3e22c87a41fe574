"""The command line the model builders share (standard library only, so `--help` needs no extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

from stream_infer.models import MODELS_DIR


def model_parser(prog: str, description: str, writes: str) -> argparse.ArgumentParser:
    """A parser with `--out-dir DIR` (a Path; default: the package's models/ folder), the folder
    that gets `writes`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--out-dir", type=Path, default=MODELS_DIR, help=f"folder for {writes} (default: the package's models/ folder)"
    )
    return parser
