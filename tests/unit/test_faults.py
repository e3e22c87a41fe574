"""The fault harness's pure parts, without a broker: accounting of lost, duplicated and mismatched
predictions and of missing, unexpected and repeated alerts, recovery and latency from
observations, the report line and table, the looped stream, the in-process reference (predictions
and alerts) and its cache, and the trial config."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import orjson
import pytest

from stream_infer.config import load_config
from stream_infer.tools.faults import reference as reference_module
from stream_infer.tools.faults.harness import write_config
from stream_infer.tools.faults.reference import (
    UNIT_STRIDE,
    EventStream,
    Reference,
    compute_reference,
    load_reference,
    reference_key,
)
from stream_infer.tools.faults.report import (
    AlertObservation,
    Observation,
    TrialResult,
    WorkerExit,
    account,
    latency_max,
    predictions_seen,
    recovery_seconds,
    summarize,
    summary_json,
    table,
    trial_line,
)
from stream_infer.tools.faults.traffic import alert_observation

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "stream_infer" / "configs" / "demo.toml"


def _obs(partition: int, offset: int, score: float, arrived: float = 100.0, input_ms: int = 99_000) -> Observation:
    return Observation(partition, offset, score, arrived, input_ms)


def _alert(partition: int, offset: int, score: float) -> AlertObservation:
    return AlertObservation(partition, offset, score, 100.0)


# --- accounting ------------------------------------------------------------------------------


def test_account_counts_lost_duplicates_mismatches_and_unknown_sources() -> None:
    inputs = {(0, 0): (1, 1), (0, 1): (1, 2), (1, 0): (2, 1), (1, 1): (2, 2)}
    reference = {(1, 1): 10.0, (1, 2): 11.0, (2, 1): 20.0, (2, 2): 21.0}
    observations = [
        _obs(0, 0, 10.0),
        _obs(0, 0, 10.0),
        _obs(0, 0, 10.0),  # two duplicates, both equal
        _obs(0, 1, 11.0),
        _obs(1, 0, 20.0),
        _obs(1, 0, 20.5),  # a duplicate that differs: mismatched
        _obs(5, 7, 1.0),  # names no input that was fed
    ]  # (1, 1) has no prediction: lost
    result = account(inputs, observations, reference)
    assert (result.inputs, result.predicted, result.lost, result.duplicates) == (4, 3, 1, 3)
    assert (result.mismatched, result.unexpected) == (1, 1)
    assert not result.equal_to_reference
    assert result.max_abs_error == pytest.approx(0.5)
    assert result.lost_examples == [(1, 1)] and result.lost_by_partition == {1: 1}
    assert result.duplicate_examples == [{"partition": 0, "offset": 0, "count": 3}, {"partition": 1, "offset": 0, "count": 2}]
    assert result.mismatch_examples == [{"partition": 1, "offset": 0, "unit": 2, "cycle": 1, "got": 20.5, "expected": 20.0}]


def test_account_clean_run_is_equal_and_a_missing_reference_value_is_a_mismatch() -> None:
    inputs = {(0, i): (1, i + 1) for i in range(3)}
    reference = {(1, i + 1): float(i) for i in range(3)}
    clean = account(inputs, [_obs(0, i, float(i)) for i in range(3)], reference)
    assert (clean.lost, clean.duplicates, clean.mismatched) == (0, 0, 0) and clean.equal_to_reference
    partial = account(inputs, [_obs(0, i, float(i)) for i in range(3)], {(1, 1): 0.0})
    assert partial.mismatched == 2 and not partial.equal_to_reference


def test_account_alerts_by_the_input_that_raised_them_and_their_score() -> None:
    # (7, 50) is fed twice (two loops of the stream: the same base identity, new sources).
    inputs = {(0, 10): (7, 50), (0, 11): (7, 51), (1, 3): (7, 50), (1, 4): (8, 20), (2, 0): (9, 9)}
    predictions = dict.fromkeys(inputs.values(), 1.0)
    reference_alerts = {(7, 50): 25.0, (8, 20): 12.5, (5, 5): 1.0}  # (5, 5) is never fed: not expected
    alerts = [
        _alert(0, 10, 25.0),
        _alert(0, 10, 25.0),
        _alert(0, 10, 25.0),  # expected, then two repeats
        _alert(1, 3, 25.0),  # the second loop's alert for (7, 50)
        _alert(1, 4, 13.0),  # another score: the expected one is missing, this one unexpected
        _alert(2, 0, 5.0),  # an input for which the reference raises no alert
        _alert(9, 9, 1.0),  # an input never fed
    ]
    result = account(inputs, [], predictions, alerts=alerts, reference_alerts=reference_alerts)
    assert (result.alerts_expected, result.alerts_seen) == (3, 5)
    assert (result.alerts_missing, result.alerts_unexpected, result.alerts_duplicates) == (1, 3, 2)
    assert result.alerts_seen == result.alerts_expected - result.alerts_missing + result.alerts_unexpected
    assert not result.alerts_equal
    assert result.alerts_missing_examples == [{"partition": 1, "offset": 4, "unit": 8, "cycle": 20, "expected": 12.5}]
    assert result.alerts_unexpected_examples == [
        {"partition": 1, "offset": 4, "unit": 8, "cycle": 20, "got": 13.0, "expected": 12.5},
        {"partition": 2, "offset": 0, "unit": 9, "cycle": 9, "got": 5.0, "expected": None},
        {"partition": 9, "offset": 9, "unit": None, "cycle": None, "got": 1.0, "expected": None},
    ]
    assert result.alerts_duplicate_examples == [{"partition": 0, "offset": 10, "unit": 7, "cycle": 50, "score": 25.0, "count": 3}]


def test_account_alerts_clean_and_none_expected() -> None:
    inputs = {(0, i): (1, i + 1) for i in range(4)}
    predictions = {(1, i + 1): float(i) for i in range(4)}
    clean = account(inputs, [], predictions, alerts=[_alert(0, 3, 3.0)], reference_alerts={(1, 4): 3.0})
    assert (clean.alerts_expected, clean.alerts_seen, clean.alerts_missing, clean.alerts_unexpected, clean.alerts_duplicates) == (
        1,
        1,
        0,
        0,
        0,
    ) and clean.alerts_equal
    none = account(inputs, [], predictions)  # no alert rule: nothing expected, nothing seen
    assert (none.alerts_expected, none.alerts_seen) == (0, 0) and none.alerts_equal
    stray = account(inputs, [], predictions, alerts=[_alert(0, 1, 1.0)])
    assert stray.alerts_unexpected == 1 and not stray.alerts_equal


def test_alert_observation_names_the_last_input_of_the_run() -> None:
    body = {
        "key": "1037",
        "score": 23.5,
        "inputs": [
            {"topic": "t", "partition": 4, "offset": 7, "timestamp_ms": 1},
            {"topic": "t", "partition": 4, "offset": 9, "timestamp_ms": 2},
            {"topic": "t", "partition": 4, "offset": 12, "timestamp_ms": 3},
        ],
    }
    assert alert_observation(body, 5.0) == AlertObservation(4, 12, 23.5, 5.0)
    assert alert_observation({"score": 1.0, "inputs": []}, 5.0) == AlertObservation(-1, -1, 1.0, 5.0)


# --- timing ----------------------------------------------------------------------------------


def test_recovery_counts_only_inputs_produced_after_the_fault() -> None:
    fault = 1000.0
    observations = [
        _obs(0, 1, 0.0, arrived=1000.5, input_ms=999_900),  # produced before the fault: a replay, not recovery
        _obs(0, 2, 0.0, arrived=1012.0, input_ms=1_000_100),
        _obs(0, 3, 0.0, arrived=1011.0, input_ms=1_000_200),  # arrives first among the new inputs
        _obs(1, 5, 0.0, arrived=1000.2, input_ms=1_000_050),
        _obs(3, 1, 0.0, arrived=1001.0, input_ms=1_000_010),  # not an affected partition
    ]
    assert recovery_seconds(fault, {0, 1, 2}, predictions_seen(observations)) == {0: 11.0, 1: 0.2, 2: None}
    acknowledged = [(0, 999_990, 1000.01), (0, 1_000_100, 1009.5), (1, 1_000_000, 1000.004)]  # from the feeder
    assert recovery_seconds(fault, {0, 1}, acknowledged) == {0: 9.5, 1: 0.004}


def test_latency_max_uses_each_inputs_first_prediction() -> None:
    observations = [
        _obs(0, 1, 0.0, arrived=10.0, input_ms=9_000),
        _obs(0, 1, 0.0, arrived=30.0, input_ms=9_000),  # a late duplicate does not make the input late
        _obs(0, 2, 0.0, arrived=15.0, input_ms=12_500),
    ]
    assert latency_max(observations) == 2.5
    assert latency_max([]) is None


# --- verdicts and report ---------------------------------------------------------------------


def _result(alerts: list[AlertObservation] | None = None, **changes) -> TrialResult:
    """A worker_kill trial at least once: two inputs, one repeated prediction, one alert seen as expected."""
    result = TrialResult("worker_kill", "at_least_once", 7)
    result.accounting = account(
        {(0, 0): (1, 1), (0, 1): (1, 2)},
        [_obs(0, 0, 1.0), _obs(0, 0, 1.0), _obs(0, 1, 2.0)],
        {(1, 1): 1.0, (1, 2): 2.0},
        alerts=[_alert(0, 1, 2.0)] if alerts is None else alerts,
        reference_alerts={(1, 2): 2.0},
    )
    result.recovery = {"kill w2": {0: 11.25, 3: 12.5}}
    result.feed_recovery = {"kill w2": {0: 0.01, 3: 0.02}}
    result.latency_max_s = 13.0
    result.exits = [WorkerExit("w2", -9, None, "killed"), WorkerExit("w1", 0, 1.5, "stopped")]
    result.final_lag = 0
    result.duration_s = 88.04
    for key, value in changes.items():
        setattr(result, key, value)
    return result


def test_failures_follow_the_guarantee_the_graceful_stop_and_the_recovery_limits() -> None:
    assert _result().failures() == []  # duplicates are allowed at least once
    assert _result(guarantee="exactly_once").failures() == ["duplicates"]
    slow = _result(scenario="rolling_restart", exits=[WorkerExit("a", 0, 10.5, "stopped", graceful_required=True)])
    assert slow.failures() == ["duplicates", "graceful_stop"]  # a graceful hand-over repeats nothing
    assert _result(recovery={"kill w2": {0: 15.5}}).failures() == ["slow_recovery"]
    assert _result(scenario="broker_kill", recovery={"kill broker 1": {0: 14.9, 1: None}}).failures() == ["slow_recovery"]
    assert _result(scenario="coordinator_kill", recovery={"kill broker 2": {0: 15.1}}).failures() == ["slow_recovery"]
    crashed = _result(exits=[WorkerExit("a", 70, 0.3, "stopped", graceful_required=True)])
    assert crashed.failures() == ["graceful_stop"]
    assert _result(error="boom").failures() == ["error"]


def test_alerts_fail_every_guarantee_and_repeats_only_exactly_once_or_a_hand_over() -> None:
    for guarantee in ("at_least_once", "exactly_once", None):
        assert "alerts" in _result(guarantee=guarantee, alerts=[]).failures()  # the expected alert is missing
        assert "alerts" in _result(guarantee=guarantee, alerts=[_alert(0, 1, 2.5)]).failures()  # another score
        assert "alerts" in _result(guarantee=guarantee, alerts=[_alert(0, 1, 2.0), _alert(0, 0, 1.0)]).failures()
    repeated = [_alert(0, 1, 2.0), _alert(0, 1, 2.0)]
    assert _result(alerts=repeated).failures() == []  # at least once: a replay may raise it again
    assert _result(scenario="rolling_restart", alerts=repeated).failures() == ["duplicates", "alert_duplicates"]
    assert _result(guarantee="exactly_once", alerts=repeated).failures() == ["duplicates", "alert_duplicates"]


def test_trial_line_has_every_field_in_order() -> None:
    assert trial_line(_result()) == (
        "scenario=worker_kill guarantee=at_least_once seed=7 inputs=2 predicted=2 lost=0 duplicates=1 "
        "equal_to_reference=yes recovery_max_s=12.50 feed_recovery_max_s=0.02 latency_max_s=13.00 exits=w2:killed:-9@-s,w1:stopped:0@1.50s "
        "restarts=0 final_lag=0 duration_s=88.0 result=ok alerts=1/1"
    )
    never = _result(recovery={"kill w2": {0: None, 3: 1.0}}, guarantee=None, error="worker not ready")
    never.accounting = account({(0, 0): (1, 1), (2, 4): (1, 2), (2, 5): (1, 3)}, [], {})
    line = trial_line(never)
    assert "guarantee=unset" in line and "recovery_max_s=never" in line and " lost=3 " in line
    assert line.endswith("result=FAIL(error,lost,slow_recovery) alerts=0/0 lost_by_partition=0:1,2:2 error='worker not ready'")
    wrong = _result(guarantee="exactly_once", alerts=[_alert(0, 1, 2.5), _alert(0, 1, 2.5), _alert(0, 0, 1.0)])
    assert trial_line(wrong).endswith(
        "result=FAIL(duplicates,alerts,alert_duplicates) alerts=2/1 alerts_missing=1 alerts_unexpected=2 alerts_duplicates=1"
    )


def test_table_and_json_summarise_per_scenario_and_guarantee() -> None:
    results = [
        _result(),
        _result(recovery={"kill w1": {1: 15.0}}),
        _result(recovery={"kill w3": {2: 14.0}}),
        _result(scenario="broker_kill", guarantee="exactly_once", recovery={"kill broker 2": {0: None}}),
    ]
    rows = summarize(results)
    assert [(r.scenario, r.guarantee, r.trials, r.failed, r.duplicates) for r in rows] == [
        ("worker_kill", "at_least_once", 3, 0, 3),
        ("broker_kill", "exactly_once", 1, 1, 1),
    ]
    assert (rows[0].recovery_median_s, rows[0].recovery_max_s) == (14.0, 15.0)
    assert table(rows).splitlines() == [
        "scenario     guarantee      trials  failed  lost  duplicates  all_equal  recovery_s median/max  cluster_s max",
        "worker_kill  at_least_once  3       0       0     3           yes        14.00 / 15.00          0.02",
        "broker_kill  exactly_once   1       1       0     1           yes        never / never          0.02",
    ]
    data = json.loads(orjson.dumps(summary_json(results)))  # strict JSON: no Infinity
    assert data["failed"] is True
    assert data["trials"][3]["recovery_max_s"] == "inf" and data["trials"][3]["failures"] == ["duplicates", "slow_recovery"]
    assert data["trials"][0]["recovery"] == {"kill w2": {"0": 11.25, "3": 12.5}}
    assert data["summary"][1]["recovery_max_s"] == "inf"
    accounting = data["trials"][0]["accounting"]
    assert {
        k: accounting[k]
        for k in ("alerts_expected", "alerts_seen", "alerts_missing", "alerts_unexpected", "alerts_duplicates", "alerts_equal")
    } == {
        "alerts_expected": 1,
        "alerts_seen": 1,
        "alerts_missing": 0,
        "alerts_unexpected": 0,
        "alerts_duplicates": 0,
        "alerts_equal": True,
    }


# --- the stream and the reference ------------------------------------------------------------


def _engines():
    return next(p for p in load_config(DEMO_CONFIG).pipelines if p.name == "engines")


def test_stream_loops_with_new_units_and_keeps_the_base_identity() -> None:
    stream = EventStream()
    assert len(stream) == 13_096
    key, value = stream.event(5)
    event = orjson.loads(value)
    assert key == str(event["unit"]).encode() and stream.identity(5) == (event["unit"], event["cycle"])
    key2, value2 = stream.event(len(stream) * 2 + 5)
    event2 = orjson.loads(value2)
    assert event2["unit"] == event["unit"] + 2 * UNIT_STRIDE and key2 == str(event2["unit"]).encode()
    assert {k: v for k, v in event2.items() if k != "unit"} == {k: v for k, v in event.items() if k != "unit"}
    assert stream.identity(len(stream) * 2 + 5) == stream.identity(5)


def test_reference_depends_on_per_key_order_only(tmp_path: Path) -> None:
    """The premise of comparing a partitioned, interrupted run with a one-partition run: neither
    batch boundaries nor how keys interleave change any prediction."""
    base = EventStream().base[:400]  # cycles 1-4 of the fleet: windows left-padded, then filling
    config = _engines()
    in_order = compute_reference(config, EventStream(base), batch=64)
    assert len(in_order.predictions) == 400
    by_key = EventStream(sorted(base, key=lambda e: (e["unit"], e["cycle"])))  # one engine after another
    assert compute_reference(config, by_key, batch=7) == in_order
    assert len(set(in_order.predictions.values())) > 100  # the values depend on the window, not constant


def test_reference_alerts_follow_the_rule_and_per_key_order_only() -> None:
    """Each alert is keyed by the event that completed its run of 3 breaches and carries that
    event's score; interleaving and batches change none of them. Engines 18-37 (in replay order):
    some end below 30 (C-MAPSS test units 18, 20, 24, 31, 34, 35, 37 alert), the rest do not."""
    config = _engines()
    stream = EventStream([e for e in EventStream().base if 18 <= e["unit"] <= 37])
    reference = compute_reference(config, stream)
    assert len(reference.alerts) >= 5
    for (unit, cycle), score in reference.alerts.items():
        assert score == reference.predictions[(unit, cycle)] < 30.0
        assert all(reference.predictions[(unit, cycle - back)] < 30.0 for back in (1, 2))  # 3 in a row
    by_key = EventStream(sorted(stream.base, key=lambda e: (e["unit"], e["cycle"])))
    assert compute_reference(config, by_key, batch=997).alerts == reference.alerts


def test_reference_is_cached_under_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = EventStream(EventStream().base[:200])
    config = _engines()
    first = load_reference(config, stream, tmp_path)
    assert isinstance(first, Reference) and len(first.predictions) == 200
    assert len(list(tmp_path.glob("reference-v2-engines-*.json"))) == 1  # v2: with alerts; a v1 file is not read

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cached reference should have been read")

    monkeypatch.setattr(reference_module, "compute_reference", must_not_run)
    assert load_reference(config, stream, tmp_path) == first
    other = EventStream(EventStream().base[:201])  # another stream: another key, not the cached file
    with pytest.raises(AssertionError):
        load_reference(config, other, tmp_path)
    # Another alert rule: other alerts, so another key.
    stricter = config.model_copy(update={"alert": config.alert.model_copy(update={"consecutive": 4})})
    assert reference_key(stricter, stream) != reference_key(config, stream)


# --- the trial config ------------------------------------------------------------------------


def test_trial_config_renames_topics_and_sets_replication_and_guarantee(tmp_path: Path) -> None:
    path, notes = write_config(tmp_path / "c.toml", "faults-x", guarantee=None, replication=3)
    raw = tomllib.loads(path.read_text())
    assert "processing_guarantee" not in raw["worker"] and notes == []
    assert raw["kafka"]["group_id"] == "faults-x" and raw["kafka"]["replication_factor"] == 3
    assert [p["name"] for p in raw["pipelines"]] == ["engines"]
    pipeline = raw["pipelines"][0]
    assert pipeline["input_topic"] == "faults-x.engines.telemetry"
    assert pipeline["topics"]["predictions"] == "faults-x.engines.predictions"
    assert Path(pipeline["model"]).is_absolute() and Path(pipeline["schema"]).is_absolute()

    path, notes = write_config(tmp_path / "d.toml", "faults-y", guarantee="at_least_once", replication=1)
    raw = tomllib.loads(path.read_text())
    # Written where the worker knows the key; where it does not, left out and said so.
    assert raw["worker"].get("processing_guarantee") == "at_least_once" or (
        "processing_guarantee" not in raw["worker"] and "left out" in notes[0]
    )
    load_config(path)
