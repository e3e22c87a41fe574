"""A transactional producer: records and consumer offsets committed together, or not at all.

This is the Kafka half of the checkpoint protocol (:mod:`stream_infer.checkpoint` holds the
other half). One instance per pipeline and process. Its contract:

* :meth:`send_batch` produces output messages into the open transaction (opening one if none
  is), from the event loop; nothing of it is visible to `read_committed` readers before commit.
* :meth:`commit` adds the given records, then the consumer offsets with the consumer's group
  metadata (KIP-447: the group coordinator accepts them only from the current generation, so a
  worker that lost its partitions cannot commit for them), and commits. Blocking: call it from
  one thread at a time, never the event loop.
* A failure the transaction survives (the group moved to a new generation, a coordinator moved,
  a timeout) aborts the transaction and raises :class:`TransactionAborted`: nothing of it is
  visible, the offsets are not committed, and the producer is ready for the next one. Anything
  else (fenced by a newer producer with the same transactional id, or an abort that fails too)
  raises :class:`TransactionFatal`: only a new producer, that is a restart, can go on.

Transactional ids: ``<group>-<pipeline>-<instance>``. Fencing of zombies is by the group
generation, not by the id, so the instance part only has to be unique among live processes: by
default host name, process id and a random suffix (two workers on one host just work). With
``STREAM_INFER_INSTANCE_ID`` set (say a StatefulSet pod name) it is stable across restarts: the
restarted worker's ``init_transactions`` then aborts its predecessor's open transaction at once
instead of after ``transaction.timeout.ms``; two live workers must then never share it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from stream_infer.kafka.producer import OutMessage, produce_all

log = logging.getLogger(__name__)
_client_log = logging.getLogger("stream_infer.kafka.client")

# Bounds each blocking call of a commit: a commit that cannot finish in this time (a broker or
# coordinator gone) is aborted and retried by the next checkpoint rather than holding the
# checkpoint path (and, on a revoke, the rebalance) for librdkafka's default of minutes.
CALL_TIMEOUT_S = 10.0
# How long an abort is retried (the transaction coordinator moving with a dead broker takes the
# cluster's broker.session.timeout.ms to notice) before the producer is given up on.
ABORT_TIMEOUT_S = 30.0

# (topic, partition, key, value or None for a tombstone): a record for an explicit partition.
StateRecord = tuple[str, int, bytes, bytes | None]


class TransactionAborted(RuntimeError):
    """The transaction was aborted: nothing of it is visible; the next one may succeed."""


class TransactionFatal(RuntimeError):
    """The producer cannot go on (fenced, or its state is unknown): restart the worker."""


def instance_id() -> str:
    """This process's part of its transactional ids (see the module docstring)."""
    if stable := os.environ.get("STREAM_INFER_INSTANCE_ID"):
        return stable
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class TransactionalProducer:
    def __init__(self, bootstrap: str, transactional_id: str, *, transaction_timeout_ms: int, extra: dict | None = None) -> None:
        config = {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            # A worker killed inside a transaction leaves it open, and read_committed readers (the
            # state restore of the partitions' next owner, exactly-once consumers) wait behind it
            # until the coordinator aborts it this long after it began.
            "transaction.timeout.ms": transaction_timeout_ms,
            "linger.ms": 2,
            "compression.type": "lz4",
            "delivery.report.only.error": True,
            "logger": _client_log,
        }
        config.update(extra or {})
        self.transactional_id = transactional_id
        self._producer = Producer(config)
        self._open = False
        self._producer.init_transactions(CALL_TIMEOUT_S * 3)

    def _begin(self) -> None:
        if not self._open:
            self._producer.begin_transaction()
            self._open = True

    def send_batch(self, messages: Iterable[OutMessage]) -> int:
        """Produce outputs into the open transaction (opened if none is); returns how many."""
        self._begin()
        return produce_all(self._producer, messages)

    def commit(self, records: Iterable[StateRecord], offsets: dict[tuple[str, int], int], group_metadata: object) -> float:
        """Produce `records` and commit them, with `offsets` and whatever :meth:`send_batch`
        produced since the last commit, in one transaction; returns the seconds it took. Raises
        TransactionAborted or TransactionFatal (see the module docstring)."""
        started = time.perf_counter()
        try:
            self._begin()
            produce = self._producer.produce
            for topic, partition, key, value in records:
                produce(topic, value, key, partition=partition)
            if offsets:
                tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                self._retrying(lambda: self._producer.send_offsets_to_transaction(tps, group_metadata, CALL_TIMEOUT_S))
            # A retriable failure of the commit (a timeout, a coordinator moving) leaves its
            # outcome open: the commit is repeated, never aborted, since the broker may have
            # committed it already and an abort would then undo nothing but trigger a replay.
            self._retrying(lambda: self._producer.commit_transaction(CALL_TIMEOUT_S))
            self._open = False
        except KafkaException as exc:
            self._fail(exc.args[0])
        return time.perf_counter() - started

    def _retrying(self, call, attempts: int = 3) -> None:
        """`call`, repeated while it fails with a retriable error that needs no abort."""
        for attempt in range(attempts):
            try:
                call()
                return
            except KafkaException as exc:
                err = exc.args[0]
                if attempt == attempts - 1 or not err.retriable() or err.txn_requires_abort() or err.fatal():
                    raise
                log.info("transaction call failed, retrying", extra={"transactional_id": self.transactional_id, "error": err.str()})

    def abort(self) -> None:
        """Abort the open transaction, if any (its outputs are discarded). Retried while the
        coordinator is unavailable (a broker failing over), up to ABORT_TIMEOUT_S."""
        if not self._open:
            return
        deadline = time.monotonic() + ABORT_TIMEOUT_S
        while True:
            try:
                self._producer.abort_transaction(CALL_TIMEOUT_S)
                self._open = False
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal() or time.monotonic() > deadline:
                    raise TransactionFatal(f"aborting transaction {self.transactional_id} failed: {err.str()}") from None
                log.info("aborting transaction failed, retrying", extra={"transactional_id": self.transactional_id, "error": err.str()})
                time.sleep(0.5)

    def _fail(self, err: KafkaError) -> None:
        if err.fatal():
            raise TransactionFatal(f"transaction {self.transactional_id}: {err.str()}")
        self.abort()
        raise TransactionAborted(err.str())

    def close(self, timeout: float = 5.0) -> None:
        """Abort what is open (its offsets stay uncommitted) and flush."""
        try:
            self.abort()
        except TransactionFatal as exc:
            log.warning("%s", exc)
        self._producer.flush(timeout)
