"""One pipeline inside the worker: its source (fetch), its agent (batches through the pipeline),
its checkpointing (cut, commit, rebalance) and its lag monitor, wired together.

The agent receives *batches*, not single events: the source task fetches them with
confluent-kafka's consumer on a dedicated thread (librdkafka prefetching in the background) and
sends each batch through an in-memory Faust channel. The agent acks nothing itself: offsets are
committed by checkpoints, only up to what the pipeline has processed with every output safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from stream_infer import metrics
from stream_infer.config import Config
from stream_infer.kafka.connection import KafkaConnection
from stream_infer.kafka.consumer import records_from_messages
from stream_infer.runtime.checkpointing import Checkpointing, exit_for_restart
from stream_infer.runtime.monitor import LagMonitor
from stream_infer.runtime.rebalance import RebalanceHandler
from stream_infer.runtime.source import BatchSource, message_bytes
from stream_infer.stages.pipeline import Pipeline
from stream_infer.state.checkpoint import CheckpointCommitter

log = logging.getLogger(__name__)

# SIGTERM: the final checkpoint, then leaving the group, each within this long, so the worker
# exits well inside a Kubernetes grace period (and the 10 s an orchestrator is told to expect).
CLOSE_STEP_S = 4.0


class PipelineRunner:
    def __init__(
        self, pipeline: Pipeline, config: Config, connection: KafkaConnection, committer: CheckpointCommitter | None = None
    ) -> None:
        """`connection`: the cluster and its client security settings, resolved once by the worker."""
        self.pipeline = pipeline
        self.config = config
        self.name = pipeline.name
        self.lock = asyncio.Lock()  # one batch, or one checkpoint cut, at a time
        self.source = BatchSource(pipeline, config, connection)
        self.monitor = LagMonitor(pipeline, self.source, config)
        self.checkpointing = Checkpointing(pipeline, self.source, committer, config, self.lock)
        self.rebalance = RebalanceHandler(pipeline, self.source, self.checkpointing, config, self.lock)
        self.committer = committer
        self.stopping = False

    # --- the Faust roles: source task, agent, checkpoint timer, monitor task ----------------

    async def run_source(self, channel: Any) -> None:
        rebalance = self.rebalance
        await self.source.connect(rebalance.on_assign, rebalance.on_revoke, rebalance.on_lost)
        await self.source.run(lambda value: channel.send(value=value), self.checkpointing.drain)

    async def agent(self, batches) -> None:
        async for messages, epochs, fetched_at in batches:
            self.source.queued_events -= len(messages)
            self.source.queued_bytes -= message_bytes(messages)
            try:
                await self._handle(messages, epochs, fetched_at)
            except Exception:
                # Whatever failed, these messages were fetched and not processed: an agent that
                # carried on (Faust restarts a crashed agent) would commit past them. A restart
                # resumes from the committed offsets instead.
                exit_for_restart("batch failed")
            finally:
                if self.source.queued_events == 0:
                    self.source.agent_free.set()

    async def _handle(self, messages: list, epochs: dict[int, int], fetched_at: float) -> None:
        """One fetched batch through the pipeline (submit; the acks come later)."""
        source = self.source
        if self.stopping:
            # Shutting down: the final checkpoint is taken; these stay uncommitted and are
            # consumed again by the next owner.
            source.drop(len(messages))
            return
        async with self.lock:
            # Only records of partitions owned now, under the assignment they were fetched in:
            # a batch fetched before a revoke, loss or rewind belongs to someone (or something) else.
            owned = self.pipeline.partitions.owned
            # A partition is taken only if owned under the epoch of this fetch: a partition in
            # neither (revoked inside the very fetch that returned its messages) is not taken.
            taken = {p for p, epoch in epochs.items() if owned.get(p) == epoch}
            records = records_from_messages([m for m in messages if m.partition() in taken])
            if len(records) < len(messages):
                source.drop(len(messages) - len(records), 0 if records else 1)
            if not records:
                return
            seen: set[int] = set()
            for r in records:
                if r.partition not in seen:
                    seen.add(r.partition)
                    source.note_batch_start(r.partition, r.offset, r.timestamp_ms)
            metrics.BATCH_SIZE.labels(self.name).observe(len(records))
            metrics.BATCH_WAIT_SECONDS.labels(self.name).observe(time.monotonic() - fetched_at)
            batching, pipeline = self.pipeline.config.batching, self.pipeline
            if (
                len(pipeline.unacknowledged) >= batching.max_in_flight_events
                or pipeline.unacknowledged_bytes >= batching.max_in_flight_bytes
            ):
                await self.checkpointing.settle_locked()  # bounded memory: outputs in the producer's queue
            try:
                await self.pipeline.submit(records, fetched_at)
            except Exception:
                # Outputs not handed over: these offsets must not be committed or skipped.
                exit_for_restart("batch failed")
            self.checkpointing.note_produced({p: epochs[p] for p in seen})

    async def run_checkpoints(self) -> None:
        """A task rather than a timer: a slow commit (a broker failing over) delays the next
        checkpoint instead of overlapping it; the pending checkpoint then carries both."""
        interval = self.config.worker.checkpoint_interval_ms / 1000
        while not self.stopping:
            await asyncio.sleep(interval)
            if not self.stopping:
                await self.checkpointing.checkpoint()

    async def run_monitor(self) -> None:
        await self.monitor.run()

    # --- health ------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict]:
        """Ready: a member of the group, every assigned partition restored, not rewinding."""
        cp, member = self.checkpointing, self.rebalance.member
        restoring = sorted(self.rebalance.restoring)
        partitions = sorted(self.pipeline.partitions.owned)
        if self.stopping:
            reason = "stopping"
        elif not member:
            reason = "not a member of the consumer group (joining or rebalancing)"
        elif cp.rewinding:
            reason = "rewinding to the last committed checkpoint"
        elif restoring:
            reason = f"restoring state of partitions {restoring}"
        elif not partitions:
            reason = "member with no partition assigned (more workers than partitions)"
        else:
            reason = "processing"
        ready = not self.stopping and member and not cp.rewinding and not restoring
        return ready, {"ready": ready, "partitions": partitions, "reason": reason}

    def health(self, stall_timeout_s: float) -> tuple[bool, dict]:
        """Healthy unless there is lag and no progress for `stall_timeout_s`."""
        stalled = self.monitor.stalled_for(self.checkpointing.last_commit)
        healthy = stalled < stall_timeout_s
        body: dict[str, object] = {"healthy": healthy, "lag": self.monitor.lag, "stalled_s": round(stalled, 1)}
        if not healthy:
            body["reason"] = f"lag {self.monitor.lag} and no checkpoint progress for {stalled:.0f} s"
        return healthy, body

    # --- shutdown ----------------------------------------------------------------------------

    async def close(self) -> None:
        """SIGTERM: stop taking batches, final checkpoint, leave the group (partitions handed
        over through the revoke callback), each step bounded."""
        self.stopping = True
        await self.checkpointing.close(CLOSE_STEP_S)
        self.source.stopping = True
        await self.source.close(CLOSE_STEP_S)
        self.monitor.close()

    def close_resources(self) -> None:
        """After the event loop: threads and producers."""
        self.pipeline.close()
        if self.committer is not None:
            self.committer.close()
