"""One pipeline's batch path: decode -> featurize -> infer -> post-process -> produce -> checkpoint.

This module composes the stages; it knows Kafka only through two narrow interfaces (an
:class:`~stream_infer.kafka.producer.AsyncProducer` for outputs and a
:class:`~stream_infer.state.changelog.Changelog` for state) and the model only through
:class:`~stream_infer.stages.engine.InferenceEngine`.

Contract (what the tests hold it to):

* every input record yields a prediction or a dead letter, produced with acks=all, before the
  record is handed back to the caller as `done` (only then may its offset be committed);
* batches are processed one at a time, so outputs of one key keep input order;
* :meth:`snapshot` is taken between batches; it covers the partitions this pipeline owns (with
  their assignment epochs), and the checkpoint protocol (:mod:`stream_infer.state.checkpoint`)
  commits it with the state changelog, so after a crash or a rebalance the restored state and
  the committed offset agree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np

from stream_infer import metrics
from stream_infer.config import PipelineConfig
from stream_infer.controller import CostProfile, batch_sizes
from stream_infer.kafka.producer import AsyncProducer, OutMessage
from stream_infer.records import InputRecord
from stream_infer.stages.decode import DeadLetter, DecodedBatch, EventDecoder
from stream_infer.stages.engine import InferenceEngine
from stream_infer.stages.features import Featurizer
from stream_infer.stages.outputs import OutputWriter, Source
from stream_infer.stages.postprocess import AlertTracker, score_fields
from stream_infer.state import StateStore
from stream_infer.state.changelog import Changelog
from stream_infer.state.checkpoint import Checkpoint

log = logging.getLogger(__name__)

# Batches of at least this many events run as two overlapped halves (Pipeline._submit_overlapped).
# Measured draining 1M events (two pairs each): batches of 1024 gained 10% (56k -> 63k events/s);
# halves of 128 lost 20% (57k -> 45k): the executor thread, back from ONNX Runtime, waits for the
# GIL the event loop holds, and the loop then waits for it.
OVERLAP_MIN_EVENTS = 512


class _Inferred(NamedTuple):
    raw: dict | None  # the model's outputs; None if it failed or nothing needed it
    error: Exception | None  # why the model failed on this batch
    seconds: float


@dataclass
class BatchResult:
    predictions: int = 0
    alerts: int = 0
    dead_letters: int = 0
    reviews: int = 0
    skipped: int = 0
    stale_skipped: int = 0

    def __add__(self, other: BatchResult) -> BatchResult:
        """Counts of two parts of one batch, field by field."""
        return BatchResult(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass
class PreparedBatch:
    """A batch after decode and featurize: what inference needs, and what is already decided."""

    records: list[InputRecord] = field(default_factory=list)  # valid events' records, in input order
    keys: list[str] = field(default_factory=list)
    matrix: np.ndarray | None = None  # None: nothing to infer
    dead: list[DeadLetter] = field(default_factory=list)
    skipped: int = 0  # replays below a restored checkpoint
    stale: list[InputRecord] = field(default_factory=list)  # skipped by the staleness policy
    timestamps_ms: np.ndarray | None = None  # of every record processed (valid or dead), for e2e latency


@dataclass
class _Progress:
    """Offsets processed (outputs acknowledged) but not yet checkpointed, per partition."""

    frontier: dict[int, int] = field(default_factory=dict)  # partition -> next offset to process

    def advance(self, records: Sequence[InputRecord]) -> None:
        for record in records:
            if record.offset >= self.frontier.get(record.partition, -1):
                self.frontier[record.partition] = record.offset + 1


class Pipeline:
    def __init__(self, config: PipelineConfig, producer: AsyncProducer | None, changelog: Changelog | None) -> None:
        self.config = config
        self.name = config.name
        self.decoder = EventDecoder(
            config.schema_file,
            max_message_bytes=config.max_message_bytes,
            key_field=config.key_field,
            max_key_bytes=config.max_key_bytes,
        )
        self.featurizer = Featurizer(config.features)
        self.engine = InferenceEngine(
            config.model,
            width=config.features.width,
            outputs=[config.outputs.output],
            device=config.engine.device,
            intra_op_threads=config.engine.intra_op_threads,
        )
        self.model = {"name": self.engine.name, "version": self.engine.version}
        self.alerts = AlertTracker(config.alert, config.name) if config.alert else None
        self.outputs = OutputWriter(config, self.model)
        self.producer = producer  # set by the worker once Kafka is reachable
        # Set by the worker once the changelog topic exists; stays None for stateless pipelines.
        self.changelog = changelog
        self.store = StateStore(key_ttl_ms=config.state.key_ttl_ms, max_keys=config.state.max_keys)
        # The store's clock when the last prepare() began using keys: keys used since then stay
        # through the next eviction (see _bound_state).
        self._state_clock = 0
        self._uses_store = config.features.window > 1 or config.alert is not None or config.sequence_field is not None
        self._state_keys = metrics.STATE_KEYS.labels(self.name)
        self._evictions = {reason: metrics.STATE_EVICTIONS.labels(self.name, reason) for reason in ("ttl", "max_keys")}
        # Partitions this pipeline owns now -> the epoch of that assignment (see
        # stream_infer.kafka.consumer); records of any other partition or epoch are not processed.
        self.owned: dict[int, int] = {}
        self.loaded: set[int] = set()  # partitions whose state is restored (and owned)
        self.resume_at: dict[int, int] = {}  # partition -> checkpoint offset; below it: already done
        self.progress = _Progress()
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
        self.staleness = config.staleness
        self._stale_seen = 0
        self._e2e = metrics.END_TO_END_SECONDS.labels(self.name)
        metrics.MODEL.labels(self.name).info(
            {"name": self.engine.name, "version": self.engine.version, "provider": self.engine.provider}
        )

    def calibrate(self, inline_budget_s: float | None = None, max_seconds: float = 3.0) -> int:
        """Time inference at batch sizes 1, 2, 4, ... up to the cap (the controller's inference
        profile starts from these), and run batches inline while they cost at most `inline_budget_s`
        (default: the latency budget, so every latency-mode batch). Returns that row limit. Stops
        early past `max_seconds` for slow models; live batches refine the profile.

        Why inline up to the latency budget: in latency mode the source waits for the agent, so
        the loop has nothing to do while a batch is inferred, and the hop to the executor thread
        and back is two thread wake-ups, each of which may wait for a core the broker is using.
        At 9,500 events/s (two A/B pairs) the in-worker p50 fell 11 -> 8 ms and p99 25-57 ->
        19-21 ms with every batch up to 256 rows inline; the first limit (0.2 ms, the hop's cost
        on an idle machine) sent batches over 32 rows to the executor."""
        if inline_budget_s is None:
            inline_budget_s = self.config.batching.latency_budget_s
        width, cap = self.config.features.width, self.config.batching.max_batch_size
        sizes = batch_sizes(cap)
        limit, previous, started_all = 0, 0, time.perf_counter()
        for rows in sizes:
            matrix = np.zeros((rows, width), dtype=np.float32)
            self.engine.run(matrix)  # first run of a shape allocates
            repeats = 5 if rows <= 64 else 2
            started = time.perf_counter()
            for _ in range(repeats):
                self.engine.run(matrix)
            seconds = (time.perf_counter() - started) / repeats
            self.inference_cost.observe(rows, seconds)
            if seconds <= inline_budget_s and limit == previous:  # every smaller size fitted too
                limit = rows
            previous = rows
            if time.perf_counter() - started_all > max_seconds:
                break
        self.inline_rows = limit
        return limit

    # --- state ownership ------------------------------------------------------------------------

    async def ensure_restored(self, partitions: set[int]) -> None:
        missing = sorted(partitions - self.loaded)
        if not missing:
            return
        if self.changelog is not None:
            started = time.perf_counter()
            restored = await asyncio.get_running_loop().run_in_executor(None, self.changelog.restore, missing)
            for partition, (states, offset) in restored.items():
                self.store.load_partition(partition, states)
                if offset is not None:
                    self.resume_at[partition] = offset
            log.info(
                "restored state",
                extra={
                    "pipeline": self.name,
                    "partitions": missing,
                    "keys": sum(len(s) for s, _ in restored.values()),
                    "checkpoints": {p: o for p, (_, o) in restored.items()},
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
        self.loaded.update(missing)

    def drop_partitions(self, partitions: set[int] | list[int]) -> None:
        """Partitions revoked or lost: forget their state; the next owner restores it from the changelog."""
        for partition in partitions:
            self.owned.pop(partition, None)
            self.store.drop_partition(partition)
            self.loaded.discard(partition)
            self.resume_at.pop(partition, None)
            self.progress.frontier.pop(partition, None)

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
        await self.ensure_restored({r.partition for r in records})
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

        Why: draining a backlog, the event loop's thread is the bottleneck (0.91 of a core, the
        machine's other core a third idle) and inference was 17% of its time."""
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
        messages, sources, result = self.finish(batch, inferred.raw, inferred.error, arrival)
        outputs = self.outputs

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
        self.progress.advance(self.unacknowledged)
        self.acknowledged_events += len(self.unacknowledged)
        self.acknowledged_batches += self.unacknowledged_batches
        self.unacknowledged = []
        self.unacknowledged_batches = 0
        self.unacknowledged_bytes = 0

    def prepare(self, records: Sequence[InputRecord]) -> PreparedBatch:
        """Skip replays below a restored checkpoint, decode, validate, featurize (updates state)."""
        batch = PreparedBatch()
        if self.resume_at:
            keep = [r for r in records if r.offset >= self.resume_at.get(r.partition, -1)]
            batch.skipped = len(records) - len(keep)
            if batch.skipped:
                metrics.REPLAYS_SKIPPED.labels(self.name).inc(batch.skipped)
                self.progress.advance(records)
                records = keep
        metrics.EVENTS.labels(self.name).inc(len(records) + batch.skipped)
        if not records:
            return batch
        timestamps = np.fromiter((r.timestamp_ms for r in records), dtype=np.int64, count=len(records))
        if self.staleness.max_event_age_ms:
            fresh = self._drop_stale(records, timestamps, batch)
            if fresh is not None:
                records, timestamps = [r for r, k in zip(records, fresh.tolist()) if k], timestamps[fresh]
                if not records:
                    return batch
        batch.timestamps_ms = timestamps.astype(np.float64)
        decoded = self.decoder.decode(records)
        batch.dead = decoded.dead
        if not decoded.events:
            return batch
        rows = self.featurizer.numeric_rows(decoded.events)
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            for i in np.nonzero(~finite)[0]:
                batch.dead.append(
                    DeadLetter(decoded.records[i], "non_finite_number", "a feature is NaN/Infinity or beyond float32 range")
                )
            keep_idx = np.nonzero(finite)[0]
            rows = rows[keep_idx]
            decoded.records = [decoded.records[i] for i in keep_idx]
            decoded.events = [decoded.events[i] for i in keep_idx]
            decoded.keys = [decoded.keys[i] for i in keep_idx]
            if not decoded.events:
                return batch
        partitions = [r.partition for r in decoded.records]
        store = self.store
        if store.key_ttl_ms:
            # Event time for the TTL, capped at this worker's clock (see StateStore.advance).
            store.advance(partitions, [r.timestamp_ms for r in decoded.records], ceiling_ms=int(time.time() * 1000))
        keep_from, self._state_clock = self._state_clock, store.clock + 1  # this batch's first get() ticks to clock + 1
        if self.config.sequence_field is not None:
            in_order = self._in_sequence(decoded, partitions, batch.dead)
            if in_order is not None:
                rows = rows[in_order]
                kept = np.nonzero(in_order)[0].tolist()
                decoded.records = [decoded.records[i] for i in kept]
                decoded.events = [decoded.events[i] for i in kept]
                decoded.keys = [decoded.keys[i] for i in kept]
                partitions = [partitions[i] for i in kept]
                if not decoded.events:
                    if self._uses_store:
                        self._bound_state(keep_from)
                    return batch
        batch.records = decoded.records
        batch.keys = decoded.keys
        if self.config.features.window > 1:
            batch.matrix = self.featurizer.windowed(batch.keys, partitions, rows, store)
        else:
            batch.matrix = self.featurizer.stateless(decoded.events, rows)
        if self._uses_store:
            self._bound_state(keep_from)
        return batch

    def _in_sequence(self, decoded: DecodedBatch, partitions: list[int], dead: list[DeadLetter]) -> np.ndarray | None:
        """Order per key: an event whose `sequence_field` is not greater than the highest its key
        had accepted (kept in the key's state, so it survives restarts and rebalances) goes to
        `dead` as `out_of_order`, unless `out_of_order = "accept"`; then it is processed and the
        highest stays. An event without an integer `sequence_field` is not checked (the schema
        decides whether it must have one). Returns the mask of events to keep, None for all.

        A loop over the batch's events: each compares with the one before it of the same key,
        and the state lookups are those the window would make anyway."""
        field_name = self.config.sequence_field
        reject = self.config.out_of_order == "dead_letter"
        get, mark_dirty = self.store.get, self.store.mark_dirty
        keep: np.ndarray | None = None
        for i, (event, key, partition) in enumerate(zip(decoded.events, decoded.keys, partitions)):
            sequence = event.get(field_name)
            if type(sequence) is not int:
                continue
            state = get(partition, key)
            last = state.last_sequence
            if last is None or sequence > last:
                state.last_sequence = sequence
                mark_dirty(partition, key)
            elif reject:
                if keep is None:
                    keep = np.ones(len(decoded.events), dtype=bool)
                keep[i] = False
                dead.append(
                    DeadLetter(
                        decoded.records[i],
                        "out_of_order",
                        f"{field_name} {sequence} is not greater than the key's last accepted {last}",
                    )
                )
        return keep

    def _bound_state(self, keep_from: int) -> None:
        """Once per prepared batch, after its features: expire and evict keys as `config.state`
        says, then count. Keys used from clock `keep_from` on (this batch and the one prepared
        before it) stay: a batch split in halves prepares both before finishing either, and the
        alert rule uses a batch's keys when it finishes."""
        expired, evicted = self.store.evict(keep_from)
        if expired:
            self._evictions["ttl"].inc(expired)
        if evicted:
            self._evictions["max_keys"].inc(evicted)
        self._state_keys.set(len(self.store))

    def _drop_stale(self, records: Sequence[InputRecord], timestamps: np.ndarray, batch: PreparedBatch) -> np.ndarray | None:
        """The staleness policy: records older than max_event_age_ms go to `batch.stale` (all of
        them with `skip`; all but 1 in sample_every with `sample`); returns the mask of records to
        process, or None when none is stale."""
        policy = self.staleness
        stale = timestamps < int(time.time() * 1000) - policy.max_event_age_ms
        if not stale.any():
            return None
        drop = stale.copy()
        if policy.policy == "sample":
            # Keep every sample_every-th stale event, counted across batches.
            stale_idx = np.nonzero(stale)[0]
            ordinal = self._stale_seen + np.arange(len(stale_idx))
            drop[stale_idx[ordinal % policy.sample_every == 0]] = False
            self._stale_seen += len(stale_idx)
        batch.stale = [r for r, d in zip(records, drop.tolist()) if d]
        return ~drop

    def finish(
        self, batch: PreparedBatch, raw: dict | None, error: Exception | None, arrival: float
    ) -> tuple[list[OutMessage], list[Source], BatchResult]:
        """Scores, alerts and every output message of a batch (predictions, alerts, review, DLQ),
        with the input each message speaks for (see :mod:`stream_infer.stages.outputs`)."""
        result = BatchResult(skipped=batch.skipped, stale_skipped=len(batch.stale))
        messages: list[OutMessage] = []
        sources: list[Source] = []
        if batch.stale:
            messages.append(self.outputs.skipped_summary(batch.stale))
            sources.append(None)
        if error is not None:
            log.error(
                "model failed on a batch; its events go to the dead-letter topic",
                extra={"pipeline": self.name, "error": str(error)},
            )
            batch.dead.extend(DeadLetter(r, "model_error", str(error)[:500]) for r in batch.records)
        elif raw is not None:
            fields = score_fields(raw, self.config.outputs)
            alerts = []
            if self.alerts is not None:
                alerts = self.alerts.apply(
                    batch.keys, batch.records, fields[self.config.outputs.score_name], self.store, self.model
                )
            self.outputs.predictions(batch.records, batch.keys, fields, alerts, arrival, messages, sources)
            result.predictions, result.alerts = len(batch.records), len(alerts)
            if "review" in fields:
                result.reviews = int(fields["review"].sum())
        self.outputs.dead_letters(batch.dead, messages, sources)
        result.dead_letters = len(batch.dead)
        self._count(result, batch.dead)
        return messages, sources, result

    def _count(self, result: BatchResult, dead: list[DeadLetter]) -> None:
        metrics.PREDICTIONS.labels(self.name).inc(result.predictions)
        if result.reviews:
            metrics.REVIEWS.labels(self.name).inc(result.reviews)
        if result.stale_skipped:
            metrics.SKIPPED.labels(self.name, "stale").inc(result.stale_skipped)
        if self.alerts is not None and result.alerts:
            metrics.ALERTS.labels(self.name, self.alerts.rule.name).inc(result.alerts)
        for letter in dead:
            metrics.DEAD_LETTERS.labels(self.name, letter.reason).inc()

    # --- checkpoint -----------------------------------------------------------------------------

    def snapshot(self) -> Checkpoint | None:
        """What the next checkpoint commits: call between batches (state matches offsets), with
        the outputs of the processed records acknowledged (at-least-once) or in the transaction
        the checkpoint commits (exactly-once).

        Returns None when nothing was processed since the last one. Cheap: serialising the keys
        changed since then; the commit happens on the committer's thread.
        """
        owned = self.owned
        offsets = {p: o for p, o in self.progress.frontier.items() if p in self.loaded and p in owned}
        # For stateless pipelines this releases neutral alert states. Only partitions in this
        # checkpoint: another partition's dirty keys (evicted ones, when it had no new records)
        # wait for its next checkpoint, so their tombstones are not lost.
        dirty = self.store.take_dirty(offsets)
        self.progress.frontier = {}
        if not offsets:
            return None
        snapshots = {}
        if self.changelog is not None:
            snapshots = {
                p: {k: (None if s is None else s.to_bytes()) for k, s in keys.items()}
                for p, keys in dirty.items()
                if p in offsets
            }
        return Checkpoint(offsets, snapshots, {p: owned[p] for p in offsets})

    def reset(self) -> int:
        """Forget every partition's state and every record not yet checkpointed (exactly-once
        rewind: they are consumed again from the committed offsets). Returns how many records
        were in hand."""
        dropped = len(self.unacknowledged)
        self.mark_acknowledged()
        self.progress.frontier = {}
        for partition in list(self.loaded | set(self.owned)):
            self.store.drop_partition(partition)
            self.loaded.discard(partition)
            self.resume_at.pop(partition, None)
        self.owned = {}
        return dropped

    def close(self) -> None:
        self.executor.shutdown(wait=True)
