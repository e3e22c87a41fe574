"""The batch check (validation's fast path) never accepts what the JSON Schema rejects.

Held against fastjsonschema, the reference, on the shipped schemas: real events are accepted by
both (so the fast path is actually taken), and every single-field mutation of a real event that
the schema rejects makes the whole batch fail the check. The decoder gives the same result with
and without the fast path.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import fastjsonschema
import orjson
import pytest

from stream_infer.records import InputRecord
from stream_infer.stages.batchcheck import compile_batch_check
from stream_infer.stages.decode import EventDecoder
from stream_infer.tools.replay import bad_events, dataset_events

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = {"cmapss-test": "engines-event.v1.json", "ai4i": "machines-event.v1.json"}
KEY_FIELDS = {"cmapss-test": "unit", "ai4i": "product_id"}

# Values a field may be replaced with: other JSON types, edge numbers, strings that look numeric.
REPLACEMENTS = [
    None,
    True,
    False,
    "",
    "1",
    "L1",
    "X9",
    "M",
    "L",
    [],
    {},
    [1],
    0,
    -1,
    1,
    1.0,
    1.5,
    -0.001,
    0.0,
    999.9,
    1000,
    1000.5,
    100000,
    100001,
    1e300,
    2,
    "H",
    10**20,
]


def _schema(dataset: str) -> dict:
    return orjson.loads((ROOT / "schemas" / SCHEMAS[dataset]).read_bytes())


def _events(dataset: str, count: int) -> list[dict]:
    out = []
    for _, value in dataset_events(dataset):
        out.append(orjson.loads(value))
        if len(out) == count:
            break
    return out


def _mutations(event: dict, schema: dict) -> list[dict]:
    """Every field removed, every field replaced by each of REPLACEMENTS, and an extra field."""
    out = []
    for name in [*event, *schema.get("properties", {})]:
        if name in event:
            removed = dict(event)
            del removed[name]
            out.append(removed)
        for value in REPLACEMENTS:
            out.append(dict(event, **{name: copy.deepcopy(value)}))
    out.append(dict(event, extra_field="ignored"))
    return out


@pytest.mark.parametrize("dataset", sorted(SCHEMAS))
def test_real_events_take_the_fast_path(dataset: str) -> None:
    schema = _schema(dataset)
    check = compile_batch_check(schema)
    assert check is not None, "the shipped schema should be inside the batch check's subset"
    events = _events(dataset, 2000)
    validate = fastjsonschema.compile(schema)
    for event in events:
        validate(event)
    assert check.check(events)


@pytest.mark.parametrize("dataset", sorted(SCHEMAS))
def test_never_accepts_what_the_schema_rejects(dataset: str) -> None:
    schema = _schema(dataset)
    check = compile_batch_check(schema)
    validate = fastjsonschema.compile(schema)
    rejected, accepted = _hold_to_the_schema(check, validate, _events(dataset, 64), schema, mutate=7, insert_at=20)
    assert rejected > 50 and accepted > 5  # the mutations exercise both sides


def _hold_to_the_schema(check, validate, good: list[dict], schema: dict, *, mutate: int, insert_at: int) -> tuple[int, int]:
    """Every mutation of good[mutate], inserted into the good batch: a batch with one the schema
    rejects must fail the check. Returns (rejected, accepted by both) counts."""
    rejected = accepted = 0
    for mutated in _mutations(good[mutate], schema):
        try:
            validate(mutated)
            valid = True
        except fastjsonschema.JsonSchemaValueException:
            valid = False
        batch = good[:insert_at] + [mutated] + good[insert_at:]
        if not valid:
            rejected += 1
            assert not check.check(batch), f"batch check accepted an event the schema rejects: {mutated}"
        elif check.check(batch):
            accepted += 1
    return rejected, accepted


# Every kind of column the check groups: two type groups, an untyped required field, all four
# bounds (on several columns, so they are checked as one matrix), enum, pattern, an optional one.
MIXED = {
    "type": "object",
    "required": ["n", "i", "x", "s", "e", "any"],
    "properties": {
        "n": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
        "i": {"type": "integer", "minimum": 1, "exclusiveMaximum": 100000},
        "x": {"type": "number", "minimum": -1.5, "maximum": 999.9},
        "s": {"type": "string", "pattern": "^[A-Z][0-9]$"},
        "e": {"enum": ["L", "M", "H", 1]},
        "o": {"type": "integer", "maximum": 2},
    },
}


def test_never_accepts_what_a_schema_with_every_column_kind_rejects() -> None:
    check = compile_batch_check(MIXED)
    validate = fastjsonschema.compile(MIXED)
    good = [
        {"n": 0.5 + k, "i": 1 + k, "x": -1.5 + k, "s": f"L{k % 10}", "e": "LMH"[k % 3], "any": [k], **({"o": 2} if k % 2 else {})}
        for k in range(40)
    ]
    assert check.check(good)
    rejected, accepted = _hold_to_the_schema(check, validate, good, MIXED, mutate=3, insert_at=10)
    assert rejected > 80 and accepted > 10
    assert check.check([good[0]]) and not check.check([dict(good[0], n=0)]) and not check.check([dict(good[0], i=100000)])


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "object"}}},
        {"type": "object", "properties": {"a": {"oneOf": [{"type": "integer"}, {"type": "string"}]}}},
        {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "integer"}}},
        {"type": "object", "properties": {"a": {"type": ["integer", "null"]}}},
        {"type": "object", "properties": {"a": {"type": "string", "minimum": 3}}},
        {"type": "object", "properties": {"a": {"type": "number", "multipleOf": 2}}},
        {"type": "array"},
    ],
)
def test_schemas_outside_the_subset_are_left_to_the_validator(schema: dict) -> None:
    assert compile_batch_check(schema) is None


def test_optional_properties_are_checked_where_present() -> None:
    check = compile_batch_check(
        {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}, "b": {"type": "number", "maximum": 5}}}
    )
    assert check.check([{"a": 1}, {"a": 2, "b": 4.5}])
    assert not check.check([{"a": 1}, {"a": 2, "b": 6}])
    assert not check.check([{"a": 1}, {"a": 2, "b": "4"}])
    assert not check.check([{"b": 1}])


@pytest.mark.parametrize("dataset", sorted(SCHEMAS))
def test_decoder_gives_the_same_result_with_and_without_the_fast_path(dataset: str) -> None:
    schema_path = ROOT / "schemas" / SCHEMAS[dataset]
    decoder = EventDecoder(schema_path, max_message_bytes=4096, key_field=KEY_FIELDS[dataset])
    good = []
    for key, value in dataset_events(dataset):
        good.append((key, value))
        if len(good) == 300:
            break
    bad = [(key, value) for _, key, value in bad_events(dataset)]
    rng = random.Random(5)
    for trial in range(20):
        pairs = rng.sample(good, 100) + (rng.sample(bad, rng.randint(0, 3)) if trial % 2 else [])
        rng.shuffle(pairs)
        records = [InputRecord(k, v, "t", 0, i, 0) for i, (k, v) in enumerate(pairs)]
        fast = decoder.decode(records)
        slow = decoder._decode_each(records)
        assert fast.records == slow.records and fast.events == slow.events
        assert [(d.record, d.reason) for d in fast.dead] == [(d.record, d.reason) for d in slow.dead]


def test_a_pattern_end_anchor_does_not_accept_a_trailing_newline() -> None:
    """Python's "$" also matches before a final newline; the schema's does not (the validator
    reads it as the end of the string), and the fast path must agree."""
    schema = {"type": "object", "required": ["s"], "properties": {"s": {"type": "string", "pattern": "^[A-Z][0-9]+$"}}}
    check = compile_batch_check(schema)
    validate = fastjsonschema.compile(schema)
    assert check is not None and check.check([{"s": "M14860"}])
    assert not check.check([{"s": "M14860\n"}])
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validate({"s": "M14860\n"})
    escaped = compile_batch_check(
        {"type": "object", "required": ["s"], "properties": {"s": {"type": "string", "pattern": r"^a\$$"}}}
    )
    assert escaped is not None and escaped.check([{"s": "a$"}]) and not escaped.check([{"s": "a$\n"}])
