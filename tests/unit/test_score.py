"""`stream-infer score`: a file through the worker's stages, no broker. Held to: one output line
per input line in order; predictions equal to the model run directly; the dead letters the
worker would give; output independent of the batch size (per-key state carries across chunks);
the prediction JSON is the finisher's, less source and latency_ms; the command's exit codes and
its CSV input."""

from __future__ import annotations

import csv
import io
from itertools import islice
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from stream_infer.cli.score_cmd import score
from stream_infer.config import Config, PipelineConfig, StalenessConfig, load_config
from stream_infer.configs import demo_config_data, keep_pipelines, pipeline_table, write_config
from stream_infer.runtime.score import BatchScorer, csv_values, jsonl_values
from stream_infer.stages.engine import InferenceEngine
from stream_infer.stages.features import Featurizer
from stream_infer.stages.finish import BatchFinisher
from stream_infer.stages.prepare import BatchPreparer
from stream_infer.state import StateStore
from stream_infer.tools.replay import bad_events, dataset_events

AI4I_EVENTS = 2_000
CMAPSS_EVENTS = 13_096  # all of C-MAPSS test: windows of 30 fill, then slide; late cycles breach the rule


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped demo config's `engines` and `machines` pipelines, as a file."""
    return write_config(keep_pipelines(demo_config_data(), "engines", "machines"), tmp_path_factory.mktemp("score") / "demo.toml")


@pytest.fixture(scope="module")
def config(config_path: Path) -> Config:
    return load_config(config_path)


def _pipeline(config: Config, name: str) -> PipelineConfig:
    return next(p for p in config.pipelines if p.name == name)


@pytest.fixture(scope="module")
def ai4i() -> list[bytes]:
    return [value for _, value in islice(dataset_events("ai4i"), AI4I_EVENTS)]


@pytest.fixture(scope="module")
def cmapss() -> list[bytes]:
    return [value for _, value in islice(dataset_events("cmapss-test"), CMAPSS_EVENTS)]


def _bad_lines() -> list[tuple[str, bytes]]:
    """(the reason expected, the line) for every dead-letter class a line of a file can give.

    bad_events() speaks of Kafka records; in a file the key comes from the line itself, so its
    key-only cases (missing_key, oversized_key, invalid_key, key_mismatch with a good value) are
    good lines here (the last two cannot be written in a file at all), and the key cases a line
    can make are made from the event instead."""
    lines = [(reason, value) for reason, key, value in bad_events("ai4i") if key is not None and value != _good()]
    event = orjson.loads(_good())
    lines += [
        ("missing_key", orjson.dumps({k: v for k, v in event.items() if k != "product_id"})),
        ("oversized_key", orjson.dumps(dict(event, product_id="L" + "4" * 2000))),
        ("wrong_type", orjson.dumps(dict(event, product_id=47181))),  # a key the worker would send as "47181"
        ("wrong_type", orjson.dumps(dict(event, product_id=None))),
        ("invalid_json", b""),  # a blank line is an input too
        ("invalid_json", b"[1, 2]"),
        ("invalid_json", b"   "),
    ]
    return lines


def _good() -> bytes:
    return next(iter(dataset_events("ai4i")))[1]


def _with_bad_lines(good: list[bytes]) -> tuple[list[bytes], list[str | None]]:
    """`good` with the bad lines spread through it; and per line, its dead-letter reason (None: valid)."""
    values: list[bytes] = list(good)
    expected: list[str | None] = [None] * len(good)
    for n, (reason, line) in enumerate(_bad_lines()):
        at = 37 + n * 131
        values.insert(at, line)
        expected.insert(at, reason)
    return values, expected


def _score(pipeline: PipelineConfig, values: list[bytes], batch_size: int = 1024) -> tuple[list[dict], list[dict]]:
    """Output lines and alerts of a BatchScorer run, parsed."""
    out, alerts = io.BytesIO(), io.BytesIO()
    BatchScorer(pipeline).score(values, out.write, write_alert=alerts.write, batch_size=batch_size)
    return _json_lines(out.getvalue()), _json_lines(alerts.getvalue())


def _json_lines(data: bytes) -> list[dict]:
    return [orjson.loads(line) for line in data.splitlines()]


# --- (1) machines: every line answered, in order, the model's outputs, the worker's dead letters


def test_machines_one_line_per_input_with_the_models_outputs(config: Config, ai4i: list[bytes]) -> None:
    machines = _pipeline(config, "machines")
    values, expected = _with_bad_lines(ai4i)
    lines, _ = _score(machines, values, batch_size=500)
    assert len(lines) == len(values)
    for n, (line, reason) in enumerate(zip(lines, expected), start=1):
        if reason is None:
            assert "dead_letter" not in line, (n, line)
        else:
            assert line["dead_letter"]["reason"] == reason, (n, line)
            assert line["line"] == n
    predictions = [line for line in lines if "dead_letter" not in line]
    assert len(predictions) == len(ai4i)
    events = [orjson.loads(v) for v in ai4i]
    assert [p["key"] for p in predictions] == [e["product_id"] for e in events]
    assert all("source" not in p and "latency_ms" not in p for p in predictions)

    # The model run directly on the Featurizer's rows of the valid events, in one batch.
    engine = InferenceEngine(machines.model, width=machines.features.width, outputs=[machines.outputs.output], device="cpu")
    keys = [e["product_id"] for e in events]
    matrix = Featurizer(machines.features).matrix(events, keys, [0] * len(events), StateStore())
    direct = engine.run(matrix)[machines.outputs.output][:, machines.outputs.positive_class]
    scored = np.array([p["outputs"][machines.outputs.score_name] for p in predictions])
    np.testing.assert_allclose(scored, direct, rtol=1e-6, atol=1e-7)  # float32 precision
    threshold, review_low = machines.outputs.threshold, machines.outputs.review_low
    assert threshold is not None and review_low is not None
    assert [p["outputs"]["label"] for p in predictions] == (scored >= threshold).astype(int).tolist()
    assert [p["outputs"]["review"] for p in predictions] == ((scored >= review_low) & (scored < threshold)).tolist()


def test_dead_letters_say_the_lines_key(config: Config, ai4i: list[bytes]) -> None:
    """The key of a dead letter is the line's key field as text; null when absent, when the line
    does not parse (then the reason is the parse error's, not missing_key) or is oversized."""
    event = orjson.loads(ai4i[0])
    values = [
        orjson.dumps(dict(event, torque_nm="hot")),
        orjson.dumps(dict(event, product_id=47181)),
        b"\xff\xfe" + ai4i[0],
        ai4i[0].replace(b"}", b",", 1),
        orjson.dumps({k: v for k, v in event.items() if k != "product_id"}),
        orjson.dumps(dict(event, padding="x" * 70_000)),  # not even parsed: oversized whatever it holds
    ]
    lines, _ = _score(_pipeline(config, "machines"), values)
    assert [(line["dead_letter"]["reason"], line["key"]) for line in lines] == [
        ("wrong_type", event["product_id"]),
        ("wrong_type", "47181"),
        ("invalid_encoding", None),
        ("invalid_json", None),
        ("missing_key", None),
        ("oversized", None),
    ]


# --- (2) engines: per-key windows carry across chunks, whatever the batch size


def test_engines_output_does_not_depend_on_the_batch_size(config: Config, cmapss: list[bytes]) -> None:
    engines = _pipeline(config, "engines")
    runs = {size: _score(engines, cmapss, batch_size=size) for size in (1, 7, 1024)}
    lines, alerts = runs[1024]
    assert len(lines) == len(cmapss) and all("dead_letter" not in line for line in lines)
    assert alerts, "the data set breaches the demo rule; an empty list would prove nothing"
    for size in (1, 7):
        assert runs[size] == (lines, alerts), f"--batch-size {size} differs from 1024"

    # Each event's window built by hand from its engine's history: state did carry.
    events = [orjson.loads(v) for v in cmapss]
    fields, window = engines.features.fields, engines.features.window
    history: dict[int, list[list[float]]] = {}
    rows = []
    for e in events:
        seen = history.setdefault(e["unit"], [])
        seen.append([e[f] for f in fields])
        last = seen[-window:]
        rows.append([last[0]] * (window - len(last)) + last)
    matrix = np.asarray(rows, dtype=np.float32).reshape(len(events), -1)
    engine = InferenceEngine(engines.model, width=engines.features.width, outputs=[engines.outputs.output], device="cpu")
    direct = engine.run(matrix)[engines.outputs.output].reshape(len(events), -1)[:, 0]
    scored = np.array([line["outputs"][engines.outputs.score_name] for line in lines])
    np.testing.assert_allclose(scored, direct, rtol=1e-5, atol=1e-4)
    assert [line["key"] for line in lines] == [str(e["unit"]) for e in events]


# --- (3) the worker and score cannot drift: the same finisher messages


@pytest.mark.parametrize("name", ["machines", "engines"])
def test_outputs_are_the_finishers_less_source_and_latency(
    config: Config, name: str, ai4i: list[bytes], cmapss: list[bytes]
) -> None:
    pipeline = _pipeline(config, name)
    values = _with_bad_lines(ai4i)[0] if name == "machines" else cmapss[:1500]
    scorer = BatchScorer(pipeline)
    records, _ = scorer.records(values, 0)
    out, alerts = io.BytesIO(), io.BytesIO()
    scorer.score(values, out.write, write_alert=alerts.write, batch_size=len(values))
    lines = out.getvalue().splitlines()

    # The worker's stages by hand, on the same records, as Pipeline composes them.
    offline = pipeline.model_copy(update={"staleness": StalenessConfig()})
    store = StateStore(key_ttl_ms=offline.state.key_ttl_ms, max_keys=offline.state.max_keys)
    engine = InferenceEngine(offline.model, width=offline.features.width, outputs=[offline.outputs.output], device="cpu")
    batch = BatchPreparer(offline, store).prepare(records)
    assert batch.matrix is not None
    finisher = BatchFinisher(offline, {"name": engine.name, "version": engine.version}, store)
    messages, sources, _ = finisher.finish(batch, engine.run(batch.matrix), None, 0.0)

    topics = offline.topics
    published_alerts = []
    checked = 0
    for (topic, _, value, headers), source in zip(messages, sources):
        if topic == topics.predictions:
            published = orjson.loads(value)
            line = orjson.loads(lines[source.offset])  # type: ignore[union-attr]
            assert set(published) - set(line) == {"source", "latency_ms"}
            assert line == {k: v for k, v in published.items() if k not in ("source", "latency_ms")}
            checked += 1
        elif topic == topics.dead_letters:
            line = orjson.loads(lines[source.record.offset])  # type: ignore[union-attr]
            assert line["dead_letter"]["reason"].encode() == dict(headers or [])["x-dlq-reason"]
            checked += 1
        elif topic == topics.alerts:
            published_alerts.append(value)
    assert checked == len(values)
    assert alerts.getvalue().splitlines() == published_alerts


def test_staleness_is_off_and_a_failing_model_gives_dead_letters(config: Config, ai4i: list[bytes]) -> None:
    machines = _pipeline(config, "machines")
    # Every record's timestamp is 0: a worker with this policy would skip them all.
    strict = machines.model_copy(update={"staleness": StalenessConfig(max_event_age_ms=1)})
    lines, _ = _score(strict, ai4i[:50])
    assert len(lines) == 50 and all("outputs" in line for line in lines)

    scorer = BatchScorer(machines)

    def broken(matrix: np.ndarray) -> dict:
        raise RuntimeError("out of memory")

    scorer.engine.run = broken  # type: ignore[method-assign]
    out = io.BytesIO()
    summary = scorer.score(ai4i[:10], out.write)
    assert [line["dead_letter"]["reason"] for line in _json_lines(out.getvalue())] == ["model_error"] * 10
    assert summary.dead_letters == {"model_error": 10} and summary.predictions == 0


def test_records_are_what_a_consumer_would_hand_the_worker(config: Config, ai4i: list[bytes]) -> None:
    machines = _pipeline(config, "machines")
    timed = machines.model_copy(update={"features": machines.features.model_copy(update={"timestamp_field": "udi"})})
    values = [ai4i[0], b"not json", ai4i[1]]
    records, texts = BatchScorer(timed).records(values, 10)
    event = orjson.loads(ai4i[1])
    assert [(r.topic, r.partition, r.offset) for r in records] == [(machines.input_topic, 0, n) for n in (10, 11, 12)]
    assert [r.value for r in records] == values
    assert records[2].key == event["product_id"].encode() and texts[2] == event["product_id"]
    assert records[2].timestamp_ms == event["udi"]
    assert texts[1] is None and records[1].timestamp_ms == 0
    plain, _ = BatchScorer(machines).records(values, 0)
    assert plain[2].timestamp_ms == 0


# --- reading inputs


def test_jsonl_every_line_counts() -> None:
    data = b'{"a":1}\r\n\n{"b":2}\n  \n{"c":3}'
    assert list(jsonl_values(io.BytesIO(data))) == [b'{"a":1}', b"", b'{"b":2}', b"  ", b'{"c":3}']
    assert list(jsonl_values(io.BytesIO(b"x\n"))) == [b"x"]  # the final newline begins no line
    assert list(jsonl_values(io.BytesIO(b""))) == []


def test_csv_cells_become_json_values() -> None:
    text = 'n,f,s,z,big\r\n1,2.5,L47181,007,1e999\r\n-3,1e3,,"a,b",x\r\n1,2\r\n\r\n'
    rows = list(csv_values(io.StringIO(text, newline="")))
    assert rows[0] == b'{"n":1,"f":2.5,"s":"L47181","z":"007","big":1e999}'  # written as in the file
    assert orjson.loads(rows[1]) == {"n": -3, "f": 1000.0, "s": "", "z": "a,b", "big": "x"}
    assert orjson.loads(rows[2]) == ["1", "2"]  # a ragged row: a JSON array, hence invalid_json
    assert orjson.loads(rows[3]) == []  # a blank row likewise
    not_utf8 = io.TextIOWrapper(io.BytesIO(b"a,b\n\xff,1\n"), encoding="utf-8", errors="surrogateescape", newline="")
    assert list(csv_values(not_utf8)) == [b"\xff,1"]  # invalid_encoding


# --- (4) the command


def test_cli_csv_gives_the_jsonl_outputs(config_path: Path, ai4i: list[bytes], tmp_path: Path) -> None:
    events = [orjson.loads(v) for v in ai4i[:500]]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(ai4i[:500]) + b"\n")
    with open(tmp_path / "in.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(events[0]))
        writer.writeheader()
        writer.writerows(events)
    runner = CliRunner()
    outputs = {}
    for suffix in ("jsonl", "csv"):
        args = ["-c", str(config_path), "-p", "machines", "--input", str(tmp_path / f"in.{suffix}")]
        args += ["--output", str(tmp_path / f"{suffix}.out"), "--alerts", str(tmp_path / f"{suffix}.alerts"), "--no-progress"]
        result = runner.invoke(score, args)
        assert result.exit_code == 0, result.output
        assert "score machines: 500 event(s), 500 prediction(s), 0 dead letter(s)" in result.stderr
        assert "events/s" in result.stderr
        outputs[suffix] = ((tmp_path / f"{suffix}.out").read_bytes(), (tmp_path / f"{suffix}.alerts").read_bytes())
    assert outputs["csv"] == outputs["jsonl"]
    lines = _json_lines(outputs["csv"][0])
    assert len(lines) == 500 and lines[0]["key"] == events[0]["product_id"]
    assert outputs["csv"][1], "some AI4I readings breach the demo rule"


def test_cli_stdin_to_stdout_and_the_summary(config_path: Path, ai4i: list[bytes]) -> None:
    data = b"\n".join(ai4i[:20]) + b"\n\n{oops\n"
    result = CliRunner().invoke(
        score, ["-c", str(config_path), "-p", "machines", "-i", "-", "-o", "-", "--batch-size", "3"], input=data
    )
    assert result.exit_code == 0, result.stderr
    lines = _json_lines(result.stdout_bytes)
    assert len(lines) == 22 and all("outputs" in line for line in lines[:20])
    assert [line["line"] for line in lines[20:]] == [21, 22]
    assert "22 event(s), 20 prediction(s), 2 dead letter(s) (invalid_json: 2)" in result.stderr


def test_cli_bad_config_or_pipeline_exits_2(config_path: Path, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(b"{}\n")
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(score, [*args, "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")])
        return result.exit_code, result.stderr

    code, err = run("-c", str(config_path), "-p", "nope")
    assert code == 2 and err.startswith("error:") and "no pipeline 'nope'" in err and "engines, machines" in err
    code, err = run("-c", str(config_path))
    assert code == 2 and "choose one with -p (engines, machines)" in err
    code, err = run("-c", str(tmp_path / "missing.toml"), "-p", "machines")
    assert code == 2 and "error:" in err and "does not exist" in err
    data = demo_config_data()
    pipeline_table(data, "machines")["batching"]["max_batch_sise"] = 5  # a typo is an error
    code, err = run("-c", str(write_config(data, tmp_path / "typo.toml")), "-p", "machines")
    assert code == 2 and "max_batch_sise" in err
    assert not (tmp_path / "out.jsonl").exists(), "a failed start writes no output"


def test_cli_model_error_exits_2(tmp_path: Path) -> None:
    data = keep_pipelines(demo_config_data(), "machines")
    pipeline_table(data, "machines")["features"]["fields"].append("udi")  # one column more than the model reads
    path = write_config(data, tmp_path / "wide.toml")
    (tmp_path / "in.jsonl").write_bytes(b"{}\n")
    result = CliRunner().invoke(score, ["-c", str(path), "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.stderr.startswith("error: model machines_failure.onnx")
