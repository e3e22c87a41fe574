"""Card payments end to end: served equals offline through a kill -9, and bad transactions go to
the dead-letter topic with their reasons while the worker keeps going.

A simulated stream (a seed training never used) is fed as a backlog. Two ways to lose state:
one worker killed with SIGKILL a third of the way through and restarted (at-least-once), and a
scaling group of two where one is killed and the survivor takes its partitions over in the
rebalance (exactly-once). Every valid transaction must then have a prediction (exactly one under
exactly-once), and every prediction (duplicates included) must equal what `stream-infer score`
gives for the same events from a file: the per-card aggregates came back from the changelog
exactly where the committed offsets were."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from support import create_inputs, write_config

from stream_infer.datasets.transactions import SimulatorSettings, transaction_events
from stream_infer.tools.reader import TopicReader
from stream_infer.tools.replay import bad_events
from stream_infer.tools.workerproc import WorkerProcess

SETTINGS = SimulatorSettings(seed=4242, customers=120, days=40)


def _stream() -> list[tuple[bytes | None, bytes, str | None]]:
    """(key, value, the dead-letter reason it must get or None) in produce order."""
    events = [(key, value, None) for key, value in transaction_events(SETTINGS)]
    bad = [(key, value, reason) for reason, key, value in bad_events("transactions")]
    # The bad ones in the middle of the stream, so later events of the same cards follow them.
    cut = len(events) // 2
    return [*events[:cut], *bad, *events[cut:]]


def _served(reader: TopicReader, topic: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in reader.records[topic]:
        prediction = record.json()
        out.setdefault(prediction["input"]["tx_id"], []).append(prediction)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("guarantee", "group_size"),
    [("at_least_once", 1), ("exactly_once", 2)],
    ids=["kill-9-and-restart", "kill-9-in-a-group-of-two-exactly-once"],
)
def test_served_equals_offline_through_a_kill_9(
    kafka_bootstrap: str, unique, tmp_path: Path, guarantee: str, group_size: int
) -> None:
    from confluent_kafka import Producer

    cfg = write_config(tmp_path, unique("pay"), only=("transactions",), worker={"processing_guarantee": guarantee})
    pipeline = cfg.pipeline("transactions")
    create_inputs(kafka_bootstrap, cfg, partitions=4)
    stream = _stream()
    valid_ids = {orjson.loads(v)["tx_id"] for _, v, reason in stream if reason is None}
    bad = [reason for _, _, reason in stream if reason is not None]
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    for key, value, _ in stream:
        producer.produce(pipeline.input_topic, key=key, value=value)
        producer.poll(0)
    assert producer.flush(30) == 0

    workers = [WorkerProcess(cfg.path, kafka_bootstrap, tmp_path / f"w{i}").start() for i in range(group_size)]
    for w in workers:
        w.wait_ready()  # the first creates the output topics
    reader = TopicReader(kafka_bootstrap, [pipeline.topics.predictions, pipeline.topics.dead_letters])
    try:
        assert reader.until(lambda: len(reader.records[pipeline.topics.predictions]) >= len(valid_ids) // 3, 120), workers[
            0
        ].log_tail()
        workers[0].kill()
        assert len(_served(reader, pipeline.topics.predictions)) < len(valid_ids), "finished before the kill: not mid-stream"
        if group_size == 1:  # restarted; in a group the survivor takes the partitions over
            workers[0] = WorkerProcess(cfg.path, kafka_bootstrap, tmp_path / "w0").start()
            workers[0].wait_ready()
        else:
            workers.pop(0)
        done = reader.until(
            lambda: (
                set(_served(reader, pipeline.topics.predictions)) >= valid_ids
                and len(reader.records[pipeline.topics.dead_letters]) >= len(bad)
            ),
            180,
        )
        assert done, f"{len(_served(reader, pipeline.topics.predictions))} of {len(valid_ids)} predicted\n{workers[0].log_tail()}"
        while reader.poll(1.0):
            pass
    finally:
        reader.close()
        stopped = [(w.stop(), w) for w in workers]
    for status, w in stopped:
        assert status == 0, w.log_tail()

    served = _served(reader, pipeline.topics.predictions)
    assert set(served) == valid_ids, "every valid transaction has a prediction, and nothing else has one"
    if guarantee == "exactly_once":
        twice = [tx_id for tx_id, predictions in served.items() if len(predictions) > 1]
        assert not twice, f"{len(twice)} transactions predicted more than once under exactly-once, e.g. {twice[:3]}"
    reasons = sorted(r.header("x-dlq-reason").decode() for r in reader.records[pipeline.topics.dead_letters])  # type: ignore[union-attr]
    assert reasons == sorted(bad)

    # Offline: the same events, in the same order, from a file.
    events_file, scored_file = tmp_path / "tx.jsonl", tmp_path / "scored.jsonl"
    events_file.write_bytes(b"".join(v + b"\n" for _, v, reason in stream if reason is None))
    subprocess.run(
        [sys.executable, "-m", "stream_infer.cli", "score", "-c", str(cfg.path), "-p", "transactions"]
        + ["--input", str(events_file), "--output", str(scored_file), "--no-progress"],
        check=True,
        timeout=300,
    )
    offline = {p["input"]["tx_id"]: p for p in map(orjson.loads, scored_file.read_bytes().splitlines())}
    assert set(offline) == valid_ids
    differ = []
    for tx_id, predictions in served.items():
        want = offline[tx_id]["outputs"]
        for p in predictions:  # duplicates (at-least-once after the kill) included
            got = p["outputs"]
            if got["label"] != want["label"] or abs(got["fraud_probability"] - want["fraud_probability"]) > 1e-6:
                differ.append((tx_id, got, want))
    assert not differ, f"{len(differ)} served predictions differ from offline ones, e.g. {differ[:3]}"
    assert sum(p["outputs"]["label"] for p in offline.values()) > 0, "the stream must contain frauds the model flags"
