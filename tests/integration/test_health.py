"""/readyz and /healthz tell the truth: ready only as a restored member of the group (an idle
member says so), unhealthy when there is lag and no progress for stall_timeout_s, and healthy
again once progress resumes."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from support import close_runner, feed

from stream_infer.config import load_config
from stream_infer.kafka.admin import create_topics
from stream_infer.runtime.runner import PipelineRunner
from stream_infer.stages.pipeline import Pipeline
from stream_infer.tools.bench.harness import engines_config
from stream_infer.tools.devkafka import local
from stream_infer.tools.reader import TopicReader
from stream_infer.tools.workerproc import WorkerProcess


def _runner(tmp_path: Path) -> PipelineRunner:
    config = load_config(engines_config(tmp_path / "c.toml", group="g", input_topic="in", output_prefix="out"))
    return PipelineRunner(Pipeline(config.pipelines[0], producer=None, changelog=None), config, config.kafka.connection())


def test_readiness_names_each_state(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    cp, pipeline = runner.checkpointing, runner.pipeline
    try:
        assert runner.readiness() == (
            False,
            {"ready": False, "partitions": [], "reason": "not a member of the consumer group (joining or rebalancing)"},
        )
        runner.rebalance.member = True
        pipeline.partitions.owned = {0: 1, 3: 2}
        pipeline.partitions.loaded = {0}
        assert runner.readiness()[1] == {"ready": False, "partitions": [0, 3], "reason": "restoring state of partitions [3]"}
        pipeline.partitions.loaded = {0, 3}
        assert runner.readiness() == (True, {"ready": True, "partitions": [0, 3], "reason": "processing"})
        cp.rewinding = True
        assert runner.readiness()[1]["reason"] == "rewinding to the last committed checkpoint"
        cp.rewinding = False
        pipeline.partitions.owned, pipeline.partitions.loaded = {}, set()
        assert runner.readiness() == (
            True,
            {"ready": True, "partitions": [], "reason": "member with no partition assigned (more workers than partitions)"},
        )
    finally:
        close_runner(runner)


def test_health_turns_after_stall_timeout_with_lag_and_no_progress(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    monitor = runner.monitor
    try:
        now = time.monotonic()
        monitor.lag, monitor.sampled_at, monitor.caught_up_at = 0, now, now - 500
        runner.checkpointing.last_commit = now - 500
        assert runner.health(60)[0]  # no lag: nothing to make progress on
        monitor.lag = 120
        healthy, body = runner.health(60)
        assert not healthy and body["lag"] == 120 and body["stalled_s"] >= 500 and "no checkpoint progress" in body["reason"]
        runner.checkpointing.last_commit = time.monotonic()  # a checkpoint moved the offsets
        assert runner.health(60)[0]
        monitor.lag, monitor.sampled_at = 0, now - 500  # no lag, but the last sample is long overdue
        assert not runner.health(60)[0]
    finally:
        close_runner(runner)


def _get(worker: WorkerProcess, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(worker.url(path), timeout=3) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.3)
    return False


def test_an_idle_member_is_ready_and_says_so(kafka_bootstrap: str, unique, tmp_path: Path) -> None:
    group = unique("health")
    topic = f"{group}.in"
    create_topics(kafka_bootstrap, [topic], partitions=1)
    path = engines_config(tmp_path / "c.toml", group=group, input_topic=topic, output_prefix=group)
    workers = [WorkerProcess(path, kafka_bootstrap, tmp_path / f"w{i}").start() for i in range(2)]
    try:
        for worker in workers:
            worker.wait_ready()
        bodies: dict = {}
        assert _until(
            lambda: (
                all((bodies.__setitem__(w, _get(w, "/readyz")) or bodies[w][0] == 200) for w in workers)
                and sorted(len(b[1]["pipelines"]["engines"]["partitions"]) for b in bodies.values()) == [0, 1]
            ),
            30,
        ), bodies
        idle = next(w for w in workers if not bodies[w][1]["pipelines"]["engines"]["partitions"])
        assert (
            bodies[idle][1]["pipelines"]["engines"]["reason"]
            == "member with no partition assigned (more workers than partitions)"
        )
        assert all(_get(w, "/healthz")[0] == 200 for w in workers)
    finally:
        for worker in workers:
            assert worker.stop() == 0, worker.log_tail()


def test_a_stalled_worker_is_unhealthy_until_it_progresses_again(unique, tmp_path: Path) -> None:
    """A broker that stops answering (SIGSTOP, on a cluster of the test's own) while an
    exactly-once worker holds processed events it cannot commit: lag without progress, so
    /healthz turns 503 after stall_timeout_s and says why; once the broker answers again the
    checkpoint commits and /healthz is 200."""
    cluster, _ = local.up(tmp_path / "kafka", port=0)
    bootstrap, broker = cluster.bootstrap, cluster.nodes[0].pid
    assert broker is not None
    worker = None
    try:
        group = unique("stall")
        topic = f"{group}.in"
        create_topics(bootstrap, [topic], partitions=1)
        path = engines_config(
            tmp_path / "c.toml",
            group=group,
            input_topic=topic,
            output_prefix=group,
            guarantee="exactly_once",
            worker={"stall_timeout_s": 3, "checkpoint_interval_ms": 4000},
        )
        worker = WorkerProcess(path, bootstrap, tmp_path / "w").start()
        worker.wait_ready()
        time.sleep(5)  # past the first checkpoint: the next one is up to 4 s away
        feed(bootstrap, topic, "cmapss-test", stop=200)
        consumed = 'stream_infer_events_consumed_total{pipeline="engines"} 200.0'
        assert _until(lambda: consumed in worker.metrics_text(), 10)
        os.kill(broker, signal.SIGSTOP)  # the worker has processed them; its commit is seconds away
        try:
            status: list = []
            assert _until(lambda: status.__setitem__(slice(None), [_get(worker, "/healthz")]) or status[0][0] == 503, 30), status
            engines = status[0][1]["pipelines"]["engines"]
            assert engines["healthy"] is False and engines["lag"] > 0 and "no checkpoint progress" in engines["reason"]
        finally:
            os.kill(broker, signal.SIGCONT)
        assert _until(lambda: _get(worker, "/healthz")[0] == 200, 60), worker.log_tail()
        reader = TopicReader(bootstrap, [f"{group}.predictions"])
        try:
            assert reader.until(
                lambda: len({r.json()["source"]["offset"] for r in reader.records[f"{group}.predictions"]}) >= 200, 60
            )
        finally:
            reader.close()
    finally:
        if worker is not None:
            worker.stop()
        local.down(tmp_path / "kafka", wipe=True)
