"""`stream-infer fuzz`: hostile input against a real worker on a real Kafka."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from stream_infer.cli.options import F, seed_option, work_dir_option

# The run's size and its modes, in --help order: (option, type, default, help).
_SIZES: tuple[tuple[str, click.ParamType, float | None, str], ...] = (
    ("--hostile", click.IntRange(min=1), 2000, "Hostile records, all pipelines together (each kind as often as the others)."),
    ("--valid", click.IntRange(min=0), None, "Valid events mixed in, all pipelines together.  [default: as many as --hostile]"),
    ("--partitions", click.IntRange(min=1, max=64), 3, "Partitions of every topic of the run."),
    (
        "--rate",
        click.FloatRange(min=0),
        1000.0,
        "Records produced per second, all pipelines together (0: as fast as possible). Above what the "
        "machine sustains, canary times measure the backlog rather than the worker.",
    ),
    (
        "--keys",
        click.IntRange(min=0),
        0,
        "Keys mode: after the hostile run, feed this many distinct engine ids (one valid event each) "
        "to a fresh worker, without and with --max-keys, and report its peak RSS both ways. 0: skip.",
    ),
    ("--max-keys", click.IntRange(min=1), 10_000, "Keys mode: the bounded worker's pipelines[].state.max_keys (engines)."),
    (
        "--poison-burst",
        click.IntRange(min=0),
        0,
        "Burst mode: after the hostile run, this many 1 MB poison values, lz4-compressed on the wire, as a "
        "backlog that a fresh worker drains; reports its peak RSS. 0: skip.",
    ),
    ("--drain-timeout", click.FloatRange(min=5), 120.0, "Seconds after the last record is produced for every output to arrive."),
)


def _settings_options(command: F) -> F:
    """An option per FuzzSettings field, in --help order: those of :data:`_SIZES`, then --seed,
    --work-dir and --header-names. The command passes each on as the field of its name
    (--drain-timeout: drain_timeout_s)."""
    options = [click.option(name, type=kind, default=default, help=help_text) for name, kind, default, help_text in _SIZES]
    options += [
        seed_option("the order of the feed"),
        work_dir_option(".stream-infer/fuzz", "The run's configs and worker logs."),
        click.option(
            "--header-names",
            is_flag=True,
            help="Also produce, first on each pipeline, a valid event whose header name is not UTF-8 (needs kcat: "
            "the Python client cannot write one). It must get an output, and so must the records fetched with it.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command()
@_settings_options
@click.option("--list-kinds", is_flag=True, help="Print every hostile kind with its expected reason per pipeline, and exit.")
def fuzz(list_kinds: bool, drain_timeout: float, **options: Any) -> None:
    """Feed one worker (the demo's engines, machines and transactions pipelines) valid events
    mixed with hostile records and check what it does with each.

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
    settings = FuzzSettings(drain_timeout_s=drain_timeout, **options)
    click.echo(f"fuzz: seed {settings.seed}")
    result = run_fuzz(settings, bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None, echo=click.echo)
    click.echo(result.line())
    for line in result.report():
        click.echo(line)
    sys.exit(1 if result.failed else 0)
