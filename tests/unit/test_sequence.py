"""Order per key: with `sequence_field`, a replayed or repeated event goes to the DLQ as
out_of_order and cannot corrupt its key's window. In process, no Kafka."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from support import RecordingProducer

from stream_infer.config import load_config
from stream_infer.records import InputRecord
from stream_infer.stages.pipeline import Pipeline
from stream_infer.state import KeyState
from stream_infer.tools.replay import dataset_events

ROOT = Path(__file__).resolve().parents[2]
DEMO_ENGINES = next(p for p in load_config(ROOT / "stream_infer" / "configs" / "demo.toml").pipelines if p.name == "engines")
ENGINES = DEMO_ENGINES.model_copy(update={"sequence_field": "cycle"})


def _unit_events(unit: int, count: int) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in dataset_events("cmapss-train") if k == str(unit).encode()]
    return out[:count]


def _predict(config, batches: list[list[tuple[bytes, bytes]]]) -> tuple[list[tuple], Pipeline]:
    producer = RecordingProducer()
    pipeline = Pipeline(config, producer, changelog=None)  # type: ignore[arg-type]
    offset = 0
    try:
        for batch in batches:
            records = []
            for key, value in batch:
                records.append(
                    InputRecord(
                        key=key, value=value, topic="in", partition=0, offset=offset, timestamp_ms=1_700_000_000_000 + offset
                    )
                )
                offset += 1
            asyncio.run(pipeline.process(records, time.monotonic()))
    finally:
        pipeline.close()
    return producer.messages, pipeline


def _rul_by_cycle(messages: list[tuple]) -> dict[int, float]:
    return {
        orjson.loads(m[2])["source"]["offset"]: orjson.loads(m[2])["outputs"]["rul"]
        for m in messages
        if m[0] == ENGINES.topics.predictions
    }


def test_replayed_and_repeated_cycles_go_to_the_dlq_and_leave_the_window_intact() -> None:
    events = _unit_events(1, 40)
    assert ENGINES.sequence_field == "cycle" and len(events) == 40
    clean, _ = _predict(ENGINES, [events])
    reference = [orjson.loads(m[2])["outputs"]["rul"] for m in clean if m[0] == ENGINES.topics.predictions]
    assert len(reference) == 40

    # A repeat inside a batch, a replay of older cycles across batches, then the stream goes on.
    hostile = [events[:20] + [events[19], events[5]], [events[10], events[18]] + events[20:]]
    messages, pipeline = _predict(ENGINES, hostile)
    predictions = [m for m in messages if m[0] == ENGINES.topics.predictions]
    dead = [m for m in messages if m[0] == ENGINES.topics.dead_letters]
    assert [orjson.loads(m[2])["outputs"]["rul"] for m in predictions] == reference
    assert [dict(m[3])["x-dlq-reason"] for m in dead] == [b"out_of_order"] * 4
    assert sorted(orjson.loads(m[2])["cycle"] for m in dead) == sorted(
        orjson.loads(e[1])["cycle"] for e in (events[19], events[5], events[10], events[18])
    )
    state = pipeline.store.get(0, "1")
    assert state.last_sequence == orjson.loads(events[-1][1])["cycle"]
    assert KeyState.from_bytes(state.to_bytes()).last_sequence == state.last_sequence


def test_accept_processes_out_of_order_events() -> None:
    events = _unit_events(2, 12)
    accepting = ENGINES.model_copy(update={"out_of_order": "accept"})
    messages, _ = _predict(accepting, [events + [events[3]]])
    assert len([m for m in messages if m[0] == ENGINES.topics.predictions]) == 13
    assert [m for m in messages if m[0] == ENGINES.topics.dead_letters] == []
