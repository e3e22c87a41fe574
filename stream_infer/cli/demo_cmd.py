"""`stream-infer demo`: everything end to end on a local Kafka that the demo starts and stops itself."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from stream_infer.kafka import local
from stream_infer.kafka.admin import create_topics
from stream_infer.kafka.jars import KafkaSetupError


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
@click.option("--messages", type=click.IntRange(1), default=1000, show_default=True)
def demo(as_json: bool, messages: int) -> None:
    """Start a local Kafka in a temporary state dir, do a keyed round trip, print a summary, stop."""
    with tempfile.TemporaryDirectory(prefix="stream-infer-demo-") as tmp:
        state_dir = Path(tmp) / "kafka"
        try:
            cluster, _ = local.up(state_dir, port=0)
        except KafkaSetupError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        try:
            summary = _round_trip(cluster.bootstrap, messages)
        finally:
            local.down(state_dir, wipe=True)
    click.echo(orjson.dumps(summary).decode() if as_json else "\n".join(f"{k}: {v}" for k, v in summary.items()))


def _round_trip(bootstrap: str, messages: int) -> dict:
    topic = "demo-roundtrip"
    create_topics(bootstrap, [topic], partitions=6)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    started = time.monotonic()
    for i in range(messages):
        producer.produce(topic, key=b"unit-%d" % (i % 100), value=orjson.dumps({"seq": i}))
    producer.flush(30)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(6)])
    received = 0
    deadline = time.monotonic() + 30
    while received < messages and time.monotonic() < deadline:
        received += sum(1 for m in consumer.consume(1000, timeout=1) if m.error() is None)
    consumer.close()
    return {"bootstrap": bootstrap, "events_in": messages, "events_out": received,
            "seconds": round(time.monotonic() - started, 3)}
