"""Post-process: raw model outputs -> named prediction fields, review flags and per-key alerts.

No Kafka here. Scores, labels and review flags are computed for the whole batch with numpy; only
the alert rule walks events one by one, and only those that breach or belong to a key with an
open run or episode (a few, normally).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stream_infer.config import AlertRule, OutputSpec
from stream_infer.records import InputRecord
from stream_infer.state import StateStore


def score_fields(raw: dict[str, np.ndarray], spec: OutputSpec) -> dict[str, np.ndarray]:
    """Named per-event arrays: the score, and for classifiers `label` and (if configured) `review`."""
    values = np.asarray(raw[spec.output])
    if spec.kind == "regression":
        score = values.reshape(len(values), -1)[:, 0].astype(np.float64)
        return {spec.score_name: score}
    threshold = spec.threshold
    assert threshold is not None, "OutputSpec's validator requires a threshold for classification"
    score = values[:, spec.positive_class].astype(np.float64)
    fields: dict[str, np.ndarray] = {spec.score_name: score, "label": (score >= threshold).astype(np.int64)}
    if spec.review_low is not None:
        fields["review"] = (score >= spec.review_low) & (score < threshold)
    return fields


class AlertTracker:
    """Applies one :class:`AlertRule` per key: `consecutive` breaches in a row raise one alert, then
    the key stays silent until `rearm_after` non-breaching events in a row end the episode."""

    def __init__(self, rule: AlertRule, pipeline: str) -> None:
        self.rule = rule
        self.pipeline = pipeline

    def breaches(self, scores: np.ndarray) -> np.ndarray:
        # "above" includes the threshold, like a classifier's label (score >= threshold); "below" excludes it.
        return scores < self.rule.threshold if self.rule.direction == "below" else scores >= self.rule.threshold

    def apply(
        self, keys: Sequence[str], records: Sequence[InputRecord], scores: np.ndarray, store: StateStore, model: dict
    ) -> list[tuple[int, dict]]:
        """Update each key's alert state in input order; return (event index, alert record) pairs."""
        rule = self.rule
        breach = self.breaches(scores)
        # Only keys that breach in this batch, or enter it with an open run/episode, can change:
        # all their events are walked (a later non-breach must reset a run begun in this batch).
        open_keys = store.open_alerts
        involved = {keys[i] for i in np.nonzero(breach)[0].tolist()} | (open_keys & set(keys))
        candidates = [i for i, k in enumerate(keys) if k in involved] if involved else []
        alerts = []
        for i in candidates:
            record = records[i]
            state = store.get(record.partition, keys[i])
            a = state.alert
            store.mark_dirty(record.partition, keys[i])
            if breach[i]:
                a.clear_run = 0
                if a.in_episode:
                    continue
                a.run += 1
                a.run_inputs = (a.run_inputs + [record.source])[-rule.consecutive :]
                if a.run >= rule.consecutive:
                    alerts.append((i, self._alert(keys[i], float(scores[i]), a, model)))
                    a.in_episode, a.run, a.run_inputs = True, 0, []
            else:
                a.run, a.run_inputs = 0, []
                if a.in_episode:
                    a.clear_run += 1
                    if a.clear_run >= rule.rearm_after:
                        a.in_episode, a.clear_run = False, 0
            if a.neutral:
                open_keys.discard(keys[i])
            else:
                open_keys.add(keys[i])
        return alerts

    def _alert(self, key: str, score: float, a, model: dict) -> dict:
        return {
            "schema_version": 1,
            "key": key,
            "pipeline": self.pipeline,
            "rule": self.rule.name,
            "severity": self.rule.severity,
            "score": score,
            "threshold": self.rule.threshold,
            "first_event_time_ms": a.run_inputs[0]["timestamp_ms"],
            "last_event_time_ms": a.run_inputs[-1]["timestamp_ms"],
            "count": len(a.run_inputs),
            "model": model,
            "inputs": list(a.run_inputs),
        }
