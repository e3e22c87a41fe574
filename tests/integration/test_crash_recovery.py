"""Kill -9 mid-stream and restart: no input without a prediction, and the same predictions as an
uninterrupted run (the per-engine windows came back intact from the state changelog)."""

from __future__ import annotations

from pathlib import Path

from support import create_inputs, feed, write_config

from stream_infer.kafka.admin import group_lag
from stream_infer.tools.reader import TopicReader
from stream_infer.tools.workerproc import WorkerProcess

TOTAL = 13_096  # all of C-MAPSS test_FD001


def _predictions(reader: TopicReader, topic: str) -> dict[tuple[int, int], list[float]]:
    out: dict[tuple[int, int], list[float]] = {}
    for r in reader.records[topic]:
        v = r.json()
        out.setdefault((v["source"]["partition"], v["source"]["offset"]), []).append(v["outputs"]["rul"])
    return out


def _run(bootstrap: str, tmp_path: Path, prefix: str, *, kill_after: int | None):
    cfg = write_config(tmp_path, prefix)
    create_inputs(bootstrap, cfg, partitions=3)
    engines = cfg.pipeline("engines")
    assert feed(bootstrap, engines.input_topic, "cmapss-test") == TOTAL  # a backlog: the worker drains it
    worker = WorkerProcess(cfg.path, bootstrap, tmp_path / prefix).start()
    worker.wait_ready()
    reader = TopicReader(bootstrap, [engines.topics.predictions])
    restarts = 0
    try:
        if kill_after is not None:
            assert reader.until(lambda: len(reader.records[engines.topics.predictions]) >= kill_after, 120), worker.log_tail()
            worker.kill()
            killed_at = len(_predictions(reader, engines.topics.predictions))
            assert killed_at < TOTAL, "the worker finished before the kill: not mid-stream"
            worker = WorkerProcess(cfg.path, bootstrap, tmp_path / prefix).start()
            worker.wait_ready()
            restarts = 1
        done = reader.until(lambda: len(_predictions(reader, engines.topics.predictions)) >= TOTAL, 180)
        assert done, f"{len(_predictions(reader, engines.topics.predictions))} of {TOTAL} inputs predicted\n{worker.log_tail()}"
        while reader.poll(1.0):
            pass
    finally:
        assert worker.stop() == 0, worker.log_tail()
        reader.close()
    lag = group_lag(bootstrap, cfg.config.kafka.group_id, [engines.input_topic])
    assert all(p.lag == 0 for p in lag), f"offsets not committed after a clean stop: {lag}"
    return _predictions(reader, engines.topics.predictions), restarts


def test_kill_9_then_restart_loses_nothing_and_restores_windows(kafka_bootstrap: str, unique, tmp_path: Path) -> None:
    reference, _ = _run(kafka_bootstrap, tmp_path, unique("ref"), kill_after=None)
    crashed, restarts = _run(kafka_bootstrap, tmp_path, unique("crash"), kill_after=TOTAL // 3)
    assert restarts == 1
    assert len(reference) == TOTAL and all(len(v) == 1 for v in reference.values())
    # No loss: every input offset has at least one prediction after the crash.
    assert set(crashed) == set(reference)
    # Same input -> same partition and offset in both runs; every prediction (duplicates included)
    # equals the uninterrupted one, which a window rebuilt from scratch or replayed twice would not.
    mismatched = {k: (v, reference[k][0]) for k, v in crashed.items() if any(x != reference[k][0] for x in v)}
    assert not mismatched, f"{len(mismatched)} predictions differ, e.g. {list(mismatched.items())[:3]}"
