"""`stream-infer replay DATASET --topic T`: feed a bundled data set into a topic."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from confluent_kafka import Producer

from stream_infer.cli.options import connection_from, kafka_options


@click.command()
@click.argument("dataset", type=click.Choice(["cmapss-test", "cmapss-train", "ai4i"]))
@click.option("-t", "--topic", required=True, help="Topic to write to (must exist unless the broker auto-creates).")
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Events per second. Default: as fast as possible."
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many events.")
@kafka_options
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def replay(
    dataset: str,
    topic: str,
    rate: float | None,
    limit: int | None,
    bootstrap_servers: str | None,
    kafka_properties: Path | None,
    progress: bool | None,
) -> None:
    """Replay DATASET into a topic as JSON events keyed by device (cmapss-*: unit, ai4i: product_id)."""
    from tqdm import tqdm

    from stream_infer.kafka.preflight import ConnectionFailure, connect
    from stream_infer.tools.replay import dataset_events, dataset_size
    from stream_infer.tools.replay import replay as run_replay

    connection = connection_from(bootstrap_servers, kafka_properties)
    bootstrap = connection.bootstrap
    try:
        connect(connection)
    except ConnectionFailure as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    producer = Producer(connection.client_config(**{"acks": "all", "enable.idempotence": True, "linger.ms": 5}))
    total = min(dataset_size(dataset), limit or sys.maxsize)
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=total, unit="ev", disable=not show, desc=f"{dataset} -> {topic}") as bar:
        try:
            sent = run_replay(producer, topic, dataset_events(dataset), rate=rate, limit=limit, progress=bar)
        except RuntimeError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
    click.echo(f"sent {sent} event(s) from {dataset} to {topic} on {bootstrap}")
