"""A transactional producer: records and consumer offsets committed together, or not at all.

This is the Kafka half of the checkpoint protocol (:mod:`stream_infer.state.checkpoint` holds the
other half). One instance per pipeline and process. Its contract:

* :meth:`send_batch` produces output messages into the open transaction (opening one if none
  is), from the event loop; nothing of it is visible to `read_committed` readers before commit.
* :meth:`commit` adds the given records, then the consumer offsets with the consumer's group
  metadata (KIP-447: the group coordinator accepts them only from the current generation, so a
  worker that lost its partitions cannot commit for them), and commits. Blocking: call it from
  one thread at a time, never the event loop.
* A failure the transaction survives (the group moved to a new generation, a coordinator moved,
  a timeout) aborts the transaction and raises :class:`TransactionAborted`: nothing of it is
  visible, the offsets are not committed, and the producer is ready for the next one. An abort
  that fails, or a fatal error of the client other than fencing, is handled like a hung call
  (below). Fenced by a newer producer with the same transactional id (another live process, or
  the worker's restarted self) raises :class:`TransactionFatal`: this process must stop.
* Every blocking call of a commit or an abort is bounded here, not only by librdkafka: one that
  has not returned HUNG_AFTER_S past its own timeout (4 s in all) is taken as hung
  (``send_offsets_to_transaction`` ignores its timeout and can wait forever when the group
  coordinator's broker is gone for good: librdkafka issues 5456 and 5511). The stuck client is then replaced by a new one with the same
  transactional id, whose ``init_transactions`` fences the stuck one and ends its transaction,
  and :class:`TransactionInDoubt` is raised: the transaction was aborted, or committed if the
  coordinator had already begun to commit it. The callers' recovery is right either way:
  at-least-once commits the same checkpoint again, exactly-once rewinds to the offsets the
  group has committed.

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
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from stream_infer.kafka.connection import KafkaConnection, as_connection
from stream_infer.kafka.producer import OnRejected, OutMessage, produce_all

log = logging.getLogger(__name__)
_client_log = logging.getLogger("stream_infer.kafka.client")

# librdkafka's timeout for each blocking call of a commit: a commit that cannot finish in this
# time (a broker or coordinator gone) is aborted and retried by the next checkpoint rather than
# holding the checkpoint path (and, on a revoke, the rebalance) for librdkafka's default of minutes.
CALL_TIMEOUT_S = 3.0
# A call still running this long after its own timeout is hung (see the module docstring).
HUNG_AFTER_S = 1.0
# How long an abort is retried (the transaction coordinator moving with a dead broker takes the
# cluster's broker.session.timeout.ms to notice) before the producer is given up on.
ABORT_TIMEOUT_S = 30.0

# (topic, partition, key, value or None for a tombstone): a record for an explicit partition.
StateRecord = tuple[str, int, bytes, bytes | None]


class TransactionAborted(RuntimeError):
    """The transaction was aborted: nothing of it is visible; the next one may succeed."""


class TransactionInDoubt(TransactionAborted):
    """A call hung and the producer was replaced: the transaction was aborted, or committed if
    the coordinator had begun to commit it. Recover as from an abort (see the module docstring)."""


class TransactionFatal(RuntimeError):
    """The producer cannot go on (fenced, or its state is unknown): restart the worker."""


class _CallHung(Exception):
    pass


T = TypeVar("T")


def _fenced(err: KafkaError) -> bool:
    """Another live client took this transactional id over (only a restart can go on)."""
    return err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)


def instance_id() -> str:
    """This process's part of its transactional ids (see the module docstring)."""
    if stable := os.environ.get("STREAM_INFER_INSTANCE_ID"):
        return stable
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# Refusals that no retry can change: the principal lacks the grant.
_NOT_AUTHORIZED = (
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
)


class TransactionalProducer:
    def __init__(
        self, bootstrap: KafkaConnection | str, transactional_id: str, *, transaction_timeout_ms: int, extra: dict | None = None
    ) -> None:
        self._config = {
            **as_connection(bootstrap).client_config(),
            "transactional.id": transactional_id,
            # A worker killed inside a transaction leaves it open, and read_committed readers (the
            # state restore of the partitions' next owner, exactly-once consumers) wait behind it
            # until the coordinator aborts it this long after it began.
            "transaction.timeout.ms": transaction_timeout_ms,
            "linger.ms": 2,
            "compression.type": "lz4",
            "delivery.report.only.error": True,
            "logger": _client_log,
            **(extra or {}),
        }
        self.transactional_id = transactional_id
        self._open = False
        self._failed: KafkaError | None = None  # an error of the open transaction seen by send_batch
        self.replacements = 0  # hung clients replaced (see the module docstring)
        self._producer = self._new_client()

    def _new_client(self) -> Producer:
        """A client with this transactional id, initialised: any earlier client with the id is
        fenced and its open transaction ended. Retried while the transaction coordinator is
        unavailable (a broker failing over), up to ABORT_TIMEOUT_S."""
        deadline = time.monotonic() + ABORT_TIMEOUT_S
        producer = Producer(self._config)
        while True:
            # Not through _bounded: a client given up on in the middle of init_transactions
            # could still complete it later, bump the epoch and fence its own replacement.
            try:
                producer.init_transactions(CALL_TIMEOUT_S)
                return producer
            except KafkaException as exc:
                if exc.args[0].code() in _NOT_AUTHORIZED:
                    raise TransactionFatal(
                        f"not authorized to use transactional id {self.transactional_id!r} ({exc.args[0].name()}): grant WRITE "
                        "and DESCRIBE on the transactional-id prefix `<group_id>-<pipeline>-` "
                        "(`stream-infer acls` lists every ACL the worker needs)"
                    ) from None
                if exc.args[0].fatal():
                    deadline = 0.0
                error = exc.args[0].str()
            if time.monotonic() > deadline:
                raise TransactionFatal(f"initialising transactions for {self.transactional_id} failed: {error}")
            log.info(
                "initialising transactions failed, retrying", extra={"transactional_id": self.transactional_id, "error": error}
            )
            time.sleep(0.5)

    def _bounded(self, call: Callable[[], T]) -> T:
        """`call` (a blocking librdkafka call given CALL_TIMEOUT_S) on a thread of its own; raises
        _CallHung if it has not returned HUNG_AFTER_S after its timeout. A daemon thread, so a
        call that never returns keeps nothing from exiting."""
        result: Future[T] = Future()

        def run() -> None:
            try:
                result.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                result.set_exception(exc)

        threading.Thread(target=run, name="txn-call", daemon=True).start()
        try:
            return result.result(CALL_TIMEOUT_S + HUNG_AFTER_S)
        except FutureTimeout:
            raise _CallHung(f"no answer within {CALL_TIMEOUT_S + HUNG_AFTER_S:.0f} s") from None

    def _replace(self, why: str) -> None:
        """Give up the current client (hung in a call, or failed) for a new one with the same id."""
        log.warning(
            "transactional producer replaced (%s); the new one fences the old and ends its transaction",
            why,
            extra={"transactional_id": self.transactional_id},
        )
        self._open = False
        self.replacements += 1
        self._producer = self._new_client()

    def _begin(self) -> None:
        if not self._open:
            self._producer.begin_transaction()
            self._open = True

    def send_batch(self, messages: Sequence[OutMessage], on_rejected: OnRejected | None = None) -> int:
        """Produce outputs into the open transaction (opened if none is); returns how many.

        If the transaction has failed already (say messages timed out while a broker failed
        over), the outputs are dropped, and the next :meth:`commit` aborts the transaction and
        raises TransactionAborted: the caller rewinds and produces them again."""
        if self._failed is not None:
            return 0
        try:
            self._begin()
            return produce_all(self._producer, messages, on_rejected)
        except KafkaException as exc:
            err = exc.args[0]
            if _fenced(err):
                raise TransactionFatal(f"transaction {self.transactional_id}: {err.str()}") from None
            log.warning(
                "transaction failed while producing; it is aborted at the next checkpoint",
                extra={"transactional_id": self.transactional_id, "error": err.str()},
            )
            self._failed = err
            return 0

    def commit(self, records: Iterable[StateRecord], offsets: dict[tuple[str, int], int], group_metadata: object) -> float:
        """Produce `records` and commit them, with `offsets` and whatever :meth:`send_batch`
        produced since the last commit, in one transaction; returns the seconds it took. Raises
        TransactionAborted (or its TransactionInDoubt) or TransactionFatal (see the module docstring)."""
        started = time.perf_counter()
        if (failed := self._failed) is not None:
            self._failed = None
            if failed.fatal():
                self._replace(failed.str())
            else:
                self.abort()
            raise TransactionAborted(f"the transaction failed while producing: {failed.str()}")
        try:
            self._begin()
            producer = self._producer
            for topic, partition, key, value in records:
                producer.produce(topic, value, key, partition=partition)
            if offsets:
                tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                self._retrying(lambda: producer.send_offsets_to_transaction(tps, group_metadata, CALL_TIMEOUT_S))
            # A retriable failure of the commit (a timeout, a coordinator moving) leaves its
            # outcome open: the commit is repeated, never aborted, since the broker may have
            # committed it already and an abort would then undo nothing but trigger a replay.
            self._retrying(lambda: producer.commit_transaction(CALL_TIMEOUT_S))
            self._open = False
        except KafkaException as exc:
            err = exc.args[0]
            if _fenced(err):
                raise TransactionFatal(f"transaction {self.transactional_id}: {err.str()}") from None
            if err.fatal():
                self._replace(err.str())
                raise TransactionInDoubt(f"the producer failed ({err.str()}) and was replaced") from None
            self.abort()
            raise TransactionAborted(err.str()) from None
        except _CallHung as exc:
            self._replace(f"a call hung: {exc}")
            raise TransactionInDoubt(f"a call of the commit hung ({exc}); the producer was replaced") from None
        return time.perf_counter() - started

    def _retrying(self, call: Callable[[], None], attempts: int = 3) -> None:
        """`call`, bounded, repeated while it fails with a retriable error that needs no abort."""
        for attempt in range(attempts):
            try:
                self._bounded(call)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if attempt == attempts - 1 or not err.retriable() or err.txn_requires_abort() or err.fatal():
                    raise
                log.info(
                    "transaction call failed, retrying", extra={"transactional_id": self.transactional_id, "error": err.str()}
                )

    def abort(self) -> None:
        """Abort the open transaction, if any (its outputs are discarded). Retried while the
        coordinator is unavailable (a broker failing over), up to ABORT_TIMEOUT_S; an abort that
        hangs, fails for good or times out is finished by replacing the client (whose
        initialisation aborts the transaction). Raises TransactionFatal only when fenced, or
        when no new client can be initialised."""
        if not self._open:
            return
        deadline = time.monotonic() + ABORT_TIMEOUT_S
        producer = self._producer
        while True:
            try:
                self._bounded(lambda: producer.abort_transaction(CALL_TIMEOUT_S))
                self._open = False
                return
            except _CallHung as exc:
                self._replace(f"abort hung: {exc}")
                return
            except KafkaException as exc:
                err = exc.args[0]
                if _fenced(err):
                    raise TransactionFatal(f"aborting transaction {self.transactional_id}: {err.str()}") from None
                if err.fatal() or not err.retriable() or time.monotonic() > deadline:
                    self._replace(f"abort failed: {err.str()}")
                    return
                log.info(
                    "aborting transaction failed, retrying", extra={"transactional_id": self.transactional_id, "error": err.str()}
                )
                time.sleep(0.5)

    def close(self, timeout: float = 5.0) -> None:
        """Abort what is open (its offsets stay uncommitted) and flush."""
        try:
            self.abort()
        except TransactionFatal as exc:
            log.warning("%s", exc)
        self._producer.flush(timeout)
