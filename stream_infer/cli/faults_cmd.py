"""`stream-infer faults`: fault-injection trials against real workers on a real Kafka."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import orjson

from stream_infer.cli.options import progress_echo, seed_option, work_dir_option

SCENARIO_ORDER = ("worker_kill", "rolling_restart", "broker_kill", "coordinator_kill")


@click.command()
@click.option("--trials", type=click.IntRange(min=1), default=10, help="Trials per scenario and guarantee.")
@click.option("--scenario", type=click.Choice(["all", *SCENARIO_ORDER]), default="all")
@click.option(
    "--guarantee",
    type=click.Choice(["at_least_once", "exactly_once", "both"]),
    default="at_least_once",
    help="The workers' [worker] processing_guarantee.",
)
@click.option("--rate", type=click.FloatRange(min=1), default=1500.0, help="Input events per second.")
@click.option(
    "--duration",
    type=click.FloatRange(min=30),
    default=60.0,
    help="Seconds of stream per trial (the data set is looped with new engine ids).",
)
@seed_option("the first trial (trial i uses SEED + i)")
@work_dir_option(".stream-infer/faults", "Worker logs and configs per trial, and the cached reference predictions.")
@click.option(
    "--stable-ids",
    is_flag=True,
    help="Give each worker a stable STREAM_INFER_INSTANCE_ID (as the Kubernetes "
    "Deployment does) instead of the default transactional ids unique per process.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print every trial and the summary as one JSON object on stdout (the per-trial lines go to stderr).",
)
def faults(
    trials: int,
    scenario: str,
    guarantee: str,
    rate: float,
    duration: float,
    seed: int,
    work_dir: Path,
    stable_ids: bool,
    as_json: bool,
) -> None:
    """Run fault scenarios against real workers and check every prediction.

    \b
    worker_kill      two workers, a third joins, one of the three is killed (SIGKILL) mid-stream
    rolling_restart  two workers, each stopped (SIGTERM: exit 0 within 10 s) and restarted in turn
    broker_kill      3-node cluster, RF 3, min.insync.replicas 2: the broker leading the most
                     input partitions is killed (SIGKILL) mid-stream and stays dead
    coordinator_kill the same, killing the broker that coordinates the consumer group (and its
                     transactional offset commits)

    Each trial prints one line of key=value fields: scenario, guarantee, seed, inputs, predicted
    (inputs with a prediction), lost, duplicates (predictions beyond the first per input),
    equal_to_reference (every prediction equals an uninterrupted in-process run's), recovery_max_s
    (from a fault until every affected partition's new inputs are predicted again),
    feed_recovery_max_s (the same until the input topic takes new inputs again: the cluster's
    share), latency_max_s (longest wait of a predicted input for its first prediction), exits
    (worker:how:status@seconds), restarts (workers that exited on their own were started again,
    as a supervisor would), final_lag (inputs the group left uncommitted), duration_s,
    result, alerts (seen/expected against the uninterrupted run's alerts); alerts_missing,
    alerts_unexpected, alerts_duplicates, lost_by_partition and error when there are any. A table per scenario and guarantee
    follows. Each trial's logs, config and result.json stay in WORK_DIR/trials/.

    Exit status 1 if any trial lost an input, differed from the reference, missed or added an
    alert, duplicated a prediction or alert under exactly_once or in a rolling restart, recovered
    later than 15 s after a worker or broker kill, failed a graceful stop, or could not run. Starts and stops local Kafka clusters
    in a temporary directory, unless KAFKA_BOOTSTRAP_SERVERS is set (then the broker scenarios are skipped).
    """
    from stream_infer.tools.devkafka.jars import KafkaSetupError
    from stream_infer.tools.faults import run_faults, summarize, summary_json, table, trial_line

    scenarios = SCENARIO_ORDER if scenario == "all" else (scenario,)
    guarantees = ("at_least_once", "exactly_once") if guarantee == "both" else (guarantee,)
    plan = [(s, g) for s in scenarios for g in guarantees]
    echo = progress_echo(as_json)
    echo(
        f"faults: seed {seed}, {trials} trial(s) each of {', '.join(f'{s}/{g}' for s, g in plan)}, "
        f"{rate:g} events/s for {duration:g} s"
    )
    try:
        results = run_faults(
            plan,
            trials=trials,
            seed=seed,
            rate=rate,
            duration=duration,
            work_dir=work_dir,
            stable_ids=stable_ids,
            bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
            on_result=lambda result: echo(trial_line(result)),
            on_skip=lambda message: click.echo(message, err=True),
        )
    except KafkaSetupError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    summary = summary_json(results)
    if as_json:
        click.echo(orjson.dumps(summary).decode())
    elif results:
        click.echo("")
        click.echo(table(summarize(results)))
    sys.exit(1 if summary["failed"] else 0)
