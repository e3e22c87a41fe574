"""`stream-infer lag --group G`: a consumer group's lag per partition, and its health, Burrow-style.

Contract: one-shot mode prints exactly what the first report of `--watch` would be, i.e. after
`--samples` samples taken `--interval` seconds apart. The rules live in :mod:`stream_infer.lagstatus`;
this module only samples offsets, reads record timestamps and prints.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click
import orjson
from confluent_kafka import KafkaException

from stream_infer.cli.options import connection_from, kafka_options
from stream_infer.kafka import admin
from stream_infer.kafka.connection import KafkaConnection
from stream_infer.kafka.preflight import ConnectionFailure, connect
from stream_infer.lagstatus import GroupReport, OffsetSample, PartitionKey, Status, Windows, build_report

CONNECT_TIMEOUT_S = 5.0  # the first metadata request: an unreachable broker is reported within this
REQUEST_TIMEOUT_S = 10.0  # each later admin request
PROBE_TIMEOUT_S = 2.0  # reading the record at the committed offset, for LAG-SECONDS

COLUMNS = ("TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "LAG-SECONDS", "STATUS")

Round = dict[PartitionKey, OffsetSample]


class LagError(Exception):
    """A problem the user must fix (group, topic or broker address); exit status 2."""


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


class Sampler:
    """Reads rounds of the group's offsets through one admin client (a client per round would
    pay a bootstrap round trip each time)."""

    def __init__(self, connection: KafkaConnection, group: str, topics: list[str]) -> None:
        self.connection, self.group, self.topics = connection, group, topics
        self.bootstrap = connection.bootstrap
        try:
            self.client = connect(connection, CONNECT_TIMEOUT_S)
        except ConnectionFailure as err:
            hint = ""
            if err.unreachable:
                hint = (
                    ". Start a local one with `stream-infer kafka up`, or point --bootstrap-servers "
                    "(or KAFKA_BOOTSTRAP_SERVERS) at a running cluster"
                )
            raise LagError(f"{err}{hint}") from err

    def round(self) -> tuple[float, Round]:
        """(wall-clock time, offsets of every partition) at one instant."""
        now = time.time()
        try:
            lags = admin.group_lag(self.connection, self.group, self.topics or None, REQUEST_TIMEOUT_S, admin=self.client)
        except KafkaException as err:
            raise LagError(
                f"reading the offsets of group {self.group!r} on {self.bootstrap} failed: {err.args[0].str()}"
            ) from err
        except RuntimeError as err:  # a --topic that does not exist
            raise LagError(f"{err}; check the --topic names") from err
        return now, {(p.topic, p.partition): OffsetSample(p.committed, p.log_end) for p in lags}

    def explain_empty(self) -> str:
        """Why the group has nothing to report, and what to do next."""
        try:
            state = admin.group_state(self.client, self.group, REQUEST_TIMEOUT_S)
        except KafkaException:
            state = "UNKNOWN"
        what = "does not exist" if state == "DEAD" else f"has no committed offsets (state {state})"
        return (
            f"consumer group {self.group!r} {what} on {self.bootstrap}. Check the name, or pass "
            "--topic T to show T's partitions with no committed offset."
        )

    def timestamps(self, latest: Round) -> dict[PartitionKey, float]:
        """Timestamp of the record at the committed offset of every partition with lag."""
        wanted = {key: s.committed for key, s in latest.items() if s.committed is not None and (s.lag or 0) > 0}
        return admin.record_timestamps(self.connection, wanted, PROBE_TIMEOUT_S, group=self.group)


def format_table(report: GroupReport) -> str:
    """Aligned columns like kafka-consumer-groups ("-" for unknown), then `group G: STATUS`."""
    rows = [COLUMNS] + [
        tuple(_cell(v) for v in (p.topic, p.partition, p.committed, p.log_end, p.lag, p.lag_seconds, p.status))
        for p in report.partitions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([*lines, f"group {report.group}: {report.status}"])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def format_json(report: GroupReport) -> str:
    return orjson.dumps(report.to_dict()).decode()


def run(sampler: Sampler, windows: Windows, interval: float, watch: bool, emit: Callable[[GroupReport], None]) -> None:
    """Sample every `interval` s; once the window is full, emit a report (then, with `watch`,
    one after every further sample, until interrupted)."""
    taken = 0
    next_at = time.monotonic()
    while True:
        try:
            now, round_ = sampler.round()
        except LagError as err:
            if not (watch and taken):  # a bad first round is a setup problem; later ones may pass
                raise
            click.echo(f"warning: {err}; skipping this sample", err=True)
        else:
            if taken == 0 and not round_:
                raise LagError(sampler.explain_empty())
            windows.add(round_)
            taken += 1
            if taken >= windows.size:
                report = build_report(sampler.group, windows, now, sampler.timestamps(windows.latest()))
                emit(report)
                if not watch:
                    return
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:  # fell behind (a slow broker or probe): carry on from now rather than burst
            next_at = time.monotonic()


HELP = """Lag of a consumer group per partition, and its health over a window of samples.

Per partition: COMMITTED offset, LOG-END offset, LAG = log-end - committed (exactly as
kafka-consumer-groups --describe computes it; "-" where the group never committed), LAG-SECONDS =
age of the oldest unprocessed record, i.e. the one at the committed offset (0 without lag; "-" if
it cannot be read within 2 s), and STATUS, judged over the last --samples samples taken --interval
seconds apart, by the first rule that matches (Burrow's rules, adapted to offsets only):

\b
  OK      lag was 0 in at least one sample
  REWIND  the committed offset went backwards between two samples
  STOP    committed offset unchanged, lag > 0, log end growing: nobody consumes
  STALL   committed offset unchanged, lag > 0, log end unchanged: backlog left untouched
  WARN    committed offset advancing, but lag never fell and ended higher: falling behind
  OK      otherwise (e.g. lag shrinking: catching up)

The group's status is its worst partition's: OK < WARN < STALL < STOP < REWIND; NOTFOUND when
no partition has a committed offset. Partitions without one get no status ("-").

One-shot mode takes --samples samples, so it runs about (samples-1)*interval seconds (4 s by
default); --samples 1 reads once, sees no trend and always says OK. --watch prints a report after
every further sample, judged over the latest --samples, until Ctrl-C (--json: one object per line).

Exit status: 0; with --check, 1 unless the group's status is OK (with --watch: the last one
printed); 2 if the group has no committed offsets and no --topic is given, a topic does not exist,
or no broker answers within 5 seconds (or it refuses the credentials or the TLS handshake).
"""


@click.command(help=HELP)
@click.option("-g", "--group", required=True, help="Consumer group id.")
@kafka_options
@click.option(
    "-t",
    "--topic",
    "topics",
    multiple=True,
    help="Report every partition of this topic, committed or not (repeatable). "
    "Default: the partitions the group has committed offsets for.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per report instead of a table.")
@click.option("--watch", is_flag=True, help="Keep sampling and printing until Ctrl-C.")
@click.option("--check", is_flag=True, help="Exit 1 unless the group's status is OK (needs --samples >= 2).")
@click.option(
    "--interval", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="Seconds between samples."
)
@click.option("--samples", type=click.IntRange(min=1), default=5, show_default=True, help="Samples per evaluation window.")
def lag(
    group: str,
    bootstrap_servers: str | None,
    kafka_properties: Path | None,
    topics: tuple[str, ...],
    as_json: bool,
    watch: bool,
    check: bool,
    interval: float,
    samples: int,
) -> None:
    if check and samples < 2:
        raise click.UsageError("--check needs --samples 2 or more: a single sample shows no trend, so it is always OK")
    printer = Printer(as_json)
    try:
        sampler = Sampler(connection_from(bootstrap_servers, kafka_properties), group, list(topics))
        run(sampler, Windows(samples), interval, watch, printer)
    except LagError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        if not watch:
            raise  # click reports "Aborted!" with exit status 1
    if check:
        sys.exit(0 if printer.last_status == Status.OK else 1)


class Printer:
    """Prints reports as tables (a blank line between them) or JSON lines; keeps the last status."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.printed = 0
        self.last_status: Status | None = None

    def __call__(self, report: GroupReport) -> None:
        if self.as_json:
            click.echo(format_json(report))
        else:
            click.echo(("\n" if self.printed else "") + format_table(report))
        sys.stdout.flush()  # --watch output piped to another program must arrive as it is made
        self.printed += 1
        self.last_status = report.status
