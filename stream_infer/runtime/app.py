"""The worker's Faust application: one agent and three tasks per pipeline (source, checkpoints,
lag monitor, see :mod:`stream_infer.runtime.runner`), the web endpoints (/metrics, /healthz,
/readyz), and the shutdown sequence (every runner closes; a watchdog ends the process if that
does not finish in time).

Faust connects to no broker: its boot strategy leaves out its own consumer, producer and topic
conductor, and the pipelines bring their own clients."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import faust
from faust.app.base import BootStrategy
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream_infer import metrics
from stream_infer.config import Config
from stream_infer.runtime.runner import PipelineRunner

log = logging.getLogger(__name__)

# Batches waiting between the source task and the agent: one. In throughput mode the source
# fetches the next batch while the agent works on the current one (in latency mode it waits until
# the agent is free), and what arrives meanwhile stays in the consumer's queue, to be taken as one
# larger batch later. More would only hold memory; the backlog belongs in Kafka.
CHANNEL_DEPTH = 1

# A stop (SIGTERM) ends the process within this long, whatever is stuck (a broker that does not
# answer a commit or a group leave): what was not committed is processed again by the next owner.
SHUTDOWN_DEADLINE_S = 9.0


class HealthSource(Protocol):
    """What the web endpoints ask: (ok, body) for readiness and liveness."""

    def readiness(self) -> tuple[bool, dict]: ...

    def health(self) -> tuple[bool, dict]: ...


class _WithoutKafka(BootStrategy):
    """Faust's services minus its Kafka consumer, producer and topic conductor: the pipelines
    bring their own clients, and an idle Faust consumer group only logged errors."""

    enable_kafka = False


class _App(faust.App):
    BootStrategy = _WithoutKafka

    async def on_start(self) -> None:
        await super().on_start()
        # Channels deliver only while flow control is on; Faust turns it on after its own
        # consumer's first rebalance, and there is none.
        self.flow_control.resume()


def faust_broker_url(bootstrap: str) -> str:
    """`h1:p1,h2:p2` -> `kafka://h1:p1;kafka://h2:p2`, Faust's spelling of a broker list."""
    return ";".join(f"kafka://{b.strip()}" for b in bootstrap.split(",") if b.strip())


def build_app(config: Config, runners: dict[str, PipelineRunner], health: HealthSource) -> faust.App:
    """The Faust app running `runners`, answering the web endpoints from `health`."""
    Path(config.worker.data_dir).mkdir(parents=True, exist_ok=True)
    app = _App(
        f"{config.kafka.group_id}-app",
        broker=faust_broker_url(config.kafka.bootstrap_servers),
        store="memory://",
        datadir=config.worker.data_dir,
        web_bind=config.worker.web_host,
        web_host=config.worker.web_host,
        web_port=config.worker.web_port,
        web_in_thread=False,
        topic_allow_declare=False,
    )
    for runner in runners.values():
        channel = app.channel(maxsize=CHANNEL_DEPTH)
        app.agent(channel, name=f"pipeline-{runner.name}")(_named(runner.agent, f"pipeline_{runner.name}"))
        app.task(_named(runner.run_source, f"source_{runner.name}", channel))
        app.task(_named(runner.run_checkpoints, f"checkpoint_{runner.name}"))
        app.task(_named(runner.run_monitor, f"lag_{runner.name}"))
    _add_web(app, health)

    # Sent while the event loop still turns. type: ignore: mode's SignalHandlerT (mypy_extensions
    # argument types) admits no function at all under current mypy, not even one matching it exactly.
    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _close_runners(_app, **kwargs) -> None:
        _exit_after(SHUTDOWN_DEADLINE_S)
        await asyncio.gather(*(r.close() for r in runners.values()))

    return app


def _add_web(app: faust.App, health: HealthSource) -> None:
    @app.page("/metrics")
    async def metrics_view(self, request):
        metrics.READY.set(1 if health.readiness()[0] else 0)
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def healthz(self, request):
        healthy, body = health.health()
        return self.json(body, status=200 if healthy else 503)

    @app.page("/readyz")
    async def readyz(self, request):
        ready, body = health.readiness()
        return self.json(body, status=200 if ready else 503)


def _named(method, name: str, *bound):
    """Faust registers agents, tasks and timers by function name, so each pipeline's needs its own;
    and it passes the app to a task or timer whose signature takes arguments, so the wrapper
    declares exactly what Faust should pass: the stream for an agent, nothing otherwise."""
    wrapper: Callable[..., Awaitable[object]]
    if method.__name__ == "agent":

        async def agent_wrapper(stream):
            return await method(stream)

        wrapper = agent_wrapper
    else:

        async def task_wrapper():
            return await method(*bound)

        wrapper = task_wrapper
    wrapper.__name__ = wrapper.__qualname__ = name
    return wrapper


def _exit_after(seconds: float) -> None:
    """Start a watchdog that ends the process `seconds` from now if it is still shutting down."""

    def expire() -> None:
        log.warning(
            "shutdown did not finish within %.0f s; exiting now (uncommitted events are processed again "
            "by the partitions' next owner); the threads' stacks follow on stderr",
            seconds,
        )
        logging.shutdown()
        faulthandler.dump_traceback(all_threads=True)
        os._exit(0)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
