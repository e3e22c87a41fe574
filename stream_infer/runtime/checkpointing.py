"""Checkpoints and rebalances of one pipeline, on the event loop: where the protocol of
:mod:`stream_infer.checkpoint` is driven from (cut, commit, rewind), and what happens when the
group assigns, revokes or loses partitions.

Waiting rules (why this cannot deadlock): the event loop never waits for the consumer thread
while holding the batch lock; the consumer thread waits for the loop only inside a revoke
callback, for at most `revoke_timeout_s` (half the session timeout); the committer thread waits
for nothing but the broker, each call bounded. On revoke, the revoked partitions' last
checkpoint is committed before the callback returns (graceful hand-over: the next owner starts
exactly where this one stopped, no duplicates). On lost partitions nothing is written for them:
another member may own them already.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from stream_infer import metrics
from stream_infer.checkpoint import CheckpointCommitter
from stream_infer.config import Config
from stream_infer.kafka.transactions import TransactionAborted, TransactionFatal
from stream_infer.pipeline import Pipeline
from stream_infer.runtime.source import BatchSource

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
    def __init__(self, pipeline: Pipeline, source: BatchSource, committer: CheckpointCommitter | None,
                 config: Config, lock: asyncio.Lock) -> None:
        self.pipeline = pipeline
        self.source = source
        self.committer = committer
        self.exactly_once = config.worker.processing_guarantee == "exactly_once"
        self.name = pipeline.name
        self.lock = lock  # one batch, or one cut, at a time
        self.revoke_timeout_s = config.kafka.session_timeout_ms / 2000
        self.member = False  # in the group (an assignment seen since the last loss)
        self.rewinding = False
        self.last_commit = time.monotonic()  # when offsets last moved forward (health)
        self.stopping = False

    # --- readiness --------------------------------------------------------------------------

    @property
    def restoring(self) -> set[int]:
        return set(self.pipeline.owned) - self.pipeline.loaded

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
                    return self.pipeline.snapshot()
            await asyncio.sleep(CUT_POLL_S)
        async with self.lock:
            await self.settle_locked()
            metrics.CHECKPOINT_CUTS.labels(self.name, "paused").inc()
            return self.pipeline.snapshot()

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

    async def _commit_locked(self) -> None:
        """Exactly-once, with the batch lock held (no output may be produced while the
        transaction commits): every record in hand is in the open transaction."""
        if self.committer is None:
            return
        self.pipeline.mark_acknowledged()
        self.committer.add(self.pipeline.snapshot())
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
            log.debug("checkpoint committed", extra={"pipeline": self.name, "offsets": result.offsets,
                                                     "keys": result.keys, "seconds": round(result.seconds, 4)})

    # --- exactly-once rewind -----------------------------------------------------------------

    def _start_rewind(self) -> None:
        """Exactly-once, lock held: the aborted transaction took this pipeline's outputs since the
        last commit with it. Forget everything since then; the consumer seeks back to the
        committed offsets under new epochs (batches fetched before are discarded) and state is
        restored from the changelog."""
        metrics.REWINDS.labels(self.name).inc()
        dropped = self.pipeline.reset()
        self.rewinding = True
        log.warning("rewinding to the last committed checkpoint", extra={"pipeline": self.name, "records_in_hand": dropped})
        asyncio.ensure_future(self._finish_rewind())

    async def _finish_rewind(self) -> None:
        assert self.source.consumer is not None
        try:
            epochs = await self.source.call(self.source.consumer.rewind)
        except Exception:
            exit_for_restart("rewinding the consumer failed")
        self.pipeline.owned.update(epochs)
        await self._restore(set(epochs))
        self.rewinding = False

    # --- rebalance ---------------------------------------------------------------------------

    def on_assign(self, epochs: dict[int, int]) -> None:
        """Consumer thread: a rebalance this member takes part in (maybe with nothing new)."""
        assert self.source.loop is not None
        self.source.loop.call_soon_threadsafe(self._assigned, epochs)

    def _assigned(self, epochs: dict[int, int]) -> None:
        """Event loop, before any batch fetched under these epochs: this callback was queued
        inside the fetch that saw the assignment, ahead of the fetch's own result, so the
        agent never sees a record of a partition it does not yet know it owns (it would drop
        it, and the partition would move on past it)."""
        self.member = True
        if not epochs:
            return
        log.info("partitions assigned", extra={"pipeline": self.name, "partitions": sorted(epochs)})
        pipeline = self.pipeline
        stale = [p for p in epochs if p in pipeline.owned or p in pipeline.loaded]
        if stale:  # a loss of these not yet handled: what is in memory is from the old assignment
            pipeline.drop_partitions(stale)
        pipeline.owned.update(epochs)
        asyncio.ensure_future(self._restore(set(epochs)))

    async def _restore(self, partitions: set[int]) -> None:
        """Restore now, not when each partition's first event arrives (that event would wait for
        the changelog read). Ready (for /readyz) once restored."""
        async with self.lock:
            try:
                await self.pipeline.ensure_restored(partitions & set(self.pipeline.owned))
            except Exception:
                exit_for_restart("restoring state failed")

    def on_revoke(self, partitions: set[int]) -> None:
        """Consumer thread, inside the rebalance: the partitions move when this returns, so their
        last checkpoint is committed first (bounded: past revoke_timeout_s the next owner
        starts from the last commit, and reprocesses what came after it)."""
        assert self.source.loop is not None and self.source.consumer is not None
        epochs = {p: e for p, e in self.source.consumer.ownership().epochs.items() if p in partitions}
        future = asyncio.run_coroutine_threadsafe(self._revoke(epochs), self.source.loop)
        try:
            future.result(timeout=self.revoke_timeout_s)
        except TimeoutError:
            log.warning("last checkpoint of revoked partitions not committed within %.1f s; their next owner "
                        "resumes from the previous one", self.revoke_timeout_s,
                        extra={"pipeline": self.name, "partitions": sorted(partitions)})
        except Exception:
            log.exception("last checkpoint of revoked partitions failed; their next owner resumes from the previous one",
                          extra={"pipeline": self.name, "partitions": sorted(partitions)})

    async def _revoke(self, epochs: dict[int, int]) -> None:
        """The revoked partitions' last checkpoint, then their state goes. `epochs`: those of the
        revoked assignment (should the wait time out and the group give a partition back
        meanwhile, its new assignment is left alone)."""
        partitions = set(epochs)
        owned = self.pipeline.owned
        async with self.lock:
            if self.committer is not None:
                if self.exactly_once:
                    await self._commit_locked()
                else:
                    await self.settle_locked()
                    self.committer.add(self.pipeline.snapshot())
            # From here no record of these partitions is processed.
            for partition, epoch in epochs.items():
                if owned.get(partition) == epoch:
                    del owned[partition]
        if self.committer is not None and not self.exactly_once:
            await self._commit()
        await self._drop_unowned(partitions)
        log.info("partitions revoked", extra={"pipeline": self.name, "partitions": sorted(partitions)})

    def on_lost(self, partitions: set[int]) -> None:
        """Consumer thread: partitions lost (session expired, fenced). Nothing is written for
        them; whatever is pending for them is forgotten; no waiting."""
        if self.committer is not None:
            self.committer.discard(partitions)
        assert self.source.loop is not None
        self.source.loop.call_soon_threadsafe(self._lost_now, partitions)

    def _lost_now(self, partitions: set[int]) -> None:
        """Event loop, in order with assignments (see _assigned): no record of these is
        processed from now on, until the group assigns them again."""
        self.member = False
        for partition in partitions:
            self.pipeline.owned.pop(partition, None)
        log.warning("partitions lost (session expired or fenced): their state is dropped, the group reassigns them",
                    extra={"pipeline": self.name, "partitions": sorted(partitions)})
        asyncio.ensure_future(self._drop_unowned(partitions))

    async def _drop_unowned(self, partitions: set[int]) -> None:
        """Forget the state of those of `partitions` not owned again by now (a partition the
        group gave back meanwhile keeps its fresh assignment, restored from the changelog)."""
        async with self.lock:
            gone = {p for p in partitions if p not in self.pipeline.owned}
            self.pipeline.drop_partitions(gone)
        self.source.forget(gone)
        self._remove_gauges(gone)

    def _remove_gauges(self, partitions: set[int]) -> None:
        for partition in partitions:
            for gauge in (metrics.LAG_MESSAGES, metrics.LAG_SECONDS):
                try:
                    gauge.remove(self.name, self.pipeline.config.input_topic, str(partition))
                except KeyError:
                    pass

    # --- shutdown ----------------------------------------------------------------------------

    async def close(self, timeout: float) -> None:
        """The final checkpoint (SIGTERM): every record in hand committed, within `timeout`."""
        if self.committer is None:
            self.stopping = True
            return
        try:
            await asyncio.wait_for(self._final(), timeout)
        except asyncio.TimeoutError:
            log.warning("final checkpoint not committed within %.0f s; the next owner resumes from the previous one",
                        timeout, extra={"pipeline": self.name})
        self.stopping = True

    async def _final(self) -> None:
        assert self.committer is not None
        async with self.lock:
            if self.exactly_once:
                await self._commit_locked()
                return
            await self.settle_locked()
            self.committer.add(self.pipeline.snapshot())
        await self._commit()
