"""Consume in batches: confluent-kafka's consumer, driven from one dedicated thread.

Why not Faust's per-event stream: profiling a worker built on it (docs/performance.md) showed the
event loop idle most of the time while Faust handed events one by one through its aiokafka thread
and stream machinery; the pipeline's throughput was a small fraction of a plain loop's. Here
librdkafka prefetches in the background and each call hands the pipeline a whole batch.

Contract of :meth:`BatchConsumer.next_batch` (call it from the consumer thread only):

* returns at once whatever is already fetched, up to `max_size` messages (under load: full
  batches with no waiting);
* when nothing is fetched, blocks until the first message arrives (or `poll_timeout`), then takes
  whatever else is already there: a lone event is handed over immediately, not after max_wait;
* with `linger` > 0 it waits up to `linger` for the batch to fill, never past `max_wait` after
  its first message: the knob the batching controller turns toward throughput;
* with `coalesce` > 0, a batch that already holds `coalesce_events` or more (events arrive
  faster than they are taken) waits up to `coalesce` for more; a lone event never waits.

Rebalance callbacks run inside `next_batch` (and `close`), on the consumer thread.

Ownership: every assignment of a partition gets a new *epoch* (a number that only grows).
Fetched batches carry the epochs they were fetched under, and a checkpoint names the epoch of
each partition it covers, so work done under an assignment that has since ended (revoked, lost,
or rewound) is recognised and discarded, wherever it is queued. The group metadata that fences
a transactional offset commit (KIP-447) is read on the consumer thread in every rebalance
callback (and at least once a second), and handed to other threads together with the epochs
(:meth:`BatchConsumer.ownership`): a call into the consumer from another thread would wait for
the `consume()` in progress, and inside a rebalance callback for as long as the callback runs.

Every method is to be called from that one thread. confluent-kafka (2.16 on) serializes calls on
a Consumer: a call from another thread waits until the `consume()` in progress returns (up to
`poll_timeout` when idle). An asynchronous commit from the event loop therefore blocked the loop
for 50-80 ms at every checkpoint, and that was the p99 latency at low load.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from stream_infer.kafka.connection import KafkaConnection, as_connection
from stream_infer.kafka.retrying import retry_kafka
from stream_infer.records import InputRecord

log = logging.getLogger(__name__)
_client_log = logging.getLogger("stream_infer.kafka.client")

# Called on the consumer thread with {partition: epoch} (assigned) or a set of partitions.
AssignCallback = Callable[[dict[int, int]], None]
RevokeCallback = Callable[[set[int]], None]

# The group metadata is re-read at least this often outside rebalance callbacks.
METADATA_REFRESH_S = 1.0
_epochs = itertools.count(1)


@dataclass(frozen=True)
class Ownership:
    """What the consumer owns, as one consistent view: the group metadata (member id and
    generation, for send_offsets_to_transaction) and the epoch of each assigned partition."""

    group_metadata: object | None
    epochs: dict[int, int]

    def owns(self, partition: int, epoch: int) -> bool:
        return self.epochs.get(partition) == epoch


@dataclass(frozen=True)
class PartitionOffsets:
    partition: int
    log_end: int
    committed: int | None
    position: int | None
    earliest: int | None  # the log's start offset; read only when committed is None

    @property
    def oldest_unprocessed(self) -> int:
        """The committed offset, or the log's start where the group never committed."""
        return self.committed if self.committed is not None else (self.earliest or 0)

    @property
    def lag(self) -> int:
        """Kafka's definition: log-end minus committed (from the log's start without a commit)."""
        return max(0, self.log_end - self.oldest_unprocessed)


def consumer_config(
    bootstrap: KafkaConnection | str,
    group_id: str,
    *,
    session_timeout_ms: int,
    max_prefetch_kbytes: int,
    extra: dict | None = None,
) -> dict:
    """The librdkafka settings of a pipeline's group consumer: offsets committed only by the
    checkpoint protocol, bounded prefetch, cooperative rebalancing, read_committed; `extra`
    (the config's `[kafka.consumer]`) overrides them."""
    config = {
        **as_connection(bootstrap).client_config(),
        "group.id": group_id,
        # Offsets are committed by the pipeline, only after outputs (and state) are safe.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": session_timeout_ms,
        # librdkafka ends the session on its own side once no heartbeat has succeeded for
        # session.timeout.ms, even while the coordinator is merely failing over; it then
        # rejoins under a new member id and the group waits for the old id to expire
        # (another session timeout). Heartbeating every second keeps the last success
        # at most 1 s old, so a failover shorter than session timeout - 1 s costs no
        # rebalance.
        "heartbeat.interval.ms": min(1000, session_timeout_ms // 3),
        # Bounded memory: librdkafka stops fetching once this much waits unconsumed.
        "queued.max.messages.kbytes": max_prefetch_kbytes,
        "fetch.wait.max.ms": 20,
        # Once the prefetch queue is full, librdkafka re-checks it only after this long
        # (default 1 s): at ~30k events/s the worker empties 16 MB in less, and after a
        # backpressure pause (which drops the prefetch) fetching must restart at once.
        "fetch.queue.backoff.ms": 20,
        # One fetch response may overshoot the queue bound by up to this much (default
        # 50 MB, lz4-compressed on the wire): keep the overshoot small.
        "fetch.max.bytes": 4 * 1024 * 1024,
        # Incremental rebalancing: a worker joining or leaving moves only the partitions
        # that change owner; every other partition keeps being processed, and its state
        # stays in memory (no stop-the-world revoke of everything, as with the eager
        # assignors). Sticky: a restarted worker tends to get its partitions back.
        # KIP-848's `group.protocol=consumer` would also drop the group-wide sync barrier,
        # but transactional offset commits are fenced here by the classic generation,
        # which cooperative-sticky keeps; see docs (guarantees).
        "partition.assignment.strategy": "cooperative-sticky",
        # Offsets are committed inside checkpoint transactions (KIP-447); reading them
        # back must wait for a commit still in flight, which read_committed does
        # (OffsetFetch with require_stable).
        "isolation.level": "read_committed",
        "logger": _client_log,
    }
    config.update(extra or {})
    return config


class BatchConsumer:
    """A pipeline's group consumer, driven from one thread (see the module docstring)."""

    def __init__(
        self,
        bootstrap: KafkaConnection | str,
        group_id: str,
        topic: str,
        *,
        on_assign: AssignCallback,
        on_revoke: RevokeCallback,
        on_lost: RevokeCallback,
        session_timeout_ms: int = 10_000,
        max_prefetch_kbytes: int = 8_192,
        extra: dict | None = None,
    ) -> None:
        self.topic = topic
        self._consumer = Consumer(
            consumer_config(
                bootstrap,
                group_id,
                session_timeout_ms=session_timeout_ms,
                max_prefetch_kbytes=max_prefetch_kbytes,
                extra=extra,
            )
        )
        # The group's committed offsets of the assigned partitions (read once per partition,
        # then told by the checkpoint committer after each commit): lag needs no broker call.
        self._committed: dict[int, int] = {}
        self._on_assign, self._on_revoke, self._on_lost = on_assign, on_revoke, on_lost
        self._paused_partitions: set[int] = set()
        self._lock = threading.Lock()  # guards _ownership (read by other threads)
        self._ownership = Ownership(None, {})
        self._metadata_read_at = 0.0
        self._consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost)

    # --- ownership (librdkafka calls these from inside consume() or close(), on this thread) ----

    def ownership(self) -> Ownership:
        """The current group metadata and partition epochs; any thread, never blocks."""
        with self._lock:
            return self._ownership

    def _set_ownership(self, epochs: dict[int, int]) -> None:
        metadata = self._consumer.consumer_group_metadata()
        with self._lock:
            self._ownership = Ownership(metadata, epochs)
        self._metadata_read_at = time.monotonic()

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        new = {tp.partition: next(_epochs) for tp in partitions}
        self._set_ownership({**self._ownership.epochs, **new})
        # Called for every rebalance this member takes part in, with nothing new as often as not:
        # membership itself is news (ready with no partition when there are more workers).
        self._on_assign(new)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Graceful hand-over: the callback's owner checkpoints the partitions before they move,
        so it runs while this member still owns them; then they are forgotten."""
        revoked = {tp.partition for tp in partitions}
        self._set_ownership(self._ownership.epochs)  # the generation the final commit needs
        if revoked:
            self._on_revoke(revoked)
        self._forget(revoked)

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions lost (session expired, fenced): another member may own them already, so
        they are forgotten first, and nothing is written for them."""
        lost = {tp.partition for tp in partitions}
        self._forget(lost)
        if lost:
            self._on_lost(lost)

    def _forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._committed.pop(partition, None)
        self._paused_partitions -= partitions
        self._set_ownership({p: e for p, e in self._ownership.epochs.items() if p not in partitions})

    def note_committed(self, offsets: dict[int, int], epochs: dict[int, int]) -> None:
        """Offsets the checkpoint committer committed (any thread); kept for partitions still
        owned under the same epoch, for the lag monitor."""
        current = self._ownership.epochs
        for partition, offset in offsets.items():
            if current.get(partition) == epochs.get(partition):
                self._committed[partition] = offset

    def next_batch(
        self,
        max_size: int,
        *,
        linger: float = 0.0,
        max_wait: float = 0.0,
        coalesce: float = 0.0,
        coalesce_events: int = 2,
        poll_timeout: float = 0.1,
    ) -> list[Message]:
        consume = self._consumer.consume
        batch = consume(max_size, timeout=0)
        if not batch:
            batch = consume(1, timeout=poll_timeout)
            if not batch:
                return []
            batch += consume(max_size - len(batch), timeout=0)
        if linger <= 0 and coalesce > 0 and len(batch) >= coalesce_events:
            linger = coalesce
        if linger > 0 and len(batch) < max_size:
            deadline = time.monotonic() + min(linger, max_wait)
            while len(batch) < max_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                batch += consume(max_size - len(batch), timeout=min(left, 0.005))
        if time.monotonic() - self._metadata_read_at > METADATA_REFRESH_S:
            self._set_ownership(self._ownership.epochs)
        return [m for m in batch if _usable(m)]

    def rewind(self) -> dict[int, int]:
        """Seek every assigned partition back to the group's committed offset (log start where
        none) under a new epoch, so whatever was fetched under the old one is discarded.
        Exactly-once uses it after an aborted transaction. Returns the new epochs."""
        assigned = self._consumer.assignment()
        committed = (
            retry_kafka(lambda: self._consumer.committed(assigned, timeout=10), timeout=30, what="reading the committed offsets")
            if assigned
            else []
        )
        epochs = {}
        for tp in committed:
            epochs[tp.partition] = next(_epochs)
            self._committed.pop(tp.partition, None)

            def log_start(tp: TopicPartition = tp) -> int:
                return self._consumer.get_watermark_offsets(tp, timeout=10)[0]

            target = tp.offset if tp.offset >= 0 else retry_kafka(log_start, timeout=30, what="reading the log start")
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, target))
        self._set_ownership({**self._ownership.epochs, **epochs})
        return epochs

    # --- backpressure (consumer thread) -------------------------------------------------------

    def pause(self) -> list[int]:
        """Stop fetching every assigned partition; librdkafka drops what it prefetched (the
        backlog waits in Kafka) and resumes from the next unconsumed offset. Returns them."""
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.pause(assigned)
        self._paused_partitions = {tp.partition for tp in assigned}
        return [tp.partition for tp in assigned]

    def resume(self) -> None:
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.resume(assigned)
        self._paused_partitions = set()

    # --- lag -----------------------------------------------------------------------------------

    def lag_snapshot(self, partitions: list[int], timeout: float = 5.0) -> list[PartitionOffsets]:
        """Per partition: log-end offset (high watermark), the group's committed offset (None if
        none), and the position (next offset this consumer hands out; None before the first).

        Local reads in the usual case (microseconds: it runs between two fetches on the consumer
        thread); the broker is asked only for a partition's first committed offset and for the
        log-end of paused or not yet fetched partitions."""
        tps = [TopicPartition(self.topic, p) for p in partitions]
        if not tps:
            return []
        unknown = [tp for tp in tps if tp.partition not in self._committed]
        if unknown:
            for tp in self._consumer.committed(unknown, timeout=timeout):
                # -1001 (none committed yet) is remembered too: only our own commits change it.
                self._committed.setdefault(tp.partition, tp.offset)
        committed = self._committed
        positions = {tp.partition: tp.offset for tp in self._consumer.position(tps)}
        out = []
        for tp in tps:
            # The cached high watermark comes with every fetch response: free. A paused partition
            # (or one not fetched yet) has no fresh cache, so ask the broker.
            commit = committed.get(tp.partition, -1)
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high < 0 or tp.partition in self._paused_partitions or (commit < 0 and low < 0):
                low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout)
            position = positions.get(tp.partition, -1)
            out.append(
                PartitionOffsets(
                    tp.partition,
                    high,
                    commit if commit >= 0 else None,
                    position if position >= 0 else None,
                    low if low >= 0 else None,
                )
            )
        return out

    def close(self) -> None:
        self._consumer.close()


def records_from_messages(messages: list[Message]) -> list[InputRecord]:
    """The pipeline's client-free view of consumed messages (timestamps in ms). Headers that
    cannot be read (see :func:`_headers`) come as None; the message itself is kept."""
    # A consumed message always has its topic, partition and offset; confluent_kafka types them
    # Optional (a Message built by hand has none), and a check per message would cost the hot path.
    return [
        InputRecord(m.key(), m.value(), m.topic(), m.partition(), m.offset(), m.timestamp()[1], _headers(m))  # type: ignore[arg-type]
        for m in messages
    ]


def _headers(message: Message) -> tuple[tuple[str, bytes | None], ...] | None:
    """A message's headers; None when confluent-kafka cannot decode them (a header name that is
    not UTF-8 raises SystemError from inside `headers()`): the worker does not use headers to
    process an event, so such a record is processed, and its dead letter (if any) says so."""
    try:
        # confluent_kafka types headers() with its produce-side HeadersType (a dict, or str
        # values); a consumed message's are a list of (str, bytes | None).
        return tuple(message.headers() or ())  # type: ignore[arg-type]
    except (SystemError, UnicodeDecodeError):
        return None


def _usable(msg: Message) -> bool:
    err = msg.error()
    if err is None:
        return True
    if err.code() != KafkaError._PARTITION_EOF:
        log.warning("consumer error", extra={"error": err.str()})
    return False
