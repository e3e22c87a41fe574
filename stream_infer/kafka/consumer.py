"""Consume in batches: confluent-kafka's consumer, driven from one dedicated thread.

Why not Faust's per-event stream: profiling the first worker (see README, Performance) showed the
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

Rebalance and commit callbacks run inside `next_batch`, on the consumer thread.

Every method is to be called from that one thread. confluent-kafka (2.16 on) serializes calls on
a Consumer: a call from another thread waits until the `consume()` in progress returns (up to
`poll_timeout` when idle). An asynchronous commit from the event loop therefore blocked the loop
for 50-80 ms at every checkpoint, and that was the p99 latency at low load.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from stream_infer.decode import InputRecord

log = logging.getLogger(__name__)
_client_log = logging.getLogger("stream_infer.kafka.client")

RebalanceCallback = Callable[[list[tuple[str, int]]], None]


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


class BatchConsumer:
    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topic: str,
        *,
        on_assign: RebalanceCallback,
        on_revoke: RebalanceCallback,
        session_timeout_ms: int = 10_000,
        max_prefetch_kbytes: int = 8_192,
    ) -> None:
        self.topic = topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                # Offsets are committed by the pipeline, only after outputs (and state) are safe.
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(1000, session_timeout_ms // 3),
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
                "partition.assignment.strategy": "cooperative-sticky",
                "on_commit": self._on_commit,
                "logger": _client_log,
            }
        )
        # The group's committed offsets of the assigned partitions, as the broker confirmed them
        # (read once per partition, then from each commit's result): lag needs no broker call.
        self._committed: dict[int, int] = {}
        self._assigned_partitions: set[int] = set()
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._paused_partitions: set[int] = set()
        self._consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked)

    # librdkafka calls these from inside consume(), on the consumer thread.
    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned_partitions.update(tp.partition for tp in partitions)
        self._on_assign([(tp.topic, tp.partition) for tp in partitions])

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            self._on_revoke([(tp.topic, tp.partition) for tp in partitions])
            for tp in partitions:
                self._committed.pop(tp.partition, None)
                self._assigned_partitions.discard(tp.partition)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            # A later checkpoint commits newer offsets; until then lag shows the last good commit.
            log.warning("offset commit failed", extra={"error": err.str()})
            return
        for tp in partitions:
            # A late result for a partition revoked meanwhile is not ours to remember.
            if tp.error is None and tp.offset >= 0 and tp.topic == self.topic and tp.partition in self._assigned_partitions:
                self._committed[tp.partition] = tp.offset

    def next_batch(self, max_size: int, *, linger: float = 0.0, max_wait: float = 0.0, coalesce: float = 0.0,
                   coalesce_events: int = 2, poll_timeout: float = 0.1) -> list[Message]:
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
        return [m for m in batch if _usable(m)]

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
                PartitionOffsets(tp.partition, high, commit if commit >= 0 else None,
                                 position if position >= 0 else None, low if low >= 0 else None)
            )
        return out

    def commit(self, offsets: dict[tuple[str, int], int], *, asynchronous: bool = True) -> None:
        """Commit `next offset to read` per partition (Kafka's convention)."""
        if offsets:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=asynchronous
            )

    def close(self) -> None:
        self._consumer.close()


def records_from_messages(messages: list[Message]) -> list[InputRecord]:
    """The pipeline's client-free view of consumed messages (timestamps in ms)."""
    return [
        InputRecord(m.key(), m.value(), m.topic(), m.partition(), m.offset(), m.timestamp()[1], tuple(m.headers() or ()))
        for m in messages
    ]


def _usable(msg: Message) -> bool:
    err = msg.error()
    if err is None:
        return True
    if err.code() != KafkaError._PARTITION_EOF:
        log.warning("consumer error", extra={"error": err.str()})
    return False
