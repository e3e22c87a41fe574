"""AlertTracker (debounce: N breaches in a row, one alert per episode, re-arm) and score_fields.

Every scenario is checked both event by event and as one batch: the tracker must give the same
alerts however the events are cut into batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import fastjsonschema
import numpy as np
import orjson
import pytest

from stream_infer.config import AlertRule, OutputSpec, load_config
from stream_infer.records import InputRecord
from stream_infer.stages.postprocess import AlertTracker, score_fields
from stream_infer.state import StateStore

ROOT = Path(__file__).resolve().parents[2]
MODEL = {"name": "engines_rul", "version": "sha256:0123456789abcdef"}
BELOW = AlertRule(
    name="rul_below_30", score="rul", direction="below", threshold=30, consecutive=3, rearm_after=5, severity="critical"
)

# Alert at 3 (third 20 in a row), silence while in the episode, re-armed by the 5 x 40, alert at 13.
SEQUENCE = [50, 20, 20, 20, 20, 20, 40, 40, 40, 40, 40, 20, 20, 20]
SEQUENCE_ALERTS = [3, 13]

validate_alert = fastjsonschema.compile(orjson.loads((ROOT / "schemas" / "alert.v1.json").read_bytes()))


class Feed:
    """One tracker and one store, fed events with increasing offsets (like one consumer)."""

    def __init__(self, rule: AlertRule = BELOW) -> None:
        self.tracker = AlertTracker(rule, "engines")
        self.store = StateStore()
        self.offset = 0

    def batch(self, keys: Sequence[str], scores: Sequence[float], partition: int = 2) -> list[tuple[int, int, dict]]:
        """Apply one batch; returns (global event index, batch index, alert) for each alert."""
        start = self.offset
        records = [
            InputRecord(
                key=k.encode(),
                value=b"{}",
                topic="engines.telemetry",
                partition=partition,
                offset=start + i,
                timestamp_ms=1_700_000_000_000 + 1000 * (start + i),
            )
            for i, k in enumerate(keys)
        ]
        self.offset += len(keys)
        alerts = self.tracker.apply(list(keys), records, np.asarray(scores, dtype=np.float64), self.store, MODEL)
        return [(start + i, i, alert) for i, alert in alerts]

    def one_by_one(self, keys: Sequence[str], scores: Sequence[float]) -> list[tuple[int, int, dict]]:
        return [a for k, s in zip(keys, scores) for a in self.batch([k], [s])]


MODES = ["one-by-one", "one-batch"]


def _run(
    mode: str, keys: Sequence[str], scores: Sequence[float], feed: Feed | None = None
) -> tuple[Feed, list[tuple[int, int, dict]]]:
    feed = feed or Feed()
    alerts = feed.one_by_one(keys, scores) if mode == "one-by-one" else feed.batch(keys, scores)
    return feed, alerts


@pytest.mark.parametrize("mode", MODES)
def test_alerts_at_the_expected_events(mode: str) -> None:
    """3 breaches in a row alert once; the episode stays silent until 5 non-breaches re-arm it."""
    _, alerts = _run(mode, ["7"] * len(SEQUENCE), SEQUENCE)
    assert [index for index, _, _ in alerts] == SEQUENCE_ALERTS


@pytest.mark.parametrize("mode", MODES)
def test_not_rearmed_by_fewer_than_rearm_after_non_breaches(mode: str) -> None:
    """4 non-breaches (one short of rearm_after) do not end the episode: the next run stays silent."""
    scores = [20, 20, 20, 40, 40, 40, 40, 20, 20, 20, 20]
    _, alerts = _run(mode, ["7"] * len(scores), scores)
    assert [index for index, _, _ in alerts] == [2]


@pytest.mark.parametrize("mode", MODES)
def test_interrupted_run_raises_nothing(mode: str) -> None:
    """20, 20, 40, 20, 20: never 3 breaches in a row, so no alert; the key is left with the run of its last 2 breaches."""
    feed, alerts = _run(mode, ["7"] * 5, [20, 20, 40, 20, 20])
    assert alerts == []
    state = feed.store.get(2, "7").alert
    assert (state.run, state.in_episode) == (2, False)
    assert [s["offset"] for s in state.run_inputs] == [3, 4]


def test_batches_cut_anywhere_give_the_same_alerts() -> None:
    """Every way of cutting SEQUENCE into two batches (and per-event feeding) alerts at the same events."""
    for cut in range(len(SEQUENCE) + 1):
        feed = Feed()
        alerts = feed.batch(["7"] * cut, SEQUENCE[:cut]) + feed.batch(["7"] * (len(SEQUENCE) - cut), SEQUENCE[cut:])
        assert [index for index, _, _ in alerts] == SEQUENCE_ALERTS, f"cut at {cut}"


@pytest.mark.parametrize("mode", MODES)
def test_two_interleaved_keys_are_independent(mode: str) -> None:
    """Key A's run is not broken or completed by key B's events in the same stream."""
    a = SEQUENCE
    b = [20, 20, 40, 20, 20, 20, 20, 20, 40, 40, 40, 40, 40, 40]  # alert at its index 5 only
    keys = [k for pair in zip(["A"] * len(a), ["B"] * len(b)) for k in pair]
    scores = [s for pair in zip(a, b) for s in pair]
    _, alerts = _run(mode, keys, scores)
    got = sorted((alert["key"], index // 2) for index, _, alert in alerts)
    assert got == [("A", 3), ("A", 13), ("B", 5)]
    for index, _, alert in alerts:
        assert keys[index] == alert["key"]


def test_breaches_of_other_keys_do_not_add_up() -> None:
    """Two keys breaching twice each (4 breaches in a row overall) raise nothing."""
    feed = Feed()
    assert feed.batch(["A", "B", "A", "B"], [20, 20, 20, 20]) == []
    assert feed.batch(["B"], [20])[0][2]["key"] == "B"


@pytest.mark.parametrize("mode", MODES)
def test_alert_record_matches_the_schema_and_names_its_run(mode: str) -> None:
    """Alert records validate against alert.v1.json, count == 3, and list the run's 3 inputs in order."""
    _, alerts = _run(mode, ["7"] * len(SEQUENCE), SEQUENCE)
    for index, _, alert in alerts:
        validate_alert(alert)
        assert alert["count"] == BELOW.consecutive
        assert [s["offset"] for s in alert["inputs"]] == [index - 2, index - 1, index]
        assert all(s["topic"] == "engines.telemetry" and s["partition"] == 2 for s in alert["inputs"])
        assert alert["first_event_time_ms"] == alert["inputs"][0]["timestamp_ms"]
        assert alert["last_event_time_ms"] == alert["inputs"][-1]["timestamp_ms"]
        assert (alert["key"], alert["pipeline"], alert["rule"], alert["severity"]) == ("7", "engines", BELOW.name, "critical")
        assert alert["score"] == SEQUENCE[index] and alert["threshold"] == 30
        assert alert["model"] == MODEL


@pytest.mark.parametrize("mode", MODES)
def test_direction_above_counts_the_threshold_itself(mode: str) -> None:
    """direction=above: score >= threshold breaches (threshold included); below it does not."""
    rule = AlertRule(name="p_high", score="p", direction="above", threshold=0.5, consecutive=1, rearm_after=1)
    scores = [0.4999, 0.5, 0.9, 0.1, 0.5, 0.49]
    feed, alerts = _run(mode, ["m"] * len(scores), scores, Feed(rule))
    assert [index for index, _, _ in alerts] == [1, 4]
    assert feed.tracker.breaches(np.array([0.4999, 0.5, 0.5001])).tolist() == [False, True, True]


def test_direction_below_excludes_the_threshold() -> None:
    """direction=below: strictly below the threshold breaches; the threshold itself is fine."""
    assert AlertTracker(BELOW, "engines").breaches(np.array([29.999, 30.0, 30.001])).tolist() == [True, False, False]


@pytest.mark.parametrize("mode", MODES)
def test_open_alerts_empties_once_keys_are_neutral(mode: str) -> None:
    """Keys with an open run or episode are tracked; once neutral again they are dropped."""
    feed = Feed()
    keys = ["A", "B", "A", "B", "A"]
    _run(mode, keys, [20, 20, 20, 20, 20], feed)  # A alerts (episode open), B has a run of 2
    assert feed.store.open_alerts == {"A", "B"}
    _run(mode, ["B"], [45], feed)  # B's run is broken: neutral
    assert feed.store.open_alerts == {"A"}
    _run(mode, ["A"] * 4, [45] * 4, feed)
    assert feed.store.open_alerts == {"A"}  # 4 of the 5 re-arming events
    _run(mode, ["A"], [45], feed)
    assert feed.store.open_alerts == set()
    assert all(s.alert.neutral for keys in feed.store.partitions.values() for s in keys.values())
    # Neutral keys leave the store at the next snapshot (tombstones for the changelog).
    snapshot = feed.store.take_dirty()
    assert snapshot == {2: {"A": None, "B": None}}
    assert len(feed.store) == 0


def test_non_breaching_keys_are_not_touched() -> None:
    """Keys that never breach leave no alert state behind (the common case costs nothing)."""
    feed = Feed()
    feed.batch([str(i) for i in range(100)], [100.0] * 100)
    assert feed.store.open_alerts == set()
    assert len(feed.store) == 0 and feed.store.dirty == {}


# --- score_fields -------------------------------------------------------------------------------


def _machines_outputs() -> OutputSpec:
    config = load_config(ROOT / "stream_infer" / "configs" / "demo.toml")
    return next(p for p in config.pipelines if p.name == "machines").outputs


def test_classification_label_and_review_band() -> None:
    """label = score >= threshold; review = review_low <= score < threshold (demo.toml's machines outputs)."""
    spec = _machines_outputs()
    lo, hi = spec.review_low, spec.threshold
    assert (lo, hi) == (0.077749, 0.194476)
    scores = np.array([0.0, np.nextafter(lo, 0), lo, 0.1, np.nextafter(hi, 0), hi, 0.9, 1.0])
    raw = {spec.output: np.stack([1 - scores, scores], axis=1)}
    fields = score_fields(raw, spec)
    assert set(fields) == {spec.score_name, "label", "review"}
    assert fields[spec.score_name].tolist() == scores.tolist()
    assert fields["label"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert fields["review"].tolist() == [False, False, True, True, True, False, False, False]
    assert fields["label"].dtype == np.int64 and fields["review"].dtype == np.bool_


def test_classification_reads_the_positive_class_column() -> None:
    """positive_class picks the column; without review_low there is no review field."""
    spec = OutputSpec(kind="classification", output="p", score_name="s", positive_class=0, threshold=0.5)
    fields = score_fields({"p": np.array([[0.7, 0.3], [0.2, 0.8]], dtype=np.float32)}, spec)
    assert set(fields) == {"s", "label"}
    assert fields["s"].dtype == np.float64
    assert np.allclose(fields["s"], [0.7, 0.2])
    assert fields["label"].tolist() == [1, 0]


def test_regression_score_is_the_first_column() -> None:
    """Regression: the score is outputs[:, 0] as float64, for (N, 1) and (N,) outputs alike."""
    spec = OutputSpec(kind="regression", output="rul", score_name="rul")
    for raw in (np.array([[12.5], [130.0]], dtype=np.float32), np.array([12.5, 130.0], dtype=np.float32)):
        fields = score_fields({"rul": raw}, spec)
        assert set(fields) == {"rul"}
        assert fields["rul"].dtype == np.float64 and fields["rul"].tolist() == [12.5, 130.0]
