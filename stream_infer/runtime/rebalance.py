"""What one pipeline does when the consumer group assigns, revokes or loses partitions.

librdkafka calls these on the consumer thread, inside `consume()`. Assignments and losses are
handed to the event loop in order with the fetches that follow them (call_soon_threadsafe), so
the agent always knows which partitions, under which epochs, it owns. A revoke waits (bounded by
half the session timeout) for the revoked partitions' last checkpoint
(:meth:`~stream_infer.runtime.checkpointing.Checkpointing.hand_over`) before the partitions move:
the next owner starts exactly where this one stopped, with no duplicates. Lost partitions (session
expired, fenced) get nothing written: another member may own them already.
"""

from __future__ import annotations

import asyncio
import logging

from stream_infer import metrics
from stream_infer.config import Config
from stream_infer.runtime.checkpointing import Checkpointing, exit_for_restart
from stream_infer.runtime.source import BatchSource
from stream_infer.stages.pipeline import Pipeline

log = logging.getLogger(__name__)


class RebalanceHandler:
    def __init__(
        self, pipeline: Pipeline, source: BatchSource, checkpointing: Checkpointing, config: Config, lock: asyncio.Lock
    ) -> None:
        self.pipeline = pipeline
        self.source = source
        self.checkpointing = checkpointing
        self.lock = lock
        self.name = pipeline.name
        self.revoke_timeout_s = config.kafka.session_timeout_ms / 2000
        self.member = False  # in the group (an assignment seen since the last loss)

    @property
    def restoring(self) -> set[int]:
        return set(self.pipeline.partitions.owned) - self.pipeline.partitions.loaded

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
        stale = [p for p in epochs if p in pipeline.partitions.owned or p in pipeline.partitions.loaded]
        if stale:  # a loss of these not yet handled: what is in memory is from the old assignment
            pipeline.partitions.drop(stale)
        pipeline.partitions.owned.update(epochs)
        asyncio.ensure_future(self._restore(set(epochs)))

    async def _restore(self, partitions: set[int]) -> None:
        """Restore now, not when each partition's first event arrives (that event would wait for
        the changelog read). Ready (for /readyz) once restored."""
        async with self.lock:
            try:
                await self.pipeline.partitions.ensure_restored(partitions & set(self.pipeline.partitions.owned))
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
            log.warning(
                "last checkpoint of revoked partitions not committed within %.1f s; their next owner "
                "resumes from the previous one",
                self.revoke_timeout_s,
                extra={"pipeline": self.name, "partitions": sorted(partitions)},
            )
        except Exception:
            log.exception(
                "last checkpoint of revoked partitions failed; their next owner resumes from the previous one",
                extra={"pipeline": self.name, "partitions": sorted(partitions)},
            )

    async def _revoke(self, epochs: dict[int, int]) -> None:
        await self.checkpointing.hand_over(epochs)
        await self._drop_unowned(set(epochs))
        log.info("partitions revoked", extra={"pipeline": self.name, "partitions": sorted(epochs)})

    def on_lost(self, partitions: set[int]) -> None:
        """Consumer thread: partitions lost (session expired, fenced). Nothing is written for
        them; whatever is pending for them is forgotten; no waiting."""
        self.checkpointing.forget_pending(partitions)
        assert self.source.loop is not None
        self.source.loop.call_soon_threadsafe(self._lost_now, partitions)

    def _lost_now(self, partitions: set[int]) -> None:
        """Event loop, in order with assignments (see _assigned): no record of these is
        processed from now on, until the group assigns them again."""
        self.member = False
        for partition in partitions:
            self.pipeline.partitions.owned.pop(partition, None)
        log.warning(
            "partitions lost (session expired or fenced): their state is dropped, the group reassigns them",
            extra={"pipeline": self.name, "partitions": sorted(partitions)},
        )
        asyncio.ensure_future(self._drop_unowned(partitions))

    async def _drop_unowned(self, partitions: set[int]) -> None:
        """Forget the state of those of `partitions` not owned again by now (a partition the
        group gave back meanwhile keeps its fresh assignment, restored from the changelog)."""
        async with self.lock:
            gone = {p for p in partitions if p not in self.pipeline.partitions.owned}
            self.pipeline.partitions.drop(gone)
        self.source.forget(gone)
        self._remove_gauges(gone)

    def _remove_gauges(self, partitions: set[int]) -> None:
        for partition in partitions:
            for gauge in (metrics.LAG_MESSAGES, metrics.LAG_SECONDS):
                try:
                    gauge.remove(self.name, self.pipeline.config.input_topic, str(partition))
                except KeyError:
                    pass
