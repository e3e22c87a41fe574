"""The checkpoint's cut: a snapshot only where state and offsets agree (between two batches, every
submitted output acknowledged), taken without stopping the batch path when the producer is idle,
and with the batch path paused for the acks only when it is not (see Checkpointing._cut)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import prometheus_client
import pytest
from support import close_runner

from stream_infer.config import load_config
from stream_infer.kafka.admin import create_topics
from stream_infer.kafka.producer import AsyncProducer
from stream_infer.records import InputRecord
from stream_infer.runtime import checkpointing as checkpointing_module
from stream_infer.runtime.runner import PipelineRunner
from stream_infer.stages.pipeline import Pipeline
from stream_infer.tools.bench.harness import engine_events, engines_config
from stream_infer.tools.reader import TopicReader


def _cuts(how: str) -> float:
    return (
        prometheus_client.REGISTRY.get_sample_value("stream_infer_checkpoint_cuts_total", {"pipeline": "engines", "how": how})
        or 0.0
    )


def _records(topic: str, count: int, first_offset: int = 0) -> list[InputRecord]:
    return [
        InputRecord(key, value, topic, 0, first_offset + i, 1_700_000_000_000 + i)
        for i, (key, value) in enumerate(engine_events(count))
    ]


class _Producer:
    """Stands in for AsyncProducer where the broker is not what is tested: `idle_after` says from
    when (monotonic) every output counts as acknowledged; records when acks were awaited."""

    def __init__(self, idle_after: float) -> None:
        self.idle_after = idle_after
        self.waited_with_lock: list[bool] = []
        self.runner: PipelineRunner | None = None

    def send_batch(self, messages, on_rejected=None) -> int:
        return len(list(messages))

    def idle(self) -> bool:
        return time.monotonic() >= self.idle_after

    async def wait_acknowledged(self) -> None:
        self.waited_with_lock.append(self.runner.lock.locked())
        await asyncio.sleep(0.01)


def _runner(tmp_path: Path, producer, topic: str = "in", group: str = "g") -> tuple[PipelineRunner, Pipeline]:
    config = load_config(engines_config(tmp_path / "c.toml", group=group, input_topic=topic, output_prefix=group))
    pipeline = Pipeline(config.pipelines[0], producer=producer, changelog=None)
    runner = PipelineRunner(pipeline, config, config.kafka.connection())
    pipeline.partitions.owned = {0: 1}
    if isinstance(producer, _Producer):
        producer.runner = runner
    return runner, pipeline


def _close(runner: PipelineRunner, pipeline: Pipeline) -> None:
    close_runner(runner)


def test_idle_producer_cut_needs_no_pause_and_covers_every_acknowledged_batch(
    kafka_bootstrap: str, unique, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real broker: the cut finds the moment the broker has acknowledged the batch (without taking
    the batch lock), and its offsets cover that batch, whose predictions the broker holds."""
    # A fresh producer's first acks can take seconds (idempotence PID); the default search window
    # would then fall back to a pause, which the next test covers.
    monkeypatch.setattr(checkpointing_module, "CUT_SEARCH_S", 30.0)
    group = unique("cut")
    topic = f"{group}.in"
    create_topics(kafka_bootstrap, [topic, f"{group}.predictions", f"{group}.alerts", f"{group}.telemetry.dlq"], partitions=1)
    producer = AsyncProducer(kafka_bootstrap)
    runner, pipeline = _runner(tmp_path, producer, topic=topic, group=group)
    idle_before = _cuts("idle")

    async def scenario():
        async with runner.lock:  # as the agent submits
            await pipeline.submit(_records(topic, 50), time.monotonic())
        return await runner.checkpointing._cut()

    try:
        checkpoint = asyncio.run(scenario())
    finally:
        _close(runner, pipeline)
        producer.close()
    assert checkpoint is not None and checkpoint.offsets == {0: 50}
    assert _cuts("idle") == idle_before + 1
    reader = TopicReader(kafka_bootstrap, [f"{group}.predictions"])
    try:
        assert reader.until(lambda: len(reader.records[f"{group}.predictions"]) >= 50, 30)
    finally:
        reader.close()


def test_cut_waits_for_the_batch_in_progress(tmp_path: Path) -> None:
    """A batch holding the lock is never cut in half: the snapshot comes after it, with its offsets."""
    producer = _Producer(idle_after=0.0)
    runner, pipeline = _runner(tmp_path, producer)
    events: list[str] = []

    async def batch():
        async with runner.lock:
            events.append("batch started")
            await pipeline.submit(_records("in", 10), time.monotonic())
            await asyncio.sleep(0.03)  # the batch is still in progress (say, inference)
            events.append("batch done")

    async def scenario():
        task = asyncio.create_task(batch())
        await asyncio.sleep(0)  # the batch takes the lock first
        checkpoint = await runner.checkpointing._cut()
        events.append("cut")
        await task
        return checkpoint

    try:
        checkpoint = asyncio.run(scenario())
    finally:
        _close(runner, pipeline)
    assert events == ["batch started", "batch done", "cut"]
    assert checkpoint.offsets == {0: 10}
    assert producer.waited_with_lock == []  # idle: no ack wait, no pause


def test_cut_pauses_the_batch_path_when_the_producer_never_idles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a steady backlog the producer's queue never empties: after CUT_SEARCH_S the cut takes
    the lock and waits for the acks, so checkpoints still happen."""
    monkeypatch.setattr(checkpointing_module, "CUT_SEARCH_S", 0.02)
    producer = _Producer(idle_after=float("inf"))
    runner, pipeline = _runner(tmp_path, producer)
    paused_before = _cuts("paused")

    async def scenario():
        async with runner.lock:
            await pipeline.submit(_records("in", 10), time.monotonic())
        started = time.monotonic()
        checkpoint = await runner.checkpointing._cut()
        return checkpoint, time.monotonic() - started

    try:
        checkpoint, seconds = asyncio.run(scenario())
    finally:
        _close(runner, pipeline)
    assert checkpoint.offsets == {0: 10}
    assert producer.waited_with_lock == [True]
    assert seconds >= 0.02
    assert _cuts("paused") == paused_before + 1
