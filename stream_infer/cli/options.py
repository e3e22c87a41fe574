"""Options shared by the commands that talk to Kafka, and the one way they build a connection."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from stream_infer.kafka.connection import BOOTSTRAP_ENV, PROPERTIES_ENV, ConnectionSettingsError, KafkaConnection, resolve

F = TypeVar("F", bound=Callable[..., object])


def config_option(help_text: str) -> Callable[[F], F]:
    """`-c/--config FILE` (required), the worker's TOML config, as `config_path`."""
    return click.option(
        "-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help=help_text
    )


def kafka_options(command: F) -> F:
    """`--bootstrap-servers` and `--kafka-properties` (see :func:`connection_from`)."""
    command = click.option(
        "--kafka-properties",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        envvar=PROPERTIES_ENV,
        help="librdkafka properties file for TLS/SASL (the format `kcat -F` reads; env STREAM_INFER_KAFKA_PROPERTIES). "
        "Its bootstrap.servers is used when no broker list is given.",
    )(command)
    command = click.option(
        "--bootstrap-servers",
        default=None,
        help=f"Broker list (default: env {BOOTSTRAP_ENV}, else the properties file's bootstrap.servers, else 127.0.0.1:9092).",
    )(command)
    return command


def connection_from(bootstrap_servers: str | None, kafka_properties: Path | None) -> KafkaConnection:
    """The connection the options name; a bad properties file ends the command with `error:` and exit 2."""
    try:
        return resolve(bootstrap=bootstrap_servers or os.environ.get(BOOTSTRAP_ENV), properties_file=kafka_properties)
    except ConnectionSettingsError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
