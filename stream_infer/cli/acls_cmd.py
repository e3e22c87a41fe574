"""`stream-infer acls`: the ACLs a worker needs, printed or applied."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from stream_infer.cli.options import config_option, connection_from, kafka_options
from stream_infer.config import ConfigError, load_config
from stream_infer.kafka import acls
from stream_infer.kafka.preflight import ConnectionFailure, connect


@click.command()
@config_option("The worker's TOML config: its topics, pipelines and group.")
@click.option("-p", "--principal", required=True, help="The worker's principal, e.g. User:svc.")
@click.option("-g", "--group", default=None, help="Consumer group (default: the config's kafka.group_id).")
@click.option("--host", default="*", show_default=True, help="Host the principal connects from.")
@click.option("--apply", "action", flag_value="apply", help="Create the ACLs (needs an admin's --kafka-properties).")
@click.option("--delete", "action", flag_value="delete", help="Delete exactly these ACLs.")
@click.option("--json", "as_json", is_flag=True, help="Print the grants as JSON instead of a table.")
@kafka_options
def acls_cmd(
    config_path: Path,
    principal: str,
    group: str | None,
    host: str,
    action: str | None,
    as_json: bool,
    bootstrap_servers: str | None,
    kafka_properties: Path | None,
) -> None:
    """The ACLs a worker running CONFIG needs on a cluster with an authorizer.

    Without --apply or --delete: prints them as a table and as `kafka-acls.sh` command lines
    (nothing is sent to Kafka). With --apply: creates them, connecting with --kafka-properties (an
    admin's settings, not the worker's). Exit status 2 when the config or the cluster refuses.
    """
    if not principal.count(":") or principal.startswith(":"):
        raise click.BadParameter("expected TYPE:NAME, e.g. User:svc", param_hint="--principal")
    try:
        config = load_config(config_path)
    except ConfigError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    if group:
        config = config.model_copy(update={"kafka": config.kafka.model_copy(update={"group_id": group})})
    grants = acls.worker_grants(config)
    bindings = acls.bindings(grants, principal, host)
    if action is None:
        if as_json:
            click.echo(json.dumps([g.__dict__ | {"principal": principal, "host": host} for g in grants], indent=2))
            return
        click.echo(f"ACLs for {principal} to run {config_path} (group {config.kafka.group_id!r}):\n")
        click.echo(acls.table(grants))
        click.echo("\nWith Apache Kafka's tools:\n")
        bootstrap = bootstrap_servers or config.kafka.bootstrap_servers
        click.echo("\n".join(acls.kafka_acls_commands(grants, principal, bootstrap)))
        return
    connection = connection_from(bootstrap_servers, kafka_properties)
    try:
        admin = connect(connection)
        if action == "apply":
            acls.apply(admin, bindings)
            click.echo(f"created {len(bindings)} ACL(s) for {principal} ({len(grants)} resources) at {connection.bootstrap}")
        else:
            removed = acls.delete(admin, bindings)
            click.echo(f"deleted {removed} ACL(s) for {principal} at {connection.bootstrap}")
    except (ConnectionFailure, RuntimeError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
