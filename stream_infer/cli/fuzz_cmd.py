"""`stream-infer fuzz`: hostile input against a real worker on a real Kafka."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import click


@click.command()
@click.option(
    "--hostile",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Hostile records, both pipelines together (each kind as often as the others).",
)
@click.option(
    "--valid",
    type=click.IntRange(min=0),
    default=None,
    help="Valid events mixed in, both pipelines together.  [default: as many as --hostile]",
)
@click.option(
    "--partitions", type=click.IntRange(min=1, max=64), default=3, show_default=True, help="Partitions of every topic of the run."
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=1000.0,
    show_default=True,
    help="Records produced per second, both pipelines together (0: as fast as possible). Above what the "
    "machine sustains, canary times measure the backlog rather than the worker.",
)
@click.option(
    "--keys",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Keys mode: after the hostile run, feed this many distinct engine ids (one valid event each) "
    "to a fresh worker, without and with --max-keys, and report its peak RSS both ways. 0: skip.",
)
@click.option(
    "--max-keys",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Keys mode: the bounded worker's pipelines[].state.max_keys (engines).",
)
@click.option(
    "--poison-burst",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Burst mode: after the hostile run, this many 1 MB poison values, lz4-compressed on the wire, as a "
    "backlog that a fresh worker drains; reports its peak RSS. 0: skip.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=5),
    default=120.0,
    show_default=True,
    help="Seconds after the last record is produced for every output to arrive.",
)
@click.option("--seed", type=int, default=None, help="Seed of the order of the feed. Default: random, printed.")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".stream-infer/fuzz"),
    show_default=True,
    help="The run's configs and worker logs.",
)
@click.option(
    "--header-names",
    is_flag=True,
    help="Also produce, first on each pipeline, a valid event whose header name is not UTF-8 (needs kcat: "
    "the Python client cannot write one). It must get an output, and so must the records fetched with it.",
)
@click.option("--list-kinds", is_flag=True, help="Print every hostile kind with its expected reason per pipeline, and exit.")
def fuzz(
    hostile: int,
    valid: int | None,
    partitions: int,
    rate: float,
    keys: int,
    max_keys: int,
    poison_burst: int,
    drain_timeout: float,
    seed: int | None,
    work_dir: Path,
    header_names: bool,
    list_kinds: bool,
) -> None:
    """Feed one worker (both demo pipelines) valid events mixed with hostile records and check
    what it does with each.

    \b
    Hostile kinds (see --list-kinds): a 1,030,000-byte value and a 600,000-byte key (poison pills,
    each followed by a valid canary on the same partition), keys that are missing, not UTF-8 or
    another entity's, invalid UTF-8 and JSON, nesting bombs, NaN/Infinity/1e400, unknown schema
    versions, wrong types, missing fields, values out of range, forged x-dlq-*/x-source-* headers,
    hundreds of headers, ... each with the dead-letter reason the worker must give.

    \b
    Prints one line:
    fuzz: hostile=N valid=M kinds=K lost=0 hostile_predicted=0 wrong_reason=0 exits=0
          canary_max_s=X peak_rss_mb=Y duplicates=0 dlq_problems=0 valid_dead=0 stop_status=0
          canaries=C latency_max_s=L worker_cpu_s=S seconds=T [modes] result=ok|FAIL
    lost: valid events without a prediction and hostile records without a dead letter;
    wrong_reason: dead letters with another reason than the kind's; dlq_problems: dead letters
    whose headers, key or value break the dead-letter contract; exits: the worker exited during
    the run; canary_max_s: the longest time from a canary's append to the log to its prediction
    (latency_max_s: the same over every valid event); peak_rss_mb: the worker's VmHWM. Burst mode
    adds poison_burst=N peak_rss_mb_burst=...; keys mode adds keys=N peak_rss_mb_unbounded=...
    peak_rss_mb_max_keys=... Then dead letters per reason, each mode's detail, and examples of
    each violation.

    Exit status 1 on any violation. Starts and stops a local Kafka in a temporary directory unless
    KAFKA_BOOTSTRAP_SERVERS is set.
    """
    from stream_infer.tools.fuzz import FuzzSettings, kinds_table, run_fuzz

    if list_kinds:
        click.echo(kinds_table())
        return
    seed = random.randrange(1_000_000) if seed is None else seed
    settings = FuzzSettings(
        hostile=hostile,
        valid=valid,
        partitions=partitions,
        rate=rate,
        seed=seed,
        drain_timeout_s=drain_timeout,
        keys=keys,
        max_keys=max_keys,
        work_dir=work_dir,
        header_names=header_names,
        poison_burst=poison_burst,
    )
    click.echo(f"fuzz: seed {seed}")
    result = run_fuzz(settings, bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None, echo=click.echo)
    click.echo(result.line())
    for line in result.report():
        click.echo(line)
    sys.exit(1 if result.failed else 0)
