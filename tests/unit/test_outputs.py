"""Output messages: dead letters are bounded and cannot be forged, and a message the producer
refuses never stops the batch path. No Kafka: the producer is a recording stand-in that refuses
messages over a size, as librdkafka's produce() does (MSG_SIZE_TOO_LARGE)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from support import RecordingProducer

from stream_infer import metrics
from stream_infer.config import load_config
from stream_infer.records import InputRecord
from stream_infer.stages.decode import REASONS, DeadLetter
from stream_infer.stages.outputs import EXCERPT_BYTES, HEADER_BUDGET_BYTES, OutputWriter
from stream_infer.stages.pipeline import Pipeline
from stream_infer.tools.replay import dataset_events

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_config(ROOT / "stream_infer" / "configs" / "demo.toml")
ENGINES = next(p for p in CONFIG.pipelines if p.name == "engines")


def _record(key: bytes | None, value: bytes | None, offset: int = 7, headers: tuple | list | None = ()) -> InputRecord:
    return InputRecord(
        key=key,
        value=value,
        topic="in",
        partition=3,
        offset=offset,
        timestamp_ms=1_700_000_000_000,
        headers=None if headers is None else tuple(headers),
    )


def _writer() -> OutputWriter:
    return OutputWriter(ENGINES, {"name": "m", "version": "v"})


def test_input_headers_cannot_pose_as_the_workers() -> None:
    spoofed = [("x-dlq-reason", b"spoofed"), ("x-source-offset", b"999999"), ("X-DLQ-Detail", b"case"), ("trace-id", b"abc")]
    _, _, _, headers = _writer().dead_letter(DeadLetter(_record(b"1", b"{}", headers=spoofed), "invalid_json", "bad"))
    names = [name for name, _ in headers]
    # The worker's own headers are the only ones under its names, each exactly once.
    assert names.count("x-dlq-reason") == 1 and dict(headers)["x-dlq-reason"] == b"invalid_json"
    assert names.count("x-source-offset") == 1 and dict(headers)["x-source-offset"] == b"7"
    assert ("x-original-x-dlq-reason", b"spoofed") in headers
    assert ("x-original-x-source-offset", b"999999") in headers
    assert ("trace-id", b"abc") in headers


def test_dead_letter_is_bounded_whatever_the_input() -> None:
    huge_value = b"v" * 2_000_000
    huge_key = b"k" * 700_000
    many_headers = [(f"h{i}", b"x" * 1000) for i in range(100)]
    topic, key, value, headers = _writer().dead_letter(
        DeadLetter(_record(huge_key, huge_value, headers=many_headers), "oversized", "too big")
    )
    assert topic == ENGINES.topics.dead_letters
    assert len(value) == EXCERPT_BYTES and len(key) == EXCERPT_BYTES
    found = dict(headers)
    assert found["x-dlq-value-bytes"] == b"2000000" and found["x-dlq-key-bytes"] == b"700000"
    copied = [h for h in headers if h[0].startswith("h")]
    assert sum(len(n) + len(v) for n, v in copied) <= HEADER_BUDGET_BYTES
    assert int(found["x-dlq-headers-dropped"]) == 100 - len(copied) > 0
    assert len(key) + len(value) + sum(len(n) + len(v) for n, v in headers) < 100_000


def _events(n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for key, value in dataset_events("cmapss-test"):
        out.append((key, value))
        if len(out) == n:
            return out
    return out


def _run(producer: RecordingProducer, inputs: list[tuple[bytes | None, bytes]]) -> list[tuple]:
    pipeline = Pipeline(ENGINES, producer, changelog=None)  # type: ignore[arg-type]
    try:
        records = [_record(k, v, offset) for offset, (k, v) in enumerate(inputs)]
        asyncio.run(pipeline.process(records, time.monotonic()))
    finally:
        pipeline.close()
    return producer.messages


def test_refused_prediction_sends_its_input_to_the_dead_letter_topic() -> None:
    """Predictions over the producer's limit are refused; each input's dead letter (reason
    output_rejected, naming the refused topic) takes its place and the batch goes on."""
    good = _events(20)
    before = metrics.DEAD_LETTERS.labels("engines", "output_rejected")._value.get()
    messages = _run(RecordingProducer(refuse=lambda m: m[0] == ENGINES.topics.predictions), good)
    dead = [m for m in messages if m[0] == ENGINES.topics.dead_letters]
    assert [m for m in messages if m[0] == ENGINES.topics.predictions] == []
    assert len(dead) == len(good)
    for (key, value), (_, dkey, dvalue, headers) in zip(good, dead):
        found = dict(headers)
        assert (dkey, dvalue) == (key, value)
        assert found["x-dlq-reason"] == b"output_rejected"
        assert ENGINES.topics.predictions.encode() in found["x-dlq-detail"]
    assert metrics.DEAD_LETTERS.labels("engines", "output_rejected")._value.get() - before == len(good)


def test_a_message_nothing_can_carry_is_counted_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """When even the dead letter is refused, the output is dropped, counted and logged once per
    cause; the valid events around it are still predicted."""
    good = _events(10)
    poison = (good[0][0], b"{" + b" " * 5000 + b"}")  # invalid JSON, its dead letter over the limit
    before = metrics.OUTPUTS_DROPPED.labels("engines", ENGINES.topics.dead_letters)._value.get()
    messages = _run(RecordingProducer(refuse=lambda m: len(m[2]) > 1500), good[:5] + [poison, poison] + good[5:])
    assert len([m for m in messages if m[0] == ENGINES.topics.predictions]) == len(good)
    assert [m for m in messages if m[0] == ENGINES.topics.dead_letters] == []
    assert metrics.OUTPUTS_DROPPED.labels("engines", ENGINES.topics.dead_letters)._value.get() - before == 2
    assert len([r for r in caplog.records if "refused by the producer" in r.getMessage()]) == 1


def test_readme_lists_exactly_the_reasons_the_code_gives() -> None:
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("Reasons: ") :]
    paragraph = paragraph[: paragraph.index("\n\n")]
    reasons = re.sub(r"\([^)]*\)", "", paragraph.split("Each is counted")[0])  # not the explanations
    listed = re.findall(r"`([a-z_]+)`", reasons)
    assert sorted(listed) == sorted(REASONS)


def test_unreadable_input_headers_are_named_in_the_dead_letter() -> None:
    """Headers the client could not decode (None) are not copied; the dead letter says so."""
    _, _, _, headers = _writer().dead_letter(DeadLetter(_record(b"1", b"{", headers=None), "invalid_json", "bad"))
    found = dict(headers)
    assert found["x-dlq-headers-dropped"] == b"unreadable"
    assert all(name.startswith(("x-dlq-", "x-source-")) for name, _ in headers)


def test_in_flight_bytes_count_the_values_until_acknowledged() -> None:
    """What the byte backpressure reads: the values of submitted records, back to 0 once acknowledged."""
    good = _events(30)
    pipeline = Pipeline(ENGINES, RecordingProducer(), changelog=None)  # type: ignore[arg-type]
    try:
        records = [_record(k, v, offset) for offset, (k, v) in enumerate(good)] + [_record(b"1", None, 99)]

        async def submit_then_ack() -> tuple[int, int]:
            await pipeline.submit(records, time.monotonic())
            held = pipeline.unacknowledged_bytes
            await pipeline.wait_acknowledged()
            return held, pipeline.unacknowledged_bytes

        assert asyncio.run(submit_then_ack()) == (sum(len(v) for _, v in good), 0)
    finally:
        pipeline.close()
