"""Persist per-key state in a compacted changelog topic, in checkpoints tied to input offsets.

Why not a plain Faust table: its changelog is written as state changes, independently of the input
offsets Faust commits, so after a crash the restored state may already contain events that are then
consumed again, and a sliding window would count them twice. Here every checkpoint is one Kafka
transaction holding the snapshots of the keys changed since the previous checkpoint *and* a marker
with the input offset they are consistent with ("all events below X applied, none above"). Readers
use read_committed, so a checkpoint is seen whole or not at all. After a restore the worker skips
input events below X (their outputs were acknowledged before X was written) and resumes exactly
where the state stands: replays cannot enter a window twice.

Layout: changelog partition p holds the state of input partition p (same partition count). Keys are
the pipeline's keys; the marker's key starts with a NUL byte, which no device or account id has.
"""

from __future__ import annotations

import logging
import time

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from stream_infer.kafka.admin import admin_client, create_topics
from stream_infer.state import KeyState

log = logging.getLogger(__name__)
_client_log = logging.getLogger("stream_infer.kafka.client")

MARKER_KEY = b"\x00checkpoint"


def changelog_topic(group_id: str, pipeline: str) -> str:
    return f"{group_id}-{pipeline}-state"


def ensure_changelog_topic(bootstrap: str, topic: str, partitions: int, replication: int) -> None:
    """Create the compacted changelog with the input's partition count; refuse a mismatched one."""
    create_topics(
        bootstrap,
        [topic],
        partitions=partitions,
        replication=replication,
        config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
    )
    admin = admin_client(bootstrap)
    deadline = time.monotonic() + 15
    existing = 0
    while existing == 0 and time.monotonic() < deadline:  # a just-created topic's metadata lags a moment
        existing = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
        if existing == 0:
            time.sleep(0.2)
    if existing != partitions:
        raise RuntimeError(
            f"state changelog {topic} has {existing} partitions but its input has {partitions}: "
            "they must match (state of input partition p lives in changelog partition p). "
            "Recreate the changelog or use a new kafka.group_id."
        )


class Changelog:
    """Blocking API: call from an executor thread, never from the event loop."""

    def __init__(self, bootstrap: str, topic: str, transactional_id: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "transactional.id": transactional_id,
                # A worker killed mid-checkpoint leaves an open transaction that blocks read_committed
                # readers until it times out; the restarted worker's init_transactions() aborts it at
                # once, and this bounds the wait when the worker does not come back.
                "transaction.timeout.ms": 15000,
                "linger.ms": 5,
                "compression.type": "lz4",
                "logger": _client_log,
            }
        )
        # Fences any earlier producer with the same id and aborts its unfinished checkpoint.
        self._producer.init_transactions(30)

    def write_checkpoint(self, snapshots: dict[int, dict[str, bytes | None]], offsets: dict[int, int]) -> int:
        """One transaction: key snapshots (None = tombstone) and, per partition, the offset marker."""
        self._producer.begin_transaction()
        count = 0
        for partition, keys in snapshots.items():
            for key, value in keys.items():
                self._producer.produce(self.topic, key=key.encode(), value=value, partition=partition)
                count += 1
        for partition, offset in offsets.items():
            self._producer.produce(self.topic, key=MARKER_KEY, value=orjson.dumps({"offset": offset}), partition=partition)
        self._producer.commit_transaction(30)
        return count

    def restore(self, partitions: list[int], timeout: float = 60.0) -> dict[int, tuple[dict[str, KeyState], int | None]]:
        """Read the changelog partitions to their end: per partition, the key states and the
        checkpoint offset (None if no checkpoint was ever written)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"{self.topic}-restore",  # never commits; the client requires a group id
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 50,  # the end of a partition should not cost a long-poll wait
                "logger": _client_log,
            }
        )
        result: dict[int, tuple[dict[str, KeyState], int | None]] = {p: ({}, None) for p in partitions}
        checkpoints: dict[int, int | None] = dict.fromkeys(partitions)
        open_partitions = set(partitions)
        deadline = time.monotonic() + timeout
        try:
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            while open_partitions:
                # Short polls: consume() waits for a full batch or its timeout, while the end of a
                # partition (EOF) may come much sooner.
                batch = consumer.consume(1000, timeout=0.1)
                if not batch and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"restoring {self.topic} partitions {sorted(open_partitions)} did not reach the end within {timeout:.0f} s"
                    )
                for msg in batch:
                    partition, err = msg.partition(), msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            open_partitions.discard(partition)
                            continue
                        raise RuntimeError(f"restoring {self.topic}[{partition}]: {err.str()}")
                    states = result[partition][0]
                    key, value = msg.key(), msg.value()
                    if key == MARKER_KEY:
                        checkpoints[partition] = orjson.loads(value)["offset"]
                    elif value is None:
                        states.pop(key.decode(), None)
                    else:
                        states[key.decode()] = KeyState.from_bytes(value)
        finally:
            consumer.close()
        return {p: (result[p][0], checkpoints[p]) for p in partitions}

    def close(self) -> None:
        self._producer.flush(10)
