"""In latency mode the source fetches only while the agent is free; in throughput mode it fetches
the next batch while the agent works (prefetch). Against a real broker, with the worker's own
source and agent; the pipeline's work is replaced by a 50 ms sleep so that overlap is visible.

Contract (see BatchSource.run): with the controller in latency mode, no fetch starts while
a batch is in the agent's hands, and everything produced still arrives, in order.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from support import close_runner

from stream_infer.config import load_config
from stream_infer.controller import THROUGHPUT
from stream_infer.kafka.admin import create_topics
from stream_infer.kafka.consumer import BatchConsumer
from stream_infer.runtime.runner import PipelineRunner
from stream_infer.stages.pipeline import Pipeline
from stream_infer.tools.bench.harness import engines_config

EVENTS = 150


class _Channel:
    """The agent's channel as the source sees it: send() waits while one batch is queued."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=1)

    async def send(self, value) -> None:
        await self.queue.put(value)

    async def batches(self):
        while True:
            yield await self.queue.get()


def _run(kafka_bootstrap: str, tmp_path: Path, unique, monkeypatch: pytest.MonkeyPatch, *, throughput: bool):
    topic = unique("ondemand")
    create_topics(kafka_bootstrap, [topic], partitions=1)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)  # the config's broker: the test's
    config = load_config(
        engines_config(tmp_path / "c.toml", group=unique("ondemand-group"), input_topic=topic, output_prefix="out")
    )
    pipeline = Pipeline(config.pipelines[0], producer=None, changelog=None)
    runner = PipelineRunner(pipeline, config, config.kafka.connection())
    if throughput:
        runner.monitor.controller.mode = THROUGHPUT
    fetches: list[tuple[float, int]] = []  # (start, events) of every non-empty fetch
    handling: list[tuple[float, float]] = []  # (start, end) of every batch in the agent's hands
    seen: list[bytes] = []
    original = BatchConsumer.next_batch

    def recording_next_batch(self, *args, **kwargs):
        started = time.monotonic()
        batch = original(self, *args, **kwargs)
        if batch:
            fetches.append((started, len(batch)))
        return batch

    async def slow_handle(messages, epochs, fetched_at):
        started = time.monotonic()
        seen.extend(m.value() for m in messages)
        await asyncio.sleep(0.05)
        handling.append((started, time.monotonic()))

    monkeypatch.setattr(BatchConsumer, "next_batch", recording_next_batch)
    monkeypatch.setattr(runner, "_handle", slow_handle)

    def produce() -> None:  # a steady stream: 150 events over 1.5 s
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
        for i in range(EVENTS):
            producer.produce(topic, key=b"1", value=b"%04d" % i)
            producer.poll(0)
            time.sleep(0.01)
        producer.flush(10)

    async def exercise() -> None:
        channel = _Channel()
        source = asyncio.ensure_future(runner.run_source(channel))
        agent = asyncio.ensure_future(runner.agent(channel.batches()))
        deadline = time.monotonic() + 30
        while not runner.readiness()[0] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        sender = threading.Thread(target=produce)
        sender.start()
        while len(seen) < EVENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        sender.join()
        runner.source.stopping = True
        for task in (source, agent):
            task.cancel()
        await asyncio.gather(source, agent, return_exceptions=True)
        await runner.source.call(runner.source.consumer.close)

    try:
        asyncio.run(exercise())
    finally:
        close_runner(runner)
    assert seen == [b"%04d" % i for i in range(EVENTS)]
    overlapping = [f for f in fetches if any(start < f[0] < end for start, end in handling)]
    return fetches, overlapping


def test_latency_mode_fetches_only_while_the_agent_is_free(kafka_bootstrap: str, tmp_path: Path, unique, monkeypatch) -> None:
    fetches, overlapping = _run(kafka_bootstrap, tmp_path, unique, monkeypatch, throughput=False)
    assert len(fetches) >= 10 and overlapping == []
    # What arrived during a 50 ms batch is the next batch: several events, not one at a time.
    assert max(n for _, n in fetches) >= 3


def test_throughput_mode_prefetches_while_the_agent_works(kafka_bootstrap: str, tmp_path: Path, unique, monkeypatch) -> None:
    _, overlapping = _run(kafka_bootstrap, tmp_path, unique, monkeypatch, throughput=True)
    assert len(overlapping) >= 5
