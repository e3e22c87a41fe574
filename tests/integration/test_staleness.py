"""The staleness policy on the real broker: old events are skipped (or sampled), every skipped event
is counted and summarised on `<pipeline>.skipped`, fresh ones are all predicted, and the group
commits past all of them (nothing dropped silently, nothing stuck)."""

from __future__ import annotations

import time
from itertools import islice
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families
from support import create_inputs, write_config

from stream_infer.kafka.admin import group_lag
from stream_infer.tools.reader import TopicReader
from stream_infer.tools.replay import dataset_events
from stream_infer.tools.workerproc import WorkerProcess

OLD, FRESH = 120, 200
AGE_MS = 10 * 60 * 1000  # the old events are 10 minutes old; the bound is 1 minute


def _produce(bootstrap: str, topic: str) -> list[bool]:
    """OLD + FRESH machine readings, old ones (every third, until OLD are sent) stamped 10 minutes
    ago; returns, in send order, whether each was old."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    now = int(time.time() * 1000)
    kinds, old_left = [], OLD
    for i, (key, value) in enumerate(islice(dataset_events("ai4i"), OLD + FRESH)):
        old = old_left > 0 and (i % 3 == 0 or OLD + FRESH - i <= old_left)
        old_left -= old
        # One key per event keeps every event on its own; partition by key as usual.
        producer.produce(topic, key=key, value=value, timestamp=now - AGE_MS if old else now)
        kinds.append(old)
    assert producer.flush(30) == 0 and sum(kinds) == OLD
    return kinds


def _summaries(reader: TopicReader, pipeline) -> list[dict]:
    """This test's summaries: `<pipeline>.skipped` is shared by every test's machines pipeline."""
    return [v for v in (r.json() for r in reader.records[pipeline.skipped_topic]) if v["topic"] == pipeline.input_topic]


@pytest.mark.parametrize("policy", ["skip", "sample"])
def test_stale_events_are_skipped_counted_and_summarised(kafka_bootstrap: str, unique, tmp_path: Path, policy: str) -> None:
    prefix = unique(f"stale-{policy}")
    staleness = {"max_event_age_ms": 60000, "policy": policy, "sample_every": 4}
    cfg = write_config(tmp_path, prefix, pipelines={"machines": {"staleness": staleness}})
    machines = cfg.pipeline("machines")
    assert machines.staleness.max_event_age_ms == 60000 and cfg.pipeline("engines").staleness.max_event_age_ms == 0
    create_inputs(kafka_bootstrap, cfg)
    worker = WorkerProcess(cfg.path, kafka_bootstrap, tmp_path / "w").start()
    try:
        worker.wait_ready()
        kinds = _produce(kafka_bootstrap, machines.input_topic)
        kept_stale = (OLD + 3) // 4 if policy == "sample" else 0  # 1 in 4, the first of each four
        expected_predictions = FRESH + kept_stale
        reader = TopicReader(kafka_bootstrap, [machines.topics.predictions, machines.skipped_topic])
        try:
            done = reader.until(
                lambda: (
                    len(reader.records[machines.topics.predictions]) >= expected_predictions
                    and sum(s["count"] for s in _summaries(reader, machines)) >= OLD - kept_stale
                ),
                60,
            )
            time.sleep(1.0)  # anything beyond the expected would show up now
            reader.poll(0.5)
            predictions = [r.json() for r in reader.records[machines.topics.predictions]]
            summaries = _summaries(reader, machines)
        finally:
            reader.close()
        assert done, worker.log_tail()
        metrics = worker.metrics_text()
        deadline = time.monotonic() + 15
        while any(p.lag for p in group_lag(kafka_bootstrap, prefix, [machines.input_topic])) and time.monotonic() < deadline:
            time.sleep(0.5)
        lags = group_lag(kafka_bootstrap, prefix, [machines.input_topic])
    finally:
        worker.stop()

    assert len(predictions) == expected_predictions
    assert sum(s["count"] for s in summaries) == OLD - kept_stale
    for s in summaries:
        assert s["pipeline"] == "machines" and s["reason"] == "stale" and s["policy"] == policy
        assert s["max_event_age_ms"] == 60000 and s["topic"] == machines.input_topic
        assert sum(p["count"] for p in s["partitions"]) == s["count"]
        assert all(p["first_offset"] <= p["last_offset"] for p in s["partitions"])
        assert s["newest_timestamp_ms"] <= s["skipped_at_ms"] - 60000
    skipped_metric = {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "stream_infer_events_skipped_total" and sample.labels.get("pipeline") == "machines"
    }
    assert skipped_metric == {"stale": OLD - kept_stale}
    # Every input offset is committed: skipped events are done, not stuck.
    assert sum(p.log_end for p in lags) == OLD + FRESH and all(p.lag == 0 for p in lags)
    assert len(kinds) == OLD + FRESH
