"""The ACLs a worker needs on a cluster with an authorizer, derived from its config.

One :class:`Grant` per resource: what the worker does there and why. Nothing broader than the
worker's own topics, its consumer group and its transactional ids (a prefix: each worker
process adds its instance id), so a principal granted exactly these can run the pipelines with
either guarantee and nothing else. :func:`bindings` turns grants into confluent-kafka
``AclBinding`` objects for :func:`apply` (or `stream-infer acls --apply`).

The cluster resource is not needed: idempotent and transactional producers need only WRITE on
the topics and their transactional id since Kafka 3.0 (KIP-679).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from stream_infer.config import Config
from stream_infer.kafka.names import changelog_topic, transactional_id_prefix

_RESOURCE_TYPES = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "transactional_id": ResourceType.TRANSACTIONAL_ID}
_PATTERNS = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}


@dataclass(frozen=True)
class Grant:
    """Operations allowed on one resource (a literal name or a name prefix), and why."""

    resource_type: str  # "topic" | "group" | "transactional_id"
    name: str
    pattern: str  # "literal" | "prefixed"
    operations: tuple[str, ...]  # Kafka's operation names: READ, WRITE, DESCRIBE, CREATE
    why: str


def worker_grants(config: Config) -> list[Grant]:
    """Every grant a worker running `config` needs, in a stable order (inputs, group, outputs,
    state, transactional ids)."""
    group = config.kafka.group_id
    grants: list[Grant] = []
    for pc in config.pipelines:
        grants.append(
            Grant(
                "topic",
                pc.input_topic,
                "literal",
                ("READ", "DESCRIBE"),
                f"pipeline {pc.name}: consume the input, read its partition count and end offsets (lag)",
            )
        )
    grants.append(
        Grant(
            "group",
            group,
            "literal",
            ("READ", "DESCRIBE"),
            "join the consumer group, commit offsets (inside checkpoint transactions), read them back for lag",
        )
    )
    # The state restore (`<group>-<pipeline>-state-restore`) and lag probe (`<group>-lag-probe`)
    # consumers read assigned partitions and never join, but the client looks up their group's
    # coordinator, which needs DESCRIBE.
    grants.append(
        Grant(
            "group",
            f"{group}-",
            "prefixed",
            ("DESCRIBE",),
            "the state-restore and lag-probe consumers (assigned partitions, no membership) find their coordinator",
        )
    )
    for pc in config.pipelines:
        outputs = [t for t in (pc.topics.predictions, pc.topics.alerts, pc.topics.dead_letters, pc.topics.review) if t]
        if pc.staleness.max_event_age_ms:
            outputs.append(pc.skipped_topic)
        for topic in outputs:
            grants.append(
                Grant(
                    "topic",
                    topic,
                    "literal",
                    ("WRITE", "DESCRIBE", "CREATE"),
                    f"pipeline {pc.name}: write outputs; the worker creates the topic when it is missing",
                )
            )
        # Every pipeline has a checkpoint transaction; a stateful one also a state changelog.
        if pc.stateful:
            grants.append(
                Grant(
                    "topic",
                    changelog_topic(group, pc.name),
                    "literal",
                    ("READ", "WRITE", "DESCRIBE", "CREATE"),
                    f"pipeline {pc.name}: write state snapshots, restore them after a rebalance, create the changelog",
                )
            )
        grants.append(
            Grant(
                "transactional_id",
                transactional_id_prefix(group, pc.name),
                "prefixed",
                ("WRITE", "DESCRIBE"),
                f"pipeline {pc.name}: checkpoint transactions (outputs, state and offsets commit together)",
            )
        )
    return grants


def bindings(grants: list[Grant], principal: str, host: str = "*") -> list[AclBinding]:
    """The grants as ALLOW bindings for `principal` (e.g. ``User:svc``) from `host`."""
    return [
        AclBinding(
            _RESOURCE_TYPES[g.resource_type],
            g.name,
            _PATTERNS[g.pattern],
            principal,
            host,
            AclOperation[op],
            AclPermissionType.ALLOW,
        )
        for g in grants
        for op in g.operations
    ]


def apply(admin: AdminClient, acl_bindings: list[AclBinding], timeout: float = 30.0) -> None:
    """Create the bindings (creating one that exists is a no-op). Raises RuntimeError naming the
    first binding the cluster refused and why."""
    if not acl_bindings:
        return
    for binding, future in admin.create_acls(acl_bindings, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as err:
            raise RuntimeError(f"creating ACL {describe(binding)} failed: {err.args[0].str()}") from None


def delete(admin: AdminClient, acl_bindings: list[AclBinding], timeout: float = 30.0) -> int:
    """Delete exactly these bindings; returns how many existed."""
    filters = [
        AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation, b.permission_type)
        for b in acl_bindings
    ]
    if not filters:
        return 0
    deleted = 0
    for binding, future in admin.delete_acls(filters, request_timeout=timeout).items():
        try:
            deleted += len(future.result(timeout=timeout))
        except KafkaException as err:
            raise RuntimeError(f"deleting ACL {describe(binding)} failed: {err.args[0].str()}") from None
    return deleted


def describe(binding: AclBinding | AclBindingFilter) -> str:
    pattern = "prefix " if binding.resource_pattern_type == ResourcePatternType.PREFIXED else ""
    return (
        f"{_name(binding.permission_type)} {binding.principal} {_name(binding.operation)} on "
        f"{_name(binding.restype).lower()} {pattern}{binding.name!r}"
    )


def _name(value: Enum | str | int) -> str:
    """An ACL field's name: confluent_kafka types the fields as their constructor arguments (an
    enum, or its name or value), though a binding holds the enum."""
    return value.name if isinstance(value, Enum) else str(value)


def table(grants: list[Grant]) -> str:
    """The grants as a Markdown table (what `stream-infer acls` prints, and docs/security.md shows)."""
    rows = ["| resource | name | pattern | operations | why |", "|---|---|---|---|---|"]
    rows += [f"| {g.resource_type} | `{g.name}` | {g.pattern} | {', '.join(g.operations)} | {g.why} |" for g in grants]
    return "\n".join(rows)


def kafka_acls_commands(
    grants: list[Grant], principal: str, bootstrap: str, command_config: str = "admin.properties"
) -> list[str]:
    """The same grants as Apache Kafka's own `kafka-acls.sh` command lines, for operators who apply
    ACLs with the Kafka tools."""
    flag = {"topic": "--topic", "group": "--group", "transactional_id": "--transactional-id"}
    lines = []
    for g in grants:
        ops = " ".join(f"--operation {op.title()}" for op in g.operations)
        pattern = " --resource-pattern-type prefixed" if g.pattern == "prefixed" else ""
        lines.append(
            f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {command_config} --add "
            f"--allow-principal {principal} {ops} {flag[g.resource_type]} {g.name}{pattern}"
        )
    return lines
