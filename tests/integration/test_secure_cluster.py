"""`stream-infer kafka up --secure`: TLS, SASL (PLAIN, SCRAM) and mutual TLS on a real local broker.

One secure node serves the module; the last test stops and restarts it through the CLI.

kcat before librdkafka 2.6.1 (Debian 12 ships 2.0.2) cannot do SCRAM with Kafka 4: it repeats the
client nonce in its final message, which Kafka 4 rejects as invalid credentials (librdkafka#4895).
client.properties and admin.properties therefore use PLAIN (any kcat); the SCRAM kcat test runs
kcat on the newer librdkafka that confluent-kafka bundles.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import confluent_kafka
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from stream_infer.kafka.connection import read_properties
from stream_infer.tools.devkafka import local

CLI = [sys.executable, "-m", "stream_infer.cli"]
needs_kcat = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat (Debian package) not installed")


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def kcat_list(properties: Path, env: dict[str, str] | None = None, wait_s: int = 8) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["kcat", "-F", str(properties), "-L", "-m", str(wait_s)], capture_output=True, text=True, timeout=30, env=env
    )


def sees_topic(client: AdminClient, topic: str, within_s: float = 10) -> bool:
    """Whether the topic shows in the client's metadata within within_s (brokers learn of new
    topics and ACLs through the metadata log, a moment after the request that made them)."""
    deadline = time.monotonic() + within_s
    while topic not in client.list_topics(timeout=10).topics:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture(scope="module")
def scram_kcat_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment in which kcat's librdkafka can do SCRAM with Kafka 4 (2.6.1 or newer)."""
    if shutil.which("kcat") is None:
        pytest.skip("kcat (Debian package) not installed")
    about = subprocess.run(["kcat", "-V"], capture_output=True, text=True).stdout
    version = re.search(r"librdkafka (\d+)\.(\d+)\.(\d+)", about)
    if version and tuple(map(int, version.groups())) >= (2, 6, 1):
        return dict(os.environ)
    bundled = sorted((Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs").glob("librdkafka*.so*"))
    if not bundled:
        pytest.skip("kcat's librdkafka is older than 2.6.1 and confluent-kafka bundles none to use instead")
    lib_dir = tmp_path_factory.mktemp("librdkafka")
    (lib_dir / "librdkafka.so.1").symlink_to(bundled[0])
    return dict(os.environ, LD_LIBRARY_PATH=str(lib_dir))


def admin(path: Path) -> AdminClient:
    return AdminClient({**read_properties(path), "log_level": 0})


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Cluster]:
    state_dir = tmp_path_factory.mktemp("secure") / "k"
    cluster, started = local.up(state_dir, port=0, nodes=1, secure=True)
    assert started
    try:
        yield cluster
    finally:
        local.down(state_dir, wipe=True)


def test_files_are_written_and_private(secure: local.Cluster) -> None:
    state = secure.state_dir
    assert secure.secure and secure.mtls_bootstrap and secure.mtls_bootstrap != secure.bootstrap
    for name in (
        "client.properties",
        "client-scram.properties",
        "admin.properties",
        "client-mtls.properties",
        "credentials.json",
        "tls/ca-key.pem",
        "tls/broker-key.pem",
        "tls/svc-key.pem",
        "node-1/server.properties",
    ):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    client = read_properties(state / "client.properties")
    assert client["bootstrap.servers"] == secure.bootstrap
    assert client["security.protocol"] == "SASL_SSL" and client["sasl.username"] == "svc"
    assert read_properties(state / "client-mtls.properties")["bootstrap.servers"] == secure.mtls_bootstrap
    recorded = local.Cluster.load(state)
    assert recorded is not None and recorded.secure and recorded.mtls_bootstrap == secure.mtls_bootstrap


@needs_kcat
def test_kcat_lists_the_broker_with_client_properties(secure: local.Cluster) -> None:
    for name in ("client.properties", "admin.properties"):
        listing = kcat_list(secure.state_dir / name)
        assert listing.returncode == 0, listing.stderr
        assert " 1 brokers:" in listing.stdout


def test_kcat_lists_the_broker_with_scram(secure: local.Cluster, scram_kcat_env: dict[str, str]) -> None:
    assert read_properties(secure.state_dir / "client-scram.properties")["sasl.mechanisms"] == "SCRAM-SHA-512"
    listing = kcat_list(secure.state_dir / "client-scram.properties", scram_kcat_env)
    assert listing.returncode == 0, listing.stderr
    assert " 1 brokers:" in listing.stdout


@needs_kcat
def test_kcat_lists_the_broker_with_its_client_certificate(secure: local.Cluster) -> None:
    listing = kcat_list(secure.state_dir / "client-mtls.properties")
    assert listing.returncode == 0, listing.stderr
    assert f"at {secure.mtls_bootstrap}" in listing.stdout


@pytest.mark.parametrize("name", ["client.properties", "client-scram.properties"])
def test_wrong_password_is_refused(secure: local.Cluster, scram_kcat_env: dict[str, str], tmp_path: Path, name: str) -> None:
    text = (secure.state_dir / name).read_text()
    password = read_properties(secure.state_dir / name)["sasl.password"]
    bad = tmp_path / "bad.properties"
    bad.write_text(text.replace(f"sasl.password={password}", "sasl.password=not-the-password"))
    listing = kcat_list(bad, scram_kcat_env, wait_s=3)
    assert listing.returncode != 0
    assert "uthentication" in listing.stderr, listing.stderr


def test_plaintext_client_is_refused(secure: local.Cluster) -> None:
    plain = AdminClient({"bootstrap.servers": secure.bootstrap, "log_level": 0})
    with pytest.raises(KafkaException):
        plain.list_topics(timeout=3)


def test_admin_creates_topics_and_svc_sees_them_only_through_an_acl(secure: local.Cluster, unique) -> None:
    state = secure.state_dir
    topic = unique("secure")
    su = admin(state / "admin.properties")
    su.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)
    assert sees_topic(su, topic)

    # svc authenticates every way (the brokers answer), but without an ACL on it sees no topic
    # (it holds only the demo worker's ACLs).
    by_password = admin(state / "client.properties")
    by_scram = admin(state / "client-scram.properties")
    by_certificate = admin(state / "client-mtls.properties")
    for client in (by_password, by_scram, by_certificate):
        metadata = client.list_topics(timeout=10)
        assert len(metadata.brokers) == 1
        assert topic not in metadata.topics

    # One ACL for User:svc: the SASL user and the certificate CN=svc are that same principal.
    acl = AclBinding(
        ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:svc", "*", AclOperation.DESCRIBE, AclPermissionType.ALLOW
    )
    su.create_acls([acl])[acl].result(timeout=30)
    for client in (by_password, by_scram, by_certificate):
        assert sees_topic(client, topic)


def test_cli_status_down_and_restart_reuse_ca_and_passwords(secure: local.Cluster) -> None:
    state = secure.state_dir
    ca = (state / "tls" / "ca.pem").read_bytes()
    credentials = json.loads((state / "credentials.json").read_text())

    status = run_cli("kafka", "status", "--json", "--state-dir", str(state))
    assert status.returncode == 0, status.stdout + status.stderr
    info = json.loads(status.stdout)
    assert info["running"] and info["secure"] and info["mtls_bootstrap"] == secure.mtls_bootstrap

    assert "stopped 1 node(s)" in run_cli("kafka", "down", "--state-dir", str(state)).stdout
    assert run_cli("kafka", "status", "--state-dir", str(state)).returncode == 3

    restart = run_cli("kafka", "up", "--secure", "--port", "0", "--state-dir", str(state))
    assert restart.returncode == 0, restart.stderr
    lines = restart.stdout.strip().splitlines()
    assert "up: 1 node(s) in" in lines[0] and "client.properties" in restart.stdout
    assert lines[-1] == secure.bootstrap, "a restart keeps free ports and prints the bootstrap last"
    assert (state / "tls" / "ca.pem").read_bytes() == ca
    assert json.loads((state / "credentials.json").read_text()) == credentials
    assert len(admin(state / "client.properties").list_topics(timeout=10).brokers) == 1

    plain = run_cli("kafka", "up", "--port", "0", "--state-dir", str(state))
    assert plain.returncode == 1 and "--secure" in plain.stderr
    assert run_cli("kafka", "status", "--state-dir", str(state)).returncode == 0


def test_svc_holds_exactly_the_demo_workers_acls(secure: local.Cluster) -> None:
    from confluent_kafka.admin import AclBindingFilter
    from support import DEMO_CONFIG

    from stream_infer.config import load_config
    from stream_infer.kafka import acls

    su = admin(secure.state_dir / "admin.properties")
    everything = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, "User:svc", None, AclOperation.ANY, AclPermissionType.ANY
    )
    held = su.describe_acls(everything, request_timeout=30).result(timeout=30)
    key = lambda b: (b.restype.name, b.name, b.resource_pattern_type.name, b.operation.name, b.permission_type.name)  # noqa: E731
    expected = acls.bindings(acls.worker_grants(load_config(DEMO_CONFIG)), "User:svc")
    held = [b for b in held if not b.name.startswith("secure-")]  # the ACL the test above added
    assert sorted(map(key, held)) == sorted(map(key, expected))
