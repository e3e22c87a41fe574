"""Feed a bundled data set into a Kafka topic as events, at a chosen rate or as fast as possible.

Data sets (see stream_infer/datasets/README.md for sources and licenses):

* ``cmapss-test`` / ``cmapss-train``: NASA C-MAPSS FD001, one event per engine per cycle, key =
  unit. Events are interleaved by cycle (every engine's cycle 1, then every engine's cycle 2, ...)
  as a fleet reporting in parallel would; each engine's own events stay in cycle order.
* ``ai4i``: AI4I 2020, one event per machine reading, key = product_id, labels removed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
from confluent_kafka import Producer

from stream_infer.datasets import AI4I_LABEL_FIELDS, CMAPSS_COLUMNS, load_ai4i, load_cmapss

DATASETS = ("cmapss-test", "cmapss-train", "ai4i")

KeyedEvent = tuple[bytes, bytes]  # (key, JSON value)


def cmapss_events(name: str) -> Iterator[KeyedEvent]:
    data = load_cmapss(name)
    order = sorted(range(len(data)), key=lambda i: (data[i, 1], data[i, 0]))  # (cycle, unit)
    for i in order:
        row = data[i]
        event = {"schema_version": 1, "unit": int(row[0]), "cycle": int(row[1])}
        event.update(zip(CMAPSS_COLUMNS[2:], row[2:].tolist()))
        yield str(event["unit"]).encode(), orjson.dumps(event)


def ai4i_events() -> Iterator[KeyedEvent]:
    labels = set(AI4I_LABEL_FIELDS.values())
    for record in load_ai4i():
        event = {"schema_version": 1, **{k: v for k, v in record.items() if k not in labels}}
        yield event["product_id"].encode(), orjson.dumps(event)


def dataset_events(dataset: str) -> Iterator[KeyedEvent]:
    if dataset == "ai4i":
        return ai4i_events()
    if dataset in ("cmapss-test", "cmapss-train"):
        return cmapss_events(dataset.split("-")[1])
    raise ValueError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")


def dataset_size(dataset: str) -> int:
    return {"cmapss-test": 13_096, "cmapss-train": 20_631, "ai4i": 10_000}[dataset]


def produce_waiting(producer: Producer, topic: str, key: bytes | None, value: bytes) -> None:
    """Produce one message; when the local queue is full, serve deliveries and retry (never drop)."""
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            return
        except BufferError:
            producer.poll(0.05)


def replay(
    producer: Producer,
    topic: str,
    events: Iterator[KeyedEvent],
    *,
    rate: float | None = None,
    limit: int | None = None,
    progress=None,
) -> int:
    """Produce events to `topic`; `rate` events/s (None: as fast as possible). Returns the count.

    Pacing is against a schedule (event i is due at start + i/rate), so a slow moment is caught up
    instead of lowering the average rate.
    """
    started = time.monotonic()
    sent = 0
    for key, value in events:
        if limit is not None and sent >= limit:
            break
        if rate:
            delay = started + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        produce_waiting(producer, topic, key, value)
        producer.poll(0)
        sent += 1
        if progress is not None:
            progress.update(1)
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} event(s) not acknowledged by the broker within 60 s")
    return sent


def bad_events(dataset: str) -> list[tuple[str, bytes | None, bytes]]:
    """One event of every dead-letter class, built from a valid event of `dataset`:
    (the reason the worker must give, key, value). Used by the demo and the tests."""
    key, good = next(iter(dataset_events(dataset)))
    event = orjson.loads(good)
    numeric = "s2" if "s2" in event else "torque_nm"
    missing = "s3" if "s3" in event else "tool_wear_min"
    wrong_type = dict(event, **{numeric: "hot"})
    no_field = {k: v for k, v in event.items() if k != missing}
    future = dict(event, schema_version=99)
    oversized = dict(event, padding="x" * 70_000)
    nan_text = good.replace(orjson.dumps(event[numeric]), b"NaN", 1)
    # A finite double beyond float32's range: the machines schema's maximum catches it first.
    huge_reason = "schema_violation" if dataset == "ai4i" else "non_finite_number"
    return [
        ("invalid_encoding", key, b"\xff\xfe" + good),
        ("invalid_json", key, good[: len(good) // 2]),
        ("non_finite_number", key, nan_text),
        (huge_reason, key, orjson.dumps(dict(event, **{numeric: 1e39}))),
        ("wrong_type", key, orjson.dumps(wrong_type)),
        ("schema_violation", key, orjson.dumps(no_field)),
        ("unknown_schema_version", key, orjson.dumps(future)),
        ("unknown_schema_version", key, orjson.dumps(dict(event, schema_version=True))),
        ("missing_key", None, good),
        ("oversized", key, orjson.dumps(oversized)),
        ("oversized_key", key * (2048 // len(key) + 1), good),
        ("invalid_key", b"\xff" + key, good),
        ("key_mismatch", key + b"9", good),  # the key of another engine or product
        ("key_mismatch", key + "\u200b".encode(), good),  # a zero-width space: looks equal, is not
    ]
