"""A large batch runs as two halves whose inference overlaps the other half's Python work
(Pipeline._submit_overlapped). Contract: what comes out is what one batch would give, message for
message in order (predictions, alerts, dead letters), with the same state afterwards.

No Kafka here (the producer records what it is sent); the real broker path is the end-to-end
tests', which run with the demo's cap of 1024 and so take this path under a backlog.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from support import RecordingProducer

import stream_infer.stages.pipeline as pipeline_module
from stream_infer.config import load_config
from stream_infer.records import InputRecord
from stream_infer.stages.pipeline import OVERLAP_MIN_EVENTS, Pipeline
from stream_infer.tools.bench.harness import engine_events, engines_config

# Fields that say when, not what: they differ between any two runs.
_CLOCK_FIELDS = {"latency_ms", "processed_at_ms", "emitted_at_ms"}


def _records(count: int) -> list[InputRecord]:
    events = engine_events(count)
    # A few broken events in both halves: their dead letters must keep their places too.
    for index in (3, count // 2 + 5, count - 2):
        events[index] = (events[index][0], b'{"unit": 1, "cycle": "not a number"')
    records, next_offset = [], [0, 0, 0]
    for i, (key, value) in enumerate(events):
        partition = int(key) % 3  # as Kafka does: a key lives in one partition
        records.append(
            InputRecord(
                key=key,
                value=value,
                topic="in",
                partition=partition,
                offset=next_offset[partition],
                timestamp_ms=1_700_000_000_000 + i,
            )
        )
        next_offset[partition] += 1
    return records


def _by_topic(messages: list[tuple]) -> dict[str, list[tuple]]:
    """Order holds per topic (and so per key); across topics a batch's dead letters come after
    its predictions, so halves interleave them differently, which no consumer can observe."""
    out: dict[str, list[tuple]] = {}
    for message in messages:
        out.setdefault(message[0], []).append(_comparable(message))
    return out


def _comparable(message: tuple) -> tuple:
    topic, key, value, headers = message
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:  # a dead letter carries the input's bytes as they came
        return topic, key, value, headers
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in _CLOCK_FIELDS}
    return topic, key, orjson.dumps(body, option=orjson.OPT_SORT_KEYS), headers


def _run(tmp_path: Path, records: list[InputRecord], sizes: list[int]) -> tuple[dict, dict, int, list]:
    config = load_config(engines_config(tmp_path / "c.toml", group="g", input_topic="in", output_prefix="out"))
    producer = RecordingProducer()
    pipeline = Pipeline(config.pipelines[0], producer, changelog=None)  # type: ignore[arg-type]
    pipeline.partitions.loaded.update({0, 1, 2})
    try:
        start, counts = 0, []
        for size in sizes:
            result = asyncio.run(pipeline.process(records[start : start + size], time.monotonic()))
            counts.append((result.predictions, result.dead_letters))
            start += size
        state = {(p, k): s.to_bytes() for p, keys in pipeline.store.partitions.items() for k, s in keys.items()}
        return _by_topic(producer.messages), state, pipeline.acknowledged_events, counts
    finally:
        pipeline.close()


def test_overlapped_halves_give_what_one_batch_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = _records(2 * OVERLAP_MIN_EVENTS + 300)
    sizes = [2 * OVERLAP_MIN_EVENTS, 300]  # the first overlapped, the second not
    overlapped = _run(tmp_path, records, sizes)
    calls = []
    original = Pipeline._submit_overlapped

    async def counting(self, *args):
        calls.append(len(args[0]))
        return await original(self, *args)

    monkeypatch.setattr(Pipeline, "_submit_overlapped", counting)
    assert _run(tmp_path, records, sizes)[0] == overlapped[0]
    assert calls == [2 * OVERLAP_MIN_EVENTS]  # the path under test ran, for the large batch only
    monkeypatch.setattr(pipeline_module, "OVERLAP_MIN_EVENTS", 10**9)  # one batch each, never split
    whole = _run(tmp_path, records, sizes)
    assert overlapped == whole
    messages, state, acknowledged, counts = overlapped
    assert counts == [(2 * OVERLAP_MIN_EVENTS - 2, 2), (299, 1)]  # the halves' counts, added up
    assert acknowledged == len(records) and len(state) == 100  # every unit of the fleet has a window
    assert len(messages["out.telemetry.dlq"]) == 3 and len(messages["out.predictions"]) == len(records) - 3
