"""Batch (offline) scoring: a file of events through the worker's own stages, no Kafka.

:class:`BatchScorer` composes the stages as :class:`~stream_infer.stages.pipeline.Pipeline` does
(:class:`~stream_infer.stages.prepare.BatchPreparer` -> :class:`~stream_infer.stages.engine.InferenceEngine`
-> :class:`~stream_infer.stages.finish.BatchFinisher`, one :class:`~stream_infer.state.StateStore`
shared by every chunk), without a producer, a changelog or partition ownership: each input line
becomes the :class:`~stream_infer.records.InputRecord` a consumer would have handed the worker,
so decoding, validation, features, per-key state, scores and alerts are the worker's, byte for
byte. Only the staleness policy is turned off (an event's age says nothing offline).

Contract of :meth:`BatchScorer.score`:

* every input line yields exactly one output line, in input order: the prediction the worker
  would publish on the predictions topic (its JSON, less ``source`` and ``latency_ms``), or
  ``{"dead_letter": {"reason", "detail"}, "line": N, "key": K}`` (N 1-based; K the line's key
  as text, null when it has none, does not parse or is over max_message_bytes);
* the line is the record's value exactly (its newline taken off): a line that does not parse,
  a blank line included, is a dead letter (``invalid_json``, ``invalid_encoding``,
  ``non_finite_number``), never an exception;
* the record's key is the line's ``key_field`` as the worker's Kafka key would be (a string as
  it is, an integer in decimal, any other JSON value as its JSON text, so the schema names the
  problem); absent: no key, hence ``missing_key``;
* per-key state carries across chunks, so the output does not depend on the batch size;
* alerts (the messages on the alerts topic) are handed over as published; review copies are
  not (the prediction carries ``outputs.review``); per-batch summaries do not occur.

No Kafka client here: the stages are fed records built from the file.
"""

from __future__ import annotations

import csv
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, Any, cast

import orjson

from stream_infer.config import PipelineConfig, StalenessConfig
from stream_infer.records import InputRecord
from stream_infer.stages.decode import DeadLetter
from stream_infer.stages.engine import engine_for
from stream_infer.stages.finish import BatchFinisher, BatchResult
from stream_infer.stages.outputs import EXCERPT_BYTES
from stream_infer.stages.prepare import BatchPreparer
from stream_infer.state import StateStore

__all__ = ["DEFAULT_BATCH_SIZE", "BatchScorer", "ScoreSummary", "ScoredChunk", "csv_values", "jsonl_values"]

DEFAULT_BATCH_SIZE = 1024

# The Kafka key given to a line that does not parse as a JSON object, or is too long to parse
# (so its key field cannot be read). Without a key the decoder would stop at `missing_key`; with one it goes on to parse the
# value and names the real problem (invalid_json, invalid_encoding, non_finite_number). The key
# never reaches state: such a line is a dead letter before featurizing. Its output says key null.
_UNPARSED_KEY = b"\x00unparsed"
_ABSENT = object()
_INT64 = (-(2**63), 2**63 - 1)


@dataclass
class ScoredChunk:
    """The outputs of one chunk of input lines."""

    lines: list[bytes]  # one JSON document per input line, in input order (no newline)
    alerts: list[bytes]  # alert messages' values, as the worker publishes them
    result: BatchResult
    dead_letters: Counter[str] = field(default_factory=Counter)  # by reason


@dataclass
class ScoreSummary:
    """What a whole run produced."""

    pipeline: str
    events: int = 0
    predictions: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)  # by reason
    alerts: int = 0
    reviews: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def add(self, chunk: ScoredChunk) -> None:
        self.events += len(chunk.lines)
        self.predictions += chunk.result.predictions
        self.dead_letters.update(chunk.dead_letters)
        self.alerts += chunk.result.alerts
        self.reviews += chunk.result.reviews

    def line(self) -> str:
        """One line for a person: counts, dead letters by reason, time and rate."""
        dead = sum(self.dead_letters.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.dead_letters.items()))
        return (
            f"score {self.pipeline}: {self.events} event(s), {self.predictions} prediction(s), "
            f"{dead} dead letter(s){f' ({reasons})' if reasons else ''}, {self.alerts} alert(s), "
            f"{self.reviews} review(s) in {self.seconds:.2f} s ({self.events_per_s:,.0f} events/s)"
        )


class BatchScorer:
    """One pipeline's stages for offline scoring (see the module docstring). Stateful: one
    instance scores one input, from its first line; its line count gives the offsets."""

    def __init__(self, config: PipelineConfig) -> None:
        # Staleness compares event time with the wall clock: meaningless for a file, so off.
        config = config.model_copy(update={"staleness": StalenessConfig()})
        self.config = config
        self.name = config.name
        self.engine = engine_for(config)  # the worker's session settings
        self.store = StateStore(key_ttl_ms=config.state.key_ttl_ms, max_keys=config.state.max_keys)
        self.preparer = BatchPreparer(config, self.store)
        self.finisher = BatchFinisher(config, {"name": self.engine.name, "version": self.engine.version}, self.store)
        # Event time, when the pipeline names an event field for it; else every record's is 0.
        self._timestamp_field = config.features.timestamp_field
        self.offset = 0  # the next line's 0-based number

    def records(self, values: Sequence[bytes], first_offset: int) -> tuple[list[InputRecord], list[str | None]]:
        """The records a consumer would hand the worker for these lines (offsets from
        `first_offset`, partition 0), and each line's key as text (None: absent, or the line is
        not a JSON object or is over max_message_bytes)."""
        # Parsed only to read the key (and time): the decoder parses the value again, as it would
        # a consumed record's. A line over max_message_bytes is not parsed (the decoder will not
        # either: it is `oversized` whatever its key), so the work per line stays bounded.
        limit = self.config.max_message_bytes
        events: list[Any] | None = None
        if max(map(len, values), default=0) <= limit:
            try:
                events = list(map(orjson.loads, values))  # one C loop when every line parses
            except orjson.JSONDecodeError:
                pass
        if events is None:
            events = [_loads_or_none(v) if len(v) <= limit else None for v in values]
        key_field, time_field, topic = self.config.key_field, self._timestamp_field, self.config.input_topic
        records: list[InputRecord] = []
        texts: list[str | None] = []
        append_record, append_text = records.append, texts.append
        for offset, value, event in zip(range(first_offset, first_offset + len(values)), values, events):
            timestamp = 0
            if type(event) is dict:
                found = event.get(key_field, _ABSENT)
                kind = type(found)
                if kind is str:
                    text: str | None = found
                    key: bytes | None = found.encode()
                elif kind is int:
                    text = str(found)
                    key = text.encode()
                elif found is _ABSENT:
                    text = key = None
                else:  # a float, bool, null, array or object: its JSON text, which the schema judges
                    key = orjson.dumps(found)
                    text = key.decode()
                if time_field is not None:
                    timestamp = _timestamp(event.get(time_field))
            else:
                text, key = None, _UNPARSED_KEY
            append_record(InputRecord(key, value, topic, 0, offset, timestamp))
            append_text(text)
        return records, texts

    def score_chunk(self, values: Sequence[bytes]) -> ScoredChunk:
        """Score the next lines of the input (their offsets follow the previous chunk's)."""
        first = self.offset
        self.offset += len(values)
        records, texts = self.records(values, first)
        # The worker's batch path (Pipeline.submit) without the producer: prepare, infer, finish.
        batch = self.preparer.prepare(records)
        raw, error = None, None
        if batch.matrix is not None:
            try:
                raw = self.engine.run(batch.matrix)
            except Exception as err:  # as in Pipeline._infer: the batch's events become model_error dead letters
                error = err
        messages, sources, result = self.finisher.finish(batch, raw, error, time.monotonic())
        topics = self.config.topics
        lines: list[bytes | None] = [None] * len(values)
        alerts: list[bytes] = []
        dead: Counter[str] = Counter()
        loads, dumps = orjson.loads, orjson.dumps
        # Each message back to its line through its source: the record's offset is the line's.
        for (topic, _key, value, _headers), source in zip(messages, sources):
            if isinstance(source, DeadLetter):
                index = source.record.offset - first
                text = texts[index]
                lines[index] = dumps(
                    {
                        "dead_letter": {"reason": source.reason, "detail": source.detail},
                        "line": source.record.offset + 1,
                        "key": text[:EXCERPT_BYTES] if text is not None else None,
                    }
                )
                dead[source.reason] += 1
            elif isinstance(source, InputRecord):
                if topic == topics.predictions:
                    prediction = loads(value)
                    prediction.pop("source", None)
                    prediction.pop("latency_ms", None)
                    lines[source.offset - first] = dumps(prediction)
                elif topic == topics.alerts:
                    alerts.append(value)
                # else a review copy: the prediction already carries outputs.review
            # None: a per-batch summary (stale skips, off here)
        missing = [first + i + 1 for i, line in enumerate(lines) if line is None]
        if missing:  # the finisher's contract says this cannot happen: fail loudly rather than drop lines
            raise RuntimeError(f"pipeline {self.name}: no output for input line(s) {missing[:10]}")
        return ScoredChunk(cast(list[bytes], lines), alerts, result, dead)

    def score(
        self,
        values: Iterable[bytes],
        write: Callable[[bytes], object],
        *,
        write_alert: Callable[[bytes], object] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Callable[[int], object] | None = None,
    ) -> ScoreSummary:
        """Score every line of `values` in chunks of `batch_size`, in order, writing each output
        line (with its newline) through `write` and each alert through `write_alert`; `progress`
        gets each chunk's line count. Returns the counts and the time taken."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        summary = ScoreSummary(self.name)
        started = time.perf_counter()
        lines = iter(values)
        while chunk_values := list(islice(lines, batch_size)):
            chunk = self.score_chunk(chunk_values)
            write(b"\n".join(chunk.lines) + b"\n")
            if write_alert is not None and chunk.alerts:
                write_alert(b"\n".join(chunk.alerts) + b"\n")
            summary.add(chunk)
            if progress is not None:
                progress(len(chunk_values))
        summary.seconds = time.perf_counter() - started
        return summary


def _loads_or_none(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


def _timestamp(value: object) -> int:
    """An event-time field as the record's timestamp: an integer (epoch milliseconds, as
    `features.timestamp_field` says) within int64; anything else 0, as a record without one.
    The preparer checks the field itself where it matters (the aggregates' clock)."""
    if type(value) is int and _INT64[0] <= value <= _INT64[1]:
        return value
    return 0


# --- reading inputs ---------------------------------------------------------------------------


def jsonl_values(stream: IO[bytes]) -> Iterator[bytes]:
    """Each line of a JSON-lines stream as raw bytes, its line end (LF or CRLF) taken off. Every
    line counts, a blank one too: the final newline of the file ends the last line, it does not
    begin an empty one."""
    for line in stream:
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        yield line


# A cell that is a JSON number (RFC 8259 grammar) becomes that number; anything else a string.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def csv_values(stream: IO[str]) -> Iterator[bytes]:
    """Each data row of a CSV stream (header row first, giving the field names) as a JSON object:
    a cell that is a JSON number becomes that number, written as in the file (so `1e999` is a
    `non_finite_number` dead letter, as in JSON lines); any other cell a string (an empty cell
    ""). A row whose cell count differs from the header's (a blank row included) becomes a JSON
    array of its cells, hence an `invalid_json` dead letter; a row that is not UTF-8 (read with
    errors="surrogateescape") becomes its cells' bytes, hence `invalid_encoding`.

    The stream should be opened with newline="" (the csv module's rule), errors="surrogateescape"."""
    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None:
        return
    width, fullmatch, fragment, dumps = len(header), _JSON_NUMBER.fullmatch, orjson.Fragment, orjson.dumps
    for cells in reader:
        try:
            if len(cells) != width:
                yield dumps(cells)
                continue
            yield dumps({name: fragment(cell) if fullmatch(cell) else cell for name, cell in zip(header, cells)})
        except TypeError:  # orjson refuses lone surrogates: the row was not UTF-8
            yield ",".join(cells).encode("utf-8", "surrogateescape")
