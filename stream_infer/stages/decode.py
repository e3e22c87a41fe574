"""Decode and validate: raw Kafka records in, event dicts or dead letters out. No Kafka client here.

Contract of :meth:`EventDecoder.decode`: every record of the batch comes out exactly once, either
as a valid event (with its index in the batch) or as a :class:`DeadLetter` naming one reason from
:data:`REASONS`. It never raises on bad input: bad input is data.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

import fastjsonschema
import orjson

from stream_infer.records import InputRecord
from stream_infer.stages.batchcheck import BatchCheck, compile_batch_check

# The reasons a record goes to the dead-letter topic; header `x-dlq-reason` carries one of them.
REASONS = (
    "oversized",  # value longer than the pipeline's max_message_bytes
    "missing_key",  # Kafka record without a key: per-key order and state need one
    "oversized_key",  # Kafka key longer than the pipeline's max_key_bytes
    "invalid_key",  # Kafka key is not UTF-8
    "invalid_encoding",  # value is not UTF-8
    "invalid_json",  # not parseable JSON, or not a JSON object
    "non_finite_number",  # NaN, Infinity, or a number too large for a double
    "unknown_schema_version",  # schema_version present but not one this pipeline knows
    "wrong_type",  # a field of the wrong JSON type
    "schema_violation",  # anything else the JSON Schema rejects (missing field, range, pattern)
    "key_mismatch",  # the Kafka key is not the event's key field (as text, exactly)
    "out_of_order",  # sequence_field not greater than the key's last (see Pipeline._in_sequence)
    "model_error",  # the model failed on a batch that contained this event (rare; see pipeline)
    "output_rejected",  # an output of this event could not be produced (see pipeline)
)


def _none_free(items: list[bytes | None]) -> TypeGuard[list[bytes]]:
    """Whether no item is None (a C-level scan: this is the batch fast path)."""
    return None not in items


_NON_FINITE = re.compile(rb"(?<![\w\"])-?(NaN|Infinity)(?![\w\"])")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: InputRecord
    reason: str
    detail: str


@dataclass
class DecodedBatch:
    """Valid events (parallel lists) and dead letters of one batch."""

    records: list[InputRecord] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # each valid record's Kafka key, decoded exactly
    dead: list[DeadLetter] = field(default_factory=list)


class EventDecoder:
    """Compiled once per pipeline from its JSON Schema file.

    The Kafka key is part of the contract: it must be UTF-8, at most `max_key_bytes` long, and
    equal (as text, exactly) to the event's `key_field`, an integer written in decimal or a
    string as it is. An event whose body lacks `key_field` (a schema that does not require it)
    takes its key from the record: the Kafka key is then the source of truth."""

    def __init__(self, schema_path: Path, *, max_message_bytes: int, key_field: str, max_key_bytes: int = 1024) -> None:
        schema = orjson.loads(schema_path.read_bytes())
        self.max_message_bytes = max_message_bytes
        self.max_key_bytes = max_key_bytes
        self.key_field = key_field
        self._validate = fastjsonschema.compile(schema)
        # None when the schema uses keywords the batch check does not understand: then every
        # batch takes the per-event path.
        self._batch_check = compile_batch_check(schema)
        self.versions = _schema_versions(schema)

    def decode(self, batch: Sequence[InputRecord]) -> DecodedBatch:
        if self._batch_check is not None:
            decoded = self._decode_valid_batch(batch, self._batch_check)
            if decoded is not None:
                return decoded
        return self._decode_each(batch)

    def _decode_valid_batch(self, batch: Sequence[InputRecord], batch_check: BatchCheck) -> DecodedBatch | None:
        """The fast path: the decoded batch if every record is valid, else None (then the
        per-event path decides, and names each bad record's reason)."""
        limit = self.max_message_bytes
        values = [r.value for r in batch]
        raw_keys = [r.key for r in batch]
        if (
            not _none_free(values)
            or max(map(len, values), default=0) > limit
            or not _none_free(raw_keys)  # not all(raw_keys) below says so too; this tells mypy
            or not all(raw_keys)
            or max(map(len, raw_keys), default=0) > self.max_key_bytes
        ):
            return None
        try:
            events = list(map(orjson.loads, values))
            keys = [k.decode() for k in raw_keys]
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            return None
        if set(map(type, events)) - {dict} or not batch_check.check(events):
            return None
        field_name = self.key_field
        if not all(map(_key_matches, keys, (e.get(field_name, _ABSENT) for e in events))):
            return None
        return DecodedBatch(records=list(batch), events=events, keys=keys)

    def _decode_each(self, batch: Sequence[InputRecord]) -> DecodedBatch:
        out = DecodedBatch()
        loads, validate, versions, field_name = orjson.loads, self._validate, self.versions, self.key_field
        for record in batch:
            value, raw_key = record.value, record.key
            if value is None or len(value) > self.max_message_bytes:
                size = "null value" if value is None else f"{len(value)} bytes > max_message_bytes {self.max_message_bytes}"
                out.dead.append(DeadLetter(record, "oversized" if value else "invalid_json", size))
                continue
            if not raw_key:
                out.dead.append(DeadLetter(record, "missing_key", "the Kafka record has no key"))
                continue
            if len(raw_key) > self.max_key_bytes:
                out.dead.append(DeadLetter(record, "oversized_key", f"{len(raw_key)} bytes > max_key_bytes {self.max_key_bytes}"))
                continue
            try:
                key = raw_key.decode()
            except UnicodeDecodeError as err:
                out.dead.append(
                    DeadLetter(record, "invalid_key", f"the Kafka key is not UTF-8: {err.reason} at byte {err.start}")
                )
                continue
            try:
                event = loads(value)
            except orjson.JSONDecodeError as err:
                out.dead.append(DeadLetter(record, *_classify_parse_error(value, err)))
                continue
            if type(event) is not dict:
                out.dead.append(DeadLetter(record, "invalid_json", f"expected a JSON object, got {type(event).__name__}"))
                continue
            if versions and "schema_version" in event and not _known_version(event["schema_version"], versions):
                out.dead.append(
                    DeadLetter(
                        record, "unknown_schema_version", f"schema_version {event['schema_version']!r}; known: {list(versions)}"
                    )
                )
                continue
            try:
                validate(event)
            except fastjsonschema.JsonSchemaValueException as err:
                reason = "wrong_type" if err.rule == "type" else "schema_violation"
                out.dead.append(DeadLetter(record, reason, err.message))
                continue
            if not _key_matches(key, event.get(field_name, _ABSENT)):
                out.dead.append(
                    DeadLetter(
                        record,
                        "key_mismatch",
                        f"Kafka key {key[:100]!r} differs from {field_name} {str(event[field_name])[:100]!r}",
                    )
                )
                continue
            out.records.append(record)
            out.events.append(event)
            out.keys.append(key)
        return out


_ABSENT = object()


def _key_matches(key: str, value: object) -> bool:
    """The Kafka key (decoded) against the event's key field: a string exactly, an integer (not
    a bool) in decimal; an absent field accepts any key (the key is the source of truth)."""
    kind = type(value)
    if kind is str:
        return key == value
    if kind is int:
        return key == str(value)
    return value is _ABSENT


def _known_version(version: object, versions: Sequence) -> bool:
    """JSON true is not the version 1 (Python's True == 1 would let it pass)."""
    return type(version) is not bool and version in versions


def _classify_parse_error(value: bytes, err: Exception) -> tuple[str, str]:
    """Tell the kinds of unparseable input apart; only runs on the (rare) failure path."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as uerr:
        return "invalid_encoding", f"not UTF-8: {uerr.reason} at byte {uerr.start}"
    message = str(err)
    if "infinity" in message or _NON_FINITE.search(value):
        return "non_finite_number", f"NaN or Infinity is not a finite number: {message}"
    return "invalid_json", message


def _schema_versions(schema: dict) -> tuple:
    """The schema_version values the schema accepts (const or enum), empty if it has none."""
    prop = schema.get("properties", {}).get("schema_version", {})
    if "const" in prop:
        return (prop["const"],)
    return tuple(prop.get("enum", ()))
