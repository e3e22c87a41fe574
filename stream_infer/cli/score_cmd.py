"""`stream-infer score -c CONFIG -p PIPELINE --input FILE --output FILE`: batch (offline) scoring
of a file through the worker's stages (see :mod:`stream_infer.runtime.score`). No Kafka."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import IO

import click

from stream_infer.cli.options import config_option
from stream_infer.config import ConfigError, PipelineConfig, load_config
from stream_infer.runtime.score import DEFAULT_BATCH_SIZE, BatchScorer, csv_values, jsonl_values
from stream_infer.stages.engine import ModelError

_PATH = click.Path(dir_okay=False, allow_dash=True, path_type=str)


@click.command()
@config_option("TOML config file, the worker's (see docs/configuration.md). No broker is contacted.")
@click.option(
    "-p",
    "--pipeline",
    "pipeline_name",
    metavar="NAME",
    default=None,
    help="Pipeline to score with. Default: the config's only one.",
)
@click.option(
    "-i",
    "--input",
    "input_path",
    type=click.Path(dir_okay=False, allow_dash=True, exists=True, path_type=str),
    required=True,
    help="Events to score, one per line (JSON lines) or row (CSV); - for stdin.",
)
@click.option("-o", "--output", "output_path", type=_PATH, required=True, help="Output JSON lines, one per input; - for stdout.")
@click.option("--alerts", "alerts_path", type=_PATH, default=None, help="Write alerts here (JSON lines). Default: only counted.")
@click.option(
    "--input-format",
    type=click.Choice(["jsonl", "csv"]),
    default=None,
    help="Default: csv for a .csv file, else jsonl.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 65_536),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Events per batch through the stages; the output does not depend on it.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
def score(
    config_path: Path,
    pipeline_name: str | None,
    input_path: str,
    output_path: str,
    alerts_path: str | None,
    input_format: str | None,
    batch_size: int,
    progress: bool | None,
) -> None:
    """Score a file of events offline with a pipeline of CONFIG, through the same stages as the
    worker (decode, validate, features with per-key state, model, scores, alerts): each output is
    what the worker would publish for that event. See docs/batch-scoring.md.

    \b
    Output: one JSON line per input line, in input order:
      a prediction, as on the predictions topic, less `source` and `latency_ms`;
      or {"dead_letter": {"reason": R, "detail": D}, "line": N, "key": K} (N from 1;
      K the line's key field as text; null if it has none, does not parse or is
      oversized).

    Every line is an event: a blank or unparseable line is a dead letter (invalid_json, ...),
    never an error. The event's key field plays the Kafka key. CSV: a header row, then one event
    per row; a cell that is a JSON number becomes that number, any other a string. Per-key state
    (windows, alert runs) carries across batches. The staleness policy is off: an event's age
    means nothing offline. Review copies are not repeated (see outputs.review).

    Ends with a summary on stderr. Exit status 0, whatever the dead letters; 2 for a bad config,
    model or pipeline name, with one line saying why.
    """
    try:
        config = load_config(config_path)
        pipeline = _pipeline(config.pipelines, pipeline_name, config_path)
        scorer = BatchScorer(pipeline)
    except (ConfigError, ModelError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    csv_input = (input_format or ("csv" if input_path.lower().endswith(".csv") else "jsonl")) == "csv"
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm import tqdm  # only when scoring: the import costs start-up time

    with ExitStack() as files:
        source = files.enter_context(_open_input(input_path))
        values: Iterator[bytes]
        if csv_input:
            text = io.TextIOWrapper(source, encoding="utf-8", errors="surrogateescape", newline="")
            files.callback(text.detach)  # the wrapper would close `source` (stdin, maybe) when collected
            values = csv_values(text)
        else:
            values = jsonl_values(source)
        # The output files are opened only once the config and model loaded: a bad config
        # leaves an earlier output in place.
        out = files.enter_context(_open_output(output_path))
        alerts = files.enter_context(_open_output(alerts_path)) if alerts_path else None
        bar = files.enter_context(tqdm(unit="ev", disable=not show, desc=f"score {pipeline.name}", file=sys.stderr))
        summary = scorer.score(
            values, out.write, write_alert=alerts.write if alerts else None, batch_size=batch_size, progress=bar.update
        )
    click.echo(summary.line(), err=True)


def _pipeline(pipelines: list[PipelineConfig], name: str | None, config_path: Path) -> PipelineConfig:
    """The pipeline called `name` (the only one when None); ConfigError listing the names otherwise."""
    names = ", ".join(p.name for p in pipelines)
    if name is None:
        if len(pipelines) == 1:
            return pipelines[0]
        raise ConfigError(f"{config_path} has {len(pipelines)} pipelines: choose one with -p ({names})")
    for pipeline in pipelines:
        if pipeline.name == name:
            return pipeline
    raise ConfigError(f"{config_path} has no pipeline {name!r}; it has: {names}")


def _open_input(path: str) -> AbstractContextManager[IO[bytes]]:
    """The input as a binary stream; - is stdin (left open at the end)."""
    if path == "-":
        return nullcontext(click.get_binary_stream("stdin"))
    return open(path, "rb")


def _open_output(path: str) -> AbstractContextManager[IO[bytes]]:
    """An output as a binary stream; - is stdout (flushed, left open at the end)."""
    if path == "-":
        stdout = click.get_binary_stream("stdout")
        return _flushing(stdout)
    return open(path, "wb")


@contextmanager
def _flushing(stream: IO[bytes]) -> Iterator[IO[bytes]]:
    try:
        yield stream
    finally:
        stream.flush()
