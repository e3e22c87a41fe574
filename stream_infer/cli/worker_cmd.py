"""`stream-infer worker -c CONFIG`: run every pipeline of a config file in one process."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from stream_infer.cli.options import config_option
from stream_infer.config import ConfigError, load_config
from stream_infer.stages.engine import ModelError


@click.command()
@config_option("TOML config file (see docs/configuration.md).")
@click.option("--check", is_flag=True, help="Validate config, models and topics, then exit without consuming.")
@click.option("--web-port", type=click.IntRange(0, 65535), default=None, help="Override worker.web_port (0: any free port).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Override worker.data_dir.")
@click.option(
    "--kafka-properties",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="librdkafka properties file with the connection's TLS/SASL settings (the format `kcat -F` reads); "
    "replaces kafka.properties_file and env STREAM_INFER_KAFKA_PROPERTIES.",
)
@click.pass_context
def worker(
    ctx: click.Context, config_path: Path, check: bool, web_port: int | None, data_dir: str | None, kafka_properties: Path | None
) -> None:
    """Consume the input topics, predict in micro-batches, publish predictions, alerts, dead letters.

    KAFKA_BOOTSTRAP_SERVERS overrides kafka.bootstrap_servers. Stops cleanly on SIGTERM/SIGINT.
    Exit status 2 when it cannot start: a bad config or model, or a cluster that refuses it
    (credentials, TLS, a missing ACL), with one line saying why.
    """
    from stream_infer.runtime.worker import StartupError, Worker  # faust import is slow: only when needed

    root = ctx.find_root().params
    try:
        config = load_config(config_path, kafka_properties=kafka_properties)
        overrides = {k: v for k, v in (("web_port", web_port), ("data_dir", data_dir)) if v is not None}
        if overrides:
            config = config.model_copy(update={"worker": config.worker.model_copy(update=overrides)})
        app = Worker(config)
    except (ConfigError, ModelError, StartupError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    if check:
        click.echo(f"ok: {len(config.pipelines)} pipeline(s) valid: {', '.join(p.name for p in config.pipelines)}")
        app.close()
        return
    app.run(root.get("log_level", "warning"), root.get("log_format", "text"))
