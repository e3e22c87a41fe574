"""Persist per-key state in a compacted changelog topic, in checkpoints tied to input offsets.

Why not a plain Faust table: its changelog is written as state changes, independently of the input
offsets Faust commits, so after a crash the restored state may already contain events that are then
consumed again, and a sliding window would count them twice. Here every checkpoint is one Kafka
transaction holding the snapshots of the keys changed since the previous checkpoint, a marker
with the input offset they are consistent with ("all events below X applied, none above"), and
the group's offset commit of X itself (see :mod:`stream_infer.state.checkpoint`). Readers use
read_committed, so a checkpoint is seen whole or not at all, and the restored state always
matches the committed offset. The marker lets the worker also skip input events below X that
reach it anyway (fetched before a rebalance): replays cannot enter a window twice.

Layout: changelog partition p holds the state of input partition p (same partition count). Keys are
the pipeline's keys; the marker's key starts with a NUL byte, which no device or account id has.
"""

from __future__ import annotations

import logging
import time

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from stream_infer.kafka.admin import admin_client, create_topics
from stream_infer.kafka.connection import KafkaConnection, as_connection
from stream_infer.kafka.names import restore_group
from stream_infer.kafka.retrying import retry_kafka
from stream_infer.kafka.transactions import StateRecord
from stream_infer.state.store import KeyState

log = logging.getLogger(__name__)
_client_log = logging.getLogger("stream_infer.kafka.client")

MARKER_KEY = b"\x00checkpoint"


def ensure_changelog_topic(
    bootstrap: KafkaConnection | str, topic: str, partitions: int, replication: int, config: dict[str, str] | None = None
) -> None:
    """Create the compacted changelog with the input's partition count; refuse a mismatched one."""
    create_topics(
        bootstrap,
        [topic],
        partitions=partitions,
        replication=replication,
        config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000", **(config or {})},
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


def checkpoint_records(topic: str, snapshots: dict[int, dict[str, bytes | None]], offsets: dict[int, int]) -> list[StateRecord]:
    """A checkpoint's changelog records: each changed key's snapshot (None: a tombstone), then per
    partition the marker with the input offset the snapshots are consistent with."""
    records: list[StateRecord] = [
        (topic, partition, key.encode(), value) for partition, keys in snapshots.items() for key, value in keys.items()
    ]
    records += [(topic, partition, MARKER_KEY, orjson.dumps({"offset": offset})) for partition, offset in offsets.items()]
    return records


class Changelog:
    """Reads a pipeline's state back. Blocking: call from an executor thread, never the event loop."""

    def __init__(self, bootstrap: KafkaConnection | str, topic: str, *, settle_timeout: float = 60.0) -> None:
        self.connection = as_connection(bootstrap)
        self.topic = topic
        self.settle_timeout = settle_timeout

    def wait_settled(self, partitions: list[int]) -> None:
        """Wait until no transaction is open on the partitions (last stable offset = log end).

        An open transaction there belongs to a previous owner: one that is finishing its last
        checkpoint (its commit markers follow in milliseconds) or one that died inside it (the
        coordinator aborts it after its transaction.timeout.ms). Reading before it ends would
        stop at its first record, and a checkpoint it commits would be missed."""
        deadline = time.monotonic() + self.settle_timeout
        tps = [TopicPartition(self.topic, p) for p in partitions]
        # A failed attempt replaces the client: an admin client keeps sending the leader epoch
        # of its first metadata, so once the partitions' leader epoch moves on (a leader
        # re-elected) each of its requests fails with FENCED_LEADER_EPOCH until it is replaced.
        admin: AdminClient | None = None

        def end_offsets() -> dict[IsolationLevel, dict[int, int]]:
            nonlocal admin
            if admin is None:
                admin = admin_client(self.connection)
            try:
                return {
                    level: {
                        tp.partition: f.result().offset
                        for tp, f in admin.list_offsets(
                            {tp: OffsetSpec.latest() for tp in tps}, isolation_level=level, request_timeout=10
                        ).items()
                    }
                    for level in (IsolationLevel.READ_UNCOMMITTED, IsolationLevel.READ_COMMITTED)
                }
            except KafkaException:
                admin = None
                raise

        waited = False
        while True:
            ends = retry_kafka(
                end_offsets, timeout=max(1.0, deadline - time.monotonic()), what=f"reading the end offsets of {self.topic}"
            )
            open_ = [p for p in partitions if ends[IsolationLevel.READ_COMMITTED][p] < ends[IsolationLevel.READ_UNCOMMITTED][p]]
            if not open_:
                if waited:
                    log.info("state changelog settled", extra={"topic": self.topic, "partitions": partitions})
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.topic} partitions {open_} still have an open transaction after {self.settle_timeout:.0f} s: "
                    "a producer other than this worker's is writing there (is a second deployment using the same kafka.group_id?)"
                )
            if not waited:
                log.info(
                    "waiting for a previous owner's open checkpoint transaction to end",
                    extra={"topic": self.topic, "partitions": open_},
                )
                waited = True
            time.sleep(0.2)

    def restore(self, partitions: list[int], timeout: float = 60.0) -> dict[int, tuple[dict[str, KeyState], int | None]]:
        """Read the changelog partitions to their end, once no transaction is open on them: per
        partition, the key states and the checkpoint offset (None if none was ever written)."""
        self.wait_settled(partitions)
        consumer = Consumer(
            {
                **self.connection.client_config(),
                "group.id": restore_group(self.topic),  # never commits; the client requires a group id
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
                        if err.retriable():  # the client retries on its own (a leader moving)
                            continue
                        raise RuntimeError(f"restoring {self.topic}[{partition}]: {err.str()}")
                    key, value = msg.key(), msg.value()
                    if partition is None or key is None:
                        raise RuntimeError(
                            f"restoring {self.topic}[{partition}]: a record without a key at offset {msg.offset()}"
                        )
                    states = result[partition][0]
                    if key == MARKER_KEY:
                        if value is None:
                            raise RuntimeError(f"restoring {self.topic}[{partition}]: a checkpoint marker without a value")
                        checkpoints[partition] = orjson.loads(value)["offset"]
                    elif value is None:
                        states.pop(key.decode(), None)
                    else:
                        states[key.decode()] = KeyState.from_bytes(value)
        finally:
            consumer.close()
        return {p: (result[p][0], checkpoints[p]) for p in partitions}
