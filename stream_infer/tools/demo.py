"""The demo: everything end to end on a local Kafka that it starts and stops itself.

Starts Kafka (own state dir), creates the topics, starts a worker, replays C-MAPSS test_FD001,
AI4I 2020 and 30 days of simulated card payments, each followed by one event of every dead-letter
class, shows alerts as they come, waits until every input is accounted for, and summarises:
counts, end-to-end latency, the RUL RMSE computed from the served predictions (which must equal
the offline figure in the model's metadata), and the payments reconciled by tx_id against the
simulator's record of them, with the served fraud scores' average precision.

With `secure`, the cluster is `kafka up --secure`'s: the worker connects as the service principal
svc (SCRAM-SHA-512 over TLS, only the ACLs `stream-infer acls` lists for the demo config), the
demo's own feeding and reading as the super user admin.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from confluent_kafka import Producer

from stream_infer.config import load_config
from stream_infer.configs import DEMO_CONFIG
from stream_infer.datasets import load_rul
from stream_infer.datasets.transactions import SimulatorSettings, simulate, transaction_events
from stream_infer.kafka.admin import create_topics
from stream_infer.kafka.connection import KafkaConnection, as_connection, resolve
from stream_infer.models import MODELS_DIR
from stream_infer.records import InputRecord
from stream_infer.tools.devkafka import local
from stream_infer.tools.reader import TopicReader
from stream_infer.tools.replay import KeyedEvent, bad_events, dataset_events, replay
from stream_infer.tools.workerproc import WorkerProcess

_client_log = logging.getLogger("stream_infer.kafka.client")
INPUT_PARTITIONS = 6
#: The data set each pipeline is fed with (and whose bad events follow it).
FEEDS = {"engines": "cmapss-test", "machines": "ai4i", "transactions": "transactions"}
#: The simulated payments the demo replays: a seed training never saw (its model was trained on
#: stream_infer.tools.training.transactions.SETTINGS), 30 days of 200 cards.
DEMO_TRANSACTIONS = SimulatorSettings(seed=2026, customers=200, days=30)


def feed_events(dataset: str) -> Iterator[KeyedEvent]:
    """The events the demo replays for `dataset`."""
    if dataset == "transactions":
        return transaction_events(DEMO_TRANSACTIONS)
    return dataset_events(dataset)


def served_rul_rmse(predictions: list[dict]) -> float:
    """RMSE against RUL_FD001 of each test engine's prediction at its last cycle.

    The last cycle of a unit is its prediction with the highest input offset (one key lives in one
    partition, in cycle order); duplicates (at-least-once) carry the same source and are merged.
    """
    last: dict[int, tuple[int, float]] = {}
    for p in predictions:
        unit, offset = int(p["key"]), p["source"]["offset"]
        if unit not in last or offset > last[unit][0]:
            last[unit] = (offset, p["outputs"]["rul"])
    truth = load_rul()
    units = np.arange(1, len(truth) + 1)
    if set(last) != set(units.tolist()):
        raise RuntimeError(f"predictions for {len(last)} of {len(truth)} test engines")
    served = np.array([last[u][1] for u in units.tolist()], dtype=np.float64)
    return float(np.sqrt(np.mean((served - truth) ** 2)))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (the area under the precision-recall steps, as scikit-learn computes
    it: one step per distinct score, highest first)."""
    order = np.argsort(-scores, kind="stable")
    labels, scores = labels[order], scores[order]
    last_of_score = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    true_positives = np.cumsum(labels)[last_of_score]
    precision = true_positives / (last_of_score + 1)
    recall = true_positives / max(int(labels.sum()), 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def payments_summary(predictions: list[dict]) -> dict:
    """The transactions pipeline reconciled against the simulator's own record of the stream:
    whether every transaction has a prediction (by input.tx_id), and the quality of the served
    fraud probabilities against the simulator's labels."""
    truth = {e["tx_id"]: e["is_fraud"] for e in simulate(DEMO_TRANSACTIONS)}
    served: dict[str, float] = {}
    for p in predictions:
        served[p["input"]["tx_id"]] = p["outputs"]["fraud_probability"]
    ids = sorted(truth)
    labels = np.array([truth[i] for i in ids], dtype=np.int64)
    scores = np.array([served.get(i, -1.0) for i in ids], dtype=np.float64)
    return {
        "transactions": len(truth),
        "predicted": len(set(served) & set(truth)),
        "unknown": len(set(served) - set(truth)),
        "frauds": int(labels.sum()),
        "average_precision": round(average_precision(labels, scores), 4),
    }


def _dlq_reason(record: InputRecord) -> str:
    reason = record.header("x-dlq-reason")
    if reason is None:
        raise RuntimeError(f"dead letter {record.partition}@{record.offset} with a null x-dlq-reason")
    return reason.decode()


def _feed(bootstrap: KafkaConnection | str, topics: dict[str, str], rate: float | None, echo) -> dict[str, int]:
    """Replay every feed at `rate` events/s each, in parallel threads, then its bad events."""
    counts: dict[str, int] = {}

    def one(name: str) -> None:
        producer = Producer(
            as_connection(bootstrap).client_config(
                **{"acks": "all", "enable.idempotence": True, "linger.ms": 5, "logger": _client_log}
            )
        )
        sent = replay(producer, topics[name], feed_events(FEEDS[name]), rate=rate)
        bad = bad_events(FEEDS[name])
        for _, key, value in bad:
            producer.produce(topics[name], key=key, value=value)
        producer.flush(30)
        counts[name] = sent + len(bad)
        echo(f"replayed {sent} {FEEDS[name]} events and {len(bad)} bad ones into {topics[name]}")

    threads = [threading.Thread(target=one, args=(name,)) for name in topics]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if set(counts) != set(topics):
        raise RuntimeError("a replay thread failed; see the error above")
    return counts


def run_demo(
    echo: Callable[[str], None] = print, *, rate: float | None = 1000.0, timeout: float = 150.0, secure: bool = False
) -> dict:
    config = load_config(DEMO_CONFIG)
    pipelines = {p.name: p for p in config.pipelines}
    with tempfile.TemporaryDirectory(prefix="stream-infer-demo-") as tmp:
        tmp_path = Path(tmp)
        started = time.monotonic()
        state = tmp_path / "kafka"
        cluster, _ = local.up(state, port=0, secure=secure)
        echo(
            f"Kafka {cluster.version} up at {cluster.bootstrap}{' (SASL_SSL, ACLs)' if secure else ''} "
            f"in {time.monotonic() - started:.1f} s"
        )
        # The demo itself creates, feeds and reads as admin; the worker is svc (see the docstring).
        admin: KafkaConnection = (
            resolve(properties_file=state / "admin.properties") if secure else as_connection(cluster.bootstrap)
        )
        worker_env = {"STREAM_INFER_KAFKA_PROPERTIES": str(state / "client-scram.properties")} if secure else None
        worker = None
        try:
            create_topics(admin, [p.input_topic for p in pipelines.values()], partitions=INPUT_PARTITIONS)
            worker = WorkerProcess(DEMO_CONFIG, cluster.bootstrap, tmp_path / "worker", env=worker_env).start()
            echo(f"worker ready in {worker.wait_ready():.1f} s (metrics: {worker.url('/metrics')})")

            events_in = _feed(admin, {name: pipelines[name].input_topic for name in FEEDS}, rate, echo)

            topics = {name: p.topics for name, p in pipelines.items()}
            alert_topics = {t.alerts for t in topics.values() if t.alerts}
            reader = TopicReader(
                admin, [t for ts in topics.values() for t in (ts.predictions, ts.alerts, ts.dead_letters, ts.review) if t]
            )

            def show(record: InputRecord) -> None:
                if record.topic in alert_topics:
                    a = record.json()
                    tx = f" tx={a['input']['tx_id']}" if "input" in a else ""
                    echo(
                        f"  ALERT {a['pipeline']:<12} key={a['key']:<7} {a['rule']} score={a['score']:.3f} after {a['count']} event(s){tx}"
                    )

            def accounted(name: str) -> int:
                t = topics[name]
                return len(
                    {(r.json()["source"]["partition"], r.json()["source"]["offset"]) for r in reader.records[t.predictions]}
                ) + len(reader.records[t.dead_letters])

            if not reader.until(lambda: all(accounted(n) >= events_in[n] for n in FEEDS), timeout, show):
                raise RuntimeError(
                    f"not every input was processed within {timeout:.0f} s: {[(n, accounted(n), events_in[n]) for n in FEEDS]}\n{worker.log_tail()}"
                )
            # Alerts of the last batch travel beside its predictions: read until the topics are quiet.
            while reader.poll(1.0, show):
                pass
            summary = _summary(reader, topics, events_in, time.monotonic() - started)
            payments = summary["pipelines"]["transactions"]["payments"]
            if payments["predicted"] != payments["transactions"] or payments["unknown"]:
                raise RuntimeError(f"the transactions do not reconcile by tx_id: {payments}")
            reader.close()
        finally:
            if worker is not None:
                worker.stop()
            local.down(state, wipe=True)
    return summary


def _summary(reader: TopicReader, topics: dict, events_in: dict, seconds: float) -> dict:
    predictions, latencies, per_pipeline = [], [], {}
    for name, t in topics.items():
        preds = [(r, r.json()) for r in reader.records[t.predictions]]
        dlq = reader.records[t.dead_letters]
        per_pipeline[name] = {
            "events_in": events_in[name],
            "predictions": len(preds),
            "alerts": len(reader.records[t.alerts]) if t.alerts else 0,
            "dlq": len(dlq),
            "dlq_reasons": sorted({_dlq_reason(r) for r in dlq}),
            "review": len(reader.records[t.review]) if t.review else 0,
        }
        latencies += [r.timestamp_ms - p["source"]["timestamp_ms"] for r, p in preds]
        if name == "engines":
            predictions = [p for _, p in preds]
        if name == "transactions":
            per_pipeline[name]["payments"] = payments_summary([p for _, p in preds])
    offline = json.loads((MODELS_DIR / "engines_rul.json").read_text())["metrics"]["rmse_test"]  # from training
    lat = np.asarray(latencies, dtype=np.float64)
    return {
        "events_in": sum(p["events_in"] for p in per_pipeline.values()),
        "predictions": sum(p["predictions"] for p in per_pipeline.values()),
        "alerts": sum(p["alerts"] for p in per_pipeline.values()),
        "dlq": sum(p["dlq"] for p in per_pipeline.values()),
        "review": sum(p["review"] for p in per_pipeline.values()),
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
        "rul_rmse": round(served_rul_rmse(predictions), 4),
        "rul_rmse_offline": offline,
        "pipelines": per_pipeline,
        "seconds": round(seconds, 1),
    }
