"""A local Apache Kafka (KRaft, no ZooKeeper) run from Maven-fetched jars, for development and tests.

Each node runs as combined broker+controller in its own JVM, bound to 127.0.0.1 only. A state
directory holds everything: per-node config, data and `server.log`, and `cluster.json` recording
the ports and PIDs so that `down` and `status` (in another process) find what `up` started.

Contract of :func:`up`: returns only once the cluster answers a metadata request listing every
node; data in the state directory survives `down` unless wiped.

`up(..., secure=True)` starts a secured cluster instead (TLS, SCRAM, mutual TLS, an authorizer);
:mod:`stream_infer.tools.devkafka.local_security` makes its material and describes what it writes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stream_infer.ports import port_is_free
from stream_infer.tools.devkafka.jars import (
    KafkaSetupError,
    ensure_jars,
    java_command,
    kafka_version,
)

if TYPE_CHECKING:  # imported lazily: only a secure cluster needs it (and the cryptography package)
    from stream_infer.tools.devkafka import local_security

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 9092
STATE_FILE = "cluster.json"
# KRaft election plus log loading takes a few seconds on 2 cores; 90 s leaves room for a cold JVM
# on a loaded CI machine without hiding a broker that will never come up.
READY_TIMEOUT_S = 90.0


def default_state_dir() -> Path:
    """$STREAM_INFER_STATE_DIR, else $XDG_STATE_HOME/stream-infer/kafka."""
    if env := os.environ.get("STREAM_INFER_STATE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "stream-infer" / "kafka"


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    pid: int | None = None
    mtls_port: int | None = None  # secure clusters only: the SSL listener requiring a client certificate

    def directory(self, state_dir: Path) -> Path:
        return state_dir / f"node-{self.node_id}"


@dataclass
class Cluster:
    state_dir: Path
    cluster_id: str
    nodes: list[Node] = field(default_factory=list)
    version: str = ""
    secure: bool = False

    @property
    def bootstrap(self) -> str:
        """Client listener addresses (SASL_SSL on a secure cluster)."""
        return ",".join(f"{HOST}:{n.port}" for n in self.nodes)

    @property
    def mtls_bootstrap(self) -> str:
        """Mutual-TLS listener addresses of a secure cluster; empty for a plain one."""
        return ",".join(f"{HOST}:{n.mtls_port}" for n in self.nodes if n.mtls_port)

    def save(self) -> None:
        data = asdict(self)
        data["state_dir"] = str(self.state_dir)
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_dir / STATE_FILE)  # atomic: a reader never sees half a file

    @classmethod
    def load(cls, state_dir: Path) -> Cluster | None:
        path = state_dir / STATE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        nodes = [Node(**n) for n in data.pop("nodes")]
        data["state_dir"] = state_dir
        return cls(nodes=nodes, **data)


# --- ports -------------------------------------------------------------------------------------


def free_port(exclude: set[int]) -> int:
    """A port the OS says is free now (bind to 0), not already chosen for another listener."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port not in exclude:
            return port


def plan_ports(base_port: int, nodes: int) -> list[tuple[int, int]]:
    """(client, controller) ports per node. base_port 0: all free; else base, base+1, ... for clients."""
    chosen: set[int] = set()
    plan = []
    for i in range(nodes):
        if base_port == 0:
            client = free_port(chosen)
        else:
            client = base_port + i
            if not port_is_free(client):
                raise KafkaSetupError(
                    f"port {client} on {HOST} is already in use (another Kafka?). "
                    "Stop it, choose another with --port N, or use --port 0 for free ports."
                )
        chosen.add(client)
        controller = free_port(chosen)
        chosen.add(controller)
        plan.append((client, controller))
    return plan


# --- processes ---------------------------------------------------------------------------------


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as dead.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _is_our_broker(pid: int, node_dir: Path) -> bool:
    """Guard against PID reuse: only signal a process whose command line names this node's config."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return pid_alive(pid)  # no /proc (not Linux): trust the recorded PID
    return str(node_dir / "server.properties") in cmdline


def _node_properties(node: Node, cluster: Cluster, security: local_security.Material | None = None) -> str:
    n = len(cluster.nodes)
    replication = min(3, n)
    min_isr = min(2, n)
    voters = ",".join(f"{x.node_id}@{HOST}:{x.controller_port}" for x in cluster.nodes)
    data_dir = node.directory(cluster.state_dir) / "data"
    if security is None:
        listeners = [
            f"listeners=PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
            f"advertised.listeners=PLAINTEXT://{HOST}:{node.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ]
    else:
        assert node.mtls_port is not None, "a secure cluster plans an mTLS port per node"
        from stream_infer.tools.devkafka import local_security

        listeners = local_security.listener_properties(
            security, host=HOST, client_port=node.port, mtls_port=node.mtls_port, controller_port=node.controller_port
        )
    return "\n".join(
        [
            "# Written by `stream-infer kafka up`; rewritten on every start.",
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            f"controller.quorum.voters={voters}",
            *listeners,
            f"log.dirs={data_dir}",
            "num.partitions=1",
            f"default.replication.factor={replication}",
            f"offsets.topic.replication.factor={replication}",
            # 50 offsets partitions (the default) make the first consumer group wait seconds for
            # their creation; a development broker needs far fewer.
            "offsets.topic.num.partitions=10",
            f"transaction.state.log.replication.factor={replication}",
            f"transaction.state.log.min.isr={min_isr}",
            f"share.coordinator.state.topic.replication.factor={replication}",
            f"share.coordinator.state.topic.min.isr={min_isr}",
            # A worker killed inside a checkpoint transaction leaves it open, and the next owner of
            # its partitions waits for the broker to abort it (after the producer's
            # transaction.timeout.ms). The broker looks for such transactions every 10 s by
            # default, which can add up to 10 s to that wait.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",
            # A killed node is fenced (its partitions get new leaders) this long after its last
            # heartbeat; the default 9 s is meant for networks that hiccup, a development
            # cluster on one machine can tell a dead JVM sooner. A single node keeps the
            # default: nothing can take over its partitions, and a node fenced because a loaded
            # machine delayed its heartbeats leaves every partition leaderless until it is
            # unfenced, with new leader epochs that clients holding the old ones are refused.
            f"broker.session.timeout.ms={4000 if n > 1 else 9000}",
            "broker.heartbeat.interval.ms=1000",
            # Tests start many short-lived groups: do not delay the first rebalance by 3 s.
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "",
        ]
    )


def _log4j_properties(node_dir: Path) -> str:
    return "\n".join(
        [
            "status = warn",
            "appender.file.type = File",
            "appender.file.name = file",
            f"appender.file.fileName = {node_dir / 'server.log'}",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d] %p %m (%c)%n",
            "rootLogger.level = INFO",
            "rootLogger.appenderRef.file.ref = file",
            # The request logger is noisy at INFO and says nothing a developer needs.
            "logger.request.name = kafka.request.logger",
            "logger.request.level = WARN",
            "",
        ]
    )


def _java_base(java: str, jars: Path, node_dir: Path) -> list[str]:
    return [
        java,
        "-Xms256m",
        "-Xmx1g",
        # Kafka's own launcher defaults (kafka-run-class.sh): short G1 pauses keep produce and
        # fetch latency steady; G1's default 200 ms pause target showed up in p99 latency.
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={node_dir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={node_dir}",
        "-cp",
        str(jars / "*"),
    ]


def _is_formatted(node: Node, state_dir: Path) -> bool:
    return (node.directory(state_dir) / "data" / "meta.properties").exists()


def _format_storage(java: str, jars: Path, cluster: Cluster, extra_args: list[str] | None = None) -> None:
    """Format each node's log dir once (KRaft requires it); already formatted dirs are left alone.

    extra_args go to every node's format command (the secure cluster's SCRAM users).
    """
    procs = []
    for node in cluster.nodes:
        node_dir = node.directory(cluster.state_dir)
        if _is_formatted(node, cluster.state_dir):
            continue
        cmd = _java_base(java, jars, node_dir) + [
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster.cluster_id}",
            "-c",
            str(node_dir / "server.properties"),
            "--ignore-formatted",
            *(extra_args or []),
        ]
        procs.append((node, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for node, proc in procs:  # in parallel: each is a JVM start of ~2 s
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise KafkaSetupError(f"formatting node {node.node_id}'s storage failed:\n{out.strip()[-2000:]}")


def _tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _metadata_brokers(bootstrap: str, timeout: float, settings: dict[str, str] | None = None) -> int:
    """How many brokers a metadata request returns (0 if the cluster does not answer).

    settings: client settings added to the request's (a secure cluster's admin credentials).
    """
    from confluent_kafka.admin import AdminClient

    # log_level 0: "connection refused" while the broker boots is the expected answer, not news.
    config: dict[str, str | int] = {"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 2000, "log_level": 0}
    admin = AdminClient({**config, **(settings or {}), "bootstrap.servers": bootstrap})
    try:
        return len(admin.list_topics(timeout=timeout).brokers)
    except Exception:  # KafkaException on timeout: "not ready yet" is the answer
        return 0


def _new_cluster_id() -> str:
    # Kafka's cluster id: a UUID as URL-safe base64 without padding (what `kafka-storage random-uuid`
    # prints), made here to avoid one more JVM start. Like Kafka, never start with "-": the storage
    # tool would read such an id as an option.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def admin_settings(cluster: Cluster) -> dict[str, str]:
    """Client settings for a request as a super user: the admin's credentials on a secure cluster
    (bootstrap.servers included), none on a plain one."""
    if not cluster.secure:
        return {}
    from stream_infer.tools.devkafka import local_security

    return local_security.admin_settings(cluster.state_dir)


def _grant_service_acls(cluster: Cluster, admin_settings: dict[str, str]) -> None:
    """Grant the service principal User:svc the ACLs a worker running the demo config needs
    (``stream-infer acls -c <demo config> -p User:svc`` lists them), and nothing else.

    Called by :func:`up` once a secure cluster it started answers; admin_settings are the super
    user's librdkafka settings (bootstrap.servers included). Creating an ACL that exists is a
    no-op, so a restart grants nothing twice. Another config's ACLs: `stream-infer acls --apply`.
    """
    from confluent_kafka.admin import AdminClient

    from stream_infer.config import load_config
    from stream_infer.configs import DEMO_CONFIG
    from stream_infer.kafka import acls
    from stream_infer.tools.devkafka import local_security

    demo = load_config(DEMO_CONFIG)
    bindings = acls.bindings(acls.worker_grants(demo), f"User:{local_security.SERVICE_USER}")
    try:
        acls.apply(AdminClient({**admin_settings, "log_level": 0}), bindings)
    except RuntimeError as err:
        raise KafkaSetupError(f"granting the service principal its ACLs failed: {err}") from None


def running_cluster(state_dir: Path) -> Cluster | None:
    """The cluster recorded in state_dir if any of its nodes is alive, else None."""
    cluster = Cluster.load(state_dir)
    if cluster and any(pid_alive(n.pid) for n in cluster.nodes):
        return cluster
    return None


def _secure_mismatch(state_dir: Path, recorded: bool, running: bool) -> KafkaSetupError:
    state = "is running" if running else "holds"
    kind, other = ("secure", "with --secure") if recorded else ("plain", "without --secure")
    return KafkaSetupError(
        f"{state_dir} {state} a {kind} cluster; start it {other}, or wipe it first "
        f"(`stream-infer kafka down --wipe --state-dir {state_dir}`)."
    )


def up(
    state_dir: Path,
    *,
    port: int = DEFAULT_PORT,
    nodes: int = 1,
    timeout: float = READY_TIMEOUT_S,
    secure: bool = False,
) -> tuple[Cluster, bool]:
    """Start (or find running) a local cluster. Returns (cluster, started_now).

    secure: TLS from a CA made in the state directory, SASL users admin and svc, a mutual-TLS
    listener (``Cluster.mtls_bootstrap``), an authorizer, and svc granted the demo worker's ACLs;
    clients find their settings in the state directory's client.properties,
    client-scram.properties, admin.properties and client-mtls.properties (see
    :mod:`stream_infer.tools.devkafka.local_security`). A state directory stays plain or secure for its
    lifetime (a mismatch is an error).
    """
    if nodes < 1:
        raise KafkaSetupError("--nodes must be at least 1")
    state_dir = state_dir.resolve()
    existing = running_cluster(state_dir)
    if existing:
        if existing.secure != secure:
            raise _secure_mismatch(state_dir, existing.secure, running=True)
        if _metadata_brokers(existing.bootstrap, timeout=5, settings=admin_settings(existing)) == 0:
            raise KafkaSetupError(
                f"a Kafka recorded in {state_dir} is running but does not answer; "
                f"run `stream-infer kafka down --state-dir {state_dir}` and start again.\n"
                + _tail(existing.nodes[0].directory(state_dir) / "server.log")
            )
        return existing, False

    java = java_command()
    jars = ensure_jars()
    state_dir.mkdir(parents=True, exist_ok=True)
    previous = Cluster.load(state_dir)
    if previous and len(previous.nodes) != nodes:
        raise KafkaSetupError(
            f"{state_dir} holds a {len(previous.nodes)}-node cluster; start it with --nodes "
            f"{len(previous.nodes)}, or wipe it first (`stream-infer kafka down --wipe --state-dir {state_dir}`)."
        )
    if previous and previous.secure != secure:
        raise _secure_mismatch(state_dir, previous.secure, running=False)
    # A restart keeps the cluster id (the data is formatted with it) and, when free, the ports.
    reuse = (
        previous is not None
        and port in (0, previous.nodes[0].port)
        and all(port_is_free(p) for n in previous.nodes for p in (n.port, n.controller_port, n.mtls_port) if p is not None)
    )
    if previous is not None and reuse:
        cluster = previous
    else:
        plan = plan_ports(port, nodes)
        cluster = Cluster(
            state_dir=state_dir,
            cluster_id=previous.cluster_id if previous else _new_cluster_id(),
            nodes=[Node(node_id=i + 1, port=c, controller_port=k) for i, (c, k) in enumerate(plan)],
            secure=secure,
        )
        if secure:  # one more listener per node, on a free port
            taken = {p for c, k in plan for p in (c, k)}
            for node in cluster.nodes:
                node.mtls_port = free_port(taken)
                taken.add(node.mtls_port)
    cluster.version = kafka_version()

    security = None
    format_args: list[str] = []
    if secure:
        from stream_infer.tools.devkafka import local_security

        security = local_security.ensure_material(state_dir, formatted=any(_is_formatted(n, state_dir) for n in cluster.nodes))
        local_security.write_client_properties(security, bootstrap=cluster.bootstrap, mtls_bootstrap=cluster.mtls_bootstrap)
        format_args = local_security.scram_format_args(security)
    for node in cluster.nodes:
        node_dir = node.directory(state_dir)
        node_dir.mkdir(parents=True, exist_ok=True)
        properties = _node_properties(node, cluster, security)
        if security is None:
            (node_dir / "server.properties").write_text(properties)
        else:  # it holds the broker's private key
            local_security.write_private(node_dir / "server.properties", properties)
        (node_dir / "log4j2.properties").write_text(_log4j_properties(node_dir))
    _format_storage(java, jars, cluster, format_args)

    for node in cluster.nodes:
        node_dir = node.directory(state_dir)
        with open(node_dir / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                _java_base(java, jars, node_dir) + ["kafka.Kafka", str(node_dir / "server.properties")],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI's exit and its Ctrl-C
            )
        node.pid = proc.pid
    cluster.save()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [n for n in cluster.nodes if not pid_alive(n.pid)]
        if dead:
            node_dir = dead[0].directory(state_dir)
            down(state_dir)
            raise KafkaSetupError(
                f"Kafka node {dead[0].node_id} exited during start-up; the end of its log "
                f"({node_dir / 'server.log'}):\n{_tail(node_dir / 'server.log')}\n{_tail(node_dir / 'stdout.log', 10)}"
            )
        if _metadata_brokers(cluster.bootstrap, timeout=2, settings=admin_settings(cluster)) >= nodes:
            if secure:
                _grant_service_acls(cluster, admin_settings(cluster))
            return cluster, True
        time.sleep(0.3)
    log_path = cluster.nodes[0].directory(state_dir) / "server.log"
    down(state_dir)
    raise KafkaSetupError(
        f"Kafka did not answer a metadata request within {timeout:.0f} s; it was stopped. "
        f"The end of {log_path}:\n{_tail(log_path)}"
    )


def down(state_dir: Path, *, wipe: bool = False, timeout: float = 30.0) -> int:
    """Stop every node recorded in state_dir: SIGTERM, then SIGKILL after `timeout`. Returns nodes stopped."""
    state_dir = state_dir.resolve()
    cluster = Cluster.load(state_dir)
    stopped = 0
    if cluster:
        # Signal all nodes at once so the controller quorum is there for each one's controlled shutdown.
        # (node, pid) of each node to stop.
        targets = [
            (n, n.pid)
            for n in cluster.nodes
            if n.pid is not None and pid_alive(n.pid) and _is_our_broker(n.pid, n.directory(state_dir))
        ]
        target_nodes = [n for n, _ in targets]
        for _, pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(pid_alive(pid) for _, pid in targets) and time.monotonic() < deadline:
            _reap(target_nodes)
            time.sleep(0.2)
        for node, pid in targets:
            if pid_alive(pid):
                log.warning("node %s did not stop within %.0f s: killing it", node.node_id, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _reap(target_nodes)
        stopped = len(targets)
        for node in cluster.nodes:
            node.pid = None
        if state_dir.exists():
            cluster.save()
    if wipe and state_dir.exists():
        shutil.rmtree(state_dir)
    return stopped


def _reap(nodes: list[Node]) -> None:
    """Collect exited children (when `up` ran in this process), so they do not linger as zombies."""
    for node in nodes:
        if node.pid:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(node.pid, os.WNOHANG)


def status(state_dir: Path) -> dict:
    """A description of the recorded cluster: version, bootstrap, and per node alive/port/pid."""
    state_dir = state_dir.resolve()
    cluster = Cluster.load(state_dir)
    if cluster is None:
        return {"state_dir": str(state_dir), "running": False, "nodes": []}
    alive = [pid_alive(n.pid) for n in cluster.nodes]
    answering = _metadata_brokers(cluster.bootstrap, timeout=3, settings=admin_settings(cluster)) if any(alive) else 0
    nodes: list[dict[str, int | bool | None]] = [
        {"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port, "pid": n.pid, "alive": a}
        for n, a in zip(cluster.nodes, alive)
    ]
    info = {
        "state_dir": str(state_dir),
        "version": cluster.version or kafka_version(),
        "bootstrap": cluster.bootstrap,
        "secure": cluster.secure,
        "running": all(alive) and answering >= len(cluster.nodes),
        "brokers_answering": answering,
        "nodes": nodes,
    }
    if cluster.secure:
        info["mtls_bootstrap"] = cluster.mtls_bootstrap
        for entry, node in zip(nodes, cluster.nodes):
            entry["mtls_port"] = node.mtls_port
    return info
