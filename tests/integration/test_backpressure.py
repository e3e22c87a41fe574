"""A burst on the real broker: the controller goes to throughput mode with growing batches, pauses
partitions at the in-flight bound, and comes back to latency mode once drained; nothing is lost.

The worker's own /metrics are the observation (stream_infer.tools.bench.burst, the bench's burst phase).
Its config makes the controller's range visible on a small machine: a cap of 1024 events, a latency
budget that keeps latency-mode batches small, and an in-flight bound a burst must hit.
"""

from __future__ import annotations

from pathlib import Path

from stream_infer.kafka.admin import create_topics, group_lag
from stream_infer.tools.bench.burst import run_burst
from stream_infer.tools.bench.harness import engine_events, engines_config, paced, preload
from stream_infer.tools.reader import TopicReader
from stream_infer.tools.workerproc import WorkerProcess

BURST = 60_000
TRICKLE = 30


def test_burst_moves_controller_and_pauses_then_recovers(kafka_bootstrap: str, tmp_path: Path, unique) -> None:
    topic, group = unique("burst"), unique("burst-group")
    create_topics(kafka_bootstrap, [topic], partitions=6)
    config = engines_config(
        tmp_path / "burst.toml",
        group=group,
        input_topic=topic,
        output_prefix=group,
        batching={"max_batch_size": 1024, "latency_budget_ms": 0.05, "max_in_flight_events": 4000},
    )
    worker = WorkerProcess(config, kafka_bootstrap, tmp_path / "worker", log_level="info").start()
    try:
        worker.wait_ready()
        trickle = engine_events(TRICKLE)
        result = run_burst(
            worker,
            "engines",
            trickle=lambda: paced(kafka_bootstrap, topic, trickle, rate=20),
            produce_burst=lambda: preload(kafka_bootstrap, topic, BURST),
            expected_predictions=TRICKLE + BURST,
            drain_timeout=240,
        )
        log = worker.log_path.read_text()
    finally:
        worker.stop()

    samples = result["samples"]
    before = [s for s in samples if s["t"] < 0]
    during = [s for s in samples if s["t"] >= 0]
    assert before and all(s["mode"] == "latency" for s in before)
    latency_size = before[-1]["controller_batch_size"]
    assert 1 <= latency_size < 1024

    # Throughput mode at the cap from its first tick.
    modes = [s["mode"] for s in during]
    assert "throughput" in modes, (
        f"never left latency mode: {during} {result['scrape_errors']} ended {result['ended_at']} produce {result['produce_seconds']}"
    )
    sizes = [s["controller_batch_size"] for s in during if s["mode"] == "throughput"]
    assert set(sizes) == {1024}, sizes
    assert result["peak_mean_batch_size"] > latency_size  # the processed batches grew too, not just the setting

    # Paused at the in-flight bound, resumed after.
    assert result["pauses"] >= 1 and "partitions paused" in log and "partitions resumed" in log
    assert log.count("partitions paused") == log.count("partitions resumed")

    # Back to latency mode once drained, with nothing paused and no lag.
    last = during[-1]
    assert last["mode"] == "latency" and last["paused_partitions"] == 0 and last["lag_messages"] == 0
    first_throughput = modes.index("throughput")
    assert "latency" in modes[first_throughput:], "did not return to latency mode"

    # Nothing lost: every input offset has its prediction, and the group committed everything.
    reader = TopicReader(kafka_bootstrap, [f"{group}.predictions"])
    try:
        total = TRICKLE + BURST
        reader.until(lambda: len(reader.records[f"{group}.predictions"]) >= total, 60)
        sources = {
            (r.json()["source"]["partition"], r.json()["source"]["offset"]) for r in reader.records[f"{group}.predictions"]
        }
    finally:
        reader.close()
    assert len(sources) == total
    lags = group_lag(kafka_bootstrap, group, [topic])
    assert sum(p.log_end for p in lags) == total and all(p.lag == 0 for p in lags)
