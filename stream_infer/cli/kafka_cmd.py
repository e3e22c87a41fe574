"""`stream-infer kafka up|down|status|fetch`: a local Apache Kafka for development and tests."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from stream_infer.tools.devkafka import jars, local
from stream_infer.tools.devkafka.jars import KafkaSetupError

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where config, data, logs and PIDs live. Default: $STREAM_INFER_STATE_DIR or $XDG_STATE_HOME/stream-infer/kafka.",
)


def _state_dir(value: Path | None) -> Path:
    return value if value is not None else local.default_state_dir()


def _fail(err: Exception) -> None:
    click.echo(f"error: {err}", err=True)
    sys.exit(1)


@click.group()
def kafka() -> None:
    """Run a local Apache Kafka (KRaft, no ZooKeeper) from jars that Maven fetches once."""


@kafka.command()
@click.option(
    "--port", type=int, default=local.DEFAULT_PORT, help="Client port of node 1 (node i gets port+i-1). 0 picks free ports."
)
@click.option(
    "--nodes",
    type=click.IntRange(1, 9),
    default=1,
    help="Number of combined broker+controller nodes; 3 allows replication factor 3.",
)
@click.option(
    "--timeout", type=float, default=local.READY_TIMEOUT_S, help="Seconds to wait for the cluster to answer before giving up."
)
@click.option(
    "--secure",
    is_flag=True,
    help="TLS (a CA made in the state dir), SASL users admin and svc (SCRAM-SHA-512/256, PLAIN), a "
    "mutual-TLS listener and an authorizer, svc holding the demo worker's ACLs; client settings are "
    "written to <state-dir>/client.properties, client-scram.properties, admin.properties and "
    "client-mtls.properties. A state dir stays secure or plain.",
)
@state_dir_option
def up(port: int, nodes: int, timeout: float, secure: bool, state_dir: Path | None) -> None:
    """Start the cluster and wait until it answers a metadata request.

    The bootstrap address is the last line of stdout, so scripts can use `| tail -1`.
    """
    directory = _state_dir(state_dir)
    started = time.monotonic()
    try:
        cluster, started_now = local.up(directory, port=port, nodes=nodes, timeout=timeout, secure=secure)
    except KafkaSetupError as err:
        _fail(err)
    elapsed = time.monotonic() - started
    if started_now:
        click.echo(
            f"Apache Kafka {cluster.version} up: {len(cluster.nodes)} node(s) in {elapsed:.1f} s "
            f"(state {directory.resolve()}, log node-*/server.log)"
        )
    else:
        click.echo(f"Apache Kafka is already running from {directory.resolve()}")
    if cluster.secure:
        root = directory.resolve()
        click.echo(
            f"secure: SASL_SSL (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN) at the address below; mutual TLS at {cluster.mtls_bootstrap}"
        )
        click.echo(
            f"  service User:svc: {root / 'client.properties'} (PLAIN, any kcat -F), "
            f"{root / 'client-scram.properties'} (SCRAM-SHA-512, librdkafka >= 2.6.1), "
            f"by certificate: {root / 'client-mtls.properties'}"
        )
        click.echo(f"  super user User:admin: {root / 'admin.properties'}")
    click.echo(cluster.bootstrap)


@kafka.command()
@click.option("--wipe", is_flag=True, help="Also delete the state directory (topics, offsets, logs).")
@click.option("--timeout", type=float, default=30.0, help="Seconds to wait after SIGTERM before SIGKILL.")
@state_dir_option
def down(wipe: bool, timeout: float, state_dir: Path | None) -> None:
    """Stop the cluster cleanly (SIGTERM, then SIGKILL after --timeout). Data is kept unless --wipe."""
    directory = _state_dir(state_dir)
    stopped = local.down(directory, wipe=wipe, timeout=timeout)
    what = f"stopped {stopped} node(s)" if stopped else "no running Kafka found"
    click.echo(f"{what} in {directory.resolve()}" + (" and wiped it" if wipe else ""))


@kafka.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@state_dir_option
def status(as_json: bool, state_dir: Path | None) -> None:
    """Show whether the local cluster runs and answers. Exit status 0 when it does, 3 when not."""
    info = local.status(_state_dir(state_dir))
    if as_json:
        click.echo(json.dumps(info))
    elif not info["nodes"]:
        click.echo(f"no local Kafka recorded in {info['state_dir']}")
    else:
        state = "running" if info["running"] else "NOT running"
        secure = " (secure)" if info.get("secure") else ""
        click.echo(
            f"Apache Kafka {info['version']} {state} at {info['bootstrap']}{secure} "
            f"({info['brokers_answering']} broker(s) answering)"
        )
        for node in info["nodes"]:
            mtls = f" mtls port {node['mtls_port']}" if node.get("mtls_port") else ""
            alive = "alive" if node["alive"] else "stopped"
            click.echo(f"  node {node['node_id']}: port {node['port']}{mtls} pid {node['pid']} {alive}")
    sys.exit(0 if info["running"] else 3)


@kafka.command()
def fetch() -> None:
    """Download the Kafka jars with Maven if they are not cached yet; print their folder."""
    try:
        click.echo(jars.ensure_jars())
    except KafkaSetupError as err:
        _fail(err)
