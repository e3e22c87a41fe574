"""Shared fixtures: one real Kafka broker per test session, and unique names per test.

Where the broker comes from, in order:
1. $KAFKA_BOOTSTRAP_SERVERS, when set: an existing cluster (tests create unique topics on it);
2. testcontainers, when a Docker daemon answers a ping (the `docker` client alone is not enough);
3. the project's own local Kafka (`stream_infer.tools.devkafka.local`) on free ports in a temp state dir,
   started once per session and stopped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from stream_infer.tools.devkafka import local

# A pinned image: `latest` would change the broker under the tests without a commit.
KAFKA_IMAGE = "apache/kafka:4.1.1"


def _docker_daemon_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:  # no socket, no permission, no daemon: all mean "not available"
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker for the whole session."""
    if env := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield env
        return
    if _docker_daemon_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    state_dir = tmp_path_factory.mktemp("kafka-state")
    cluster, _ = local.up(state_dir, port=0, nodes=1)
    try:
        yield cluster.bootstrap
    finally:
        local.down(state_dir, wipe=True)


@pytest.fixture
def unique() -> UniqueNames:
    """Call with a prefix to get a topic or group name no other test (or earlier run) uses."""
    return UniqueNames()


class UniqueNames:
    def __init__(self) -> None:
        self.token = uuid.uuid4().hex[:8]

    def __call__(self, prefix: str) -> str:
        return f"{prefix}-{self.token}"
