"""A checkpoint commit when the group coordinator's broker dies for good (3-node cluster).

librdkafka's send_offsets_to_transaction can wait forever once the broker it holds as the group
coordinator has left the cluster's metadata (librdkafka issues 5456, 5511). A checkpoint commit
must come back anyway, within its bound, and the next one must commit.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from support import group_committed

from stream_infer.kafka.admin import create_topics
from stream_infer.kafka.consumer import BatchConsumer
from stream_infer.kafka.retrying import retry_kafka
from stream_infer.kafka.transactions import CALL_TIMEOUT_S, HUNG_AFTER_S, TransactionAborted, TransactionalProducer
from stream_infer.tools.devkafka import local

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")), reason="kills a broker: needs a local 3-node cluster"
)


def _coordinator(admin: AdminClient, group: str) -> int:
    return admin.describe_consumer_groups([group])[group].result(timeout=10).coordinator.id


def _brokers(admin: AdminClient) -> set[int]:
    """The brokers in the cluster's metadata (retried: the client may be asking the dead one)."""
    return retry_kafka(lambda: set(admin.list_topics(timeout=5).brokers), timeout=30, what="reading the metadata")


def test_a_commit_returns_and_the_next_commits_after_the_group_coordinator_dies(tmp_path: Path) -> None:
    cluster, _ = local.up(tmp_path / "kafka", port=0, nodes=3)
    bootstrap = cluster.bootstrap
    consumer = producer = None
    try:
        topic, group, out = "coord-loss", "coord-loss-group", "coord-loss-out"
        create_topics(bootstrap, [topic], partitions=2, replication=3, config={"min.insync.replicas": "2"})
        create_topics(bootstrap, [out], partitions=3, replication=3)
        feed = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        for partition in range(2):
            for i in range(5):
                feed.produce(topic, value=b"%d" % i, partition=partition)
        assert feed.flush(30) == 0

        consumer = BatchConsumer(
            bootstrap,
            group,
            topic,
            on_assign=lambda e: None,
            on_revoke=lambda p: None,
            on_lost=lambda p: None,
            session_timeout_ms=30_000,
        )
        got: list = []
        deadline = time.monotonic() + 60
        while len(got) < 10 and time.monotonic() < deadline:
            got += consumer.next_batch(100)
        assert len(got) == 10
        producer = TransactionalProducer(bootstrap, "coord-loss-tx", transaction_timeout_ms=10_000)
        producer.commit([], {(topic, 0): 2, (topic, 1): 2}, consumer.ownership().group_metadata)

        admin = AdminClient({"bootstrap.servers": bootstrap})
        victim = _coordinator(admin, group)
        pid = next(n.pid for n in cluster.nodes if n.node_id == victim)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)
        # Until the dead broker has left the metadata (fenced by the controller): the moment the
        # clients drop it, and the hang could start.
        deadline = time.monotonic() + 30
        while victim in _brokers(admin) and time.monotonic() < deadline:
            consumer.next_batch(100, poll_timeout=0.2)
        assert victim not in _brokers(admin)
        # Outputs in the open transaction, as exactly-once has: the producer learns the new
        # metadata (partition leaders moved), which drops the dead broker from its view.
        producer.send_batch([(out, b"k%d" % i, b"v", None) for i in range(30)])
        for _ in range(25):
            consumer.next_batch(100, poll_timeout=0.2)  # the consumer learns the metadata too

        committed_at = None
        bound = 3 * (CALL_TIMEOUT_S + HUNG_AFTER_S) + 30  # the commit's calls, then a new client's init
        deadline = time.monotonic() + 90
        while committed_at is None and time.monotonic() < deadline:
            started = time.monotonic()
            producer.send_batch([(out, b"k%d" % i, b"v", None) for i in range(30)])
            try:
                producer.commit([], {(topic, 0): 5, (topic, 1): 5}, consumer.ownership().group_metadata)
                committed_at = time.monotonic()
            except TransactionAborted:
                pass
            assert time.monotonic() - started < bound
            consumer.next_batch(100, poll_timeout=0.2)  # heartbeats; the metadata refresh
        assert committed_at is not None, "no checkpoint committed within 90 s of the coordinator's death"
        assert group_committed(bootstrap, group, topic, [0, 1]) == {0: 5, 1: 5}
    finally:
        if producer is not None:
            producer.close(timeout=2)
        if consumer is not None:
            consumer.close()
        local.down(tmp_path / "kafka", wipe=True, timeout=15)
