"""Options shared by the commands: those of the commands that talk to Kafka and the one way they
build a connection, a run's seed and work folder; and where progress lines go."""

from __future__ import annotations

import os
import random
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


def seed_option(of: str) -> Callable[[F], F]:
    """`--seed N` as `seed`: the seed of `of`. Without it the command gets a random one (and prints it,
    so the run can be repeated)."""
    return click.option("--seed", type=int, default=None, callback=_random_seed, help=f"Seed of {of}. Default: random, printed.")


def _random_seed(ctx: click.Context, param: click.Parameter, value: int | None) -> int:
    return random.randrange(1_000_000) if value is None else value


def work_dir_option(default: str, holds: str) -> Callable[[F], F]:
    """`--work-dir DIR` as `work_dir` (a Path, default `default`): where the run keeps `holds`."""
    return click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(default), help=holds)


def progress_echo(as_json: bool) -> Callable[[str], None]:
    """The echo for a command's progress lines: to stderr when stdout carries its JSON, else stdout."""
    return (lambda line: click.echo(line, err=True)) if as_json else click.echo
