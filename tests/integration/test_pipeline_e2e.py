"""The worker end to end on the real broker: counts reconcile, order per key, contracts, DLQ reasons."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import fastjsonschema
import orjson
from support import ROOT, create_inputs, feed, output_topics, write_config

from stream_infer.stages.outputs import EXCERPT_BYTES
from stream_infer.tools.reader import TopicReader
from stream_infer.tools.replay import bad_events
from stream_infer.tools.workerproc import WorkerProcess

N_ENGINES = 3000
N_MACHINES = 2000
# The last 3000 events of C-MAPSS train in replay (cycle) order: the final cycles of the longest-lived
# engines, which all run to failure, so the alert rule has something to find.
ENGINES_FROM = 20_631 - N_ENGINES


def _validator(name: str):
    return fastjsonschema.compile(orjson.loads((ROOT / "schemas" / name).read_bytes()))


def test_counts_reconcile_order_holds_and_bad_input_goes_to_the_dlq(kafka_bootstrap: str, unique, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, unique("e2e"))
    create_inputs(kafka_bootstrap, cfg)
    engines, machines = cfg.pipeline("engines"), cfg.pipeline("machines")
    bad = {"engines": bad_events("cmapss-test"), "machines": bad_events("ai4i")}
    # Bad events are mixed in: half the good events before them, half after.
    sent = {
        "engines": feed(
            kafka_bootstrap,
            engines.input_topic,
            "cmapss-train",
            start=ENGINES_FROM,
            stop=ENGINES_FROM + N_ENGINES // 2,
            extra=[(k, v) for _, k, v in bad["engines"]],
        ),
        "machines": feed(
            kafka_bootstrap, machines.input_topic, "ai4i", stop=N_MACHINES // 2, extra=[(k, v) for _, k, v in bad["machines"]]
        ),
    }
    worker = WorkerProcess(cfg.path, kafka_bootstrap, tmp_path / "w").start()
    worker.wait_ready()  # the worker creates the output topics
    reader = TopicReader(kafka_bootstrap, output_topics(cfg))
    try:
        # More good events after the bad ones: the replay continues where it stopped.
        sent["engines"] += feed(kafka_bootstrap, engines.input_topic, "cmapss-train", start=ENGINES_FROM + N_ENGINES // 2)
        sent["machines"] += feed(kafka_bootstrap, machines.input_topic, "ai4i", start=N_MACHINES // 2, stop=N_MACHINES)

        def accounted(p) -> int:
            return len(reader.records[p.topics.predictions]) + len(reader.records[p.topics.dead_letters])

        done = reader.until(lambda: accounted(engines) >= sent["engines"] and accounted(machines) >= sent["machines"], 120)
        assert done, (
            f"not all inputs processed: {accounted(engines)}/{sent['engines']}, {accounted(machines)}/{sent['machines']}\n{worker.log_tail()}"
        )
        while reader.poll(1.0):  # alerts of the last batch
            pass
    finally:
        assert worker.stop() == 0, worker.log_tail()
        reader.close()

    prediction_ok, alert_ok = _validator("prediction.v1.json"), _validator("alert.v1.json")
    for p in (engines, machines):
        preds = reader.records[p.topics.predictions]
        dlq = reader.records[p.topics.dead_letters]
        # inputs = predictions + dead letters, and no input twice (a clean run has no duplicates)
        sources = [(r.json()["source"]["partition"], r.json()["source"]["offset"]) for r in preds]
        dead = [(int(r.header("x-source-partition")), int(r.header("x-source-offset"))) for r in dlq]
        assert len(sources) + len(dead) == sent[p.name]
        assert len(set(sources) | set(dead)) == sent[p.name]
        # every bad event in the DLQ with the right reason, original bytes and source headers
        # (an oversized value is kept as an excerpt: stream_infer.stages.outputs)
        expected = sorted(
            (reason, value if len(value) <= p.max_message_bytes else value[:EXCERPT_BYTES]) for reason, _, value in bad[p.name]
        )
        assert sorted((r.header("x-dlq-reason").decode(), r.value) for r in dlq) == expected
        assert all(r.header("x-source-topic").decode() == p.input_topic for r in dlq)
        # per-key order: each key's predictions appear in increasing input offset, keyed like the input
        by_key: dict[bytes, list[int]] = defaultdict(list)
        for r in preds:
            value = r.json()
            prediction_ok(value)
            assert r.key == value["key"].encode()
            assert value["source"]["topic"] == p.input_topic and value["source"]["partition"] == r.partition
            by_key[r.key].append(value["source"]["offset"])
        assert all(offsets == sorted(offsets) for offsets in by_key.values())
        for r in reader.records[p.topics.alerts]:
            alert_ok(r.json())

    engine_alerts = [r.json() for r in reader.records[engines.topics.alerts]]
    assert engine_alerts, "the C-MAPSS replay contains engines near failure: expected alerts"
    assert all(a["count"] == 3 and a["score"] < 30 for a in engine_alerts)
    # The alerts are exactly those the rule (3 below 30 in a row, re-armed by 5 at or above) gives
    # on the served predictions, recomputed here independently.
    served = defaultdict(list)
    for r in reader.records[engines.topics.predictions]:
        v = r.json()
        served[v["key"]].append((v["source"]["offset"], v["outputs"]["rul"]))
    expected_alerts = set()
    for key, series in served.items():
        run, armed, clear = 0, True, 0
        for offset, rul in sorted(series):
            if rul < 30:
                clear = 0
                if armed:
                    run += 1
                    if run == 3:
                        expected_alerts.add((key, offset))
                        armed, run = False, 0
            else:
                run = 0
                if not armed:
                    clear += 1
                    if clear == 5:
                        armed, clear = True, 0
    assert {(a["key"], a["inputs"][-1]["offset"]) for a in engine_alerts} == expected_alerts
    reviews = reader.records[machines.topics.review]
    assert all(
        cfg.pipeline("machines").outputs.review_low <= r.json()["outputs"]["failure_probability"] < 0.194476 for r in reviews
    )
