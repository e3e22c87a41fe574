"""Read whole topics from the beginning, without a consumer group: for the demo, bench and tests."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from stream_infer.kafka.admin import topic_partitions
from stream_infer.kafka.connection import KafkaConnection, as_connection
from stream_infer.kafka.consumer import consumed_headers


@dataclass
class ReadRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: dict[str, bytes | None]  # a header's value may be null

    def json(self):
        if self.value is None:
            raise ValueError(f"{self.topic}/{self.partition}@{self.offset} has no value (a tombstone)")
        return orjson.loads(self.value)


def read_record(msg: Message, headers: dict[str, bytes | None]) -> ReadRecord:
    """The ReadRecord of a consumed message (one without an error)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise RuntimeError("a consumed message without its topic, partition or offset")
    return ReadRecord(topic, partition, offset, msg.key(), msg.value(), msg.timestamp()[1], headers)


@dataclass
class TopicReader:
    """Assigns every partition of `topics` from the beginning and accumulates what arrives."""

    bootstrap: KafkaConnection | str
    topics: list[str]
    records: dict[str, list[ReadRecord]] = field(default_factory=dict)
    # The broker answers a fetch once this much is there (or after fetch.wait.max.ms, 500 ms).
    # 1 (the client's default): every record as soon as it is appended. A reader that only
    # observes a measurement (the bench's latency phases) sets it high, so its own fetches do
    # not load the broker it is measuring: at 1 it fetched about 200 times a second.
    fetch_min_bytes: int = 1

    def __post_init__(self) -> None:
        self._consumer = Consumer(
            {
                **as_connection(self.bootstrap).client_config(),
                "group.id": "stream-infer-reader",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.min.bytes": self.fetch_min_bytes,
                "logger": logging.getLogger("stream_infer.kafka.client"),
            }
        )
        parts = topic_partitions(self.bootstrap, self.topics)
        self._consumer.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in parts])
        self.records = {t: [] for t in self.topics}

    def poll(self, seconds: float = 0.5, on_record: Callable[[ReadRecord], None] | None = None) -> int:
        got = 0
        for msg in self._consumer.consume(5000, timeout=seconds):
            if msg.error() is not None:
                continue
            record = read_record(msg, dict(consumed_headers(msg)))
            self.records[record.topic].append(record)
            got += 1
            if on_record is not None:
                on_record(record)
        return got

    def until(self, done: Callable[[], bool], timeout: float, on_record=None) -> bool:
        """Poll until done() holds (True) or timeout passes (False)."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            self.poll(0.2, on_record)
        return True

    def close(self) -> None:
        self._consumer.close()
