"""The hostile kinds: each a way to break a valid event, and the dead-letter reason the worker must give.

A kind is built from a valid event of its pipeline (:class:`Base`) into one Kafka record
(:class:`Hostile`: key, value, headers) and names the exact reason from
:data:`stream_infer.stages.decode.REASONS` the worker must put in the dead letter's `x-dlq-reason`
header. Reasons may differ between the three demo pipelines (the `machines` and `transactions`
schemas bound their numbers, so a value beyond float32 there is a `schema_violation`, not a
`non_finite_number`); a kind that cannot be expressed on a pipeline is left out of it (each kind
states its reason on every pipeline, or leaves the pipeline out, explicitly).

Contract:

* :func:`kinds_for` returns the kinds of a pipeline (`engines`, `machines` or `transactions`), at
  least 30 each, in a fixed order; :func:`build` turns a kind and a base event into the record
  to produce;
* every kind is invalid on its own terms: whatever the base event, the record must be
  dead-lettered with the kind's reason and never predicted. ``tests/integration/test_fuzz.py`` holds each
  kind to that against the in-process pipeline before any broker sees it;
* the kinds of :func:`stream_infer.tools.replay.bad_events` (the demo's bad events) are included
  under ``replay.<reason>`` names (`engines` and `machines`, whose lists match entry for entry)
  and ``replay.tx.<reason>`` names (`transactions`, whose list differs); they are built from the
  data set's first event, whatever the base.

Sizes are relative to the pipeline's limits (`max_message_bytes`, `max_key_bytes`), carried in
the base, except the two poison pills, which are absolute: a 1,030,000-byte value (it still fits
the broker's default `message.max.bytes`, 1,048,588) and a 600,000-byte key with a valid body.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from stream_infer.tools.replay import bad_events, dataset_events

# Pipeline name -> the data set its valid events come from.
DATASETS = {"engines": "cmapss-test", "machines": "ai4i", "transactions": "transactions"}

POISON_VALUE_BYTES = 1_030_000
POISON_KEY_BYTES = 600_000
# Depth of the nesting bombs: far beyond orjson's recursion limit (1,024), within max_message_bytes.
NESTING_DEPTH = 20_000

Headers = tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True)
class Shape:
    """What the kinds need to know of a pipeline's event schema."""

    key_field: str
    key_is_int: bool  # the key field is a JSON integer (engines: unit) or a string (machines: product_id)
    feature: str  # a number the model reads
    dropped: str  # a required field other than the key field
    counter: str  # a required integer field (not the key): minimum 1 (engines, machines) or 0 (transactions: ts_ms)
    # A required field no string of 60,000 characters satisfies: the integer key (engines: unit),
    # an enum (machines: type), a pattern of at most 64 characters (transactions: terminal_id).
    long_string: str


SHAPES = {
    "engines": Shape(key_field="unit", key_is_int=True, feature="s2", dropped="s3", counter="cycle", long_string="unit"),
    "machines": Shape(
        key_field="product_id", key_is_int=False, feature="torque_nm", dropped="tool_wear_min", counter="udi", long_string="type"
    ),
    "transactions": Shape(
        key_field="card_id", key_is_int=False, feature="amount", dropped="terminal_id", counter="ts_ms", long_string="terminal_id"
    ),
}
PIPELINES = tuple(SHAPES)  # every pipeline the kinds know, in the kinds table's column order


@dataclass(frozen=True)
class Base:
    """A valid event of `pipeline` to break, with the key of a different entity of the same
    pipeline (valid too), and the pipeline's input limits. The worker must already have accepted
    the event (the `replayed_*` kinds repeat it)."""

    pipeline: str
    key: bytes
    value: bytes
    other_key: bytes
    max_message_bytes: int = 65_536
    max_key_bytes: int = 1024

    @functools.cached_property
    def event(self) -> dict:
        return orjson.loads(self.value)

    @property
    def shape(self) -> Shape:
        return SHAPES[self.pipeline]


@dataclass(frozen=True)
class Hostile:
    """One hostile record: what to produce."""

    key: bytes | None
    value: bytes | None
    headers: Headers = ()


@dataclass(frozen=True)
class Kind:
    """A hostile kind: `reasons` maps each pipeline it applies to onto the expected reason."""

    name: str
    description: str
    reasons: dict[str, str]
    make: Callable[[Base], Hostile] = field(repr=False)
    # A record far beyond the limits (the 1 MB value, the 600 KB key): the run follows each with
    # a valid canary event on the same partition and times its prediction.
    poison: bool = False


def build(kind: Kind, base: Base) -> Hostile:
    """The record of `kind` made from `base` (a valid event of one of the kind's pipelines)."""
    return kind.make(base)


def first_base(pipeline: str, *, max_message_bytes: int = 65_536, max_key_bytes: int = 1024) -> Base:
    """The data set's first event as a base, the second entity's key as the other key."""
    events = dataset_events(DATASETS[pipeline])
    key, value = next(events)
    other = next(k for k, _ in events if k != key)
    return Base(pipeline, key, value, other, max_message_bytes, max_key_bytes)


# --- helpers --------------------------------------------------------------------------------------


def _dumps(event: dict) -> bytes:
    return orjson.dumps(event)


def _with(base: Base, **fields) -> bytes:
    return _dumps({**base.event, **fields})


def _without(base: Base, name: str) -> bytes:
    return _dumps({k: v for k, v in base.event.items() if k != name})


def _padded(base: Base, size: int) -> bytes:
    """The valid event with a string field `padding` making the value exactly `size` bytes."""
    empty = len(_with(base, padding=""))
    if size < empty:
        raise ValueError(f"cannot pad a {empty}-byte event down to {size} bytes")
    value = _with(base, padding="x" * (size - empty))
    assert len(value) == size
    return value


def _raw_number(base: Base, name: str, text: bytes) -> bytes:
    """The event with field `name` written as the raw JSON text `text` (NaN, 1e400: things
    orjson will not write)."""
    marker = "\u0000fuzz-marker\u0000"
    return _with(base, **{name: marker}).replace(orjson.dumps(marker), text, 1)


def _append_raw(base: Base, name: str, text: bytes) -> bytes:
    """The event with `"name": text` appended as the last member (a duplicate if `name` exists)."""
    return base.value[:-1] + b"," + orjson.dumps(name) + b":" + text + b"}"


def _entity_value(base: Base, key_text: str) -> object:
    """The key field's value for a key written as `key_text`, in the pipeline's JSON type."""
    return int(key_text) if base.shape.key_is_int else key_text


def _overlong_utf8(key: bytes) -> bytes:
    """The key with its first (ASCII) character in the overlong 2-byte form UTF-8 forbids."""
    c = key[0]
    return bytes((0xC0 | (c >> 6), 0x80 | (c & 0x3F))) + key[1:]


def _fullwidth(key: bytes) -> bytes:
    """Each ASCII character as its fullwidth form (U+FF01..): looks alike, is another key."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in key.decode()).encode()


def _repeat_to(text: bytes, size: int) -> bytes:
    return (text * (size // len(text) + 1))[:size]


def _truncated(base: Base) -> bytes:
    return base.value[: len(base.value) // 2]


# Headers an attacker sets to pose as the worker's dead-letter headers.
SPOOFED_HEADERS: Headers = (
    ("x-dlq-reason", b"model_error"),
    ("x-dlq-pipeline", b"someone-else"),
    ("x-source-topic", b"elsewhere"),
    ("x-source-partition", b"99"),
    ("x-source-offset", b"999999"),
)
MANY_HEADERS = 500  # of 100 bytes each: far beyond the dead letter's 16 KiB header budget
HUGE_HEADER_BYTES = 200_000


def _every(reason: str) -> dict[str, str]:
    """The same reason on every pipeline."""
    return {p: reason for p in PIPELINES}


def _per(engines: str | None, machines: str | None, *, transactions: str | None) -> dict[str, str]:
    """A reason per pipeline; None: the kind cannot be expressed there (left out)."""
    reasons = {"engines": engines, "machines": machines, "transactions": transactions}
    assert set(reasons) == set(PIPELINES), "_per names every pipeline"
    return {p: r for p, r in reasons.items() if r is not None}


def _long_string(base: Base) -> str:
    """60,000 times the first character of the shape's `long_string` field (as text)."""
    return (str(base.event[base.shape.long_string])[:1] or "x") * 60_000


def _non_finite(name: str, description: str, text: bytes) -> Kind:
    """The kind whose numeric feature is written as the raw JSON `text`: NaN, an infinity, or a
    number beyond a double (every pipeline: `non_finite_number`)."""
    return Kind(name, description, _every("non_finite_number"), lambda b: Hostile(b.key, _raw_number(b, b.shape.feature, text)))


def _transactions_violation(name: str, description: str, **fields: object) -> Kind:
    """The transactions kind whose event has `fields` set to values its schema rejects
    (`schema_violation`; the other pipelines have no such fields)."""
    return Kind(
        name, description, _per(None, None, transactions="schema_violation"), lambda b: Hostile(b.key, _with(b, **fields))
    )


# --- the kinds ------------------------------------------------------------------------------------

_KINDS: list[Kind] = [
    # Size: poison pills and limits.
    Kind(
        "poison_value_1mb",
        f"a valid event padded to {POISON_VALUE_BYTES:,} bytes (fits the broker's default limit)",
        _every("oversized"),
        lambda b: Hostile(b.key, _padded(b, POISON_VALUE_BYTES)),
        poison=True,
    ),
    Kind(
        "value_over_limit_by_one",
        "a valid event padded to max_message_bytes + 1",
        _every("oversized"),
        lambda b: Hostile(b.key, _padded(b, b.max_message_bytes + 1)),
    ),
    Kind(
        "poison_key_600kb",
        f"a {POISON_KEY_BYTES:,}-byte key (the real key repeated), valid body",
        _every("oversized_key"),
        lambda b: Hostile(_repeat_to(b.key, POISON_KEY_BYTES), b.value),
        poison=True,
    ),
    Kind(
        "key_over_limit_by_one",
        "a key of max_key_bytes + 1 (the real key repeated), valid body",
        _every("oversized_key"),
        lambda b: Hostile(_repeat_to(b.key, b.max_key_bytes + 1), b.value),
    ),
    # The Kafka key.
    Kind("no_key", "no Kafka key (null)", _every("missing_key"), lambda b: Hostile(None, b.value)),
    Kind("empty_key", "an empty Kafka key", _every("missing_key"), lambda b: Hostile(b"", b.value)),
    Kind("key_not_utf8", "0xFF before the key", _every("invalid_key"), lambda b: Hostile(b"\xff" + b.key, b.value)),
    Kind(
        "key_overlong_utf8",
        "the key's first character in overlong UTF-8 (0xC0 0xB1 for '1')",
        _every("invalid_key"),
        lambda b: Hostile(_overlong_utf8(b.key), b.value),
    ),
    Kind(
        "key_utf8_surrogate",
        "an encoded UTF-16 surrogate (0xED 0xA0 0x80) before the key",
        _every("invalid_key"),
        lambda b: Hostile(b"\xed\xa0\x80" + b.key, b.value),
    ),
    Kind(
        "key_of_other_entity",
        "the key of another engine, product or card, body unchanged",
        _every("key_mismatch"),
        lambda b: Hostile(b.other_key, b.value),
    ),
    Kind(
        "key_zero_width_space",
        "the key followed by U+200B (renders identically)",
        _every("key_mismatch"),
        lambda b: Hostile(b.key + "\u200b".encode(), b.value),
    ),
    Kind("key_leading_zero", "'0' before the key", _every("key_mismatch"), lambda b: Hostile(b"0" + b.key, b.value)),
    Kind("key_trailing_space", "the key followed by a space", _every("key_mismatch"), lambda b: Hostile(b.key + b" ", b.value)),
    Kind("key_json_quoted", "the key in JSON quotes", _every("key_mismatch"), lambda b: Hostile(b'"' + b.key + b'"', b.value)),
    Kind(
        "key_fullwidth",
        "the key in fullwidth characters (U+FF11 for '1')",
        _every("key_mismatch"),
        lambda b: Hostile(_fullwidth(b.key), b.value),
    ),
    Kind("key_nul_suffix", "the key followed by a NUL byte", _every("key_mismatch"), lambda b: Hostile(b.key + b"\x00", b.value)),
    Kind(
        "duplicate_key_field",
        "the key field repeated with another entity's id (the last one counts)",
        _every("key_mismatch"),
        lambda b: Hostile(b.key, _append_raw(b, b.shape.key_field, orjson.dumps(_entity_value(b, b.other_key.decode())))),
    ),
    Kind(
        "huge_integer_id",
        "key field 10**20 with the matching key (parsed as a double: not the key)",
        _per("key_mismatch", "wrong_type", transactions="wrong_type"),
        lambda b: Hostile(str(10**20).encode(), _append_raw(b, b.shape.key_field, str(10**20).encode())),
    ),
    # Encoding.
    Kind(
        "value_not_utf8",
        "0xFF 0xFE before the value",
        _every("invalid_encoding"),
        lambda b: Hostile(b.key, b"\xff\xfe" + b.value),
    ),
    Kind(
        "value_utf16",
        "the value encoded as UTF-16 (with its BOM)",
        _every("invalid_encoding"),
        lambda b: Hostile(b.key, b.value.decode().encode("utf-16")),
    ),
    Kind(
        "latin1_in_string",
        "a string member holding a raw Latin-1 byte (0xE9)",
        _every("invalid_encoding"),
        lambda b: Hostile(b.key, _append_raw(b, "site", b'"caf\xe9"')),
    ),
    Kind(
        "utf8_bom",
        "a UTF-8 byte-order mark before the JSON",
        _every("invalid_json"),
        lambda b: Hostile(b.key, b"\xef\xbb\xbf" + b.value),
    ),
    Kind(
        "lone_surrogate_escape",
        r"a string member '\ud800' (an unpaired surrogate escape)",
        _every("invalid_json"),
        lambda b: Hostile(b.key, _append_raw(b, "note", rb'"\ud800"')),
    ),
    # JSON structure.
    Kind("truncated_json", "the first half of the value", _every("invalid_json"), lambda b: Hostile(b.key, _truncated(b))),
    Kind("empty_value", "an empty value", _every("invalid_json"), lambda b: Hostile(b.key, b"")),
    Kind("null_value", "a null value (a tombstone)", _every("invalid_json"), lambda b: Hostile(b.key, None)),
    Kind(
        "top_level_array",
        "the event inside a JSON array",
        _every("invalid_json"),
        lambda b: Hostile(b.key, b"[" + b.value + b"]"),
    ),
    Kind("top_level_string", "a JSON string", _every("invalid_json"), lambda b: Hostile(b.key, orjson.dumps(b.value.decode()))),
    Kind("top_level_number", "a JSON number", _every("invalid_json"), lambda b: Hostile(b.key, b"42")),
    Kind("top_level_null", "JSON null", _every("invalid_json"), lambda b: Hostile(b.key, b"null")),
    Kind("top_level_true", "JSON true", _every("invalid_json"), lambda b: Hostile(b.key, b"true")),
    Kind(
        "depth_bomb_arrays",
        f"a member nesting {NESTING_DEPTH:,} arrays",
        _every("invalid_json"),
        lambda b: Hostile(b.key, _append_raw(b, "nest", b"[" * NESTING_DEPTH + b"]" * NESTING_DEPTH)),
    ),
    Kind(
        "depth_bomb_objects",
        f"a member nesting {NESTING_DEPTH // 4:,} objects",
        _every("invalid_json"),
        lambda b: Hostile(b.key, _append_raw(b, "nest", b'{"a":' * (NESTING_DEPTH // 4) + b"1" + b"}" * (NESTING_DEPTH // 4))),
    ),
    Kind("trailing_garbage", "the value followed by 'x'", _every("invalid_json"), lambda b: Hostile(b.key, b.value + b"x")),
    Kind("two_documents", "the value twice", _every("invalid_json"), lambda b: Hostile(b.key, b.value + b.value)),
    Kind(
        "control_char_in_string",
        "a string member holding a raw 0x01",
        _every("invalid_json"),
        lambda b: Hostile(b.key, _append_raw(b, "note", b'"a\x01b"')),
    ),
    Kind("comment", "a /* comment */ before the JSON", _every("invalid_json"), lambda b: Hostile(b.key, b"/*c*/" + b.value)),
    Kind(
        "single_quotes",
        "Python's repr of the event (single quotes)",
        _every("invalid_json"),
        lambda b: Hostile(b.key, repr(b.event).encode()),
    ),
    Kind(
        "spoofed_dlq_headers",
        "truncated JSON with input headers posing as the worker's x-dlq-*/x-source-*",
        _every("invalid_json"),
        lambda b: Hostile(b.key, _truncated(b), SPOOFED_HEADERS),
    ),
    # Numbers.
    _non_finite("nan", "a feature written NaN", b"NaN"),
    _non_finite("infinity", "a feature written Infinity", b"Infinity"),
    _non_finite("negative_infinity", "a feature written -Infinity", b"-Infinity"),
    _non_finite("number_1e400", "a feature 1e400 (beyond a double)", b"1e400"),
    _non_finite("integer_400_digits", "a feature written as a 400-digit integer", b"9" * 400),
    Kind(
        "beyond_float32",
        "a feature 1e39 (a double, beyond float32; machines, transactions: above the schema's maximum)",
        _per("non_finite_number", "schema_violation", transactions="schema_violation"),
        lambda b: Hostile(b.key, _with(b, **{b.shape.feature: 1e39})),
    ),
    Kind(
        "integer_beyond_float32",
        "a feature written as the integer 10**40",
        _per("non_finite_number", "schema_violation", transactions="schema_violation"),
        lambda b: Hostile(b.key, _raw_number(b, b.shape.feature, str(10**40).encode())),
    ),
    # Schema version.
    Kind(
        "schema_version_true",
        "schema_version: true (not 1)",
        _every("unknown_schema_version"),
        lambda b: Hostile(b.key, _with(b, schema_version=True)),
    ),
    Kind(
        "schema_version_99",
        "schema_version: 99",
        _every("unknown_schema_version"),
        lambda b: Hostile(b.key, _with(b, schema_version=99)),
    ),
    Kind(
        "schema_version_string",
        'schema_version: "1"',
        _every("unknown_schema_version"),
        lambda b: Hostile(b.key, _with(b, schema_version="1")),
    ),
    Kind(
        "schema_version_null",
        "schema_version: null",
        _every("unknown_schema_version"),
        lambda b: Hostile(b.key, _with(b, schema_version=None)),
    ),
    # Types.
    Kind(
        "feature_as_string",
        "a feature as a string of digits",
        _every("wrong_type"),
        lambda b: Hostile(b.key, _with(b, **{b.shape.feature: str(b.event[b.shape.feature])})),
    ),
    Kind(
        "feature_as_bool", "a feature true", _every("wrong_type"), lambda b: Hostile(b.key, _with(b, **{b.shape.feature: True}))
    ),
    Kind(
        "feature_as_array",
        "a feature inside an array",
        _every("wrong_type"),
        lambda b: Hostile(b.key, _with(b, **{b.shape.feature: [b.event[b.shape.feature]]})),
    ),
    Kind(
        "feature_as_object",
        "a feature inside an object",
        _every("wrong_type"),
        lambda b: Hostile(b.key, _with(b, **{b.shape.feature: {"value": b.event[b.shape.feature]}})),
    ),
    Kind("feature_null", "a feature null", _every("wrong_type"), lambda b: Hostile(b.key, _with(b, **{b.shape.feature: None}))),
    Kind(
        "nan_as_string",
        'a feature "NaN" (a string)',
        _every("wrong_type"),
        lambda b: Hostile(b.key, _with(b, **{b.shape.feature: "NaN"})),
    ),
    Kind(
        "key_field_as_float",
        "engine unit 1.0 for key '1' (an integer key is written in decimal, not as a float)",
        _per("key_mismatch", None, transactions=None),
        lambda b: Hostile(b.key, _with(b, unit=float(b.event["unit"]))),
    ),
    Kind(
        "key_field_wrong_type",
        'the key field as the other JSON type (engines: "1"; machines: ["M14860"]; transactions: ["c000710"])',
        _every("wrong_type"),
        lambda b: Hostile(b.key, _with(b, **{b.shape.key_field: b.key.decode() if b.shape.key_is_int else [b.key.decode()]})),
    ),
    Kind(
        "fractional_counter",
        "an integer field 1.5 (engines: the cycle; machines: the udi; transactions: the ts_ms)",
        _every("wrong_type"),
        lambda b: Hostile(b.key, _with(b, **{b.shape.counter: 1.5})),
    ),
    Kind(
        "duplicate_feature",
        "a feature repeated as a string (the last one counts)",
        _every("wrong_type"),
        lambda b: Hostile(b.key, _append_raw(b, b.shape.feature, b'"hot"')),
    ),
    Kind(
        "long_string",
        "a 60,000-character string (engines: as the unit; machines: as the type; transactions: as the terminal_id)",
        _per("wrong_type", "schema_violation", transactions="schema_violation"),
        lambda b: Hostile(b.key, _with(b, **{b.shape.long_string: _long_string(b)})),
    ),
    Kind(
        "many_headers",
        f"{MANY_HEADERS} headers of 100 bytes on a feature of the wrong type",
        _every("wrong_type"),
        lambda b: Hostile(
            b.key, _with(b, **{b.shape.feature: "hot"}), tuple((f"h-{i:04d}", b"v" * 94) for i in range(MANY_HEADERS))
        ),
    ),
    # Schema: presence, range, pattern.
    Kind("empty_object", "{}", _every("schema_violation"), lambda b: Hostile(b.key, b"{}")),
    Kind(
        "no_schema_version",
        "schema_version left out",
        _every("schema_violation"),
        lambda b: Hostile(b.key, _without(b, "schema_version")),
    ),
    Kind(
        "missing_field",
        "a required feature left out",
        _every("schema_violation"),
        lambda b: Hostile(b.key, _without(b, b.shape.dropped)),
    ),
    Kind(
        "missing_key_field",
        "the key field left out",
        _every("schema_violation"),
        lambda b: Hostile(b.key, _without(b, b.shape.key_field)),
    ),
    Kind(
        "counter_zero",
        "an integer field below its minimum (0; transactions: ts_ms 0 is valid)",
        _per("schema_violation", "schema_violation", transactions=None),
        lambda b: Hostile(b.key, _with(b, **{b.shape.counter: 0})),
    ),
    Kind(
        "negative_feature",
        "a feature -1 (machines: below the schema's minimum; transactions: an amount not above 0)",
        _per(None, "schema_violation", transactions="schema_violation"),
        lambda b: Hostile(b.key, _with(b, **{b.shape.feature: -1})),
    ),
    Kind(
        "id_below_minimum",
        "engine unit 0 with key '0'",
        _per("schema_violation", None, transactions=None),
        lambda b: Hostile(b"0", _with(b, unit=0)),
    ),
    Kind(
        "product_id_pattern",
        "product_id 'X1' with key 'X1' (outside ^[LMH][0-9]+$)",
        _per(None, "schema_violation", transactions=None),
        lambda b: Hostile(b"X1", _with(b, product_id="X1")),
    ),
    Kind(
        "type_not_in_enum",
        "type 'Q' (not L, M or H)",
        _per(None, "schema_violation", transactions=None),
        lambda b: Hostile(b.key, _with(b, type="Q")),
    ),
    # The transactions schema: amount in (0, 1e6], currency an ISO 4217 code of its list, card_id a
    # pattern, ts_ms in [0, 4102444800000] (a fractional ts_ms is fractional_counter above).
    _transactions_violation("amount_zero", "transaction amount 0 (the schema's minimum is exclusive)", amount=0),
    _transactions_violation("currency_not_in_enum", "currency 'XXX' (not in the schema's list)", currency="XXX"),
    Kind(
        "key_field_trailing_newline",
        "the (string) key field and the key followed by a newline (a '$' in Python's re matches before it; the schema's does not)",
        _per(None, "schema_violation", transactions="schema_violation"),
        lambda b: Hostile(b.key + b"\n", _with(b, **{b.shape.key_field: b.key.decode() + "\n"})),
    ),
    Kind(
        "card_id_pattern",
        "card_id 'card#1' with key 'card#1' (outside ^[A-Za-z0-9_.:-]{1,64}$)",
        _per(None, None, transactions="schema_violation"),
        lambda b: Hostile(b"card#1", _with(b, card_id="card#1")),
    ),
    _transactions_violation(
        "ts_ms_beyond_maximum", "ts_ms 4102444800001 (one above the schema's maximum, 2100-01-01)", ts_ms=4_102_444_800_001
    ),
    _transactions_violation("ts_ms_negative", "ts_ms -1 (below the schema's minimum, 0)", ts_ms=-1),
    # Order per key (engines: sequence_field = "cycle"); the base is an event already accepted.
    # machines and transactions check no order: a repeated event is a valid one there.
    Kind(
        "replayed_event",
        "the last accepted event of the engine again, byte for byte",
        _per("out_of_order", None, transactions=None),
        lambda b: Hostile(b.key, b.value),
    ),
    Kind(
        "replayed_cycle_new_readings",
        "the last accepted cycle of the engine again, with other readings",
        _per("out_of_order", None, transactions=None),
        lambda b: Hostile(b.key, _with(b, **{b.shape.feature: b.event[b.shape.feature] + 1.0})),
    ),
    Kind(
        "huge_header",
        f"one {HUGE_HEADER_BYTES:,}-byte header on an event without its key field",
        _every("schema_violation"),
        lambda b: Hostile(b.key, _without(b, b.shape.key_field), (("blob", b"h" * HUGE_HEADER_BYTES),)),
    ),
    Kind(
        "null_header_values",
        "ten headers with null values on an empty object",
        _every("schema_violation"),
        lambda b: Hostile(b.key, b"{}", tuple((f"n-{i}", None) for i in range(10))),
    ),
]


# The pipelines whose bad_events lists match entry for entry (the same reasons in the same order,
# bar the 1e39 entry: non_finite_number on engines, schema_violation on machines) share one kind
# per entry, named after the first pipeline's reason; `transactions` has a list of its own.
_REPLAY_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("replay.", ("engines", "machines")),
    ("replay.tx.", ("transactions",)),
)


def _replay_kinds() -> list[Kind]:
    """stream_infer.tools.replay.bad_events as kinds (fixed records, built from the first event):
    one kind per entry of each group of :data:`_REPLAY_GROUPS`."""
    assert sorted(p for _, group in _REPLAY_GROUPS for p in group) == sorted(PIPELINES)
    kinds = []
    for prefix, group in _REPLAY_GROUPS:
        per_pipeline = {p: bad_events(DATASETS[p]) for p in group}
        count = len(per_pipeline[group[0]])
        assert all(len(bad) == count for bad in per_pipeline.values()), f"bad_events of {group} differ in length"
        seen: dict[str, int] = {}
        for i in range(count):
            reasons = {p: bad[i][0] for p, bad in per_pipeline.items()}
            label = reasons[group[0]]
            seen[label] = seen.get(label, 0) + 1
            name = prefix + label + (f".{seen[label]}" if seen[label] > 1 else "")
            of = "" if len(group) > 1 else f"({DATASETS[group[0]]!r})"

            def make(base: Base, _i: int = i, _bad: dict = per_pipeline) -> Hostile:
                _, key, value = _bad[base.pipeline][_i]
                return Hostile(key, value)

            kinds.append(Kind(name, f"stream_infer.tools.replay.bad_events{of} entry {i}", reasons, make))
    return kinds


@functools.cache
def all_kinds() -> tuple[Kind, ...]:
    """Every kind, the project's bad events last."""
    kinds = [*_KINDS, *_replay_kinds()]
    names = [k.name for k in kinds]
    assert len(names) == len(set(names)), "kind names must be unique"
    return tuple(kinds)


def kinds_for(pipeline: str) -> list[Kind]:
    """The kinds that apply to `pipeline`, in a fixed order."""
    if pipeline not in SHAPES:
        raise ValueError(f"unknown pipeline {pipeline!r}; the kinds know {', '.join(SHAPES)}")
    return [k for k in all_kinds() if pipeline in k.reasons]


def kinds_table() -> str:
    """Every kind as a Markdown table: name, expected reason on each pipeline, what it is."""
    rows = ["| kind | " + " | ".join(PIPELINES) + " | the record |", "|---" * (len(PIPELINES) + 2) + "|"]
    for kind in all_kinds():
        cells = " | ".join(f"`{kind.reasons[p]}`" if p in kind.reasons else "-" for p in PIPELINES)
        poison = " (poison pill: a canary follows)" if kind.poison else ""
        rows.append(f"| `{kind.name}` | {cells} | {kind.description}{poison} |")
    return "\n".join(rows)
