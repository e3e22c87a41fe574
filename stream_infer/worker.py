"""The worker: every pipeline of one config file in one Faust app.

Faust is the application framework: lifecycle and signal handling, the web server (/metrics,
/healthz, /readyz), timers (checkpoints), and the agent model: each pipeline is a Faust agent.
What the agent receives are *batches*, not single events: a source task per pipeline fetches them
with confluent-kafka's consumer (one dedicated thread, librdkafka prefetching in the background)
and sends each batch through an in-memory Faust channel to the agent. The first design let Faust's
aiokafka stream feed the agent event by event; the profile in the README (Performance) shows why
that was replaced. The input topics' consumer group is `kafka.group_id`; Faust's own consumer
(group `<group_id>-app`) carries no input topic.

No loss: the agent acks nothing itself. Input offsets are committed by the checkpoint timer, and
only up to what the pipeline has processed with every output acknowledged (and, for stateful
pipelines, written to the state changelog in the same checkpoint).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faust
from confluent_kafka import KafkaException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream_infer import metrics
from stream_infer.config import Config
from stream_infer.controller import COALESCE_EVENTS, LATENCY, THROUGHPUT, BatchController
from stream_infer.kafka.admin import admin_client, create_topics, record_timestamps
from stream_infer.kafka.changelog import Changelog, changelog_topic, ensure_changelog_topic
from stream_infer.kafka.consumer import BatchConsumer, records_from_messages
from stream_infer.kafka.local import port_is_free
from stream_infer.kafka.producer import AsyncProducer
from stream_infer.logs import setup_logging
from stream_infer.pipeline import Checkpoint, Pipeline

log = logging.getLogger(__name__)

# Batches waiting between the source task and the agent: one. In throughput mode the source
# fetches the next batch while the agent works on the current one (in latency mode it waits until
# the agent is free: see source()), and what arrives meanwhile stays in the consumer's queue, to
# be taken as one larger batch later. With two, batches were cut early and queued behind each
# other: at half load the in-worker p50 was 30-35 ms, with one 18-20 ms (two A/B pairs). More
# would only hold memory; the backlog belongs in Kafka.
CHANNEL_DEPTH = 1
# How often the lag monitor samples offsets and the batching controller steps.
LAG_INTERVAL_S = 1.0
# A checkpoint looks this long for a moment when the batch path is idle and every output is
# acknowledged, checking every CUT_POLL_S, before it pauses the batch path to wait for acks.
CUT_SEARCH_S = 0.1
CUT_POLL_S = 0.001


class StartupError(RuntimeError):
    """The worker cannot start; the message says what to fix."""


def faust_broker_url(bootstrap: str) -> str:
    """`h1:p1,h2:p2` -> `kafka://h1:p1;kafka://h2:p2`, Faust's spelling of a broker list."""
    return ";".join(f"kafka://{b.strip()}" for b in bootstrap.split(",") if b.strip())


def instance_id() -> str:
    """Stable per worker instance (the state changelog's transactional id builds on it): a restarted
    worker with the same id fences its dead predecessor's unfinished checkpoint at once."""
    return os.environ.get("STREAM_INFER_INSTANCE_ID") or socket.gethostname()


def input_partitions(bootstrap: str, topic: str) -> int:
    meta = admin_client(bootstrap).list_topics(timeout=15).topics.get(topic)
    if meta is None or meta.error is not None:
        raise StartupError(
            f"input topic {topic!r} does not exist on {bootstrap}: create it (partitions = the most "
            "workers you will run), e.g. `stream-infer demo` creates the demo's topics"
        )
    return len(meta.partitions)


class PipelineRunner:
    """One pipeline inside the Faust app: its consumer thread, source task, agent and checkpoints."""

    def __init__(self, pipeline: Pipeline, config: Config) -> None:
        self.pipeline = pipeline
        self.config = config
        self.name = pipeline.name
        self.topic = pipeline.config.input_topic
        self.batching = pipeline.config.batching
        self.controller = BatchController(self.batching.max_batch_size, self.batching.max_wait_ms / 1000,
                                          self.batching.latency_budget_s,
                                          (pipeline.inference_cost, pipeline.batch_cost))
        # What the source fetches with. Without the controller: the cap, no waiting.
        self.batch_size = self.controller.setting.batch_size if self.batching.adaptive else self.batching.max_batch_size
        self.linger = 0.0
        self.coalesce = self.controller.setting.coalesce if self.batching.adaptive else 0.0
        metrics.CONTROLLER_BATCH_SIZE.labels(self.name).set(self.batch_size)
        metrics.CONTROLLER_MODE.labels(self.name, LATENCY).set(1)
        metrics.CONTROLLER_MODE.labels(self.name, THROUGHPUT).set(0)
        metrics.PAUSED_PARTITIONS.labels(self.name).set(0)
        # In-flight accounting (events and batches fetched, not yet acknowledged); see in_flight().
        self.fetched_events = self.fetched_batches = 0
        self.dropped_events = self.dropped_batches = 0
        self.queued_events = 0  # in the channel, not yet taken by the agent
        # Fetches that filled the batch size, and the count the controller's last step saw: a
        # throughput-mode tick without one means the batcher only waited (BatchController.update).
        self.full_fetches = self._full_fetches_seen = 0
        # Set while the agent has no batch in hand: in latency mode the source fetches only then
        # (see source()).
        self.agent_free = asyncio.Event()
        self.agent_free.set()
        # Per partition, (first offset, timestamp) of each batch fetched: lag seconds reads the
        # timestamp of the oldest unprocessed record from it without asking the broker.
        self.batch_starts: dict[int, deque[tuple[int, int]]] = {}
        self._peeked: dict[int, tuple[int, int | None]] = {}  # partition -> (offset, timestamp) read from Kafka
        self.monitor_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"lag-{self.name}")
        self.consumer: BatchConsumer | None = None
        # All consumer calls on one thread: librdkafka's rebalance callbacks then run there too.
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"consume-{self.name}")
        self.lock = asyncio.Lock()  # one batch, or one checkpoint snapshot, at a time
        self.checkpoint_lock = asyncio.Lock()  # checkpoints are written and committed in order
        self.owned: set[int] = set()
        self.joined = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False

    # --- rebalance (called by librdkafka on the consumer thread) --------------------------------

    def _on_assign(self, partitions: list[tuple[str, int]]) -> None:
        if not partitions:  # joined the group with nothing to do (more workers than partitions)
            self.loop.call_soon_threadsafe(setattr, self, "joined", True)
            return
        self.loop.call_soon_threadsafe(self._assigned, {p for _, p in partitions})

    def _assigned(self, partitions: set[int]) -> None:
        self.owned |= partitions
        log.info("partitions assigned", extra={"pipeline": self.name, "partitions": sorted(partitions)})
        # Restore state now, not when each partition's first event arrives: otherwise that event
        # waits for the changelog read. Ready (for /readyz) once restored.
        asyncio.ensure_future(self._restore(partitions))

    async def _restore(self, partitions: set[int]) -> None:
        async with self.lock:
            await self.pipeline.ensure_restored(partitions & self.owned)
        self.joined = True

    def _on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        # Blocking here is what librdkafka expects: the partitions move only after we return, so
        # the last checkpoint and commit for them happen before another worker takes them over.
        future = asyncio.run_coroutine_threadsafe(self._revoke({p for _, p in partitions}), self.loop)
        try:
            offsets = future.result(timeout=60)
            # Committed here, on the consumer thread inside the callback: a commit from the event
            # loop while this thread waits in the callback (or in close()) could block the loop,
            # and with it the revoke this thread waits for.
            self.consumer.commit(offsets, asynchronous=False)
        except Exception:
            log.exception("checkpoint on revoke failed; the next owner reprocesses from the last commit")

    async def _revoke(self, partitions: set[int]) -> dict[tuple[str, int], int]:
        """Last checkpoint of revoked partitions; returns the offsets the caller commits."""
        offsets: dict[tuple[str, int], int] = {}
        async with self.checkpoint_lock, self.lock:
            await self._acknowledged()
            checkpoint = self.pipeline.snapshot()
            if checkpoint is not None:
                await self.pipeline.persist(checkpoint)
                offsets = {(self.topic, p): o for p, o in checkpoint.offsets.items()}
            self.pipeline.drop_partitions(partitions)
            self.owned -= partitions
            for partition in partitions:
                self.batch_starts.pop(partition, None)
                self._peeked.pop(partition, None)
                for gauge in (metrics.LAG_MESSAGES, metrics.LAG_SECONDS):
                    try:
                        gauge.remove(self.name, self.topic, str(partition))
                    except KeyError:
                        pass
        log.info("partitions revoked", extra={"pipeline": self.name, "partitions": sorted(partitions)})
        return offsets

    # --- the three Faust roles: source task, agent, checkpoint timer ---------------------------

    async def source(self, channel: faust.ChannelT) -> None:
        self.loop = asyncio.get_running_loop()
        cfg = self.config
        self.consumer = await self.loop.run_in_executor(self.thread, lambda: BatchConsumer(
            cfg.kafka.bootstrap_servers, cfg.kafka.group_id, self.topic,
            on_assign=self._on_assign, on_revoke=self._on_revoke, session_timeout_ms=cfg.kafka.session_timeout_ms,
        ))
        max_wait = self.batching.max_wait_ms / 1000
        bound = self.batching.max_in_flight_events
        try:
            while not self.stopping:
                if self.in_flight()[0] >= bound:
                    await self._pause_until_drained(bound)
                if self.batching.adaptive and self.controller.mode == LATENCY:
                    # Fetch only when the agent is free: what arrived while it worked is the next
                    # batch. Fetched earlier, a small batch would queue behind the one in hand,
                    # and what arrived meanwhile behind both: at half load the in-worker p99 was
                    # 35-43 ms prefetching, 19-25 ms fetching on demand (two A/B pairs). Under a
                    # backlog (throughput mode) the next batch is fetched while the agent works.
                    await self.agent_free.wait()
                messages = await self.loop.run_in_executor(
                    self.thread, lambda: self.consumer.next_batch(self.batch_size, linger=self.linger, max_wait=max_wait,
                                                     coalesce=self.coalesce, coalesce_events=COALESCE_EVENTS)
                )
                if messages:
                    if len(messages) >= self.batch_size:
                        self.full_fetches += 1
                    self.fetched_events += len(messages)
                    self.fetched_batches += 1
                    self.queued_events += len(messages)
                    self.agent_free.clear()
                    await channel.send(value=(messages, time.monotonic()))
        finally:
            self.stopping = True

    def in_flight(self) -> tuple[int, int]:
        """(events, batches) fetched whose outputs are not yet acknowledged by the broker."""
        events = self.fetched_events - self.dropped_events - self.pipeline.acknowledged_events
        batches = self.fetched_batches - self.dropped_batches - self.pipeline.acknowledged_batches
        return events, batches

    async def _pause_until_drained(self, bound: int) -> None:
        """Backpressure: stop fetching (the backlog waits in Kafka) until in-flight work is half
        drained; once the agent has taken every queued batch, wait for the outputs' acks."""
        partitions = await self.loop.run_in_executor(self.thread, self.consumer.pause)
        metrics.PAUSES.labels(self.name).inc()
        metrics.PAUSED_PARTITIONS.labels(self.name).set(len(partitions))
        log.info("partitions paused: in-flight bound reached",
                 extra={"pipeline": self.name, "in_flight_events": self.in_flight()[0], "bound": bound})
        try:
            while not self.stopping and self.in_flight()[0] > bound // 2:
                if self.queued_events == 0:
                    async with self.lock:
                        await self._acknowledged()
                else:
                    await asyncio.sleep(0.002)
        finally:
            await self.loop.run_in_executor(self.thread, self.consumer.resume)
            metrics.PAUSED_PARTITIONS.labels(self.name).set(0)
            log.info("partitions resumed", extra={"pipeline": self.name, "in_flight_events": self.in_flight()[0]})

    async def agent(self, batches) -> None:
        async for messages, fetched_at in batches:
            self.queued_events -= len(messages)
            try:
                await self._handle(messages, fetched_at)
            finally:
                if self.queued_events == 0:
                    self.agent_free.set()

    async def _handle(self, messages: list, fetched_at: float) -> None:
        """One fetched batch through the pipeline (submit; the acks come later)."""
        bound = self.batching.max_in_flight_events
        if self.stopping:
            # Shutting down: the final checkpoint is taken; these stay uncommitted and are
            # consumed again by the next owner.
            self.dropped_events += len(messages)
            self.dropped_batches += 1
            return
        # Messages fetched before a revoke belong to the new owner now.
        records = records_from_messages([m for m in messages if m.partition() in self.owned])
        self.dropped_events += len(messages) - len(records)
        if not records:
            self.dropped_batches += 1
            return
        starts: dict[int, tuple[int, int]] = {}
        for r in records:
            if r.partition not in starts:
                starts[r.partition] = (r.offset, r.timestamp_ms)
        for partition, start in starts.items():
            self.batch_starts.setdefault(partition, deque()).append(start)
        metrics.BATCH_SIZE.labels(self.name).observe(len(records))
        metrics.BATCH_WAIT_SECONDS.labels(self.name).observe(time.monotonic() - fetched_at)
        async with self.lock:
            if len(self.pipeline.unacknowledged) >= bound:
                await self._acknowledged()  # bounded memory: outputs in the producer's queue
            try:
                await self.pipeline.submit(records, fetched_at)
            except Exception:
                # Outputs not acknowledged: these offsets must not be committed or skipped.
                # Exit at once (like a crash) so that after a restart they are consumed again.
                self._exit_for_restart("batch failed")

    # --- lag monitor and batching controller (a task, every LAG_INTERVAL_S) --------------------

    async def monitor_loop(self) -> None:
        """A task rather than a timer: a slow sample (reading a record's timestamp from a paused
        partition) delays the next one instead of overlapping it."""
        while not self.stopping:
            await asyncio.sleep(LAG_INTERVAL_S)
            try:
                await self.monitor()
            except Exception:  # the monitor must never take the worker down
                log.exception("lag monitor failed; trying again", extra={"pipeline": self.name})

    async def monitor(self) -> None:
        """Sample offsets of the owned partitions, publish lag gauges, step the controller."""
        if self.consumer is None or not self.owned or self.stopping:
            return
        partitions = sorted(self.owned)
        try:
            # On the consumer thread, between two fetches (see BatchConsumer: one thread per handle).
            offsets = await self.loop.run_in_executor(self.thread, self.consumer.lag_snapshot, partitions)
        except KafkaException as err:
            log.warning("lag sample failed; next try in %.0f s", LAG_INTERVAL_S, extra={"pipeline": self.name, "error": str(err)})
            return
        now_ms = time.time() * 1000
        backlog = self.queued_events
        for o in offsets:
            if o.partition not in self.owned:
                continue
            lag = o.lag
            start = o.oldest_unprocessed
            starts = self.batch_starts.get(o.partition)
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
        events, batches = self.in_flight()
        metrics.IN_FLIGHT_EVENTS.labels(self.name).set(events)
        metrics.IN_FLIGHT_BATCHES.labels(self.name).set(batches)
        if self.batching.adaptive:
            self._steer(backlog)

    def _steer(self, backlog: int) -> None:
        before = self.controller.mode
        filled, self._full_fetches_seen = self.full_fetches > self._full_fetches_seen, self.full_fetches
        setting = self.controller.update(backlog, batches_filled=filled)
        self.batch_size, self.linger, self.coalesce = setting.batch_size, setting.linger, setting.coalesce
        metrics.CONTROLLER_BATCH_SIZE.labels(self.name).set(setting.batch_size)
        for mode in (LATENCY, THROUGHPUT):
            metrics.CONTROLLER_MODE.labels(self.name, mode).set(1 if mode == setting.mode else 0)
        if setting.mode != before:
            log.info("batching controller: %s mode", setting.mode,
                     extra={"pipeline": self.name, "backlog": backlog, "batch_size": setting.batch_size,
                            "wait_ms": round(setting.linger * 1000, 1)})

    async def _oldest_unprocessed_timestamp(self, partition: int, offset: int) -> int | None:
        """Timestamp of the record at `offset`: from the batches fetched if one starts there (the
        usual case: commits fall on batch boundaries), else read once from Kafka (a paused or not
        yet fetched partition) and remembered while the offset stays the same."""
        starts = self.batch_starts.get(partition)
        if starts and starts[0][0] == offset:
            return starts[0][1]
        peeked = self._peeked.get(partition)
        if peeked is None or peeked[0] != offset:
            key = (self.topic, partition)
            found = await self.loop.run_in_executor(
                self.monitor_thread, record_timestamps, self.config.kafka.bootstrap_servers, {key: offset}, 2.0
            )
            peeked = self._peeked[partition] = (offset, int(found[key] * 1000) if key in found else None)
        return peeked[1]

    async def checkpoint(self) -> None:
        async with self.checkpoint_lock:
            checkpoint = await self._cut()
            await self._persist_and_commit(checkpoint)

    async def _cut(self) -> Checkpoint | None:
        """The checkpoint's snapshot, taken where state and offsets agree: between two batches,
        with every submitted output acknowledged.

        First look for such a moment without stopping anything: at live loads the producer's
        queue empties between batches, and a snapshot taken then (synchronously: no batch can
        start in between on this event loop) costs the batch path nothing. Holding the batch lock
        while waiting for the acks instead stopped the batch path for 7-25 ms twice a second,
        which showed in p99 latency at half load. Under a backlog the queue never empties; after
        CUT_SEARCH_S the checkpoint takes the lock and waits for the acks (batches are large then,
        and a pause of one ack round trip is a small share of the time)."""
        deadline = time.monotonic() + CUT_SEARCH_S
        while time.monotonic() < deadline and not self.stopping:
            if not self.lock.locked():
                try:
                    acknowledged = self.pipeline.acknowledged_now()
                except Exception:
                    self._exit_for_restart("outputs not acknowledged")
                if acknowledged:
                    metrics.CHECKPOINT_CUTS.labels(self.name, "idle").inc()
                    return self.pipeline.snapshot()
            await asyncio.sleep(CUT_POLL_S)
        async with self.lock:
            await self._acknowledged()
            metrics.CHECKPOINT_CUTS.labels(self.name, "paused").inc()
            return self.pipeline.snapshot()

    async def _acknowledged(self) -> None:
        """State equals offsets only when no batch is in flight: wait for the outputs' acks."""
        try:
            await self.pipeline.wait_acknowledged()
        except Exception:
            self._exit_for_restart("outputs not acknowledged")

    @staticmethod
    def _exit_for_restart(what: str) -> None:
        """Log the exception being handled and exit at once (like a crash, status 70): the
        offsets of unacknowledged outputs are never committed, so after a restart those events
        are consumed again."""
        log.exception("%s; exiting so the uncommitted events are processed again after restart", what)
        logging.shutdown()
        os._exit(70)

    async def _persist_and_commit(self, checkpoint, *, asynchronous: bool = True) -> None:
        if checkpoint is None or self.consumer is None:
            return
        await self.pipeline.persist(checkpoint)
        offsets = {(self.topic, p): o for p, o in checkpoint.offsets.items()}
        # On the consumer thread: from the event loop, the call would wait for the fetch in
        # progress (confluent-kafka serializes calls per consumer) and block the loop meanwhile.
        # Asynchronous: a commit lost in a crash only means events below the state checkpoint are
        # read again, and those the pipeline skips.
        await self.loop.run_in_executor(self.thread, lambda: self.consumer.commit(offsets, asynchronous=asynchronous))

    async def close(self) -> None:
        """Final checkpoint and commit, then leave the group (SIGTERM path)."""
        self.stopping = True
        if self.consumer is None:
            return
        async with self.checkpoint_lock, self.lock:
            await self._acknowledged()
            await self._persist_and_commit(self.pipeline.snapshot(), asynchronous=False)
        # close() revokes our partitions: _on_revoke needs the event loop, which keeps running here.
        self.monitor_thread.shutdown(wait=True)
        await self.loop.run_in_executor(self.thread, self.consumer.close)
        self.thread.shutdown(wait=True)


class Worker:
    def __init__(self, config: Config) -> None:
        self.config = config
        # Everything that needs no broker first: a bad model or schema fails start-up at once.
        pipelines = [Pipeline(pc, producer=None, changelog=None) for pc in config.pipelines]
        _check_port_free(config.worker.web_host, config.worker.web_port)
        self.producer = AsyncProducer(config.kafka.bootstrap_servers, dict(config.kafka.producer))
        try:
            for pipeline in pipelines:
                pipeline.producer = self.producer
                self._connect(pipeline)
        except KafkaException as err:
            self.producer.close(timeout=1)
            raise StartupError(f"cannot reach Kafka at {config.kafka.bootstrap_servers}: {err.args[0].str()}") from None
        self.runners = {p.name: PipelineRunner(p, config) for p in pipelines}
        self.app = self._build_app()

    @property
    def ready(self) -> bool:
        return all(r.joined for r in self.runners.values())

    def _connect(self, pipeline: Pipeline) -> None:
        """The broker steps of a pipeline: output topics, state changelog, warm-up."""
        pc = pipeline.config
        bootstrap = self.config.kafka.bootstrap_servers
        partitions = input_partitions(bootstrap, pc.input_topic)
        outputs = [t for t in (pc.topics.predictions, pc.topics.alerts, pc.topics.dead_letters, pc.topics.review) if t]
        if pc.staleness.max_event_age_ms:
            outputs.append(pc.skipped_topic)
        create_topics(bootstrap, outputs, partitions=partitions, replication=self.config.kafka.replication_factor)
        if pc.stateful:
            topic = changelog_topic(self.config.kafka.group_id, pc.name)
            try:
                ensure_changelog_topic(bootstrap, topic, partitions, self.config.kafka.replication_factor)
            except RuntimeError as err:
                raise StartupError(str(err)) from None
            pipeline.changelog = Changelog(bootstrap, topic, f"{self.config.kafka.group_id}-{pc.name}-{instance_id()}")
        seconds = pipeline.engine.warm_up((1, pc.batching.max_batch_size))
        inline_rows = pipeline.calibrate()
        log.warning(
            "pipeline ready",
            extra={"pipeline": pc.name, "model": pipeline.engine.name, "version": pipeline.engine.version,
                   "provider": pipeline.engine.provider, "input": pc.input_topic, "partitions": partitions,
                   "stateful": pc.stateful, "warm_up_s": round(seconds, 3), "inline_rows": inline_rows},
        )

    def _build_app(self) -> faust.App:
        cfg = self.config
        Path(cfg.worker.data_dir).mkdir(parents=True, exist_ok=True)
        app = faust.App(
            f"{cfg.kafka.group_id}-app",
            broker=faust_broker_url(cfg.kafka.bootstrap_servers),
            store="memory://",
            datadir=cfg.worker.data_dir,
            web_bind=cfg.worker.web_host,
            web_host=cfg.worker.web_host,
            web_port=cfg.worker.web_port,
            web_in_thread=False,
            topic_replication_factor=cfg.kafka.replication_factor,
            topic_allow_declare=False,
            broker_session_timeout=cfg.kafka.session_timeout_ms / 1000,
            broker_heartbeat_interval=min(3.0, cfg.kafka.session_timeout_ms / 3000),
        )
        interval = cfg.worker.checkpoint_interval_ms / 1000
        for runner in self.runners.values():
            channel = app.channel(maxsize=CHANNEL_DEPTH)
            app.agent(channel, name=f"pipeline-{runner.name}")(_named(runner.agent, f"pipeline_{runner.name}"))
            app.task(_named(runner.source, f"source_{runner.name}", channel))
            app.timer(interval, name=f"checkpoint-{runner.name}")(_named(runner.checkpoint, f"checkpoint_{runner.name}"))
            app.task(_named(runner.monitor_loop, f"lag_{runner.name}"))
        self._add_web(app)

        @app.on_before_shutdown.connect  # sent while the event loop still turns
        async def _close_runners(_app, **kwargs) -> None:
            await asyncio.gather(*(r.close() for r in self.runners.values()))

        return app

    def _add_web(self, app: faust.App) -> None:
        worker = self

        @app.page("/metrics")
        async def metrics_view(self, request):
            metrics.READY.set(1 if worker.ready else 0)
            return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

        @app.page("/healthz")
        async def healthz(self, request):
            return self.json({"status": "ok"})

        @app.page("/readyz")
        async def readyz(self, request):
            body = {"ready": worker.ready, "pipelines": {n: r.joined for n, r in worker.runners.items()}}
            return self.json(body, status=200 if worker.ready else 503)

    def run(self, log_level: str = "warning", log_format: str = "text") -> None:
        """Run until SIGTERM/SIGINT; then checkpoint, commit and leave the group."""

        class _Worker(faust.Worker):
            def _setup_logging(self) -> None:
                setup_logging(log_level, log_format)

        # The batch path allocates many short-lived objects (decoded events, output dicts); with
        # CPython's default thresholds the cyclic collector ran often enough to add tens of ms to
        # p99 latency in the benchmark. Nothing here builds reference cycles at runtime, so
        # collect rarely, and keep start-up objects (models, modules) out of every collection.
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
        try:
            _Worker(self.app, loglevel=log_level.upper(), quiet=True, redirect_stdouts=False).execute_from_commandline()
        finally:
            for runner in self.runners.values():
                runner.pipeline.close()
            self.producer.close()


def _named(method, name: str, *bound):
    """Faust registers agents, tasks and timers by function name, so each pipeline's needs its own;
    and it passes the app to a task or timer whose signature takes arguments, so the wrapper
    declares exactly what Faust should pass: the stream for an agent, nothing otherwise."""
    if method.__name__ == "agent":
        async def wrapper(stream):
            return await method(stream)
    else:
        async def wrapper():
            return await method(*bound)
    wrapper.__name__ = wrapper.__qualname__ = name
    return wrapper


def _check_port_free(host: str, port: int) -> None:
    if port != 0 and not port_is_free(port, host):
        raise StartupError(
            f"web port {host}:{port} (metrics, health) is in use, maybe by another worker: "
            "set worker.web_port in the config"
        )
