"""The `stream-infer` command line. Each sub-command lives in its own module; this one wires them."""

from __future__ import annotations

import click

from stream_infer import __version__
from stream_infer.cli.acls_cmd import acls_cmd
from stream_infer.cli.bench_cmd import bench
from stream_infer.cli.datasets_cmd import datasets
from stream_infer.cli.demo_cmd import demo
from stream_infer.cli.faults_cmd import faults
from stream_infer.cli.fuzz_cmd import fuzz
from stream_infer.cli.kafka_cmd import kafka
from stream_infer.cli.lag_cmd import lag
from stream_infer.cli.replay_cmd import replay
from stream_infer.cli.score_cmd import score
from stream_infer.cli.worker_cmd import worker
from stream_infer.logs import setup_logging


# Every option's default is shown in --help (an option with no default, None, shows none).
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100, "show_default": True})
@click.version_option(__version__, prog_name="stream-infer")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    envvar="STREAM_INFER_LOG_LEVEL",
    help="Log verbosity (env STREAM_INFER_LOG_LEVEL).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="STREAM_INFER_LOG_FORMAT",
    help="text for terminals, json (one object per line) for log shippers.",
)
def main(log_level: str, log_format: str) -> None:
    """Streaming ML inference over Apache Kafka: Faust agents, micro-batches, ONNX Runtime.

    KAFKA_BOOTSTRAP_SERVERS is honoured wherever a broker address is needed.
    """
    setup_logging(log_level, log_format)


main.add_command(kafka)
main.add_command(demo)
main.add_command(worker)
main.add_command(replay)
main.add_command(score)
main.add_command(datasets)
main.add_command(bench)
main.add_command(lag)
main.add_command(faults)
main.add_command(fuzz)
main.add_command(acls_cmd, name="acls")
