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

import fastjsonschema
import orjson

from stream_infer.batchcheck import compile_batch_check

# The reasons a record goes to the dead-letter topic; header `x-dlq-reason` carries one of them.
REASONS = (
    "oversized",  # value longer than the pipeline's max_message_bytes
    "missing_key",  # Kafka record without a key: per-key order and state need one
    "invalid_encoding",  # value is not UTF-8
    "invalid_json",  # not parseable JSON, or not a JSON object
    "non_finite_number",  # NaN, Infinity, or a number too large for a double
    "unknown_schema_version",  # schema_version present but not one this pipeline knows
    "wrong_type",  # a field of the wrong JSON type
    "schema_violation",  # anything else the JSON Schema rejects (missing field, range, pattern)
    "model_error",  # the model failed on a batch that contained this event (rare; see pipeline)
)

_NON_FINITE = re.compile(rb"(?<![\w\"])-?(NaN|Infinity)(?![\w\"])")


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, 1.5 us a
# record against 0.2 us, paid for every event consumed. Treat records as read-only all the same.
@dataclass(slots=True)
class InputRecord:
    """One consumed Kafka record, as the pipeline sees it (kept free of any client's types); read-only."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def source(self) -> dict:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "timestamp_ms": self.timestamp_ms}


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
    dead: list[DeadLetter] = field(default_factory=list)


class EventDecoder:
    """Compiled once per pipeline from its JSON Schema file."""

    def __init__(self, schema_path: Path, *, max_message_bytes: int) -> None:
        schema = orjson.loads(schema_path.read_bytes())
        self.max_message_bytes = max_message_bytes
        self._validate = fastjsonschema.compile(schema)
        # None when the schema uses keywords the batch check does not understand: then every
        # batch takes the per-event path.
        self._batch_check = compile_batch_check(schema)
        self.versions = _schema_versions(schema)

    def decode(self, batch: Sequence[InputRecord]) -> DecodedBatch:
        if self._batch_check is not None:
            decoded = self._decode_valid_batch(batch)
            if decoded is not None:
                return decoded
        return self._decode_each(batch)

    def _decode_valid_batch(self, batch: Sequence[InputRecord]) -> DecodedBatch | None:
        """The fast path: the decoded batch if every record is valid, else None (then the
        per-event path decides, and names each bad record's reason)."""
        limit = self.max_message_bytes
        values = [r.value for r in batch]
        if None in values or max(map(len, values), default=0) > limit or not all(r.key for r in batch):
            return None
        try:
            events = list(map(orjson.loads, values))
        except orjson.JSONDecodeError:
            return None
        if set(map(type, events)) - {dict} or not self._batch_check.check(events):
            return None
        return DecodedBatch(records=list(batch), events=events)

    def _decode_each(self, batch: Sequence[InputRecord]) -> DecodedBatch:
        out = DecodedBatch()
        loads, validate, versions = orjson.loads, self._validate, self.versions
        for record in batch:
            value = record.value
            if value is None or len(value) > self.max_message_bytes:
                size = "null value" if value is None else f"{len(value)} bytes > max_message_bytes {self.max_message_bytes}"
                out.dead.append(DeadLetter(record, "oversized" if value else "invalid_json", size))
                continue
            if not record.key:
                out.dead.append(DeadLetter(record, "missing_key", "the Kafka record has no key"))
                continue
            try:
                event = loads(value)
            except orjson.JSONDecodeError as err:
                out.dead.append(DeadLetter(record, *_classify_parse_error(value, err)))
                continue
            if type(event) is not dict:
                out.dead.append(DeadLetter(record, "invalid_json", f"expected a JSON object, got {type(event).__name__}"))
                continue
            if versions and event.get("schema_version", versions[0]) not in versions:
                out.dead.append(
                    DeadLetter(record, "unknown_schema_version", f"schema_version {event['schema_version']!r}; known: {list(versions)}")
                )
                continue
            try:
                validate(event)
            except fastjsonschema.JsonSchemaValueException as err:
                reason = "wrong_type" if err.rule == "type" else "schema_violation"
                out.dead.append(DeadLetter(record, reason, err.message))
                continue
            out.records.append(record)
            out.events.append(event)
        return out


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
