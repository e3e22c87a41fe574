"""The worker: every pipeline of one config file in one Faust app.

Faust owns the process: consumer-group membership, partition assignment, the agents that consume
input topics, offset commits, the web server (/metrics, /healthz, /readyz) and signal handling.
Each pipeline is one agent over a manual-ack stream: the agent feeds a :class:`MicroBatcher`; a
batch task drains it through :class:`~stream_infer.pipeline.Pipeline` and acks events only after
their outputs are acknowledged and (for stateful pipelines) checkpointed. Faust commits acked
offsets; an input offset is therefore never committed before its outputs exist.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import faust
from confluent_kafka import KafkaException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream_infer import metrics
from stream_infer.batcher import MicroBatcher
from stream_infer.config import Config, PipelineConfig
from stream_infer.decode import InputRecord
from stream_infer.kafka.admin import admin_client, create_topics
from stream_infer.kafka.changelog import Changelog, changelog_topic, ensure_changelog_topic
from stream_infer.kafka.producer import AsyncProducer
from stream_infer.logs import setup_logging
from stream_infer.pipeline import Pipeline

log = logging.getLogger(__name__)


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


@dataclass
class _Runner:
    """Glue between one Faust agent and one Pipeline."""

    pipeline: Pipeline
    batcher: MicroBatcher
    checkpoint_every: float
    pending: list = field(default_factory=list)  # Faust events processed, awaiting checkpoint + ack
    stream: faust.StreamT | None = None


class Worker:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.ready = False
        self.warm = False
        # Everything that needs no broker first: a bad model or schema fails start-up at once.
        pipelines = [Pipeline(pc, producer=None, changelog=None) for pc in config.pipelines]
        _check_port_free(config.worker.web_host, config.worker.web_port)
        self.producer = AsyncProducer(config.kafka.bootstrap_servers, dict(config.kafka.producer))
        self.runners: dict[str, _Runner] = {}
        try:
            for pipeline in pipelines:
                pipeline.producer = self.producer
                self._connect(pipeline)
                pc = pipeline.config
                self.runners[pc.name] = _Runner(
                    pipeline=pipeline,
                    batcher=MicroBatcher(pc.batching.max_batch_size, pc.batching.max_wait_ms / 1000),
                    checkpoint_every=config.worker.checkpoint_interval_ms / 1000,
                )
        except KafkaException as err:
            self.producer.close(timeout=1)
            raise StartupError(f"cannot reach Kafka at {config.kafka.bootstrap_servers}: {err.args[0].str()}") from None
        self.app = self._build_app()

    def _connect(self, pipeline: Pipeline) -> None:
        """The broker steps of a pipeline: output topics, state changelog, warm-up."""
        pc = pipeline.config
        bootstrap = self.config.kafka.bootstrap_servers
        partitions = input_partitions(bootstrap, pc.input_topic)
        outputs = [t for t in (pc.topics.predictions, pc.topics.alerts, pc.topics.dead_letters, pc.topics.review) if t]
        create_topics(bootstrap, outputs, partitions=partitions, replication=self.config.kafka.replication_factor)
        if pc.stateful:
            topic = changelog_topic(self.config.kafka.group_id, pc.name)
            try:
                ensure_changelog_topic(bootstrap, topic, partitions, self.config.kafka.replication_factor)
            except RuntimeError as err:
                raise StartupError(str(err)) from None
            pipeline.changelog = Changelog(bootstrap, topic, f"{self.config.kafka.group_id}-{pc.name}-{instance_id()}")
        seconds = pipeline.engine.warm_up((1, pc.batching.max_batch_size))
        log.warning(
            "pipeline ready",
            extra={"pipeline": pc.name, "model": pipeline.engine.name, "version": pipeline.engine.version,
                   "provider": pipeline.engine.provider, "input": pc.input_topic, "partitions": partitions,
                   "stateful": pc.stateful, "warm_up_s": round(seconds, 3)},
        )

    def _build_app(self) -> faust.App:
        cfg = self.config
        Path(cfg.worker.data_dir).mkdir(parents=True, exist_ok=True)
        app = faust.App(
            cfg.kafka.group_id,
            broker=faust_broker_url(cfg.kafka.bootstrap_servers),
            store="memory://",
            datadir=cfg.worker.data_dir,
            web_bind=cfg.worker.web_host,
            web_host=cfg.worker.web_host,
            web_port=cfg.worker.web_port,
            web_in_thread=False,
            topic_replication_factor=cfg.kafka.replication_factor,
            topic_allow_declare=False,  # topics are the operator's; the worker never alters them
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=cfg.worker.checkpoint_interval_ms / 1000,
            broker_session_timeout=cfg.kafka.session_timeout_ms / 1000,
            broker_heartbeat_interval=min(3.0, cfg.kafka.session_timeout_ms / 3000),
            # Faust's own per-stream buffer; with our batcher's bound it caps events held in memory.
            stream_buffer_maxsize=max(r.batcher.capacity for r in self.runners.values()),
        )
        for name, runner in self.runners.items():
            self._add_agent(app, name, runner)
        self._add_web(app)

        @app.on_partitions_revoked.connect
        async def on_revoked(_app, revoked, **kwargs) -> None:
            self._on_revoked(revoked)

        @app.on_partitions_assigned.connect
        async def on_assigned(_app, assigned, **kwargs) -> None:
            self.ready = self.warm
            metrics.READY.set(1 if self.ready else 0)
            mine = {(tp.topic, tp.partition) for tp in assigned}
            log.info("partitions assigned", extra={"partitions": sorted(mine)})

        self.warm = True
        return app

    def _add_agent(self, app: faust.App, name: str, runner: _Runner) -> None:
        pc = runner.pipeline.config
        topic = app.topic(pc.input_topic, key_serializer="raw", value_serializer="raw")

        async def consume(stream):
            # Manual acks: an event is acked (and so committable) only after _checkpoint.
            runner.stream = stream.noack()
            batch_task = asyncio.ensure_future(self._batch_loop(runner))
            try:
                async for event in runner.stream.events():
                    await runner.batcher.put(event)
            finally:
                batch_task.cancel()

        consume.__name__ = f"pipeline_{name.replace('-', '_')}"
        app.agent(topic, name=f"pipeline-{name}")(consume)

    async def _batch_loop(self, runner: _Runner) -> None:
        pipeline = runner.pipeline
        next_checkpoint = time.monotonic() + runner.checkpoint_every
        while True:
            batch = await runner.batcher.next_batch(timeout=max(0.0, next_checkpoint - time.monotonic()))
            if batch:
                events = [event for event, _ in batch]
                records = [_record(event) for event in events]
                metrics.BATCH_SIZE.labels(pipeline.name).observe(len(batch))
                metrics.BATCH_WAIT_SECONDS.labels(pipeline.name).observe(time.monotonic() - batch[0][1])
                try:
                    await pipeline.process(records, [arrival for _, arrival in batch])
                except Exception:
                    # Outputs not acknowledged: these events must not be acked or skipped. Exit at
                    # once (like a crash) so that after a restart they are consumed again.
                    log.exception("batch failed; exiting so the uncommitted events are processed again after restart")
                    logging.shutdown()
                    os._exit(70)
                runner.pending.extend(events)
            if time.monotonic() >= next_checkpoint:
                await self._checkpoint(runner)
                next_checkpoint = time.monotonic() + runner.checkpoint_every

    async def _checkpoint(self, runner: _Runner) -> None:
        if not runner.pending:
            await runner.pipeline.checkpoint()  # also releases neutral state
            return
        await runner.pipeline.checkpoint()
        pending, runner.pending = runner.pending, []
        for event in pending:
            await runner.stream.ack(event)

    def _on_revoked(self, revoked) -> None:
        by_topic: dict[str, set[int]] = {}
        for tp in revoked:
            by_topic.setdefault(tp.topic, set()).add(tp.partition)
        for runner in self.runners.values():
            parts = by_topic.get(runner.pipeline.config.input_topic)
            if parts:
                runner.pipeline.drop_partitions(parts)

    def _add_web(self, app: faust.App) -> None:
        worker = self

        @app.page("/metrics")
        async def metrics_view(self, request):
            return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

        @app.page("/healthz")
        async def healthz(self, request):
            return self.json({"status": "ok"})

        @app.page("/readyz")
        async def readyz(self, request):
            body = {"ready": worker.ready, "pipelines": list(worker.runners)}
            return self.json(body, status=200 if worker.ready else 503)

    def run(self, log_level: str = "warning", log_format: str = "text") -> None:
        """Run until SIGTERM/SIGINT; Faust stops the agents and commits what was acked."""

        class _Worker(faust.Worker):
            def _setup_logging(self) -> None:
                setup_logging(log_level, log_format)

        try:
            _Worker(self.app, loglevel=log_level.upper(), quiet=True, redirect_stdouts=False).execute_from_commandline()
        finally:
            for runner in self.runners.values():
                runner.pipeline.close()
            self.producer.close()


def _check_port_free(host: str, port: int) -> None:
    if port == 0:
        return
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise StartupError(
                f"web port {host}:{port} (metrics, health) is in use, maybe by another worker: "
                "set worker.web_port in the config"
            ) from None


def _record(event) -> InputRecord:
    message = event.message
    headers = message.headers
    if isinstance(headers, dict):
        headers = tuple(headers.items())
    return InputRecord(
        key=message.key,
        value=message.value,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000),
        headers=tuple(headers or ()),
    )
