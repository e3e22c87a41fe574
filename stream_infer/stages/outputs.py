"""Output records: predictions, review copies, alerts, dead letters and stale-skip summaries as
Kafka messages, and what happens when the producer refuses one. No Kafka client here.

Contract:

* :meth:`OutputWriter.batch_messages` returns the messages of one batch in input order together
  with, for each message, the input it speaks for (an :class:`InputRecord`, the
  :class:`DeadLetter` it carries, or None for a per-batch summary);
* a dead letter is bounded whatever the input: an oversized value or key is cut to an excerpt of
  at most :data:`EXCERPT_BYTES` (headers `x-dlq-value-bytes` / `x-dlq-key-bytes` give the
  original sizes), and input headers are copied only up to :data:`HEADER_BUDGET_BYTES` in all
  (`x-dlq-headers-dropped` counts the rest, or says `unreadable` when the client could not
  decode them);
* input headers cannot pose as the worker's: any whose name starts with `x-dlq-` or
  `x-source-` is copied as `x-original-<name>`, so the worker's `x-dlq-*` and `x-source-*`
  headers are the only ones under those names;
* :meth:`OutputWriter.rejected` turns a message the producer refused for a property of its own
  (too large, invalid) into the input's dead letter with reason `output_rejected`; when the
  refused message is already a dead letter (or a summary) it returns None: the caller counts it,
  logs the cause once, and moves on. One message never stops the partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import orjson

from stream_infer import metrics
from stream_infer.config import PipelineConfig
from stream_infer.kafka.producer import OutMessage
from stream_infer.records import InputRecord
from stream_infer.stages.decode import DeadLetter

log = logging.getLogger(__name__)

# What a dead letter keeps of an oversized value or key.
EXCERPT_BYTES = 1024
# Input headers copied into a dead letter, names and values together; the rest are dropped and
# counted in `x-dlq-headers-dropped`.
HEADER_BUDGET_BYTES = 16 * 1024
_RESERVED_PREFIXES = ("x-dlq-", "x-source-")

# Who a message speaks for: the input record (prediction, review copy, alert), the dead letter it
# carries, or None (a per-batch summary).
Source = InputRecord | DeadLetter | None


class OutputWriter:
    """Builds one pipeline's output messages (see the module docstring)."""

    def __init__(self, config: PipelineConfig, model: dict) -> None:
        self.config = config
        self.name = config.name
        self.model = model
        self._dropped_causes: set[str] = set()  # logged once each

    # --- messages ------------------------------------------------------------------------------

    def predictions(
        self,
        records: Sequence[InputRecord],
        keys: Sequence[str],
        fields: dict[str, np.ndarray],
        alerts: list[tuple[int, dict]],
        arrival: float,
        messages: list[OutMessage],
        sources: list[Source],
        echo: Sequence[dict] | None = None,
    ) -> None:
        """Append each record's prediction (and review copy), then the batch's alerts. `echo`:
        per record, the input fields `outputs.echo` copies into its prediction and alerts as `input`."""
        topics = self.config.topics
        latency_ms = round((time.monotonic() - arrival) * 1000, 3)
        columns = {name: values.tolist() for name, values in fields.items()}
        names = list(columns)
        base = {"schema_version": 1, "pipeline": self.name, "model": self.model}
        review = columns.get("review")
        append, source = messages.append, sources.append
        for i, record in enumerate(records):
            prediction = {
                **base,
                "key": keys[i],
                "outputs": {name: columns[name][i] for name in names},
                "source": record.source,
                "latency_ms": latency_ms,
            }
            if echo is not None:
                prediction["input"] = echo[i]
            value = orjson.dumps(prediction)
            append((topics.predictions, record.key, value, None))
            source(record)
            if review is not None and review[i]:
                append((topics.review, record.key, value, None))  # type: ignore[arg-type]
                source(record)
        for i, alert in alerts:
            if echo is not None:
                alert["input"] = echo[i]
            append((topics.alerts, records[i].key, orjson.dumps(alert), None))  # type: ignore[arg-type]
            source(records[i])

    def dead_letters(self, dead: Sequence[DeadLetter], messages: list[OutMessage], sources: list[Source]) -> None:
        for letter in dead:
            messages.append(self.dead_letter(letter))
            sources.append(letter)

    def dead_letter(self, letter: DeadLetter) -> OutMessage:
        """One bounded dead-letter message (see the module docstring)."""
        r = letter.record
        key, value = r.key, r.value if r.value is not None else b""
        ours: list[tuple[str, bytes | None]] = [
            ("x-dlq-reason", letter.reason.encode()),
            ("x-dlq-detail", letter.detail.encode("utf-8", "replace")[:1000]),
            ("x-dlq-pipeline", self.name.encode()),
            ("x-source-topic", r.topic.encode()),
            ("x-source-partition", str(r.partition).encode()),
            ("x-source-offset", str(r.offset).encode()),
            ("x-source-timestamp-ms", str(r.timestamp_ms).encode()),
        ]
        if len(value) > self.config.max_message_bytes:
            ours.append(("x-dlq-value-bytes", str(len(value)).encode()))
            value = value[:EXCERPT_BYTES]
        if key is not None and len(key) > self.config.max_key_bytes:
            ours.append(("x-dlq-key-bytes", str(len(key)).encode()))
            key = key[:EXCERPT_BYTES]
        copied, dropped = _input_headers(r.headers)
        if dropped:
            ours.append(("x-dlq-headers-dropped", str(dropped).encode()))
        return (self.config.topics.dead_letters, key, value, copied + ours)

    def skipped_summary(self, stale: list[InputRecord]) -> OutMessage:
        """One record per batch on the skipped topic: how many stale events, from which offsets."""
        by_partition: dict[int, dict] = {}
        for r in stale:
            entry = by_partition.setdefault(r.partition, {"partition": r.partition, "first_offset": r.offset, "count": 0})
            entry["last_offset"] = r.offset
            entry["count"] += 1
        timestamps = [r.timestamp_ms for r in stale]
        policy = self.config.staleness
        summary = {
            "schema_version": 1,
            "pipeline": self.name,
            "reason": "stale",
            "policy": policy.policy,
            "max_event_age_ms": policy.max_event_age_ms,
            "count": len(stale),
            "topic": stale[0].topic,
            "partitions": list(by_partition.values()),
            "oldest_timestamp_ms": min(timestamps),
            "newest_timestamp_ms": max(timestamps),
            "skipped_at_ms": int(time.time() * 1000),
        }
        return (self.config.skipped_topic, self.name.encode(), orjson.dumps(summary), None)

    # --- refusals ------------------------------------------------------------------------------

    def rejected(self, message: OutMessage, source: Source, error: str) -> OutMessage | None:
        """The replacement for a message the producer refused (see the module docstring)."""
        topic = message[0]
        if isinstance(source, InputRecord):
            metrics.DEAD_LETTERS.labels(self.name, "output_rejected").inc()
            return self.dead_letter(DeadLetter(source, "output_rejected", f"{topic}: {error}"))
        self.dropped(message, source, error)
        return None

    def dropped(self, message: OutMessage, source: Source, error: str) -> None:
        """A message that cannot be written at all: counted, its cause logged once, skipped."""
        topic = message[0]
        metrics.OUTPUTS_DROPPED.labels(self.name, topic).inc()
        cause = f"{topic}: {error}"
        if cause in self._dropped_causes:
            return
        self._dropped_causes.add(cause)
        record = source.record if isinstance(source, DeadLetter) else source
        where = {"topic": record.topic, "partition": record.partition, "offset": record.offset} if record else {}
        log.error(
            "output refused by the producer; skipped (counted in stream_infer_outputs_dropped_total); "
            "check the topic's max.message.bytes and the producer settings",
            extra={
                "pipeline": self.name,
                "output_topic": topic,
                "error": error,
                **where,
                "key_bytes": len(message[1] or b""),
                "value_bytes": len(message[2]),
            },
        )


def _input_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> tuple[list[tuple[str, bytes | None]], int | str]:
    """Input headers to copy into a dead letter (reserved names prefixed with `x-original-`,
    within the budget) and how many were dropped ("unreadable": the client could not decode
    them, see stream_infer.kafka.consumer)."""
    if headers is None:
        return [], "unreadable"
    copied: list[tuple[str, bytes | None]] = []
    budget = HEADER_BUDGET_BYTES
    for name, value in headers:
        if name.startswith(_RESERVED_PREFIXES):
            name = "x-original-" + name
        size = len(name) + len(value or b"")
        if size > budget:
            return copied, len(headers) - len(copied)
        budget -= size
        copied.append((name, value))
    return copied, 0
