"""`stream-infer bench --transactions`: decision latency of the fraud pipeline at a fixed rate.

A fraud team's number: from the moment a card transaction is appended to the input topic to the
moment its scored decision is appended to the predictions topic (both topics use LogAppendTime,
so the broker's clock stamps both ends and the load generator's queueing is not counted), at an
offered rate of `rate` transactions/s of the simulator's card stream, on the demo config's
`transactions` pipeline (per-card aggregates, the fraud model, alerts and review). An unmeasured
warm-up at the same rate comes first, at least `warmup_seconds` and then until a broker this run
started has compiled its request paths (see bench/jvm.py): the figures are a running service's,
not its first seconds, nor a fresh broker's.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stream_infer.configs import demo_config_data, keep_pipelines, rename_under, write_config
from stream_infer.datasets.transactions import SimulatorSettings, transaction_events
from stream_infer.kafka.admin import create_topics
from stream_infer.tools.bench.harness import PARTITIONS, broker, latencies, paced, warm_up
from stream_infer.tools.reader import TopicReader
from stream_infer.tools.workerproc import WorkerProcess

#: The card stream the load is drawn from (a seed training never used): 2,000 cards over 120
#: days, about 470,000 transactions, so a warm-up and the measured phase never repeat one.
STREAM = SimulatorSettings(seed=777, customers=2000, days=120)


def run_decision_bench(
    *,
    rate: float = 2000.0,
    seconds: float = 30.0,
    warmup_seconds: float = 10.0,
    warmup_max_seconds: float = 90.0,
    out_dir: Path,
    echo: Callable[[str], None] = print,
) -> dict:
    """Run the measurement (a local broker unless $KAFKA_BOOTSTRAP_SERVERS is set); returns the
    figures and writes them to out_dir/decisions.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    events = list(transaction_events(STREAM))
    needed = int(rate * (seconds + warmup_max_seconds)) + 1
    if len(events) < needed:
        raise RuntimeError(
            f"the simulated stream has {len(events)} transactions, {needed} are needed: lower --rate or the duration"
        )
    with tempfile.TemporaryDirectory(prefix="stream-infer-decisions-") as tmp:
        workdir = Path(tmp)
        with broker(workdir) as (bootstrap, broker_pid):
            warm = (warmup_seconds, warmup_max_seconds)
            results = _measure(bootstrap, broker_pid, workdir, events, rate, seconds, warm, echo)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["machine"] = {"cpus": os.cpu_count()}
    (out_dir / "decisions.json").write_text(json.dumps(results, indent=2))
    return results


def _measure(
    bootstrap: str,
    broker_pid: int | None,
    workdir: Path,
    events: list[tuple[bytes, bytes]],
    rate: float,
    seconds: float,
    warm: tuple[float, float],
    echo: Callable[[str], None],
) -> dict:
    prefix = f"bench-tx-{uuid.uuid4().hex[:8]}"
    data = rename_under(keep_pipelines(demo_config_data(), "transactions"), prefix)
    pipeline = data["pipelines"][0]
    topic, predictions = pipeline["input_topic"], pipeline["topics"]["predictions"]
    config = write_config(data, workdir / "transactions.toml")
    create_topics(bootstrap, [topic, predictions], partitions=PARTITIONS, config={"message.timestamp.type": "LogAppendTime"})
    worker = WorkerProcess(config, bootstrap, workdir / "worker").start()
    reader = TopicReader(bootstrap, [predictions], fetch_min_bytes=1_000_000)
    try:
        worker.wait_ready()
        warm_up_summary = warm_up(
            bootstrap,
            topic,
            events,
            rate,
            worker=worker,
            reader=reader,
            predictions=predictions,
            pipeline="transactions",
            broker_pid=broker_pid,
            min_seconds=warm[0],
            max_seconds=warm[1],
        )
        echo(warm_up_summary.pop("line"))
        sent = warm_up_summary["events"]
        count = int(rate * seconds)
        echo(f"measuring: {count:,} transactions at {rate:,.0f}/s")
        paced(bootstrap, topic, events[sent : sent + count], rate)
        if not reader.until(lambda: len(reader.records[predictions]) >= sent + count, 120):
            raise RuntimeError(f"not every measured decision arrived within 120 s\n{worker.log_tail()}")
        lat, inside = latencies(reader.records[predictions][sent:])
    finally:
        reader.close()
        worker.stop()
    figures = {f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)}
    in_worker = {f"p{q}": round(float(np.percentile(inside, q)), 1) for q in (50, 99)}
    result = {
        "pipeline": "transactions",
        "offered_tps": rate,
        "decisions": int(len(lat)),
        "latency_ms": figures,
        "in_worker_ms": in_worker,
        "warm_up": warm_up_summary,
        "target_p99_ms": 50.0,
        "ok_p99_le_50ms": figures["p99"] <= 50.0,
    }
    echo(
        f"decision latency at {rate:,.0f} tx/s over {len(lat):,} decisions: p50 {figures['p50']} ms, "
        f"p95 {figures['p95']} ms, p99 {figures['p99']} ms (in worker p50 {in_worker['p50']}, "
        f"p99 {in_worker['p99']}); target p99 <= 50 ms: {'yes' if figures['p99'] <= 50.0 else 'NO'}"
    )
    return result
