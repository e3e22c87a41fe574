"""One pipeline's batch path: decode -> featurize -> infer -> post-process -> produce -> checkpoint.

This module composes the stages: :class:`~stream_infer.stages.prepare.BatchPreparer` (decode,
validate, featurize), :class:`~stream_infer.stages.engine.InferenceEngine` (on the event loop or
an executor thread, two halves overlapped for large batches),
:class:`~stream_infer.stages.finish.BatchFinisher` (scores, alerts, output messages), and
:class:`~stream_infer.state.partitions.OwnedPartitions` (ownership, restore, progress). It knows
Kafka only through two narrow interfaces: an :class:`~stream_infer.kafka.producer.AsyncProducer`
for outputs and a :class:`~stream_infer.state.changelog.Changelog` for state.

Contract (what the tests hold it to):

* every input record yields a prediction or a dead letter, produced with acks=all, before the
  record counts as processed (only then may its offset be committed);
* batches are processed one at a time, so outputs of one key keep input order;
* ``partitions.snapshot()`` is taken between batches; it covers the partitions this pipeline owns
  (with their assignment epochs), and the checkpoint protocol (:mod:`stream_infer.state.checkpoint`)
  commits it with the state changelog, so after a crash or a rebalance the restored state and
  the committed offset agree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from stream_infer import metrics
from stream_infer.config import PipelineConfig
from stream_infer.controller import CostProfile, batch_sizes
from stream_infer.kafka.producer import AsyncProducer, OutMessage
from stream_infer.records import InputRecord
from stream_infer.stages.engine import calibrate, engine_for
from stream_infer.stages.finish import BatchFinisher, BatchResult
from stream_infer.stages.outputs import Source
from stream_infer.stages.prepare import BatchPreparer, PreparedBatch
from stream_infer.state import StateStore
from stream_infer.state.changelog import Changelog
from stream_infer.state.partitions import OwnedPartitions

__all__ = ["OVERLAP_MIN_EVENTS", "BatchResult", "Pipeline", "PreparedBatch"]

log = logging.getLogger(__name__)

# Batches of at least this many events run as two overlapped halves (Pipeline._submit_overlapped).
# Smaller halves lose more than they gain: the executor thread, back from ONNX Runtime, waits for
# the GIL the event loop holds, and the loop then waits for it (docs/performance.md has the figures).
OVERLAP_MIN_EVENTS = 512


class _Inferred(NamedTuple):
    raw: dict | None  # the model's outputs; None if it failed or nothing needed it
    error: Exception | None  # why the model failed on this batch
    seconds: float


class Pipeline:
    """One pipeline's stages and the bookkeeping around them: :attr:`preparer` (decode ..
    featurize), :attr:`engine`, :attr:`finisher` (scores, alerts, output messages),
    :attr:`partitions` (ownership, restore, progress, snapshots) and the outputs in flight."""

    def __init__(self, config: PipelineConfig, producer: AsyncProducer | None, changelog: Changelog | None) -> None:
        self.config = config
        self.name = config.name
        self.engine = engine_for(config)
        self.store = StateStore(key_ttl_ms=config.state.key_ttl_ms, max_keys=config.state.max_keys)
        self.preparer = BatchPreparer(config, self.store)
        self.finisher = BatchFinisher(config, {"name": self.engine.name, "version": self.engine.version}, self.store)
        self.partitions = OwnedPartitions(config.name, self.store, changelog)
        self.producer = producer  # set by the worker once Kafka is reachable
        # Records whose outputs are queued but not known to be acknowledged yet, and their batches.
        self.unacknowledged: list[InputRecord] = []
        self.unacknowledged_batches = 0
        self.unacknowledged_bytes = 0  # their values' bytes: what the in-flight byte bound counts
        self.acknowledged_events = self.acknowledged_batches = 0  # monotonic: the worker's in-flight count subtracts them
        # Measured seconds by batch size, of inference (calibrated at start) and of the whole batch
        # path on the event loop (live batches only): the batching controller reads both.
        self.inference_cost = CostProfile()
        self.batch_cost = CostProfile()
        # Batches up to this many rows run on the event loop; larger ones in the executor, so the
        # loop keeps serving the source task (prefetching, in throughput mode), timers and HTTP
        # meanwhile. Set by calibrate().
        self.inline_rows = 0
        # One thread: ONNX Runtime parallelises inside a run (intra_op_threads); batches stay ordered.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{self.name}")
        self._e2e = metrics.END_TO_END_SECONDS.labels(self.name)
        metrics.MODEL.labels(self.name).info(
            {"name": self.engine.name, "version": self.engine.version, "provider": self.engine.provider}
        )

    def calibrate(self, inline_budget_s: float | None = None, max_seconds: float = 3.0) -> int:
        """Time inference at every batch size up to the cap into :attr:`inference_cost`, and run
        batches inline (on the event loop) while they cost at most `inline_budget_s` (default: the
        latency budget, so every latency-mode batch); returns that row limit. See
        :func:`~stream_infer.stages.engine.calibrate`.

        Why inline up to the latency budget: in latency mode the source waits for the agent, so
        the loop has nothing to do while a batch is inferred, and the hop to the executor thread
        and back is two thread wake-ups, each of which may wait for a core the broker is using
        (docs/performance.md has the latency this saves)."""
        if inline_budget_s is None:
            inline_budget_s = self.config.batching.latency_budget_s
        sizes = batch_sizes(self.config.batching.max_batch_size)
        self.inline_rows = calibrate(self.engine, sizes, self.inference_cost, inline_budget_s, max_seconds)
        return self.inline_rows

    # --- the batch path -------------------------------------------------------------------------

    async def process(self, records: Sequence[InputRecord], arrival: float) -> BatchResult:
        """The whole batch path; returns once every output is acknowledged by the broker."""
        result = await self.submit(records, arrival)
        await self.wait_acknowledged()
        return result

    async def submit(self, records: Sequence[InputRecord], arrival: float) -> BatchResult:
        """Decode, featurize, infer, post-process and hand the outputs to the producer; returns
        without waiting for the broker's acknowledgement, so the next batch can start meanwhile.

        `arrival` is when the batch was fetched (monotonic clock): `latency_ms` counts from it. The
        batch's offsets count as processed only after :meth:`wait_acknowledged`: checkpoints call
        it first. Memory stays bounded: librdkafka's producer queue is bounded, and
        :meth:`AsyncProducer.send_batch` waits when it is full.
        """
        await self.partitions.ensure_restored({r.partition for r in records})
        started = time.perf_counter()
        if len(records) >= OVERLAP_MIN_EVENTS:
            result = await self._submit_overlapped(records, arrival)
        else:
            batch = self.prepare(records)
            if batch.matrix is None or len(batch.matrix) <= self.inline_rows:
                # Within the latency budget: cheaper on the loop than the hop (see calibrate).
                inferred = self._infer(batch)
            else:
                inferred = await asyncio.get_running_loop().run_in_executor(self.executor, self._infer, batch)
            result = self._finish_and_send(batch, inferred, arrival)
        self.batch_cost.observe(len(records), time.perf_counter() - started)
        self.unacknowledged.extend(records)
        self.unacknowledged_batches += 1
        self.unacknowledged_bytes += sum(map(len, filter(None, [r.value for r in records])))
        return result

    async def _submit_overlapped(self, records: Sequence[InputRecord], arrival: float) -> BatchResult:
        """A large batch as two halves in order, each half's inference (on the executor thread,
        where ONNX Runtime runs without the GIL) overlapping the other half's Python work on the
        event loop: the second half is prepared while the first is inferred, and the first
        finished while the second is inferred. State and outputs see the events in the same order
        as one batch would; only the per-batch messages (a stale-skip summary) come per half.

        Why: draining a backlog, the event loop's thread is the bottleneck while the other core is
        partly idle, and inference is the part of its work that can run without the GIL."""
        loop = asyncio.get_running_loop()
        half = len(records) // 2
        first = self.prepare(records[:half])
        first_inferred = loop.run_in_executor(self.executor, self._infer, first)
        second = self.prepare(records[half:])
        inferred = await first_inferred
        second_inferred = loop.run_in_executor(self.executor, self._infer, second)
        result = self._finish_and_send(first, inferred, arrival)
        return result + self._finish_and_send(second, await second_inferred, arrival)

    def _infer(self, batch: PreparedBatch) -> _Inferred:
        """Run the model on a prepared batch, on any thread (one at a time)."""
        if batch.matrix is None:
            return _Inferred(None, None, 0.0)
        started = time.perf_counter()
        try:
            raw, error = self.engine.run(batch.matrix), None
        except Exception as err:  # a model failing on valid input is data too: keep going, say why
            raw, error = None, err
        return _Inferred(raw, error, time.perf_counter() - started)

    def _finish_and_send(self, batch: PreparedBatch, inferred: _Inferred, arrival: float) -> BatchResult:
        """On the event loop: record the inference time, post-process, queue the outputs."""
        if batch.matrix is not None:
            metrics.INFERENCE_SECONDS.labels(self.name).observe(inferred.seconds)
            self.inference_cost.observe(len(batch.matrix), inferred.seconds)
        messages, sources, result = self.finisher.finish(batch, inferred.raw, inferred.error, arrival)
        outputs = self.finisher.outputs

        def rejected(index: int, message: OutMessage, error: str) -> OutMessage | None:
            if message is messages[index]:  # the output itself: its input's dead letter replaces it
                return outputs.rejected(message, sources[index], error)
            outputs.dropped(message, sources[index], error)  # the replacement was refused too
            return None

        self._producer().send_batch(messages, rejected)
        if batch.timestamps_ms is not None and len(batch.timestamps_ms):
            metrics.observe_many(self._e2e, (time.time() * 1000 - batch.timestamps_ms) / 1000)
        return result

    async def wait_acknowledged(self) -> None:
        """Wait until every submitted batch's outputs are acknowledged (then their offsets count
        as processed); raises DeliveryError if any output failed."""
        if self.unacknowledged:
            await self._producer().wait_acknowledged()
            self.mark_acknowledged()

    def acknowledged_now(self) -> bool:
        """Like :meth:`wait_acknowledged` without waiting: True (and the offsets count as
        processed) if every submitted output is already acknowledged, else False."""
        if self.unacknowledged:
            if not self._producer().idle():
                return False
            self.mark_acknowledged()
        return True

    def _producer(self) -> AsyncProducer:
        if self.producer is None:
            raise RuntimeError(f"pipeline {self.name}: no producer (the worker sets it once Kafka is reachable)")
        return self.producer

    def mark_acknowledged(self) -> None:
        """Every submitted output is acknowledged: their records count as processed."""
        self.partitions.advance(self.unacknowledged)
        self.acknowledged_events += len(self.unacknowledged)
        self.acknowledged_batches += self.unacknowledged_batches
        self.unacknowledged = []
        self.unacknowledged_batches = 0
        self.unacknowledged_bytes = 0

    def prepare(self, records: Sequence[InputRecord]) -> PreparedBatch:
        """Skip replays below a restored checkpoint, decode, validate, featurize (updates state)."""
        kept, skipped = self.partitions.skip_replays(records)
        if skipped:
            metrics.REPLAYS_SKIPPED.labels(self.name).inc(skipped)
        return self.preparer.prepare(kept, skipped)

    def finish(
        self, batch: PreparedBatch, raw: dict | None, error: Exception | None, arrival: float
    ) -> tuple[list[OutMessage], list[Source], BatchResult]:
        """See :meth:`BatchFinisher.finish`."""
        return self.finisher.finish(batch, raw, error, arrival)

    def reset(self) -> int:
        """Forget every partition's state and every record not yet checkpointed (exactly-once
        rewind: they are consumed again from the committed offsets). Returns how many records
        were in hand."""
        dropped = len(self.unacknowledged)
        self.mark_acknowledged()
        self.partitions.reset()
        return dropped

    def close(self) -> None:
        self.executor.shutdown(wait=True)
