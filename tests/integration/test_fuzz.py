"""The hostile-input fuzz harness: every kind dead-lettered with its reason in process (fast, no
broker), then the small run against a real broker and one worker process."""

from __future__ import annotations

import asyncio
import functools
import itertools
import shutil
import time
from pathlib import Path

import orjson
import pytest
from support import RecordingProducer

from stream_infer.config import PipelineConfig, load_config
from stream_infer.records import InputRecord
from stream_infer.stages.decode import REASONS
from stream_infer.stages.pipeline import Pipeline
from stream_infer.tools.fuzz import FuzzSettings, all_kinds, kinds_for, kinds_table, run_fuzz
from stream_infer.tools.fuzz.accounting import dead_letter_problems, expect_dead_letter
from stream_infer.tools.fuzz.kinds import DATASETS, POISON_KEY_BYTES, POISON_VALUE_BYTES, Hostile, build, first_base
from stream_infer.tools.fuzz.kinds import PIPELINES as FUZZ_PIPELINES
from stream_infer.tools.fuzz.run import SEQUENCE_FIELDS, keys_phase, share
from stream_infer.tools.replay import dataset_events

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_config(ROOT / "stream_infer" / "configs" / "demo.toml")
# The pipelines the hostile kinds know (stream_infer.tools.fuzz.kinds.PIPELINES, which the run feeds).
PIPELINES = {
    p.name: p.model_copy(update={"sequence_field": SEQUENCE_FIELDS.get(p.name)})
    for p in CONFIG.pipelines
    if p.name in FUZZ_PIPELINES
}
# Valid events around each hostile record: the batch first takes the all-valid fast path
# (stream_infer.stages.batchcheck), which must refuse it; then the per-event path names the reason.
AROUND = 10


def _cases() -> list[tuple[str, str]]:
    return [(pipeline, kind.name) for pipeline in PIPELINES for kind in kinds_for(pipeline)]


_OPEN: dict[str, tuple[Pipeline, RecordingProducer]] = {}


def _pipeline(name: str) -> tuple[Pipeline, RecordingProducer]:
    """One in-process pipeline per demo pipeline for all the kind tests (loading a model costs),
    which has accepted the base event (the replayed_* kinds repeat it)."""
    if name not in _OPEN:
        producer = RecordingProducer()
        pipeline = Pipeline(PIPELINES[name], producer, changelog=None)  # type: ignore[arg-type]
        _OPEN[name] = (pipeline, producer)
        base = _base(name)
        asyncio.run(pipeline.process([InputRecord(base.key, base.value, "in", 0, 0, int(time.time() * 1000))], time.monotonic()))
        assert [m[0] for m in producer.messages] == [PIPELINES[name].topics.predictions]
    return _OPEN[name]


@pytest.fixture(scope="module", autouse=True)
def _close_pipelines():
    yield
    while _OPEN:
        _OPEN.popitem()[1][0].close()


@functools.cache
def _base(name: str):
    config = PIPELINES[name]
    return first_base(name, max_message_bytes=config.max_message_bytes, max_key_bytes=config.max_key_bytes)


@functools.cache
def _stream(name: str) -> list[tuple[bytes, bytes]]:
    """Valid events after the base, in data-set order: each test takes the next 2 * AROUND (a
    pipeline that checks order per key would refuse an event it has already accepted)."""
    return list(itertools.islice(dataset_events(DATASETS[name]), 1, 1 + 2 * AROUND * len(_cases())))


def test_every_pipeline_has_at_least_30_kinds_and_every_input_reason() -> None:
    for name in PIPELINES:
        kinds = kinds_for(name)
        assert len(kinds) >= 30
        assert {k.reasons[name] for k in kinds} <= set(REASONS)
    # Every reason a record itself can cause (model_error and output_rejected come later); the
    # machines and transactions pipelines do not check order per key, so out_of_order is the
    # engines' alone.
    assert set(PIPELINES) == {"engines", "machines", "transactions"}
    assert {k.reasons[p] for p in PIPELINES for k in kinds_for(p)} == set(REASONS) - {"model_error", "output_rejected"}
    for name in ("machines", "transactions"):
        assert {k.reasons[name] for k in kinds_for(name)} == set(REASONS) - {
            "model_error",
            "output_rejected",
            "out_of_order",
        }, name
    names = [k.name for k in all_kinds()]
    assert len(names) == len(set(names))
    assert all(f"`{n}`" in kinds_table() for n in names)


def test_poison_pills_have_the_sizes_the_run_promises() -> None:
    kinds = {k.name: k for k in all_kinds()}
    for name in PIPELINES:
        base = first_base(name)
        value = build(kinds["poison_value_1mb"], base)
        key = build(kinds["poison_key_600kb"], base)
        assert len(value.value) == POISON_VALUE_BYTES == 1_030_000
        assert len(key.key) == POISON_KEY_BYTES == 600_000 and key.value == base.value
        assert kinds["poison_value_1mb"].poison and kinds["poison_key_600kb"].poison


@pytest.mark.parametrize(("pipeline_name", "kind_name"), _cases())
def test_kind_is_dead_lettered_with_its_reason(pipeline_name: str, kind_name: str) -> None:
    """In process: the kind amid valid events gets one well-formed dead letter with its reason
    and no prediction; the valid events around it are predicted."""
    config: PipelineConfig = PIPELINES[pipeline_name]
    kind = next(k for k in kinds_for(pipeline_name) if k.name == kind_name)
    hostile = build(kind, _base(pipeline_name))
    pipeline, producer = _pipeline(pipeline_name)
    now = int(time.time() * 1000)
    case = _cases().index((pipeline_name, kind_name))
    valid = _stream(pipeline_name)[2 * AROUND * case : 2 * AROUND * (case + 1)]
    offset = 1_000 * (case + 1)  # offsets increase across the tests
    records = [InputRecord(k, v, "in", 0, offset + i, now) for i, (k, v) in enumerate(valid[:AROUND])]
    records.append(InputRecord(hostile.key, hostile.value, "in", 0, offset + AROUND, now, tuple(hostile.headers)))
    records += [InputRecord(k, v, "in", 0, offset + AROUND + 1 + i, now) for i, (k, v) in enumerate(valid[AROUND:])]
    producer.messages.clear()
    asyncio.run(pipeline.process(records, time.monotonic()))
    dead = [m for m in producer.messages if m[0] == config.topics.dead_letters]
    predicted = [m for m in producer.messages if m[0] == config.topics.predictions]
    assert [dict(m[3])["x-dlq-reason"].decode() for m in dead] == [kind.reasons[pipeline_name]], (
        dict(dead[0][3]).get("x-dlq-detail") if dead else None
    )
    assert len(predicted) == 2 * AROUND
    assert offset + AROUND not in {orjson.loads(m[2])["source"]["offset"] for m in predicted}
    expected = expect_dead_letter(
        kind.name,
        kind.reasons[pipeline_name],
        hostile,
        max_message_bytes=config.max_message_bytes,
        max_key_bytes=config.max_key_bytes,
    )
    _, key, value, headers = dead[0]
    assert dead_letter_problems(expected, key, value, headers, ("in", 0, offset + AROUND)) == []


def test_dead_letter_check_catches_a_forged_or_unbounded_dead_letter() -> None:
    hostile = Hostile(b"1", b"x" * 70_000, (("x-dlq-reason", b"model_error"),))
    expected = expect_dead_letter("k", "oversized", hostile, max_message_bytes=65_536, max_key_bytes=1024)
    good = [
        ("x-original-x-dlq-reason", b"model_error"),
        ("x-dlq-reason", b"oversized"),
        ("x-source-topic", b"in"),
        ("x-source-partition", b"0"),
        ("x-source-offset", b"5"),
        ("x-dlq-value-bytes", b"70000"),
    ]
    assert dead_letter_problems(expected, b"1", b"x" * 1024, good, ("in", 0, 5)) == []
    forged = [("x-dlq-reason", b"model_error"), *good[1:]]  # the spoof copied under its own name
    assert any("x-dlq-reason" in p for p in dead_letter_problems(expected, b"1", b"x" * 1024, forged))
    assert any("value" in p for p in dead_letter_problems(expected, b"1", b"x" * 70_000, good))
    assert any("x-source" in p for p in dead_letter_problems(expected, b"1", b"x" * 1024, good, ("in", 0, 6)))


def test_small_fuzz_run_against_a_real_worker(kafka_bootstrap: str, tmp_path: Path) -> None:
    """About 2,000 hostile records over every kind and as many valid events, every pipeline
    (engines, machines, transactions), one worker: nothing lost, nothing hostile predicted, every reason right, every dead letter
    well formed, the worker alive throughout and stopped with status 0, every canary predicted;
    then a small burst of poison values drained by a fresh worker."""
    settings = FuzzSettings(hostile=2000, seed=20240611, work_dir=tmp_path, drain_timeout_s=60, poison_burst=20)
    result = run_fuzz(settings, bootstrap=kafka_bootstrap, echo=lambda line: None)
    report = "\n".join([result.line(), *result.report()])
    assert not result.failed, report
    assert result.hostile == 2000 and result.valid >= 2000, report
    assert result.kinds == len(all_kinds()), report
    assert (
        result.lost,
        result.hostile_predicted,
        result.wrong_reason,
        result.dlq_problems,
        result.duplicates,
        result.valid_dead,
        result.exits,
        result.stop_status,
    ) == (0, 0, 0, 0, 0, 0, 0, 0), report
    # Two poison kinds per pipeline, in every full round of its kinds.
    assert result.canaries >= sum(2 * (share(2000, p) // len(kinds_for(p))) for p in FUZZ_PIPELINES), report
    assert result.canary_max_s is not None and result.peak_rss_mb > 0, report
    assert result.line().startswith("fuzz: hostile=2000 "), report
    # Burst mode: a backlog of 1 MB poison values, all dead-lettered by a fresh worker.
    assert result.burst is not None and (result.burst.dead_letters, result.burst.predicted) == (20, 0), report
    assert result.burst.stop_status == 0 and result.burst.peak_rss_mb > 0, report


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat (Debian package) not installed: it writes the header")
def test_header_name_that_is_not_utf8_loses_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    """An event whose header name the client cannot decode is processed like any other, and so
    is every event fetched in the same batch."""
    settings = FuzzSettings(hostile=200, seed=7, work_dir=tmp_path, drain_timeout_s=10, header_names=True)
    result = run_fuzz(settings, bootstrap=kafka_bootstrap, echo=lambda line: None)
    assert result.probes == len(FUZZ_PIPELINES)
    assert not result.failed, "\n".join([result.line(), *result.report()])


def test_keys_mode_reports_both_workers(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Keys mode, small: every distinct engine id predicted by both workers; the unbounded one
    holds them all, the bounded one at most max_keys plus the keys of the batches in hand."""
    settings = FuzzSettings(keys=5000, max_keys=500, work_dir=tmp_path, drain_timeout_s=60)
    unbounded, bounded = keys_phase(settings, kafka_bootstrap, 0), keys_phase(settings, kafka_bootstrap, settings.max_keys)
    for run in (unbounded, bounded):
        assert run.error is None and not run.exited and run.stop_status == 0, run
        assert (run.predicted, run.dead_letters) == (5000, 0), run
        assert run.peak_rss_mb > 0, run
    assert unbounded.state_keys == 5000 and not unbounded.evictions, unbounded
    assert bounded.state_keys <= 500 + bounded.batch_slack and bounded.evictions >= 5000 - 500 - bounded.batch_slack, bounded


def test_docs_list_every_kind_with_its_reasons() -> None:
    """docs/hostile-input.md carries the table `stream-infer fuzz --list-kinds` prints."""
    assert kinds_table() in (ROOT / "docs" / "hostile-input.md").read_text()
