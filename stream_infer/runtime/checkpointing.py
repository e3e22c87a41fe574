"""Checkpoints of one pipeline, on the event loop: where the protocol of
:mod:`stream_infer.state.checkpoint` is driven from (cut, commit, exactly-once rewind, the last
checkpoint before a hand-over or a stop).

Waiting rules: nothing here waits for the consumer thread while holding the batch lock (the
rewind's seek runs after the lock is released); the committer thread waits only on the broker,
each call bounded. A revoke callback on the consumer thread may therefore wait for
:meth:`Checkpointing.hand_over` (see :mod:`stream_infer.runtime.rebalance`) without a deadlock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import replace

from stream_infer import metrics
from stream_infer.config import Config
from stream_infer.kafka.transactions import TransactionAborted, TransactionFatal
from stream_infer.runtime.source import BatchSource
from stream_infer.stages.pipeline import Pipeline
from stream_infer.state.checkpoint import Checkpoint, CheckpointCommitter

log = logging.getLogger(__name__)

# A checkpoint looks this long for a moment when the batch path is idle and every output is
# acknowledged, checking every CUT_POLL_S, before it pauses the batch path to wait for the acks.
CUT_SEARCH_S = 0.1
CUT_POLL_S = 0.001


def exit_for_restart(what: str) -> None:
    """Log the exception being handled and exit at once (like a crash, status 70): nothing
    uncommitted is lost, since after a restart it is consumed again from the committed offsets.
    Only for faults a restart can fix (outputs the broker does not acknowledge, a fenced
    producer), never for a property of one message."""
    log.exception("%s; exiting so the uncommitted events are processed again after restart", what)
    logging.shutdown()
    os._exit(70)


class Checkpointing:
    def __init__(
        self, pipeline: Pipeline, source: BatchSource, committer: CheckpointCommitter | None, config: Config, lock: asyncio.Lock
    ) -> None:
        self.pipeline = pipeline
        self.source = source
        self.committer = committer
        self.exactly_once = config.worker.processing_guarantee == "exactly_once"
        self.name = pipeline.name
        self.lock = lock  # one batch, or one cut, at a time
        self.rewinding = False
        # Exactly-once: (partition, epoch) of the assignments whose outputs are in the open transaction.
        self._produced: set[tuple[int, int]] = set()
        self.last_commit = time.monotonic()  # when offsets last moved forward (health)
        self.stopping = False

    # --- the cut and the commit --------------------------------------------------------------

    async def checkpoint(self) -> None:
        """The timer's checkpoint: cut (and, exactly-once, commit) between two batches."""
        if self.committer is None or self.stopping:
            return
        if self.exactly_once:
            async with self.lock:
                await self._commit_locked()
            return
        self.committer.add(await self._cut())
        await self._commit()

    async def _cut(self):
        """At-least-once: the snapshot where state and offsets agree, between two batches with
        every submitted output acknowledged.

        First look for such a moment without stopping anything: at live loads the producer's
        queue empties between batches, and a snapshot taken then (synchronously: no batch can
        start in between on this event loop) costs the batch path nothing. Under a backlog the
        queue never empties; after CUT_SEARCH_S the cut takes the lock and waits for the acks
        (batches are large then, and one ack round trip is a small share of the time)."""
        deadline = time.monotonic() + CUT_SEARCH_S
        while time.monotonic() < deadline and not self.stopping:
            if not self.lock.locked():
                try:
                    acknowledged = self.pipeline.acknowledged_now()
                except Exception:
                    exit_for_restart("outputs not acknowledged")
                if acknowledged:
                    metrics.CHECKPOINT_CUTS.labels(self.name, "idle").inc()
                    return self.pipeline.partitions.snapshot()
            await asyncio.sleep(CUT_POLL_S)
        async with self.lock:
            await self.settle_locked()
            metrics.CHECKPOINT_CUTS.labels(self.name, "paused").inc()
            return self.pipeline.partitions.snapshot()

    async def settle_locked(self) -> None:
        """With the batch lock held: make every output of the records in hand safe. At-least-once
        waits for the acks; exactly-once commits the transaction."""
        if self.exactly_once:
            await self._commit_locked()
            return
        try:
            await self.pipeline.wait_acknowledged()
        except Exception:
            exit_for_restart("outputs not acknowledged")

    async def drain(self) -> None:
        """Backpressure's wait (no lock held): until the outputs in hand are safe."""
        async with self.lock:
            await self.settle_locked()

    def note_produced(self, epochs: dict[int, int]) -> None:
        """A batch's outputs were produced for these partitions, under these epochs (event loop)."""
        if self.exactly_once:
            self._produced.update(epochs.items())

    async def _commit_locked(self) -> None:
        """Exactly-once, with the batch lock held (no output may be produced while the
        transaction commits): every record in hand is in the open transaction."""
        if self.committer is None:
            return
        self.pipeline.mark_acknowledged()
        cut = self.pipeline.partitions.snapshot()
        if cut is not None or self._produced:
            self.committer.add(replace(cut or Checkpoint({}), produced=frozenset(self._produced)))
        self._produced = set()
        try:
            await self._commit()
        except TransactionAborted:
            self._start_rewind()

    async def _commit(self) -> None:
        assert self.committer is not None
        try:
            result = await self.committer.commit()
        except TransactionAborted:
            if self.exactly_once:
                raise
            return  # pending: retried by the next checkpoint
        except TransactionFatal:
            exit_for_restart("checkpoint transaction failed")
        if result.offsets:
            self.last_commit = time.monotonic()
            log.debug(
                "checkpoint committed",
                extra={
                    "pipeline": self.name,
                    "offsets": result.offsets,
                    "keys": result.keys,
                    "seconds": round(result.seconds, 4),
                },
            )

    # --- exactly-once rewind -----------------------------------------------------------------

    def _start_rewind(self) -> None:
        """Exactly-once, lock held: the aborted transaction took this pipeline's outputs since the
        last commit with it. Forget everything since then; the consumer seeks back to the
        committed offsets under new epochs (batches fetched before are discarded) and state is
        restored from the changelog."""
        metrics.REWINDS.labels(self.name).inc()
        dropped = self.pipeline.reset()
        self._produced = set()
        self.rewinding = True
        log.warning("rewinding to the last committed checkpoint", extra={"pipeline": self.name, "records_in_hand": dropped})
        asyncio.ensure_future(self._finish_rewind())

    async def _finish_rewind(self) -> None:
        assert self.source.consumer is not None
        consumer = self.source.consumer
        try:
            epochs = await self.source.call(consumer.rewind)
            # Only what the consumer still owns under the rewind's epochs: a partition lost or
            # revoked between the seek and now is not this worker's any more.
            current = consumer.ownership().epochs
            self.pipeline.partitions.owned.update({p: e for p, e in epochs.items() if current.get(p) == e})
            async with self.lock:
                await self.pipeline.partitions.ensure_restored(set(epochs) & set(self.pipeline.partitions.owned))
        except Exception:
            # Nothing else ends a rewind: a worker left rewinding would never process again.
            exit_for_restart("rewinding to the last committed checkpoint failed")
        self.rewinding = False

    # --- hand-over (a revoke) ----------------------------------------------------------------

    async def hand_over(self, epochs: dict[int, int]) -> None:
        """The last checkpoint of partitions being revoked, committed; from then on none of their
        records is processed. `epochs`: those of the revoked assignment (should the revoke's wait
        time out and the group give a partition back meanwhile, its new assignment is left alone)."""
        owned = self.pipeline.partitions.owned
        async with self.lock:
            if self.committer is not None:
                if self.exactly_once:
                    await self._commit_locked()
                else:
                    await self.settle_locked()
                    self.committer.add(self.pipeline.partitions.snapshot())
            for partition, epoch in epochs.items():
                if owned.get(partition) == epoch:
                    del owned[partition]
        if self.committer is not None and not self.exactly_once:
            await self._commit()

    def forget_pending(self, partitions: set[int]) -> None:
        """Partitions lost: what is pending for them is never committed (any thread)."""
        if self.committer is not None:
            self.committer.discard(partitions)

    # --- shutdown ----------------------------------------------------------------------------

    async def close(self, timeout: float) -> None:
        """The final checkpoint (SIGTERM): every record in hand committed, within `timeout`."""
        if self.committer is None:
            self.stopping = True
            return
        try:
            await asyncio.wait_for(self._final(), timeout)
        except TimeoutError:
            log.warning(
                "final checkpoint not committed within %.0f s; the next owner resumes from the previous one",
                timeout,
                extra={"pipeline": self.name},
            )
        self.stopping = True

    async def _final(self) -> None:
        assert self.committer is not None
        async with self.lock:
            if self.exactly_once:
                await self._commit_locked()
                return
            await self.settle_locked()
            self.committer.add(self.pipeline.partitions.snapshot())
        await self._commit()
