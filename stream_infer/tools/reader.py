"""Read whole topics from the beginning, without a consumer group: for the demo, bench and tests."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from stream_infer.kafka.admin import topic_partitions
from stream_infer.kafka.connection import KafkaConnection, as_connection
from stream_infer.kafka.consumer import records_from_messages
from stream_infer.records import InputRecord


@dataclass
class TopicReader:
    """Assigns every partition of `topics` from the beginning (read_committed) and hands what
    arrives to a callback; with `keep` it also accumulates it in `records` per topic."""

    bootstrap: KafkaConnection | str
    topics: list[str]
    records: dict[str, list[InputRecord]] = field(default_factory=dict)
    # The broker answers a fetch once this much is there (or after fetch.wait.max.ms, 500 ms).
    # 1 (the client's default): every record as soon as it is appended. A reader that only
    # observes a measurement (the bench's latency phases) sets it high, so its own fetches do
    # not load the broker it is measuring: at 1 it fetched about 200 times a second.
    fetch_min_bytes: int = 1
    keep: bool = True

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

    def poll(self, seconds: float = 0.5, on_record: Callable[[InputRecord], None] | None = None) -> int:
        """Read what arrives within `seconds`; the number of records read."""
        messages = [m for m in self._consumer.consume(5000, timeout=seconds) if m.error() is None]
        records = records_from_messages(messages)
        for record in records:
            if self.keep:
                self.records[record.topic].append(record)
            if on_record is not None:
                on_record(record)
        return len(records)

    def until(self, done: Callable[[], bool], timeout: float, on_record: Callable[[InputRecord], None] | None = None) -> bool:
        """Poll until done() holds (True) or timeout passes (False)."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            self.poll(0.2, on_record)
        return True

    def close(self) -> None:
        self._consumer.close()
