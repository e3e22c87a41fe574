"""The worker: every pipeline of one config file in one Faust app.

Faust is the application framework: lifecycle and signal handling, the web server (/metrics,
/healthz, /readyz), tasks (source, checkpoints, lag monitor), and the agent model: each pipeline is a Faust agent fed
with batches (see :mod:`stream_infer.runtime.runner`). Faust itself connects to no broker: the
pipelines' consumers (confluent-kafka, group `kafka.group_id`) are the only members of a group,
and the app starts neither Faust's own consumer group nor its producer.

Processing guarantee (`worker.processing_guarantee`): at-least-once (the default) produces
outputs with an idempotent producer and commits, per checkpoint, state and input offsets in one
transaction; exactly-once also produces the outputs in that transaction, so `read_committed`
consumers see each input's outputs once (visible at the checkpoint's commit). See
:mod:`stream_infer.state.checkpoint`.
"""

from __future__ import annotations

import gc
import logging

import faust
from confluent_kafka import KafkaException

from stream_infer.config import Config
from stream_infer.kafka.acls import worker_grants
from stream_infer.kafka.admin import admin_client, create_topics
from stream_infer.kafka.connection import ConnectionSettingsError, KafkaConnection
from stream_infer.kafka.consumer import Ownership
from stream_infer.kafka.names import changelog_topic, transactional_id
from stream_infer.kafka.preflight import ConnectionFailure, check_access, connect
from stream_infer.kafka.producer import AsyncProducer
from stream_infer.kafka.transactions import TransactionalProducer, TransactionFatal, instance_id
from stream_infer.logs import setup_logging
from stream_infer.ports import free_port, port_is_free
from stream_infer.runtime.app import build_app
from stream_infer.runtime.runner import PipelineRunner
from stream_infer.stages.pipeline import Pipeline
from stream_infer.state.changelog import (
    Changelog,
    ensure_changelog_topic,
)
from stream_infer.state.checkpoint import CheckpointCommitter

log = logging.getLogger(__name__)

# A stop (SIGTERM) ends the process within this long, whatever is stuck (a broker that does not
# answer a commit or a group leave): what was not committed is processed again by the next owner.
SHUTDOWN_DEADLINE_S = 9.0


class StartupError(RuntimeError):
    """The worker cannot start; the message says what to fix."""


# How long start-up waits for the cluster to answer at all before it exits with the reason (a
# refusal of the credentials or the certificate ends it at once).
CONNECT_TIMEOUT_S = 15.0


def input_partitions(bootstrap: KafkaConnection | str, topic: str) -> int:
    meta = admin_client(bootstrap).list_topics(timeout=15).topics.get(topic)
    if meta is None or meta.error is not None:
        raise StartupError(
            f"input topic {topic!r} does not exist on {bootstrap}: create it (partitions = the most "
            "workers you will run), e.g. `stream-infer demo` creates the demo's topics"
        )
    return len(meta.partitions)


class Worker:
    def __init__(self, config: Config) -> None:
        self.config = config
        # Everything that needs no broker first: a bad model or schema fails start-up at once.
        pipelines = [Pipeline(pc, producer=None, changelog=None) for pc in config.pipelines]
        if config.worker.web_port == 0:  # any free port (Faust's web server needs a number)
            port = free_port(config.worker.web_host)
            config = self.config = config.model_copy(update={"worker": config.worker.model_copy(update={"web_port": port})})
            log.info("web port chosen", extra={"web_port": port})
        _check_port_free(config.worker.web_host, config.worker.web_port)
        self.exactly_once = config.worker.processing_guarantee == "exactly_once"
        self.instance = instance_id()
        try:
            self.connection = config.kafka.connection()
        except ConnectionSettingsError as err:
            raise StartupError(str(err)) from None
        bootstrap = self.connection.bootstrap
        self._preflight()
        self.producer: AsyncProducer | None = None
        self.runners: dict[str, PipelineRunner] = {}
        try:
            if not self.exactly_once:
                self.producer = AsyncProducer(self.connection, dict(config.kafka.producer))
            for pipeline in pipelines:
                self.runners[pipeline.name] = self._connect(pipeline)
        except KafkaException as err:
            self.close()
            raise StartupError(f"cannot reach Kafka at {bootstrap}: {err.args[0].str()}") from None
        except TransactionFatal as err:
            self.close()
            raise StartupError(str(err)) from None
        except StartupError:
            self.close()
            raise
        log.info("worker instance", extra={"instance": self.instance, "processing_guarantee": config.worker.processing_guarantee})
        self.app = build_app(self.config, self.runners, self)

    def _preflight(self) -> None:
        """Connect, authenticate and check the ACLs before anything else touches the cluster, so
        a wrong password, an untrusted certificate or a missing grant ends start-up within
        seconds with the reason (StartupError), not as a client retrying forever."""
        connection = self.connection
        try:
            admin = connect(connection, timeout=CONNECT_TIMEOUT_S)
            principal = f"User:{connection.sasl_username}" if connection.sasl_username else ""
            check_access(admin, worker_grants(self.config), principal_hint=principal)
        except ConnectionFailure as err:
            raise StartupError(str(err)) from None
        log.info(
            "connected to Kafka",
            extra={
                "bootstrap": connection.bootstrap,
                "security_protocol": connection.security_protocol,
                "sasl_mechanism": connection.sasl_mechanism,
                "sasl_username": connection.sasl_username,
            },
        )

    def _connect(self, pipeline: Pipeline) -> PipelineRunner:
        """The broker steps of a pipeline: output topics, state changelog, the checkpoint
        transaction's producer, warm-up."""
        pc = pipeline.config
        kafka = self.config.kafka
        bootstrap = self.connection
        partitions = input_partitions(bootstrap, pc.input_topic)
        outputs = [t for t in (pc.topics.predictions, pc.topics.alerts, pc.topics.dead_letters, pc.topics.review) if t]
        if pc.staleness.max_event_age_ms:
            outputs.append(pc.skipped_topic)
        topic_config = {"min.insync.replicas": str(kafka.min_insync_replicas_for_created_topics)}
        try:
            create_topics(bootstrap, outputs, partitions=partitions, replication=kafka.replication_factor, config=topic_config)
        except RuntimeError as err:
            raise StartupError(str(err)) from None
        state_topic = None
        if pc.stateful:
            state_topic = changelog_topic(kafka.group_id, pc.name)
            try:
                ensure_changelog_topic(bootstrap, state_topic, partitions, kafka.replication_factor, topic_config)
            except RuntimeError as err:
                raise StartupError(str(err)) from None
            pipeline.partitions.changelog = Changelog(bootstrap, state_topic)
        transactions = TransactionalProducer(
            bootstrap,
            transactional_id(kafka.group_id, pc.name, self.instance),
            transaction_timeout_ms=kafka.transaction_timeout_ms,
            extra=dict(kafka.producer),
        )
        # Exactly-once: outputs go into the checkpoint's transaction (the pipeline only calls
        # send_batch; acks are the commit's business, see runtime.checkpointing).
        pipeline.producer = transactions if self.exactly_once else self.producer  # type: ignore[assignment]
        runner: PipelineRunner | None = None

        def ownership() -> Ownership:
            consumer = runner.source.consumer if runner is not None else None
            return consumer.ownership() if consumer is not None else Ownership(None, {})

        def committed(offsets: dict[int, int], epochs: dict[int, int]) -> None:
            if runner is not None and runner.source.consumer is not None:
                runner.source.consumer.note_committed(offsets, epochs)

        committer = CheckpointCommitter(
            pc.name, pc.input_topic, state_topic, transactions, ownership, committed, retain_on_abort=not self.exactly_once
        )
        runner = PipelineRunner(pipeline, self.config, self.connection, committer)
        seconds = pipeline.engine.warm_up((1, pc.batching.max_batch_size))
        inline_rows = pipeline.calibrate()
        log.warning(
            "pipeline ready",
            extra={
                "pipeline": pc.name,
                "model": pipeline.engine.name,
                "version": pipeline.engine.version,
                "provider": pipeline.engine.provider,
                "input": pc.input_topic,
                "partitions": partitions,
                "stateful": pc.stateful,
                "warm_up_s": round(seconds, 3),
                "inline_rows": inline_rows,
            },
        )
        return runner

    def close(self) -> None:
        """Close every Kafka client and thread the worker made (after run(), or instead of it)."""
        for runner in self.runners.values():
            runner.close_resources()
        if self.producer is not None:
            self.producer.close(timeout=1)

    # --- health ------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict]:
        """200 only when every pipeline's models are warm (they are, once the app runs), its
        consumer is a member of the group, and every partition it owns is restored."""
        pipelines = {name: r.readiness()[1] for name, r in self.runners.items()}
        ready = all(p["ready"] for p in pipelines.values())
        return ready, {"ready": ready, "pipelines": pipelines}

    def health(self) -> tuple[bool, dict]:
        """503 when a pipeline has lag and made no progress for worker.stall_timeout_s: a
        liveness probe then restarts the stuck worker."""
        limit = self.config.worker.stall_timeout_s
        pipelines = {name: r.health(limit)[1] for name, r in self.runners.items()}
        healthy = all(p["healthy"] for p in pipelines.values())
        return healthy, {"healthy": healthy, "stall_timeout_s": limit, "pipelines": pipelines}

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
            self.close()


def _check_port_free(host: str, port: int) -> None:
    if not port_is_free(port, host):
        raise StartupError(
            f"web port {host}:{port} (metrics, health) is in use, maybe by another worker: set worker.web_port in the config"
        )
