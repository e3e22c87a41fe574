"""Admin-API helpers: the bootstrap address, topic creation, and consumer-group lag.

Lag here means exactly what Kafka's own `kafka-consumer-groups --describe` reports:
log-end offset minus the group's committed offset, per partition. A partition the group never
committed has no committed offset; its lag is then undefined (reported as None), as the tool
shows "-".

For `stream-infer lag`: :func:`group_state` tells a missing group from an idle one, and
:func:`record_timestamps` reads the timestamp of the record at a given offset with a consumer
that never joins a group or commits. Connecting with a fast, explained failure is
:func:`stream_infer.kafka.preflight.connect`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from stream_infer.kafka.connection import KafkaConnection, as_connection
from stream_infer.kafka.names import probe_group

_client_log = logging.getLogger("stream_infer.kafka.client")


def admin_client(connection: KafkaConnection | str) -> AdminClient:
    # librdkafka's own log goes through Python logging, so it obeys --log-level like everything else.
    # confluent_kafka types the config's values as str/int/float/bool; a logger is valid too.
    return AdminClient(as_connection(connection).client_config(logger=_client_log))  # type: ignore[arg-type]


class ReplicationUnmet(RuntimeError):
    """Topics to create need more replicas than the cluster has live brokers."""


def create_topics(
    bootstrap: KafkaConnection | str,
    names: list[str],
    *,
    partitions: int = 1,
    replication: int = 1,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create topics and wait for the result; topics that already exist are left as they are
    (and not asked for: a restart while the controller quorum is degraded, say a node down,
    needs no controller round trip for topics it already has). Raises ReplicationUnmet (a
    RuntimeError) when a topic must be created with more replicas than the cluster has live
    brokers, RuntimeError when the broker refuses a creation."""
    admin = admin_client(bootstrap)
    metadata = admin.list_topics(timeout=timeout)
    existing = metadata.topics
    missing = [n for n in names if n not in existing or existing[n].error is not None]
    if not missing:
        return
    if replication > len(metadata.brokers):
        raise ReplicationUnmet(
            f"replication factor {replication} but the cluster at {bootstrap} has {len(metadata.brokers)} live "
            f"broker(s), so {', '.join(missing)} cannot be created: set kafka.replication_factor to at most "
            f"{len(metadata.brokers)}, or start the missing brokers"
        )
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=replication, config=config or {}) for n in missing],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as err:
            if err.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise RuntimeError(f"could not create topic {name!r}: {err.args[0].str()}") from err


def topic_partitions(
    bootstrap: KafkaConnection | str, topics: list[str], timeout: float = 10.0, *, admin: AdminClient | None = None
) -> list[TopicPartition]:
    """Every partition of the named topics, sorted by (topic, partition). `admin` reuses a client."""
    metadata = (admin or admin_client(bootstrap)).list_topics(timeout=timeout)
    result: list[TopicPartition] = []
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"topic {topic!r} does not exist on {bootstrap}")
        result.extend(TopicPartition(topic, p) for p in meta.partitions)
    return sorted(result, key=lambda tp: (tp.topic, tp.partition))


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed this partition
    log_end: int

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(0, self.log_end - self.committed)


def group_lag(
    bootstrap: KafkaConnection | str,
    group: str,
    topics: list[str] | None = None,
    timeout: float = 10.0,
    *,
    admin: AdminClient | None = None,
) -> list[PartitionLag]:
    """Per-partition committed offset, log-end offset and lag of a consumer group.

    With `topics`, every partition of those topics is reported (uncommitted ones with lag None);
    without, the partitions the group has committed offsets for. `admin` reuses a client, which
    matters to callers that sample repeatedly (a new client costs a bootstrap round trip).
    """
    admin = admin or admin_client(bootstrap)
    wanted = topic_partitions(bootstrap, topics, timeout, admin=admin) if topics else None
    request = ConsumerGroupTopicPartitions(group, wanted) if wanted else ConsumerGroupTopicPartitions(group)
    committed_result = admin.list_consumer_group_offsets([request], request_timeout=timeout)[group].result(timeout)
    committed = {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in committed_result.topic_partitions}
    partitions = wanted or [TopicPartition(t, p) for t, p in committed]
    if not partitions:
        return []
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions}, request_timeout=timeout)
    result = []
    for tp, future in ends.items():
        result.append(
            PartitionLag(tp.topic, tp.partition, committed.get((tp.topic, tp.partition)), future.result(timeout).offset)
        )
    return sorted(result, key=lambda p: (p.topic, p.partition))


def group_state(admin: AdminClient, group: str, timeout: float = 10.0) -> str:
    """The group's state as the coordinator reports it, e.g. "STABLE", "EMPTY"; "DEAD" if it does not exist."""
    description = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout)
    return description.state.name


def record_timestamps(
    bootstrap: KafkaConnection | str,
    offsets: Mapping[tuple[str, int], int],
    timeout: float = 3.0,
    *,
    group: str = "stream-infer",
) -> dict[tuple[str, int], float]:
    """Timestamp (epoch seconds) of the record at each (topic, partition) -> offset.

    The record read is the first one at or after the offset (an offset may hold a transaction
    marker or a compacted-away record); below the log start, the earliest record still kept.
    A throwaway consumer is assigned the offsets directly: it joins no group and commits nothing,
    so the group being measured is untouched (its own group id is :func:`probe_group` of
    `group`). Partitions whose record does not arrive within
    `timeout` seconds, or that carry no timestamp, are absent from the result.
    """
    if not offsets:
        return {}
    consumer = Consumer(
        as_connection(bootstrap).client_config(
            **{
                "group.id": probe_group(group),
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
                "logger": _client_log,
            }
        )
    )
    found: dict[tuple[str, int], float] = {}
    pending = set(offsets)
    try:
        consumer.assign([TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()])
        deadline = time.monotonic() + timeout
        while pending and (left := deadline - time.monotonic()) > 0:
            message = consumer.poll(min(left, 0.2))
            if message is None or message.error() is not None:
                continue
            key = (message.topic(), message.partition())
            if key not in pending:
                continue
            pending.discard(key)
            # Only the first record per partition matters; pausing stops fetching the rest.
            consumer.pause([TopicPartition(*key)])
            kind, millis = message.timestamp()
            if kind != TIMESTAMP_NOT_AVAILABLE:
                found[key] = millis / 1000.0
    finally:
        consumer.close()
    return found
