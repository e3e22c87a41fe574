"""The back half of the batch path, on the event loop: the model's raw outputs become scores,
alerts and every output message of the batch, with the input each message speaks for.

Contract: :meth:`BatchFinisher.finish` returns one message list in which each valid event of the
batch has exactly one prediction (or, when the model failed on the batch, one `model_error` dead
letter) and each dead letter decided earlier has its message; alerts and review copies come with
their event's prediction (see :mod:`stream_infer.stages.outputs` for the records themselves).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from stream_infer import metrics
from stream_infer.config import PipelineConfig
from stream_infer.kafka.producer import OutMessage
from stream_infer.stages.decode import DeadLetter
from stream_infer.stages.outputs import OutputWriter, Source
from stream_infer.stages.postprocess import AlertTracker, score_fields
from stream_infer.stages.prepare import PreparedBatch
from stream_infer.state import StateStore

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What one batch (or a part of one) produced, by kind."""

    predictions: int = 0
    alerts: int = 0
    dead_letters: int = 0
    reviews: int = 0
    skipped: int = 0
    stale_skipped: int = 0

    def __add__(self, other: BatchResult) -> BatchResult:
        """Counts of two parts of one batch, field by field."""
        return BatchResult(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


class BatchFinisher:
    """Post-processing and output messages of one pipeline's batches (see the module docstring)."""

    def __init__(self, config: PipelineConfig, model: dict[str, str], store: StateStore) -> None:
        self.config = config
        self.name = config.name
        self.model = model
        self.store = store
        self.alerts = AlertTracker(config.alert, config.name) if config.alert else None
        self.outputs = OutputWriter(config, model)

    def finish(
        self, batch: PreparedBatch, raw: dict | None, error: Exception | None, arrival: float
    ) -> tuple[list[OutMessage], list[Source], BatchResult]:
        """Scores, alerts and every output message of a batch (predictions, alerts, review, DLQ),
        with the input each message speaks for. `error`: the model failed on this batch."""
        result = BatchResult(skipped=batch.skipped, stale_skipped=len(batch.stale))
        messages: list[OutMessage] = []
        sources: list[Source] = []
        if batch.stale:
            messages.append(self.outputs.skipped_summary(batch.stale))
            sources.append(None)
        if error is not None:
            log.error(
                "model failed on a batch; its events go to the dead-letter topic",
                extra={"pipeline": self.name, "error": str(error)},
            )
            batch.dead.extend(DeadLetter(r, "model_error", str(error)[:500]) for r in batch.records)
        elif raw is not None:
            scores = score_fields(raw, self.config.outputs)
            alerts = []
            if self.alerts is not None:
                alerts = self.alerts.apply(
                    batch.keys, batch.records, scores[self.config.outputs.score_name], self.store, self.model
                )
            self.outputs.predictions(batch.records, batch.keys, scores, alerts, arrival, messages, sources, batch.echo)
            result.predictions, result.alerts = len(batch.records), len(alerts)
            if "review" in scores:
                result.reviews = int(scores["review"].sum())
        self.outputs.dead_letters(batch.dead, messages, sources)
        result.dead_letters = len(batch.dead)
        self._count(result, batch.dead)
        return messages, sources, result

    def _count(self, result: BatchResult, dead: list[DeadLetter]) -> None:
        metrics.PREDICTIONS.labels(self.name).inc(result.predictions)
        if result.reviews:
            metrics.REVIEWS.labels(self.name).inc(result.reviews)
        if result.stale_skipped:
            metrics.SKIPPED.labels(self.name, "stale").inc(result.stale_skipped)
        if self.alerts is not None and result.alerts:
            metrics.ALERTS.labels(self.name, self.alerts.rule.name).inc(result.alerts)
        for letter in dead:
            metrics.DEAD_LETTERS.labels(self.name, letter.reason).inc()
