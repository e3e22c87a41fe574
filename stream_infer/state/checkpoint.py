"""The checkpoint protocol: per-key state, input offsets and (exactly-once) outputs, committed in
one Kafka transaction that the consumer group fences (KIP-447).

The steps of one checkpoint, each in one place:

1. **Cut** (event loop, :class:`stream_infer.runtime.checkpointing.Checkpointing`): between two
   batches, where state and offsets agree. At-least-once waits until every output of the
   processed records is acknowledged (acks=all); exactly-once needs no wait, because its outputs
   are in the transaction the commit ends. The cut is a :class:`Checkpoint`: per partition the
   next input offset, the snapshots of the keys changed since the last cut, and the *epoch* of
   the partition's assignment it was taken under.
2. **Queue** (:meth:`CheckpointCommitter.add`): the cut joins the pending checkpoint, merged with
   any earlier one not yet committed (later offsets and key states win). A failed commit stays
   pending, so the next checkpoint retries it even when nothing new arrived.
3. **Commit** (:meth:`CheckpointCommitter.commit`, on the committer's own thread): keep only the
   partitions the consumer still owns under the same epoch (a partition revoked, lost or
   rewound since the cut is dropped: never write for a partition this worker no longer owns;
   exactly-once aborts instead when any partition with outputs in the open transaction has
   changed hands since they were produced, since its next owner produces them again);
   then one transaction: the state records and offset markers to the changelog, the offsets
   with the consumer's current group metadata, commit. The group coordinator refuses the
   offsets from a stale generation, and the whole transaction is aborted with them: a zombie
   (a worker that lost its partitions) can write neither state nor offsets.
4. **After**: success tells the lag monitor the committed offsets. An abortable failure leaves
   nothing visible: at-least-once keeps the checkpoint pending for the next attempt;
   exactly-once rewinds (its outputs were in the aborted transaction: the consumer seeks back
   to the committed offsets and state is restored from the changelog). A fatal failure (the
   producer fenced by a newer one with the same transactional id) exits for a restart.

Threads: the event loop cuts; the committer thread commits; the consumer thread only reads the
group metadata and epochs (:class:`~stream_infer.kafka.consumer.Ownership`), handed over
without a call into the consumer. Nothing here waits on the consumer thread, so a rebalance
callback there may wait for a checkpoint (bounded) without a deadlock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from stream_infer import metrics
from stream_infer.kafka.consumer import Ownership
from stream_infer.kafka.transactions import TransactionAborted, TransactionalProducer
from stream_infer.state.changelog import checkpoint_records

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """Input offsets (partition -> next offset), the serialised states of the keys changed since
    the previous checkpoint (None: a tombstone), and each partition's assignment epoch.

    `produced` (exactly-once): the (partition, epoch) of every assignment whose outputs are in the
    open transaction, including assignments that ended since (revoked or lost: their offsets and
    states are no longer in the checkpoint, but their outputs are still in the transaction)."""

    offsets: dict[int, int]
    snapshots: dict[int, dict[str, bytes | None]] = field(default_factory=dict)
    epochs: dict[int, int] = field(default_factory=dict)
    produced: frozenset[tuple[int, int]] = frozenset()

    def merge(self, later: Checkpoint) -> Checkpoint:
        """This checkpoint followed by `later`: later offsets and key states win. A partition
        whose epoch changed in between starts over from `later` (the earlier assignment's
        work is not this one's)."""
        offsets, epochs = dict(self.offsets), dict(self.epochs)
        snapshots = {p: dict(keys) for p, keys in self.snapshots.items()}
        for partition, epoch in later.epochs.items():
            if epochs.get(partition) != epoch:
                offsets.pop(partition, None)
                snapshots.pop(partition, None)
            epochs[partition] = epoch
        offsets.update(later.offsets)
        for partition, keys in later.snapshots.items():
            snapshots.setdefault(partition, {}).update(keys)
        return Checkpoint(offsets, snapshots, epochs, self.produced | later.produced)

    def owned(self, ownership: Ownership) -> Checkpoint:
        """Only the partitions still owned under the epoch this checkpoint was cut in."""
        return self._only({p for p, e in self.epochs.items() if ownership.owns(p, e)})

    def without(self, partitions: set[int]) -> Checkpoint:
        return self._only(set(self.epochs) - partitions)

    def _only(self, keep: set[int]) -> Checkpoint:
        """The partitions in `keep`; `produced` stays whole (what is in a transaction stays there)."""
        return Checkpoint(
            {p: o for p, o in self.offsets.items() if p in keep},
            {p: s for p, s in self.snapshots.items() if p in keep},
            {p: e for p, e in self.epochs.items() if p in keep},
            self.produced,
        )

    def ended(self, ownership: Ownership) -> set[int]:
        """Partitions of this checkpoint, or with outputs in its transaction, whose assignment
        (under the epoch recorded here) has ended."""
        cut = {p for p, e in self.epochs.items() if not ownership.owns(p, e)}
        return cut | {p for p, e in self.produced if not ownership.owns(p, e)}

    @property
    def empty(self) -> bool:
        return not self.offsets and not any(self.snapshots.values())


@dataclass(frozen=True)
class CommitResult:
    offsets: dict[int, int]  # what was committed (empty: nothing was pending)
    keys: int  # state records written
    seconds: float


class CheckpointCommitter:
    """Commits one pipeline's checkpoints in order, on a thread of its own (steps 2-4 above).

    `ownership` returns the consumer's current :class:`Ownership`; `on_committed(offsets,
    epochs)` is called on the committer thread after each successful commit. With
    `retain_on_abort` (at-least-once) an aborted checkpoint stays pending; without it
    (exactly-once) it is dropped, and :meth:`commit` raises TransactionAborted so the caller
    rewinds."""

    def __init__(
        self,
        pipeline: str,
        input_topic: str,
        changelog_topic: str | None,
        producer: TransactionalProducer,
        ownership: Callable[[], Ownership],
        on_committed: Callable[[dict[int, int], dict[int, int]], None],
        *,
        retain_on_abort: bool,
    ) -> None:
        self.pipeline = pipeline
        self.input_topic = input_topic
        self.changelog_topic = changelog_topic
        self.producer = producer
        self._ownership = ownership
        self._on_committed = on_committed
        self._retain_on_abort = retain_on_abort
        self._pending: Checkpoint | None = None
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"commit-{pipeline}")
        self.failing_since: float | None = None  # monotonic time of the first failure in a row

    def add(self, checkpoint: Checkpoint | None) -> None:
        """Step 2: queue a cut (any thread)."""
        if checkpoint is None:
            return
        with self._lock:
            self._add_locked(checkpoint)

    def _add_locked(self, checkpoint: Checkpoint) -> None:
        self._pending = checkpoint if self._pending is None else self._pending.merge(checkpoint)

    def discard(self, partitions: set[int]) -> None:
        """Forget what is pending for partitions this worker lost (any thread)."""
        with self._lock:
            if self._pending is not None:
                self._pending = self._pending.without(partitions)

    @property
    def pending(self) -> bool:
        with self._lock:
            return self._pending is not None and not self._pending.empty

    async def commit(self) -> CommitResult:
        """Steps 3-4 for everything pending, on the committer thread. Raises TransactionAborted
        (nothing committed) or TransactionFatal."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.commit_now)

    def commit_now(self) -> CommitResult:
        """:meth:`commit`, blocking, on the calling thread (the committer thread)."""
        with self._lock:
            taken, self._pending = self._pending, None
        if taken is None:
            return CommitResult({}, 0, 0.0)
        ownership = self._ownership()
        checkpoint = taken.owned(ownership)
        if not self._retain_on_abort and (ended := taken.ended(ownership)):
            # Exactly-once: the open transaction holds outputs of a partition whose assignment has
            # ended (revoked past the hand-over's bound, or lost); committing it would publish
            # them although the partition's next owner produces them again. Abort it all; the
            # caller rewinds what it still owns.
            metrics.CHECKPOINT_ABORTS.labels(self.pipeline).inc()
            self.producer.abort()
            raise TransactionAborted(f"partitions {sorted(ended)} lost since their outputs were produced")
        if checkpoint.empty:
            if taken.produced and not self._retain_on_abort:
                with self._lock:  # the transaction stays open: what it holds is checked next time
                    self._add_locked(Checkpoint({}, produced=taken.produced))
            return CommitResult({}, 0, 0.0)
        records = (
            checkpoint_records(self.changelog_topic, checkpoint.snapshots, checkpoint.offsets) if self.changelog_topic else []
        )
        offsets = {(self.input_topic, p): o for p, o in checkpoint.offsets.items()}
        try:
            seconds = self.producer.commit(records, offsets, ownership.group_metadata)
        except TransactionAborted as exc:
            metrics.CHECKPOINT_ABORTS.labels(self.pipeline).inc()
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                log.warning(
                    "checkpoint transaction aborted; %s",
                    "retried at the next checkpoint" if self._retain_on_abort else "rewinding to the last committed checkpoint",
                    extra={"pipeline": self.pipeline, "error": str(exc)},
                )
            if self._retain_on_abort:
                with self._lock:
                    self._pending = checkpoint if self._pending is None else checkpoint.merge(self._pending)
            raise
        if self.failing_since is not None:
            log.warning(
                "checkpoints committed again",
                extra={"pipeline": self.pipeline, "failing_s": round(time.monotonic() - self.failing_since, 1)},
            )
            self.failing_since = None
        metrics.CHECKPOINTS.labels(self.pipeline).inc()
        self._on_committed(checkpoint.offsets, checkpoint.epochs)
        return CommitResult(checkpoint.offsets, len(records) - len(checkpoint.offsets) if records else 0, seconds)

    def close(self) -> None:
        """After the last commit: a commit still stuck on the broker is not waited for."""
        self._thread.shutdown(wait=False)
        self.producer.close()
