"""`stream-infer replay DATASET --topic T`: feed a bundled or simulated data set into a topic
(or, with `--out FILE`, into a JSON-lines file)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from stream_infer.cli.options import connection_from, kafka_options

# stream_infer.tools.replay.DATASETS and SimulatorSettings' defaults, spelt out so that `--help`
# does not import numpy (tests/unit/test_transactions_sim.py checks they agree).
DATASETS = ("cmapss-test", "cmapss-train", "ai4i", "transactions")
DEFAULT_SEED, DEFAULT_DAYS, DEFAULT_CUSTOMERS = 1, 30, 1000
# The options that apply to the transactions data set only (parameter name -> option).
SIMULATOR_OPTIONS = {"seed": "--seed", "days": "--days", "customers": "--customers", "labels": "--labels"}


@click.command()
@click.argument("dataset", type=click.Choice(DATASETS))
@click.option(
    "-t",
    "--topic",
    default=None,
    help="Topic to write to (must exist unless the broker auto-creates). Required unless --out is given.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Write the events to this file instead, one JSON object per line (- for stdout); no broker needed.",
)
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Events per second. Default: as fast as possible."
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many events.")
@click.option("--seed", type=click.IntRange(min=0), default=DEFAULT_SEED, help="transactions only: the simulator's seed.")
@click.option(
    "--days", type=click.IntRange(min=1), default=DEFAULT_DAYS, help="transactions only: days of transactions to simulate."
)
@click.option(
    "--customers",
    type=click.IntRange(min=1),
    default=DEFAULT_CUSTOMERS,
    help="transactions only: simulated customers, one card each (and twice as many terminals).",
)
@click.option(
    "--labels",
    is_flag=True,
    default=False,
    help="transactions only: keep the labels is_fraud and fraud_scenario in each event (for evaluation files).",
)
@kafka_options
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def replay(
    dataset: str,
    topic: str | None,
    out: str | None,
    rate: float | None,
    limit: int | None,
    seed: int,
    days: int,
    customers: int,
    labels: bool,
    bootstrap_servers: str | None,
    kafka_properties: Path | None,
    progress: bool | None,
) -> None:
    """Replay DATASET as JSON events keyed by device or card (cmapss-*: unit, ai4i: product_id,
    transactions: card_id), into a topic (--topic) or a file (--out).

    transactions is simulated card payments with labelled fraud (stream_infer/datasets/README.md),
    in event-time order; --seed, --days and --customers choose the run, the same ones give the same
    events. --out ignores the Kafka options."""
    if dataset != "transactions":
        ctx = click.get_current_context()
        given = [flag for name, flag in SIMULATOR_OPTIONS.items() if ctx.get_parameter_source(name) != ParameterSource.DEFAULT]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise click.UsageError(f"{', '.join(given)} {verb} to the transactions data set only, not {dataset}")
    if topic is None and out is None:
        raise click.UsageError("give -t/--topic (write to Kafka) or --out FILE (write JSON lines)")
    if topic is not None and out is not None:
        raise click.UsageError("give -t/--topic or --out, not both")

    from tqdm import tqdm

    from stream_infer.datasets.transactions import SimulatorSettings
    from stream_infer.tools.replay import dataset_events, dataset_size

    settings = SimulatorSettings(seed=seed, days=days, customers=customers) if dataset == "transactions" else None
    show = sys.stderr.isatty() if progress is None else progress
    if out is not None:
        total = min(dataset_size(dataset, settings), limit or sys.maxsize)
        with tqdm(total=total, unit="ev", disable=not show, desc=f"{dataset} -> {out}") as bar:
            written = _write_file(out, dataset_events(dataset, settings, labels=labels), rate=rate, limit=limit, progress=bar)
        click.echo(f"wrote {written} event(s) from {dataset} to {'stdout' if out == '-' else out}", err=True)
        return
    assert topic is not None

    from confluent_kafka import Producer

    from stream_infer.kafka.preflight import ConnectionFailure, connect
    from stream_infer.tools.replay import replay as run_replay

    # The broker first: an unreachable one fails before the data set is loaded or simulated.
    connection = connection_from(bootstrap_servers, kafka_properties)
    bootstrap = connection.bootstrap
    try:
        connect(connection)
    except ConnectionFailure as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    producer = Producer(connection.client_config(**{"acks": "all", "enable.idempotence": True, "linger.ms": 5}))
    total = min(dataset_size(dataset, settings), limit or sys.maxsize)
    events = dataset_events(dataset, settings, labels=labels)
    with tqdm(total=total, unit="ev", disable=not show, desc=f"{dataset} -> {topic}") as bar:
        try:
            sent = run_replay(producer, topic, events, rate=rate, limit=limit, progress=bar)
        except RuntimeError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
    click.echo(f"sent {sent} event(s) from {dataset} to {topic} on {bootstrap}")


def _write_file(out: str, events: Iterator[tuple[bytes, bytes]], **options: Any) -> int:
    """write_jsonl to `out` ("-": stdout). A reader that goes away (`| head`) ends the command
    quietly with exit status 1 instead of a traceback."""
    from stream_infer.tools.replay import write_jsonl

    try:
        with click.open_file(out, "wb") as handle:
            return write_jsonl(handle, events, **options)
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
