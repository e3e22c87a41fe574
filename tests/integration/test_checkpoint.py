"""The checkpoint protocol (stream_infer.state.checkpoint): merging pending checkpoints, keeping only
what the consumer still owns, and, against a real broker, the group fencing a zombie's commit.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from support import group_committed

from stream_infer.kafka.admin import create_topics
from stream_infer.kafka.consumer import BatchConsumer, Ownership
from stream_infer.kafka.transactions import (
    TransactionAborted,
    TransactionalProducer,
    TransactionFatal,
)
from stream_infer.state import KeyState
from stream_infer.state.changelog import Changelog, ensure_changelog_topic
from stream_infer.state.checkpoint import Checkpoint, CheckpointCommitter


def test_merge_keeps_later_offsets_and_key_states_and_earlier_keys() -> None:
    first = Checkpoint({0: 10, 1: 5}, {0: {"a": b"a1", "b": b"b1"}}, {0: 1, 1: 1})
    later = Checkpoint({0: 20}, {0: {"a": b"a2", "c": None}}, {0: 1})
    merged = first.merge(later)
    assert merged.offsets == {0: 20, 1: 5}
    assert merged.snapshots == {0: {"a": b"a2", "b": b"b1", "c": None}}
    assert merged.epochs == {0: 1, 1: 1}
    assert first.offsets == {0: 10, 1: 5}  # merge builds a new checkpoint


def test_merge_across_a_new_assignment_starts_the_partition_over() -> None:
    first = Checkpoint({0: 10}, {0: {"a": b"old"}}, {0: 1})
    later = Checkpoint({0: 3}, {0: {"b": b"new"}}, {0: 2})  # partition 0 revoked and assigned again
    merged = first.merge(later)
    assert merged.offsets == {0: 3} and merged.snapshots == {0: {"b": b"new"}} and merged.epochs == {0: 2}


def test_outputs_in_the_transaction_outlive_the_partitions_they_came_from() -> None:
    first = Checkpoint({0: 10, 1: 5}, {}, {0: 1, 1: 1}, frozenset({(0, 1), (1, 1)}))
    merged = first.without({1}).merge(Checkpoint({0: 12}, {}, {0: 1}, frozenset({(0, 1)})))
    assert merged.offsets == {0: 12} and merged.produced == {(0, 1), (1, 1)}
    assert merged.ended(Ownership(None, {0: 1})) == {1}
    assert merged.ended(Ownership(None, {0: 1, 1: 1})) == set()
    assert merged.ended(Ownership(None, {0: 2, 1: 1})) == {0}


def test_only_partitions_owned_under_the_same_epoch_are_kept() -> None:
    checkpoint = Checkpoint({0: 10, 1: 5, 2: 7}, {0: {"a": b"x"}, 2: {"c": b"z"}}, {0: 1, 1: 1, 2: 3})
    owned = checkpoint.owned(Ownership(None, {0: 1, 2: 4}))  # 1 revoked, 2 reassigned since the cut
    assert owned.offsets == {0: 10} and owned.snapshots == {0: {"a": b"x"}} and owned.epochs == {0: 1}
    assert checkpoint.without({0}).offsets == {1: 5, 2: 7}
    assert Checkpoint({}, {0: {}}, {}).empty and not owned.empty


def _join(consumer: BatchConsumer, partitions: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(consumer.ownership().epochs) < partitions and time.monotonic() < deadline:
        consumer.next_batch(10, poll_timeout=0.1)
    assert len(consumer.ownership().epochs) == partitions


def test_a_zombie_can_write_neither_state_nor_offsets_and_a_failed_commit_is_retried(kafka_bootstrap: str, unique) -> None:
    """A worker whose partitions moved on (its group metadata is from an older generation) tries
    to commit a checkpoint: the group coordinator refuses the offsets, the whole transaction is
    aborted, and a read_committed restore sees none of its state. The checkpoint stays pending
    and the next commit, with current metadata, writes it for the partition still owned."""
    topic, group = unique("zombie"), unique("zombie-group")
    state = f"{group}-p-state"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    ensure_changelog_topic(kafka_bootstrap, state, 2, 1)
    first = BatchConsumer(
        kafka_bootstrap, group, topic, on_assign=lambda e: None, on_revoke=lambda p: None, on_lost=lambda p: None
    )
    second = None
    producer = TransactionalProducer(kafka_bootstrap, unique("zombie-tx"), transaction_timeout_ms=10_000)
    try:
        _join(first, 2)
        stale = first.ownership()
        ownership = [stale]
        committer = CheckpointCommitter(
            "p", topic, state, producer, lambda: ownership[0], lambda o, e: None, retain_on_abort=True
        )
        # A second member joins: the generation moves on, and the first keeps only one partition.
        second = BatchConsumer(
            kafka_bootstrap, group, topic, on_assign=lambda e: None, on_revoke=lambda p: None, on_lost=lambda p: None
        )
        deadline = time.monotonic() + 30
        while not (second.ownership().epochs and len(first.ownership().epochs) == 1) and time.monotonic() < deadline:
            first.next_batch(10, poll_timeout=0.05)
            second.next_batch(10, poll_timeout=0.05)
        assert second.ownership().epochs, "the second member got no partition"

        snapshot = KeyState().to_bytes()
        committer.add(Checkpoint({0: 7, 1: 7}, {0: {"k0": snapshot}, 1: {"k1": snapshot}}, dict(stale.epochs)))
        with pytest.raises(TransactionAborted, match="generation"):
            committer.commit_now()
        assert committer.pending  # at-least-once keeps it for the next attempt
        assert all(o < 0 for o in group_committed(kafka_bootstrap, group, topic, [0, 1]).values())
        restored = Changelog(kafka_bootstrap, state).restore([0, 1])
        assert restored == {0: ({}, None), 1: ({}, None)}

        # The same worker, current again (the partition it kept, under the new generation): the
        # next checkpoint retries what failed, though nothing new arrived, and only for what it owns.
        for _ in range(20):
            first.next_batch(10, poll_timeout=0.05)  # serves the rebalance callbacks; metadata refreshed
        ownership[0] = first.ownership()
        (kept,) = ownership[0].epochs
        assert committer.commit_now().offsets == {kept: 7}
        assert group_committed(kafka_bootstrap, group, topic, [kept])[kept] == 7
        assert Changelog(kafka_bootstrap, state).restore([kept])[kept][1] == 7
    finally:
        producer.close()
        first.close()
        if second is not None:
            second.close()


def test_a_second_producer_with_the_same_transactional_id_fences_the_first(kafka_bootstrap: str, unique) -> None:
    """Only with a stable STREAM_INFER_INSTANCE_ID can two producers share an id: the newer one
    wins and the older one's next commit is fatal (a restart, not a retry)."""
    topic = unique("fenced")
    create_topics(kafka_bootstrap, [topic], partitions=1)
    old = TransactionalProducer(kafka_bootstrap, unique("same-id"), transaction_timeout_ms=10_000)
    old.send_batch([(topic, b"k", b"before", None)])
    new = TransactionalProducer(kafka_bootstrap, old.transactional_id, transaction_timeout_ms=10_000)
    try:
        with pytest.raises(TransactionFatal):
            old.commit([], {}, None)
    finally:
        new.close()


def test_a_killed_owners_open_transaction_is_waited_for_then_skipped(kafka_bootstrap: str, unique) -> None:
    """A restore waits while a previous owner's checkpoint transaction is open (it may still
    commit), and reads only committed checkpoints once the broker has aborted it."""
    state = unique("settle-state")
    ensure_changelog_topic(kafka_bootstrap, state, 1, 1)
    committed = TransactionalProducer(kafka_bootstrap, unique("settle-a"), transaction_timeout_ms=10_000)
    committed.commit([(state, 0, b"k", KeyState().to_bytes())], {}, None)
    committed.close()
    # A producer that dies inside its transaction: the records are there, the transaction open.
    dying = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": unique("settle-b"), "transaction.timeout.ms": 3000}
    )
    dying.init_transactions(30)
    dying.begin_transaction()
    dying.produce(state, key=b"k", value=b"never committed", partition=0)
    dying.flush(10)
    started = time.monotonic()
    restored = Changelog(kafka_bootstrap, state, settle_timeout=30).restore([0])
    waited = time.monotonic() - started
    assert list(restored[0][0]) == ["k"] and restored[0][0]["k"].empty
    assert 1.5 < waited < 20, waited  # until the broker aborted it (3 s after it began)


@pytest.mark.parametrize(
    "cut",
    [
        # partition 1 lost after the cut
        Checkpoint({0: 3, 1: 4}, {}, {0: 1, 1: 1}, frozenset({(0, 1), (1, 1)})),
        # partition 1 lost before the cut: the cut no longer names it, but its outputs are in the transaction
        Checkpoint({0: 3}, {}, {0: 1}, frozenset({(0, 1), (1, 1)})),
        # partition 1 lost and assigned again: outputs of the old assignment are in the transaction
        Checkpoint({0: 3}, {}, {0: 1}, frozenset({(0, 1), (1, 1), (1, 2)})),
    ],
    ids=["after-cut", "before-cut", "reassigned"],
)
def test_exactly_once_aborts_when_a_partition_was_lost_since_its_outputs(kafka_bootstrap: str, unique, cut: Checkpoint) -> None:
    """The open transaction holds outputs of every partition processed since the last commit;
    publishing it with outputs of a partition this worker lost would duplicate what the
    partition's next owner produces: abort, nothing visible."""
    topic = unique("eos-lost")
    create_topics(kafka_bootstrap, [topic, f"{topic}.out"], partitions=2)
    producer = TransactionalProducer(kafka_bootstrap, unique("eos-lost-tx"), transaction_timeout_ms=10_000)
    owned_now = {0: 1, 1: 2} if (1, 2) in cut.produced else {0: 1}
    committer = CheckpointCommitter(
        "p", topic, None, producer, lambda: Ownership(None, owned_now), lambda o, e: None, retain_on_abort=False
    )
    try:
        producer.send_batch([(f"{topic}.out", b"k", b"output of partition 1", None)])
        committer.add(cut)
        with pytest.raises(TransactionAborted, match=r"partitions \[1\] lost"):
            committer.commit_now()
        assert not committer.pending  # exactly-once rewinds instead of retrying
        reader = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": unique("eos-lost-r"),
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
            }
        )
        reader.assign([TopicPartition(f"{topic}.out", p, 0) for p in range(2)])
        seen, eofs = [], 0
        while eofs < 2:
            for msg in reader.consume(10, timeout=2):
                if msg.error():
                    eofs += 1
                else:
                    seen.append(msg.value())
        reader.close()
        assert seen == []
    finally:
        committer.close()
