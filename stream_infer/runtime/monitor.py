"""Lag of one pipeline's partitions, the batching controller it steers, and whether the pipeline
is making progress (for /healthz).

Lag means what Kafka means: log-end offset minus the group's committed offset, per partition
(committed offsets as the checkpoint committer committed them); lag seconds is now minus the
timestamp of the oldest unprocessed record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from confluent_kafka import KafkaException

from stream_infer import metrics
from stream_infer.config import Config
from stream_infer.controller import LATENCY, THROUGHPUT, BatchController
from stream_infer.kafka.admin import record_timestamps
from stream_infer.runtime.source import BatchSource
from stream_infer.stages.pipeline import Pipeline

log = logging.getLogger(__name__)

# How often the lag monitor samples offsets and the batching controller steps.
LAG_INTERVAL_S = 1.0


class LagMonitor:
    def __init__(self, pipeline: Pipeline, source: BatchSource, config: Config) -> None:
        self.pipeline = pipeline
        self.source = source
        self.config = config
        self.name = pipeline.name
        self.topic = pipeline.config.input_topic
        batching = pipeline.config.batching
        self.adaptive = batching.adaptive
        self.controller = BatchController(
            batching.max_batch_size,
            batching.max_wait_ms / 1000,
            batching.latency_budget_s,
            (pipeline.inference_cost, pipeline.batch_cost),
        )
        if self.adaptive:
            source.batch_size = self.controller.setting.batch_size
            source.coalesce = self.controller.setting.coalesce
            source.latency_mode = lambda: self.controller.mode == LATENCY
        metrics.CONTROLLER_BATCH_SIZE.labels(self.name).set(source.batch_size)
        metrics.CONTROLLER_MODE.labels(self.name, LATENCY).set(1)
        metrics.CONTROLLER_MODE.labels(self.name, THROUGHPUT).set(0)
        metrics.PAUSED_PARTITIONS.labels(self.name).set(0)
        self._full_fetches_seen = 0
        self._peeked: dict[int, tuple[int, int | None]] = {}  # partition -> (offset, timestamp) read from Kafka
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"lag-{self.name}")
        # Health: total lag of the owned partitions at the last sample, when that sample was
        # taken, and when lag was last zero.
        self.lag = 0
        self.sampled_at = time.monotonic()
        self.caught_up_at = time.monotonic()

    async def run(self) -> None:
        """A task rather than a timer: a slow sample (reading a record's timestamp from a paused
        partition) delays the next one instead of overlapping it."""
        while not self.source.stopping:
            await asyncio.sleep(LAG_INTERVAL_S)
            try:
                await self.sample()
            except Exception:  # the monitor must never take the worker down
                log.exception("lag monitor failed; trying again", extra={"pipeline": self.name})

    async def sample(self) -> None:
        """Sample offsets of the owned partitions, publish lag gauges, step the controller."""
        consumer = self.source.consumer
        owned = self.pipeline.partitions.owned
        if consumer is None or self.source.stopping:
            return
        if not owned:
            self.lag, self.sampled_at, self.caught_up_at = 0, time.monotonic(), time.monotonic()
            return
        try:
            # On the consumer thread, between two fetches (see BatchConsumer: one thread per handle).
            offsets = await self.source.call(consumer.lag_snapshot, sorted(owned))
        except KafkaException as err:
            log.warning("lag sample failed; next try in %.0f s", LAG_INTERVAL_S, extra={"pipeline": self.name, "error": str(err)})
            return
        now_ms = time.time() * 1000
        backlog = self.source.queued_events
        total = 0
        for o in offsets:
            if o.partition not in self.pipeline.partitions.owned:
                continue
            lag = o.lag
            total += lag
            start = o.oldest_unprocessed
            starts = self.source.batch_starts.get(o.partition)
            while starts and starts[0][0] < start:  # processed and committed: forget
                starts.popleft()
            seconds = 0.0
            if lag > 0:
                timestamp = await self._oldest_unprocessed_timestamp(o.partition, start)
                seconds = max(0.0, (now_ms - timestamp) / 1000) if timestamp is not None else float("nan")
            labels = (self.name, self.topic, str(o.partition))
            metrics.LAG_MESSAGES.labels(*labels).set(lag)
            metrics.LAG_SECONDS.labels(*labels).set(seconds)
            backlog += max(0, o.log_end - (o.position if o.position is not None else start))
        self.lag, self.sampled_at = total, time.monotonic()
        if total == 0:
            self.caught_up_at = self.sampled_at
        events, batches = self.source.in_flight()
        metrics.IN_FLIGHT_EVENTS.labels(self.name).set(events)
        metrics.IN_FLIGHT_BATCHES.labels(self.name).set(batches)
        if self.adaptive:
            self._steer(backlog)

    def _steer(self, backlog: int) -> None:
        before = self.controller.mode
        source = self.source
        filled, self._full_fetches_seen = source.full_fetches > self._full_fetches_seen, source.full_fetches
        setting = self.controller.update(backlog, batches_filled=filled)
        source.batch_size, source.linger, source.coalesce = setting.batch_size, setting.linger, setting.coalesce
        metrics.CONTROLLER_BATCH_SIZE.labels(self.name).set(setting.batch_size)
        for mode in (LATENCY, THROUGHPUT):
            metrics.CONTROLLER_MODE.labels(self.name, mode).set(1 if mode == setting.mode else 0)
        if setting.mode != before:
            log.info(
                "batching controller: %s mode",
                setting.mode,
                extra={
                    "pipeline": self.name,
                    "backlog": backlog,
                    "batch_size": setting.batch_size,
                    "wait_ms": round(setting.linger * 1000, 1),
                },
            )

    async def _oldest_unprocessed_timestamp(self, partition: int, offset: int) -> int | None:
        """Timestamp of the record at `offset`: from the batches fetched if one starts there (the
        usual case: commits fall on batch boundaries), else read once from Kafka (a paused or not
        yet fetched partition) and remembered while the offset stays the same."""
        starts = self.source.batch_starts.get(partition)
        if starts and starts[0][0] == offset:
            return starts[0][1]
        peeked = self._peeked.get(partition)
        if peeked is None or peeked[0] != offset:
            key = (self.topic, partition)
            found = await asyncio.get_running_loop().run_in_executor(
                self.thread,
                partial(record_timestamps, self.source.connection, {key: offset}, 2.0, group=self.config.kafka.group_id),
            )
            peeked = self._peeked[partition] = (offset, int(found[key] * 1000) if key in found else None)
        return peeked[1]

    def stalled_for(self, last_commit: float) -> float:
        """Seconds this pipeline has had lag without progress (0 when it has none, or progresses):
        since the later of the last commit that moved offsets and the last moment without lag.
        A lag sample that is itself overdue counts from the last one: the consumer thread may
        be stuck, and then nothing is known to progress."""
        now = time.monotonic()
        if now - self.sampled_at > 10 * LAG_INTERVAL_S:
            return now - self.sampled_at
        if self.lag == 0:
            return 0.0
        return now - max(last_commit, self.caught_up_at)

    def close(self) -> None:
        self.thread.shutdown(wait=True)
