"""EventDecoder: every record comes out exactly once, as a valid event or a dead letter with its reason.

No Kafka: records are built by hand (`InputRecord`), the decoders from the shipped demo config.
"""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from support import RecordingProducer

from stream_infer.config import PipelineConfig, load_config
from stream_infer.records import InputRecord
from stream_infer.stages.decode import REASONS, DecodedBatch, EventDecoder
from stream_infer.stages.features import Featurizer
from stream_infer.stages.outputs import EXCERPT_BYTES
from stream_infer.tools.replay import bad_events, dataset_events

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "stream_infer" / "configs" / "demo.toml"
PIPELINE_OF = {"cmapss-test": "engines", "ai4i": "machines"}
SCHEMA_OF = {"cmapss-test": "engines-event.v1.json", "ai4i": "machines-event.v1.json"}
TOPIC = "in"
BEYOND_FLOAT32 = 1e39  # finite for JSON (a double) but beyond float32's range (~3.4e38)


# --- helpers ------------------------------------------------------------------------------------


@functools.cache
def _pipeline(dataset: str) -> PipelineConfig:
    config = load_config(DEMO_CONFIG)
    return next(p for p in config.pipelines if p.name == PIPELINE_OF[dataset])


@functools.cache
def _decoder(dataset: str) -> EventDecoder:
    pipeline = _pipeline(dataset)
    assert pipeline.schema_file == (ROOT / "schemas" / SCHEMA_OF[dataset]).resolve()
    return EventDecoder(
        pipeline.schema_file,
        max_message_bytes=pipeline.max_message_bytes,
        key_field=pipeline.key_field,
        max_key_bytes=pipeline.max_key_bytes,
    )


@functools.cache
def _bad(dataset: str) -> tuple[tuple[str, bytes | None, bytes], ...]:
    return tuple(bad_events(dataset))


@functools.cache
def _good(dataset: str) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(dataset_events(dataset))


def _caught_after_decoding(reason: str, value: bytes) -> bool:
    """The bad event the decoder lets through on purpose: a finite double beyond float32's range,
    listed as non_finite_number (the pipeline's float32 finite check catches it)."""
    return reason == "non_finite_number" and _is_beyond_float32(value)


def _is_beyond_float32(value: bytes) -> bool:
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(event, dict) and any(v == BEYOND_FLOAT32 for v in event.values())


def _record(key: bytes | None, value: bytes | None, offset: int, partition: int = 0) -> InputRecord:
    return InputRecord(
        key=key, value=value, topic=TOPIC, partition=partition, offset=offset, timestamp_ms=1_700_000_000_000 + offset
    )


def _decode_one(dataset: str, key: bytes | None, value: bytes | None) -> DecodedBatch:
    return _decoder(dataset).decode([_record(key, value, 0)])


def _bad_cases() -> list:
    """(dataset, reason, key, value) of every bad event the decoder itself must reject."""
    cases = []
    for dataset in PIPELINE_OF:
        for i, (reason, key, value) in enumerate(bad_events(dataset)):
            if not _caught_after_decoding(reason, value):
                cases.append(pytest.param(dataset, reason, key, value, id=f"{dataset}-{i}-{reason}"))
    return cases


def _first_event(dataset: str) -> tuple[bytes, dict]:
    key, value = _good(dataset)[0]
    return key, orjson.loads(value)


# --- bad events ---------------------------------------------------------------------------------


def test_bad_events_cover_every_input_reason() -> None:
    """The bad-event fixtures exercise every dead-letter reason the decoder can give (all but
    out_of_order, which needs the key's state, and model_error and output_rejected, which come
    after inference)."""
    for dataset in PIPELINE_OF:
        assert {reason for reason, _, _ in _bad(dataset)} == set(REASONS) - {"model_error", "output_rejected", "out_of_order"}


@pytest.mark.parametrize(("dataset", "reason", "key", "value"), _bad_cases())
def test_bad_event_is_dead_lettered_with_its_listed_reason(dataset: str, reason: str, key: bytes | None, value: bytes) -> None:
    """Each bad event becomes exactly one DeadLetter carrying the reason bad_events() lists, and no event."""
    record = _record(key, value, 42)
    out = _decoder(dataset).decode([record])
    assert out.events == [] and out.records == []
    assert len(out.dead) == 1
    letter = out.dead[0]
    assert letter.reason == reason, letter.detail
    assert letter.record is record
    assert isinstance(letter.detail, str) and letter.detail


@pytest.mark.parametrize("dataset", list(PIPELINE_OF))
def test_bad_events_in_one_batch_keep_their_own_reasons(dataset: str) -> None:
    """Decoded together, every bad event still gets its own listed reason (no cross-talk within a batch)."""
    entries = [(reason, key, value) for reason, key, value in _bad(dataset) if not _caught_after_decoding(reason, value)]
    records = [_record(key, value, offset) for offset, (_, key, value) in enumerate(entries)]
    out = _decoder(dataset).decode(records)
    assert out.events == []
    assert {d.record.offset: d.reason for d in out.dead} == {i: reason for i, (reason, _, _) in enumerate(entries)}


def test_beyond_float32_in_a_bounded_field_is_a_schema_violation() -> None:
    """The machines schema bounds every numeric field, so its 1e39 bad event never reaches the
    float32 check: bad_events('ai4i') must list it as schema_violation (the decoder test checks it)."""
    [(reason, _, _)] = [entry for entry in _bad("ai4i") if _is_beyond_float32(entry[2])]
    assert reason == "schema_violation"


def test_beyond_float32_passes_the_decoder_and_becomes_a_non_finite_row() -> None:
    """1e39 is a finite double, so the engines decoder accepts it (s2 is unbounded); the float32 feature
    row is then non-finite, which is how the pipeline's finite check dead-letters it as non_finite_number."""
    dataset = "cmapss-test"
    [(reason, key, value)] = [entry for entry in _bad(dataset) if _is_beyond_float32(entry[2])]
    assert reason == "non_finite_number"
    out = _decode_one(dataset, key, value)
    assert [d.reason for d in out.dead] == []
    assert out.events == [orjson.loads(value)]
    featurizer = Featurizer(_pipeline(dataset).features)
    rows = featurizer.numeric_rows(out.events)
    assert rows.dtype == np.float32 and rows.shape == (1, len(featurizer.spec.fields))
    assert not np.isfinite(rows).all(axis=1)[0]
    # Only the field set to 1e39 is non-finite; the same event with its original value is finite.
    field = next(k for k, v in out.events[0].items() if v == BEYOND_FLOAT32)
    assert np.flatnonzero(~np.isfinite(rows[0])).tolist() == [featurizer.spec.fields.index(field)]
    _, original = _first_event(dataset)
    assert np.isfinite(featurizer.numeric_rows([original])).all()


@pytest.mark.parametrize("dataset", list(PIPELINE_OF))
def test_pipeline_dead_letters_every_bad_event_with_its_listed_reason(dataset: str) -> None:
    """Through the real batch path (decode, float32 finite check, model), every bad event reaches the
    dead-letter topic with the x-dlq-reason that bad_events() promises, and every good one is predicted."""
    from stream_infer.stages.pipeline import Pipeline

    config = _pipeline(dataset)
    producer = RecordingProducer()
    pipeline = Pipeline(config, producer, changelog=None)  # type: ignore[arg-type]
    try:
        good = list(_good(dataset)[:20])
        bad = list(_bad(dataset))
        inputs = [(k, v) for k, v in good[:10]] + [(k, v) for _, k, v in bad] + [(k, v) for k, v in good[10:]]
        records = [_record(k, v, offset) for offset, (k, v) in enumerate(inputs)]
        asyncio.run(pipeline.process(records, time.monotonic()))
    finally:
        pipeline.close()
    dead = [m for m in producer.messages if m[0] == config.topics.dead_letters]
    predictions = [m for m in producer.messages if m[0] == config.topics.predictions]
    # An oversized value is kept as an excerpt, its size in a header (stream_infer.stages.outputs).
    limit = config.max_message_bytes
    assert sorted((dict(m[3])["x-dlq-reason"].decode(), m[2]) for m in dead) == sorted(
        (r, v if len(v) <= limit else v[:EXCERPT_BYTES]) for r, _, v in bad
    )
    for m in dead:
        headers = dict(m[3])
        if headers["x-dlq-reason"] == b"oversized":
            assert int(headers["x-dlq-value-bytes"]) > limit and len(m[2]) == EXCERPT_BYTES
        if headers["x-dlq-reason"] == b"oversized_key":
            assert int(headers["x-dlq-key-bytes"]) > config.max_key_bytes and len(m[1]) == EXCERPT_BYTES
    assert len(predictions) == len(good)
    assert len(predictions) + len(dead) == len(records)


# --- valid events -------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", list(PIPELINE_OF))
def test_every_dataset_event_passes(dataset: str) -> None:
    """All replay events of the data set are valid: returned in order, parsed exactly, no dead letter."""
    good = _good(dataset)
    records = [_record(key, value, offset) for offset, (key, value) in enumerate(good)]
    out = _decoder(dataset).decode(records)
    assert out.dead == []
    assert len(out.records) == len(records)
    assert all(a is b for a, b in zip(out.records, records))
    assert out.events == [orjson.loads(value) for _, value in good]


@pytest.mark.parametrize("dataset", list(PIPELINE_OF))
def test_mixed_batch_keeps_every_record_exactly_once_and_valid_order(dataset: str) -> None:
    """valid + dead == input, no record twice or lost, and the valid ones keep their input order."""
    rng = np.random.default_rng(7)
    good = [("ok", k, v) for k, v in _good(dataset)[:300]]
    bad = [(r, k, v) for r, k, v in _bad(dataset) if not _caught_after_decoding(r, v)] * 5
    extra = [("invalid_json", b"k", b"[1, 2]"), ("invalid_json", b"k", b'"a string"'), ("invalid_json", b"k", b"")]
    inputs = good + bad + extra
    inputs = [inputs[i] for i in rng.permutation(len(inputs))]
    records = [_record(key, value, offset, partition=offset % 3) for offset, (_, key, value) in enumerate(inputs)]

    out = _decoder(dataset).decode(records)

    assert len(out.records) + len(out.dead) == len(records)
    assert len(out.events) == len(out.records)
    valid_offsets = [r.offset for r in out.records]
    dead_offsets = [d.record.offset for d in out.dead]
    assert sorted(valid_offsets + dead_offsets) == list(range(len(records)))
    assert valid_offsets == sorted(valid_offsets)
    assert valid_offsets == [i for i, (expected, _, _) in enumerate(inputs) if expected == "ok"]
    assert {d.record.offset: d.reason for d in out.dead} == {i: r for i, (r, _, _) in enumerate(inputs) if r != "ok"}
    assert out.events == [orjson.loads(r.value) for r in out.records]


def test_empty_batch_gives_nothing() -> None:
    """An empty batch decodes to an empty result."""
    out = _decoder("ai4i").decode([])
    assert (out.records, out.events, out.dead) == ([], [], [])


# --- one reason per kind of bad input -----------------------------------------------------------


@pytest.mark.parametrize("value", [b"[1, 2]", b"[]", b'"a string"', b"42", b"4.2", b"null", b"true"])
@pytest.mark.parametrize("dataset", list(PIPELINE_OF))
def test_json_that_is_not_an_object_is_invalid_json(dataset: str, value: bytes) -> None:
    """Parseable JSON that is not an object (array, string, number, null, bool) is invalid_json."""
    out = _decode_one(dataset, b"k", value)
    assert [d.reason for d in out.dead] == ["invalid_json"]


@pytest.mark.parametrize("dataset", list(PIPELINE_OF))
def test_array_wrapping_a_valid_event_is_invalid_json(dataset: str) -> None:
    """A valid event wrapped in an array is still not an event object."""
    key, event = _first_event(dataset)
    out = _decode_one(dataset, key, orjson.dumps([event]))
    assert [d.reason for d in out.dead] == ["invalid_json"]


@pytest.mark.parametrize(
    ("dataset", "field", "value"),
    [
        ("cmapss-test", "s2", True),
        ("cmapss-test", "s2", False),
        ("cmapss-test", "s2", None),
        ("cmapss-test", "s2", "643.02"),
        ("cmapss-test", "s2", [643.02]),
        ("cmapss-test", "unit", True),
        ("cmapss-test", "cycle", 1.5),
        ("ai4i", "torque_nm", True),
        ("ai4i", "torque_nm", False),
        ("ai4i", "torque_nm", "40.0"),
        ("ai4i", "udi", True),
        ("ai4i", "product_id", 12345),
    ],
)
def test_value_of_the_wrong_json_type_is_wrong_type(dataset: str, field: str, value: object) -> None:
    """A bool (or string, null, array) for a number field, or a float for an integer field, is wrong_type."""
    key, event = _first_event(dataset)
    out = _decode_one(dataset, key, orjson.dumps(dict(event, **{field: value})))
    assert [d.reason for d in out.dead] == ["wrong_type"]
    assert field in out.dead[0].detail


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
@pytest.mark.parametrize("dataset", list(PIPELINE_OF))
def test_non_finite_literals_are_non_finite_number(dataset: str, literal: bytes) -> None:
    """NaN, +-Infinity and numbers too large for a double are non_finite_number, not invalid_json."""
    key, event = _first_event(dataset)
    field = "s2" if "s2" in event else "torque_nm"
    value = orjson.dumps(dict(event, **{field: 123.25})).replace(b"123.25", literal, 1)
    out = _decode_one(dataset, key, value)
    assert [d.reason for d in out.dead] == ["non_finite_number"]


@pytest.mark.parametrize("dataset", list(PIPELINE_OF))
def test_size_limit_is_inclusive(dataset: str) -> None:
    """A value of exactly max_message_bytes passes; one byte more is oversized."""
    key, event = _first_event(dataset)
    limit = _pipeline(dataset).max_message_bytes
    base = len(orjson.dumps(dict(event, padding="")))
    exact = orjson.dumps(dict(event, padding="x" * (limit - base)))
    over = orjson.dumps(dict(event, padding="x" * (limit - base + 1)))
    assert (len(exact), len(over)) == (limit, limit + 1)
    assert _decode_one(dataset, key, exact).dead == []
    assert [d.reason for d in _decode_one(dataset, key, over).dead] == ["oversized"]


@pytest.mark.parametrize("dataset", list(PIPELINE_OF))
def test_null_value_and_empty_key(dataset: str) -> None:
    """A tombstone (null value) is invalid_json; an empty key is as bad as no key (missing_key)."""
    key, value = _good(dataset)[0]
    assert [d.reason for d in _decode_one(dataset, key, None).dead] == ["invalid_json"]
    assert [d.reason for d in _decode_one(dataset, b"", value).dead] == ["missing_key"]
    assert [d.reason for d in _decode_one(dataset, None, value).dead] == ["missing_key"]


@pytest.mark.parametrize("dataset", list(PIPELINE_OF))
def test_random_bytes_never_raise(dataset: str) -> None:
    """Arbitrary bytes are data, not exceptions: each record becomes exactly one dead letter with a known reason."""
    rng = np.random.default_rng(11)
    values = [rng.integers(0, 256, size=int(n), dtype=np.uint8).tobytes() for n in rng.integers(1, 200, size=300)]
    values += [b"{", b"}", b'{"a":', b"\x00", b"{}", b'{"schema_version": 1}']
    records = [_record(b"k", v, offset) for offset, v in enumerate(values)]
    out = _decoder(dataset).decode(records)
    assert out.events == []
    assert sorted(d.record.offset for d in out.dead) == list(range(len(records)))
    assert {d.reason for d in out.dead} <= set(REASONS)
