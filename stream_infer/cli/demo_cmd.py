"""`stream-infer demo`: everything end to end on a local Kafka that the demo starts and stops itself."""

from __future__ import annotations

import sys

import click
import orjson

from stream_infer.cli.options import progress_echo


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print only the summary, as one JSON object on stdout.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=1000.0,
    help="Events/s replayed into each input topic; 0 = as fast as possible (a burst: latency then measures the backlog).",
)
@click.option("--timeout", type=float, default=150.0, help="Seconds to wait for every input to be processed.")
@click.option(
    "--secure",
    is_flag=True,
    help="On a secured cluster (kafka up --secure): the worker as User:svc over SASL_SSL (SCRAM-SHA-512) with only its ACLs.",
)
def demo(as_json: bool, rate: float, timeout: float, secure: bool) -> None:
    """Start Kafka and a worker, replay C-MAPSS, AI4I and simulated card payments plus bad events, show alerts, summarise.

    Needs Java 17+ and Maven (the first run fetches the Kafka jars). Everything it starts is stopped.
    """
    from stream_infer.config import ConfigError
    from stream_infer.tools.demo import run_demo
    from stream_infer.tools.devkafka.jars import KafkaSetupError

    echo = progress_echo(as_json)
    try:
        summary = run_demo(echo, rate=rate or None, timeout=timeout, secure=secure)
    except (KafkaSetupError, ConfigError, RuntimeError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(orjson.dumps(summary).decode())
        return
    lat = summary["latency_ms"]
    click.echo("\nsummary")
    click.echo(f"  events in      {summary['events_in']}")
    click.echo(f"  predictions    {summary['predictions']}")
    click.echo(f"  alerts         {summary['alerts']}")
    click.echo(f"  dead letters   {summary['dlq']}")
    click.echo(f"  for review     {summary['review']}")
    click.echo(f"  latency        p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms (input timestamp -> prediction)")
    click.echo(f"  RUL RMSE       {summary['rul_rmse']:.4f} served, {summary['rul_rmse_offline']:.4f} offline (test_FD001)")
    for name, p in summary["pipelines"].items():
        click.echo(
            f"  {name:<14} in {p['events_in']}, predictions {p['predictions']}, alerts {p['alerts']}, dlq {p['dlq']} {p['dlq_reasons']}"
        )
    if payments := summary["pipelines"].get("transactions", {}).get("payments"):
        pipeline = summary["pipelines"]["transactions"]
        click.echo(
            f"  payments       {payments['predicted']} of {payments['transactions']} transactions predicted (by tx_id), "
            f"{pipeline['alerts']} card alerts, {pipeline['review']} for review; "
            f"average precision {payments['average_precision']:.3f} on {payments['frauds']} simulated frauds"
        )
    click.echo(f"  took           {summary['seconds']} s")
