"""`stream-infer kafka up|down|status`: a real local cluster, and the errors a newcomer may meet."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from stream_infer.kafka.admin import create_topics
from stream_infer.tools.devkafka.jars import jars_dir
from stream_infer.tools.devkafka.local import pid_alive

CLI = [sys.executable, "-m", "stream_infer.cli"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def recorded_pids(state_dir: Path) -> list[int]:
    return [n["pid"] for n in json.loads((state_dir / "cluster.json").read_text())["nodes"] if n["pid"]]


def test_up_status_down_single_node(tmp_path: Path) -> None:
    state = tmp_path / "k"
    result = run_cli("kafka", "up", "--port", "0", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    bootstrap = result.stdout.strip().splitlines()[-1]
    assert bootstrap.startswith("127.0.0.1:")
    assert "up: 1 node(s) in" in result.stdout
    pids = recorded_pids(state)
    try:
        brokers = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).brokers
        assert len(brokers) == 1

        again = run_cli("kafka", "up", "--port", "0", "--state-dir", str(state))
        assert again.returncode == 0 and "already running" in again.stdout
        assert again.stdout.strip().splitlines()[-1] == bootstrap

        status = run_cli("kafka", "status", "--json", "--state-dir", str(state))
        assert status.returncode == 0
        assert json.loads(status.stdout)["running"] is True
        assert (state / "node-1" / "server.log").stat().st_size > 0, "the broker log goes to the state dir"
    finally:
        down = run_cli("kafka", "down", "--state-dir", str(state))
    assert down.returncode == 0 and "stopped 1 node(s)" in down.stdout
    assert not any(pid_alive(p) for p in pids), "a broker process outlived `kafka down`"
    assert run_cli("kafka", "status", "--state-dir", str(state)).returncode == 3
    assert (state / "node-1" / "data" / "meta.properties").exists(), "down without --wipe keeps data"

    # A restart on the kept data comes back on the same address; --wipe then removes everything.
    restart = run_cli("kafka", "up", "--port", "0", "--state-dir", str(state))
    assert restart.returncode == 0, restart.stderr
    assert restart.stdout.strip().splitlines()[-1] == bootstrap
    assert run_cli("kafka", "down", "--wipe", "--state-dir", str(state)).returncode == 0
    assert not state.exists()


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat (Debian package) not installed")
def test_kcat_sees_the_local_broker(kafka_bootstrap: str) -> None:
    listing = subprocess.run(["kcat", "-b", kafka_bootstrap, "-L", "-m", "10"], capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert " 1 brokers:" in listing.stdout


def test_three_nodes_replicate_and_survive_one_node_loss(tmp_path: Path, unique) -> None:
    state = tmp_path / "k3"
    result = run_cli("kafka", "up", "--nodes", "3", "--port", "0", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    bootstrap = result.stdout.strip().splitlines()[-1]
    pids = recorded_pids(state)
    try:
        assert len(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).brokers) == 3
        topic = unique("replicated")
        create_topics(bootstrap, [topic], partitions=3, replication=3, config={"min.insync.replicas": "2"})
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
        for i in range(300):
            producer.produce(topic, key=b"k%d" % (i % 10), value=b"before-%d" % i)
        assert producer.flush(30) == 0

        os.kill(pids[2], signal.SIGKILL)  # node 3 dies: 2 in-sync replicas remain, acks=all still works
        delivered = []
        for i in range(300):
            producer.produce(
                topic, key=b"k%d" % (i % 10), value=b"after-%d" % i, on_delivery=lambda err, msg: delivered.append(err)
            )
        assert producer.flush(60) == 0
        assert delivered.count(None) == 300, f"delivery errors after losing one node: {set(delivered)}"

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("g3"), "enable.auto.commit": False})
        consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
        got = []
        deadline = time.monotonic() + 60
        while len(got) < 600 and time.monotonic() < deadline:
            got.extend(m for m in consumer.consume(600, timeout=1) if m.error() is None)
        consumer.close()
        assert len(got) == 600
    finally:
        down = run_cli("kafka", "down", "--wipe", "--state-dir", str(state))
    assert down.returncode == 0
    assert not any(pid_alive(p) for p in pids)


# --- errors that say what to do ---------------------------------------------------------------


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("kafka", "up", "--port", str(port), "--state-dir", str(tmp_path / "k"))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "--port 0" in result.stderr


def test_missing_java_is_a_clear_error(tmp_path: Path) -> None:
    env = dict(os.environ, JAVA_HOME=str(tmp_path / "no-jdk"))
    result = run_cli("kafka", "up", "--port", "0", "--state-dir", str(tmp_path / "k"), env=env)
    assert result.returncode == 1
    assert "Java is not installed" in result.stderr and "17" in result.stderr


def test_old_java_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "jdk" / "bin" / "java"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    fake.chmod(0o755)
    env = dict(os.environ, JAVA_HOME=str(tmp_path / "jdk"))
    result = run_cli("kafka", "up", "--port", "0", "--state-dir", str(tmp_path / "k"), env=env)
    assert result.returncode == 1
    assert "Java 11 found" in result.stderr and "17 or newer" in result.stderr


def _path_without_maven(tmp_path: Path) -> str:
    """A PATH with java but without mvn: a folder of symlinks to what the test needs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(shutil.which("java"))
    return str(bin_dir)


def test_missing_maven_is_a_clear_error(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=_path_without_maven(tmp_path), STREAM_INFER_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("JAVA_HOME", None)
    result = run_cli("kafka", "up", "--port", "0", "--state-dir", str(tmp_path / "k"), env=env)
    assert result.returncode == 1
    assert "Maven (mvn) is not installed" in result.stderr


def test_failed_download_is_a_clear_error(tmp_path: Path) -> None:
    bin_dir = Path(_path_without_maven(tmp_path))
    (bin_dir / "mvn").write_text("#!/bin/sh\necho '[ERROR] Could not transfer artifact: network unreachable'\nexit 1\n")
    (bin_dir / "mvn").chmod(0o755)
    env = dict(os.environ, PATH=str(bin_dir), STREAM_INFER_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("JAVA_HOME", None)
    result = run_cli("kafka", "fetch", env=env)
    assert result.returncode == 1
    assert "Maven could not download the Kafka jars" in result.stderr
    assert "network unreachable" in result.stderr
    assert not any((tmp_path / "cache").rglob(".complete")), "a failed download must not look cached"


def test_broker_that_cannot_start_shows_its_log(tmp_path: Path) -> None:
    state = tmp_path / "k"
    assert run_cli("kafka", "up", "--port", "0", "--state-dir", str(state)).returncode == 0
    assert run_cli("kafka", "down", "--state-dir", str(state)).returncode == 0
    # Corrupt the formatted storage: the broker refuses to start, and `up` must say why.
    (state / "node-1" / "data" / "meta.properties").write_text("version=1\ncluster.id=\nnode.id=99\n")
    result = run_cli("kafka", "up", "--port", "0", "--timeout", "60", "--state-dir", str(state))
    assert result.returncode == 1
    assert "exited during start-up" in result.stderr or "did not answer" in result.stderr
    assert "server.log" in result.stderr
    assert run_cli("kafka", "status", "--state-dir", str(state)).returncode == 3


def test_jars_are_cached_after_the_first_fetch() -> None:
    # `make test` fetched them already; a second fetch must be a no-op that needs no Maven.
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    result = run_cli("kafka", "fetch", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(jars_dir())
