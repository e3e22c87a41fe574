"""`stream-infer bench`: throughput, latency and memory of the service against two yardsticks."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from stream_infer.cli.options import progress_echo


@click.command()
@click.option("--quick", is_flag=True, help="A short run (about 3 minutes): smaller backlog, shorter windows.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object on stdout (progress on stderr).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    help="Where bench.json, bench.png and burst.png are written.",
)
@click.option(
    "--transactions",
    is_flag=True,
    help="Instead: the transactions pipeline's decision latency (input append -> prediction append) at --rate tx/s.",
)
@click.option(
    "--rate", type=click.FloatRange(min=1), default=2000.0, help="With --transactions: offered transactions per second."
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=1),
    default=30.0,
    help="With --transactions: measured seconds (after a warm-up of 10-90 s: until the broker has compiled its request paths).",
)
def bench(quick: bool, as_json: bool, out_dir: Path, transactions: bool, rate: float, seconds: float) -> None:
    """Measure the worker (service), the same with processing_guarantee = exactly_once
    (service_eos), the worker at max_batch_size=1 (per_event) and a no-framework loop (ceiling)
    on a local Kafka; latency at 10 events/s and 10/50/80% of the service's maximum;
    then a burst (a backlog produced at once) with the batching controller's response over time.

    Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts (and stops) a local broker.
    """
    from stream_infer.tools.bench.harness import run_bench

    echo = progress_echo(as_json)
    if transactions:
        from stream_infer.tools.bench.decisions import run_decision_bench

        try:
            figures = run_decision_bench(rate=rate, seconds=seconds, out_dir=out_dir, echo=echo)
        except RuntimeError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        if as_json:
            click.echo(orjson.dumps(figures).decode())
        else:
            click.echo(f"wrote {out_dir / 'decisions.json'} in {figures['seconds']} s")
        return
    try:
        results = run_bench(quick=quick, out_dir=out_dir, echo=echo)
    except RuntimeError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    if as_json:
        summary = {k: v for k, v in results.items() if k != "service_rss_mb"}
        if "burst" in summary:  # the time series stay in bench.json
            summary["burst"] = {k: v for k, v in summary["burst"].items() if k != "samples"}
        click.echo(orjson.dumps(summary).decode())
        return
    tp, t = results["throughput_eps"], results["targets"]
    click.echo("")
    click.echo(f"{'mode':<12}{'events/s':>10}{'cpu s':>8}{'peak RSS MB':>13}")
    for mode in ("service", "service_eos", "per_event", "ceiling"):
        p = results["process"].get(mode, {})
        click.echo(f"{mode:<12}{tp[mode]:>10,}{p.get('cpu_s', 0):>8.1f}{p.get('peak_rss_mb', 0):>13.0f}")
    click.echo(
        f"service/ceiling {t['service_vs_ceiling']}, service/per_event {t['service_vs_per_event']}, "
        f"exactly-once/at-least-once {t['exactly_once_vs_service']}"
    )
    for name, v in results["latency_ms"].items():
        click.echo(
            f"latency {name:<6} offered {v['offered_eps']:>8,.0f} ev/s: p50 {v['p50']} ms, p95 {v['p95']} ms, p99 {v['p99']} ms"
        )
    click.echo("targets: " + ", ".join(f"{k[3:]}={'yes' if v else 'NO'}" for k, v in t.items() if k.startswith("ok_")))
    if burst := results.get("burst"):
        click.echo(
            f"burst of {burst['burst_events']:,}: drained in {burst['drain_seconds']} s, peak lag "
            f"{burst['peak_lag_messages']:,.0f} messages, batch size up to {burst['peak_controller_batch_size']:.0f}, "
            f"paused {burst['pauses']:.0f} times"
        )
    click.echo(f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.png'} and {out_dir / 'burst.png'} in {results['seconds']} s")
