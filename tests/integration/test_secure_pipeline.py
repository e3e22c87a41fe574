"""The worker on a secured cluster (`kafka up --secure`: SASL_SSL with SCRAM-SHA-512, TLS from
its own CA, an authorizer that denies what no ACL allows): a service principal holding exactly
the ACLs `stream-infer acls` prints runs the pipelines under both guarantees and `stream-infer
lag` reads its group; each way the cluster can refuse it ends start-up within seconds with one
line naming the cause (exit 2); and no secret shows up in any output along the way."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from cryptography.hazmat.primitives import serialization
from support import create_inputs, feed, output_topics, write_config

from stream_infer.config import load_config
from stream_infer.kafka import acls
from stream_infer.kafka.acls import Grant
from stream_infer.kafka.connection import read_properties, resolve
from stream_infer.kafka.names import transactional_id_prefix
from stream_infer.tools.devkafka import local, local_security
from stream_infer.tools.reader import TopicReader
from stream_infer.tools.workerproc import WorkerProcess

N_ENGINES = 600
N_MACHINES = 400
LIMIT_S = 15.0  # a refused client is told why within this long


class Outputs:
    """Every stdout/stderr/log text the tests saw, checked for secrets at the end."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, text: str) -> str:
        self.texts.append(text)
        return text


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    state = tmp_path_factory.mktemp("kafka-secure")
    cluster, _ = local.up(state, port=0, nodes=1, secure=True)
    outputs = Outputs()
    client, admin = read_properties(state / "client.properties"), read_properties(state / "admin.properties")
    try:
        # scram: svc with SCRAM-SHA-512, what the workers use; client: svc with PLAIN (kcat's file).
        yield {
            "state": state,
            "cluster": cluster,
            "client": state / "client.properties",
            "admin": state / "admin.properties",
            "scram": state / "client-scram.properties",
            "secrets": {client["sasl.password"], admin["sasl.password"]},
            "outputs": outputs,
        }
    finally:
        local.down(state, wipe=True)
    leaked = [text for text in outputs.texts for secret in (client["sasl.password"], admin["sasl.password"]) if secret in text]
    assert not leaked, f"a password appeared in {len(leaked)} output(s)"


def _cli(secure: dict, *args: str, env: dict | None = None, timeout: float = 60) -> tuple[int, str, float]:
    """Run `stream-infer ARGS`; (exit status, stdout+stderr, seconds). Output is kept for the secret check."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stream_infer.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    text = secure["outputs"].add(proc.stdout + proc.stderr)
    return proc.returncode, text, time.monotonic() - started


def _variant(secure: dict, tmp_path: Path, name: str, **changes: str) -> Path:
    """client-scram.properties with some settings changed (a wrong password, another CA, ...)."""
    settings = read_properties(secure["scram"]) | changes
    path = tmp_path / name
    path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return path


def _check_worker(secure: dict, config: Path, properties: Path) -> tuple[int, str, float]:
    """`worker --check` (connects, authenticates, checks ACLs and topics) with these settings;
    the config names 127.0.0.1:9092, so the cluster's address comes from the environment."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=secure["cluster"].bootstrap)
    return _cli(secure, "worker", "-c", str(config), "--check", "--kafka-properties", str(properties), env=env)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_principal_with_exactly_the_printed_acls_runs_the_pipelines(
    secure: dict, guarantee: str, unique, tmp_path: Path
) -> None:
    admin = resolve(properties_file=secure["admin"])
    cfg = write_config(tmp_path, unique(f"sec-{guarantee[:4]}"), worker={"processing_guarantee": guarantee})
    code, out, _ = _cli(
        secure, "acls", "-c", str(cfg.path), "-p", "User:svc", "--apply", "--kafka-properties", str(secure["admin"])
    )
    assert code == 0, out
    create_inputs(admin, cfg)
    engines, machines = cfg.pipeline("engines"), cfg.pipeline("machines")
    sent = {
        "engines": feed(admin, engines.input_topic, "cmapss-train", stop=N_ENGINES),
        "machines": feed(admin, machines.input_topic, "ai4i", stop=N_MACHINES),
    }
    worker = WorkerProcess(
        cfg.path, admin.bootstrap, tmp_path / "w", log_level="info", env={"STREAM_INFER_KAFKA_PROPERTIES": str(secure["scram"])}
    ).start()
    reader = None
    try:
        worker.wait_ready()
        secure["outputs"].add(worker.metrics_text())
        with urllib.request.urlopen(worker.url("/readyz"), timeout=5) as resp:
            secure["outputs"].add(resp.read().decode())
        reader = TopicReader(admin, output_topics(cfg))

        def accounted(p) -> int:
            return len(reader.records[p.topics.predictions]) + len(reader.records[p.topics.dead_letters])

        done = reader.until(lambda: accounted(engines) >= sent["engines"] and accounted(machines) >= sent["machines"], 120)
        assert done, f"{accounted(engines)}/{sent['engines']}, {accounted(machines)}/{sent['machines']}\n{worker.log_tail()}"
        # The group's committed offsets, read with the service principal's own settings.
        deadline = time.monotonic() + 30
        while True:
            code, out, _ = _cli(
                secure, "lag", "-g", cfg.prefix, "--samples", "1", "--json", "--kafka-properties", str(secure["client"])
            )
            if code == 0 and '"lag":0' in out.replace(" ", "") or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert code == 0 and engines.input_topic in out, out
    finally:
        assert worker.stop() == 0, worker.log_tail()
        secure["outputs"].add(worker.log_path.read_text(errors="replace"))
        if reader is not None:
            reader.close()
    for p in (engines, machines):
        sources = {(r.json()["source"]["partition"], r.json()["source"]["offset"]) for r in reader.records[p.topics.predictions]}
        dead = {
            (int(r.header("x-source-partition")), int(r.header("x-source-offset"))) for r in reader.records[p.topics.dead_letters]
        }
        assert len(sources | dead) == sent[p.name]
        if guarantee == "exactly_once":
            assert len(reader.records[p.topics.predictions]) + len(reader.records[p.topics.dead_letters]) == sent[p.name]


def _one_error_line(code: int, out: str, seconds: float) -> str:
    lines = [line for line in out.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in out, out
    assert seconds < LIMIT_S + 5, f"{seconds:.1f} s: {out}"  # + the interpreter's and the model's start
    return lines[0]


@pytest.fixture(scope="module")
def granted_config(secure: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo-shaped config whose ACLs svc holds (inputs exist), for the refusal cases."""
    tmp = tmp_path_factory.mktemp("refusals")
    cfg = write_config(tmp, "refusals")
    code, out, _ = _cli(
        secure, "acls", "-c", str(cfg.path), "-p", "User:svc", "--apply", "--kafka-properties", str(secure["admin"])
    )
    assert code == 0, out
    create_inputs(resolve(properties_file=secure["admin"]), cfg)
    code, out, _ = _check_worker(secure, cfg.path, secure["scram"])
    assert code == 0, out
    return cfg.path


def _other_ca(tmp_path: Path) -> Path:
    """A CA that signed nothing the broker holds."""
    _, cert = local_security.new_ca("some other CA", datetime.datetime.now(datetime.UTC))
    path = tmp_path / "other-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_wrong_password_is_named_with_user_broker_and_mechanism(secure: dict, granted_config: Path, tmp_path: Path) -> None:
    line = _one_error_line(
        *_check_worker(secure, granted_config, _variant(secure, tmp_path, "wrong.properties", **{"sasl.password": "not-it"}))
    )
    bootstrap = secure["cluster"].bootstrap
    assert re.match(
        rf"error: SASL authentication failed for user 'svc' at {re.escape(bootstrap)} \(SCRAM-SHA-512\): invalid credentials",
        line,
    ), line


def test_an_unknown_user_is_refused_the_same_way(secure: dict, granted_config: Path, tmp_path: Path) -> None:
    line = _one_error_line(
        *_check_worker(secure, granted_config, _variant(secure, tmp_path, "nobody.properties", **{"sasl.username": "nobody"}))
    )
    assert "SASL authentication failed for user 'nobody'" in line and "invalid credentials" in line, line


def test_an_untrusted_ca_is_named(secure: dict, granted_config: Path, tmp_path: Path) -> None:
    properties = _variant(secure, tmp_path, "ca.properties", **{"ssl.ca.location": str(_other_ca(tmp_path))})
    line = _one_error_line(*_check_worker(secure, granted_config, properties))
    assert "TLS handshake with" in line and "certificate is not trusted" in line and "ssl.ca.location" in line, line


def test_a_hostname_the_certificate_does_not_name_is_refused(secure: dict, granted_config: Path, tmp_path: Path) -> None:
    # 127.1 reaches 127.0.0.1, but the broker's certificate names only 127.0.0.1 and localhost.
    port = secure["cluster"].bootstrap.rsplit(":", 1)[1]
    properties = _variant(secure, tmp_path, "host.properties", **{"bootstrap.servers": f"127.1:{port}"})
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    code, out, seconds = _cli(secure, "lag", "-g", "nobody", "--samples", "1", "--kafka-properties", str(properties), env=env)
    line = _one_error_line(code, out, seconds)
    assert "TLS handshake with 127.1:" in line and "does not name '127.1'" in line, line


def test_a_missing_acl_names_the_topic_or_group(secure: dict, granted_config: Path) -> None:
    config = load_config(granted_config)
    engines = next(p for p in config.pipelines if p.name == "engines")
    group = config.kafka.group_id
    for grant, expect in (
        (Grant("topic", engines.input_topic, "literal", ("READ",), ""), f"read topic '{engines.input_topic}'"),
        (Grant("topic", engines.topics.predictions, "literal", ("WRITE",), ""), f"write topic '{engines.topics.predictions}'"),
        (Grant("group", group, "literal", ("READ",), ""), f"consumer group '{group}'"),
        (Grant("transactional_id", transactional_id_prefix(group, "engines"), "prefixed", ("WRITE",), ""), "transactional id"),
    ):
        _change_acl(secure, "delete", grant)
        try:
            line = _one_error_line(*_check_worker(secure, granted_config, secure["scram"]))
            assert expect in line and "not authorized" in line and "stream-infer acls" in line, line
        finally:
            _change_acl(secure, "apply", grant)
    assert _check_worker(secure, granted_config, secure["scram"])[0] == 0


def _change_acl(secure: dict, action: str, grant: Grant) -> None:
    """Create ("apply") or delete one grant's ALLOW ACLs for User:svc with the admin's credentials."""
    client = AdminClient(resolve(properties_file=secure["admin"]).client_config())
    getattr(acls, action)(client, acls.bindings([grant], "User:svc"))
    time.sleep(1)  # ACL changes reach the authorizer through the metadata log
