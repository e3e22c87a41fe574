"""Start-up against a real broker: a replication factor the cluster cannot meet is one clear error,
topics the worker creates require two in-sync copies where there can be two, and a normal start
and stop log no ERROR (Faust runs without Kafka clients of its own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource

from stream_infer.config import KafkaConfig
from stream_infer.kafka.admin import admin_client, create_topics
from stream_infer.tools.bench.harness import engines_config
from stream_infer.tools.workerproc import WorkerProcess


@pytest.mark.parametrize(
    ("replication", "explicit", "expected"), [(1, None, 1), (2, None, 2), (3, None, 2), (3, 3, 3), (3, 1, 1)]
)
def test_created_topics_need_two_in_sync_copies_where_there_can_be_two(
    replication: int, explicit: int | None, expected: int
) -> None:
    kafka = KafkaConfig(replication_factor=replication, min_insync_replicas=explicit)
    assert kafka.min_insync_replicas_for_created_topics == expected


def test_min_insync_above_the_replication_factor_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="min_insync_replicas"):
        KafkaConfig(replication_factor=2, min_insync_replicas=3)


def _config(tmp_path: Path, group: str, topic: str, replication: int = 1) -> Path:
    return engines_config(
        tmp_path / f"{group}.toml", group=group, input_topic=topic, output_prefix=group, replication=replication
    )


def _check(path: Path, bootstrap: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream_infer.cli", "worker", "-c", str(path), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
    )


def test_a_replication_factor_larger_than_the_cluster_stops_start_up(kafka_bootstrap: str, unique, tmp_path: Path) -> None:
    group = unique("rf")
    create_topics(kafka_bootstrap, [f"{group}.in"], partitions=1)
    brokers = len(admin_client(kafka_bootstrap).list_topics(timeout=10).brokers)
    proc = _check(_config(tmp_path, group, f"{group}.in", replication=brokers + 2), kafka_bootstrap)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(
        f"error: replication factor {brokers + 2} but the cluster at {kafka_bootstrap} has "
        f"{brokers} live broker(s), so {group}.predictions"
    ), proc.stderr
    assert lines[-1].endswith(f"set kafka.replication_factor to at most {brokers}, or start the missing brokers"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_worker_whose_topics_exist_starts_with_fewer_live_brokers_than_replicas(
    kafka_bootstrap: str, unique, tmp_path: Path
) -> None:
    """A restart while a broker is down (routine): nothing needs creating, so nothing is refused."""
    group = unique("rf-restart")
    create_topics(kafka_bootstrap, [f"{group}.in"], partitions=1)
    brokers = len(admin_client(kafka_bootstrap).list_topics(timeout=10).brokers)
    first = _check(_config(tmp_path, group, f"{group}.in"), kafka_bootstrap)  # creates its topics
    assert first.returncode == 0, first.stderr
    again = _check(_config(tmp_path, group, f"{group}.in", replication=brokers + 2), kafka_bootstrap)
    assert again.returncode == 0, again.stderr


def test_a_normal_start_logs_no_error_and_created_topics_carry_min_insync(kafka_bootstrap: str, unique, tmp_path: Path) -> None:
    group = unique("clean")
    topic = f"{group}.in"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    worker = WorkerProcess(_config(tmp_path, group, topic), kafka_bootstrap, tmp_path / "w", log_level="info").start()
    try:
        worker.wait_ready()
    finally:
        assert worker.stop() == 0, worker.log_tail()
    log = worker.log_path.read_text(errors="replace")
    errors = [line for line in log.splitlines() if " error " in line or "ERROR" in line or "Traceback" in line]
    assert errors == [], "\n".join(errors)
    assert "partitions assigned" in log and "partitions revoked" in log  # it did join and hand over
    admin = admin_client(kafka_bootstrap)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in (f"{group}.predictions", f"{group}-engines-state")]
    for resource, future in admin.describe_configs(resources).items():
        configs = future.result(timeout=15)
        assert configs["min.insync.replicas"].value == "1", resource  # min(2, replication_factor = 1)
