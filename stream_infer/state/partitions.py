"""Which input partitions one pipeline owns, whether their state is restored, and how far it has
got in each: the bookkeeping between the consumer group's assignments and the checkpoint.

Invariants:

* a partition's records are processed only while it is in `owned` (with the epoch of that
  assignment, see :mod:`stream_infer.kafka.consumer`) and in `loaded` (its state restored from
  the changelog, or known empty);
* `frontier` holds, per partition, the next offset after every record whose outputs are
  acknowledged; :meth:`snapshot` turns it and the keys changed since the last snapshot into one
  :class:`~stream_infer.state.checkpoint.Checkpoint`, so the state and the offset committed
  together always agree;
* records below a restored checkpoint's offset (`resume_at`) were processed before the hand-over:
  :meth:`skip_replays` drops them and only moves the frontier.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

from stream_infer.records import InputRecord
from stream_infer.state.changelog import Changelog
from stream_infer.state.checkpoint import Checkpoint
from stream_infer.state.store import StateStore

log = logging.getLogger(__name__)


class OwnedPartitions:
    """One pipeline's partitions: ownership, restore, replays and progress (see the module docstring)."""

    def __init__(self, pipeline: str, store: StateStore, changelog: Changelog | None = None) -> None:
        self.pipeline = pipeline
        self.store = store
        # Set by the worker once the changelog topic exists; stays None for stateless pipelines.
        self.changelog = changelog
        self.owned: dict[int, int] = {}  # partition -> the epoch of its assignment
        self.loaded: set[int] = set()  # partitions whose state is restored (and owned)
        self.resume_at: dict[int, int] = {}  # partition -> checkpoint offset; below it: already done
        self.frontier: dict[int, int] = {}  # partition -> next offset to process (acknowledged, not checkpointed)

    async def ensure_restored(self, partitions: set[int]) -> None:
        """Restore the state of every partition in `partitions` not restored yet (on a worker
        thread: the changelog read blocks), and note where its last checkpoint ends."""
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
                    "pipeline": self.pipeline,
                    "partitions": missing,
                    "keys": sum(len(s) for s, _ in restored.values()),
                    "checkpoints": {p: o for p, (_, o) in restored.items()},
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
        self.loaded.update(missing)

    def skip_replays(self, records: Sequence[InputRecord]) -> tuple[Sequence[InputRecord], int]:
        """The records at or above their partition's restored checkpoint, and how many were below
        it (those count as processed: the frontier moves past them)."""
        if not self.resume_at:
            return records, 0
        resume_at = self.resume_at
        done = [r.offset < resume_at.get(r.partition, -1) for r in records]
        skipped = sum(done)
        if not skipped:
            return records, 0
        self.advance(r for r, d in zip(records, done) if d)
        return [r for r, d in zip(records, done) if not d], skipped

    def advance(self, records: Iterable[InputRecord]) -> None:
        """Records whose outputs are acknowledged: the frontier moves past each."""
        frontier = self.frontier
        for record in records:
            if record.offset >= frontier.get(record.partition, -1):
                frontier[record.partition] = record.offset + 1

    def drop(self, partitions: Iterable[int]) -> None:
        """Partitions revoked or lost: forget their state; the next owner restores it from the changelog."""
        for partition in partitions:
            self.owned.pop(partition, None)
            self.store.drop_partition(partition)
            self.loaded.discard(partition)
            self.resume_at.pop(partition, None)
            self.frontier.pop(partition, None)

    def snapshot(self) -> Checkpoint | None:
        """What the next checkpoint commits: call between batches (state matches offsets), with
        the outputs of the processed records acknowledged (at-least-once) or in the transaction
        the checkpoint commits (exactly-once).

        Returns None when nothing was processed since the last one. Cheap: serialising the keys
        changed since then; the commit happens on the committer's thread.
        """
        owned = self.owned
        offsets = {p: o for p, o in self.frontier.items() if p in self.loaded and p in owned}
        # For stateless pipelines this releases neutral alert states. Only partitions in this
        # checkpoint: another partition's dirty keys (evicted ones, when it had no new records)
        # wait for its next checkpoint, so their tombstones are not lost.
        dirty = self.store.take_dirty(offsets)
        self.frontier = {}
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

    def reset(self) -> None:
        """Forget every partition's state and progress (exactly-once rewind: their records are
        consumed again from the committed offsets)."""
        self.frontier = {}
        for partition in list(self.loaded | set(self.owned)):
            self.store.drop_partition(partition)
            self.loaded.discard(partition)
            self.resume_at.pop(partition, None)
        self.owned = {}
