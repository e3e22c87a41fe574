"""The fetch side of a pipeline: its consumer, the thread every consumer call runs on, the source
task that hands batches to the agent, backpressure, and the in-flight count.

Contract: every call into the consumer happens on `thread` (librdkafka's rebalance callbacks
therefore run there too, see :mod:`stream_infer.kafka.consumer`). The event loop awaits that
thread only from the source and monitor tasks, never while holding the batch lock, so a rebalance
callback that waits for the batch lock cannot deadlock with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from stream_infer import metrics
from stream_infer.config import Config, PipelineConfig
from stream_infer.controller import COALESCE_EVENTS
from stream_infer.kafka.connection import KafkaConnection
from stream_infer.kafka.consumer import AssignCallback, BatchConsumer, RevokeCallback
from stream_infer.stages.pipeline import Pipeline

log = logging.getLogger(__name__)
T = TypeVar("T")


class BatchSource:
    """Fetches batches for one pipeline. The batching controller sets `batch_size`, `linger` and
    `coalesce`; `adaptive` says whether it runs (see stream_infer.runtime.monitor)."""

    def __init__(self, pipeline: Pipeline, config: Config, connection: KafkaConnection) -> None:
        self.pipeline = pipeline
        self.config = config
        self.connection = connection  # bootstrap + TLS/SASL settings
        self.pc: PipelineConfig = pipeline.config
        self.name = pipeline.name
        self.batch_size = self.pc.batching.max_batch_size
        self.linger = 0.0
        self.coalesce = 0.0
        self.latency_mode = lambda: True  # set by the monitor when the controller runs
        # In-flight accounting (events and batches fetched, not yet acknowledged); see in_flight().
        self.fetched_events = self.fetched_batches = 0
        self.dropped_events = self.dropped_batches = 0
        self.queued_events = 0  # in the channel, not yet taken by the agent
        self.queued_bytes = 0  # their values' bytes
        self.full_fetches = 0  # fetches that filled the batch size (the controller reads it)
        # Set while the agent has no batch in hand: in latency mode the source fetches only then.
        self.agent_free = asyncio.Event()
        self.agent_free.set()
        # Per partition, (first offset, timestamp) of each batch fetched: lag seconds reads the
        # timestamp of the oldest unprocessed record from it without asking the broker.
        self.batch_starts: dict[int, deque[tuple[int, int]]] = {}
        self.consumer: BatchConsumer | None = None
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"consume-{self.name}")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the consumer thread (between two fetches)."""
        assert self.loop is not None
        return await self.loop.run_in_executor(self.thread, fn, *args)

    async def connect(self, on_assign: AssignCallback, on_revoke: RevokeCallback, on_lost: RevokeCallback) -> BatchConsumer:
        self.loop = asyncio.get_running_loop()
        kafka = self.config.kafka
        self.consumer = await self.call(
            lambda: BatchConsumer(
                self.connection,
                kafka.group_id,
                self.pc.input_topic,
                on_assign=on_assign,
                on_revoke=on_revoke,
                on_lost=on_lost,
                session_timeout_ms=kafka.session_timeout_ms,
            )
        )
        return self.consumer

    async def run(self, send: Callable[[Any], Awaitable[None]], drain: Callable[[], Awaitable[None]]) -> None:
        """The source task: fetch and `send` (messages, epochs, fetched_at) to the agent until
        stopped. At the in-flight bound, pause the partitions and `drain` until half is left."""
        assert self.consumer is not None
        consumer = self.consumer
        max_wait = self.pc.batching.max_wait_ms / 1000
        bound = self.pc.batching.max_in_flight_events
        byte_bound = self.pc.batching.max_in_flight_bytes

        # A batch holds at most about an eighth of the byte bound: with large values the batch is
        # cut to fewer events (by the mean value size seen, which rises at once and falls slowly).
        batch_bytes = byte_bound / 8
        value_bytes = 0.0

        def fetch():
            nonlocal value_bytes
            size = self.batch_size if value_bytes <= 0 else max(1, min(self.batch_size, int(batch_bytes / value_bytes)))
            messages = consumer.next_batch(
                size, linger=self.linger, max_wait=max_wait, coalesce=self.coalesce, coalesce_events=COALESCE_EVENTS
            )
            if messages:
                mean = message_bytes(messages) / len(messages)
                value_bytes = mean if mean > value_bytes else 0.8 * value_bytes + 0.2 * mean
            # Read on this thread right after the fetch: the epochs the messages belong to.
            return messages, consumer.ownership().epochs

        try:
            while not self.stopping:
                if self.in_flight()[0] >= bound or self.in_flight_bytes() >= byte_bound:
                    await self._pause_until_drained(bound, byte_bound, drain)
                if self.latency_mode():
                    # Fetch only when the agent is free: what arrived while it worked is the next
                    # batch. Fetched earlier, a small batch would queue behind the one in hand,
                    # and what arrived meanwhile behind both. Under a backlog (throughput mode)
                    # the next batch is fetched while the agent works.
                    await self.agent_free.wait()
                messages, epochs = await self.call(fetch)
                if messages:
                    if len(messages) >= self.batch_size:
                        self.full_fetches += 1
                    self.fetched_events += len(messages)
                    self.fetched_batches += 1
                    self.queued_events += len(messages)
                    self.queued_bytes += message_bytes(messages)
                    self.agent_free.clear()
                    await send((messages, epochs, time.monotonic()))
        finally:
            self.stopping = True

    def note_batch_start(self, partition: int, offset: int, timestamp_ms: int) -> None:
        self.batch_starts.setdefault(partition, deque()).append((offset, timestamp_ms))

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self.batch_starts.pop(partition, None)

    def drop(self, events: int, batches: int = 1) -> None:
        """Fetched events that will not be processed (not owned, or stopping): out of flight."""
        self.dropped_events += events
        self.dropped_batches += batches

    def in_flight(self) -> tuple[int, int]:
        """(events, batches) fetched whose outputs are not yet acknowledged by the broker."""
        events = self.fetched_events - self.dropped_events - self.pipeline.acknowledged_events
        batches = self.fetched_batches - self.dropped_batches - self.pipeline.acknowledged_batches
        return events, batches

    def in_flight_bytes(self) -> int:
        """Bytes of the values fetched and not yet acknowledged: queued for the agent, or submitted
        with their outputs unacknowledged (the pipeline keeps those records until the acks)."""
        return self.queued_bytes + self.pipeline.unacknowledged_bytes

    async def _pause_until_drained(self, bound: int, byte_bound: int, drain: Callable[[], Awaitable[None]]) -> None:
        """Backpressure: stop fetching (the backlog waits in Kafka) until in-flight work is half
        drained, in events and in bytes; once the agent has taken every queued batch, `drain`
        (acks or a commit)."""
        assert self.consumer is not None
        partitions = await self.call(self.consumer.pause)
        metrics.PAUSES.labels(self.name).inc()
        metrics.PAUSED_PARTITIONS.labels(self.name).set(len(partitions))
        log.info(
            "partitions paused: in-flight bound reached",
            extra={
                "pipeline": self.name,
                "in_flight_events": self.in_flight()[0],
                "bound": bound,
                "in_flight_bytes": self.in_flight_bytes(),
                "byte_bound": byte_bound,
            },
        )
        try:
            while not self.stopping and (self.in_flight()[0] > bound // 2 or self.in_flight_bytes() > byte_bound // 2):
                if self.queued_events == 0:
                    await drain()
                else:
                    await asyncio.sleep(0.002)
        finally:
            await self.call(self.consumer.resume)
            metrics.PAUSED_PARTITIONS.labels(self.name).set(0)
            log.info("partitions resumed", extra={"pipeline": self.name, "in_flight_events": self.in_flight()[0]})

    async def close(self, timeout: float) -> None:
        """Leave the group (revoking every partition through the callbacks), within `timeout`."""
        if self.consumer is not None:
            try:
                await asyncio.wait_for(self.call(self.consumer.close), timeout)
            except TimeoutError:
                log.warning(
                    "consumer did not close within %.0f s; exiting anyway (the group moves its partitions "
                    "after the session timeout)",
                    timeout,
                    extra={"pipeline": self.name},
                )
        self.thread.shutdown(wait=False)


def message_bytes(messages: list) -> int:
    """The values' bytes of fetched messages (len() of a confluent-kafka Message is its value's)."""
    return sum(map(len, messages))
