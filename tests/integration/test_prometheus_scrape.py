"""A real Prometheus (Debian's `prometheus` package; `make test` installs it) scrapes a worker, and
its query API returns the worker's lag gauge per partition, equal to Kafka's lag (log-end minus
committed), and its counters."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from support import create_inputs, feed, write_config

from stream_infer.kafka.admin import group_lag
from stream_infer.tools.devkafka.local import free_port
from stream_infer.tools.workerproc import WorkerProcess

EVENTS = 400


def _query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _until(predicate, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(every)
    return None


def test_prometheus_scrapes_the_worker_lag_gauge(kafka_bootstrap: str, unique, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package `prometheus`; `make test` installs it)")
    prefix = unique("prom")
    cfg = write_config(tmp_path, prefix)
    create_inputs(kafka_bootstrap, cfg)
    engines = cfg.pipeline("engines")
    worker = WorkerProcess(cfg.path, kafka_bootstrap, tmp_path / "w").start()
    prom_port = free_port({worker.web_port})
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: stream-infer\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{worker.web_port}']\n"
    )
    prom = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),
    )
    try:
        worker.wait_ready()
        feed(kafka_bootstrap, engines.input_topic, "cmapss-test", stop=EVENTS)
        # Drained and committed: Kafka's own lag is 0 on every partition.
        assert _until(lambda: all(p.lag == 0 for p in group_lag(kafka_bootstrap, prefix, [engines.input_topic])), 60)

        up = _until(lambda: _query(prom_port, 'up{job="stream-infer"}'), 30)
        assert up and up[0]["value"][1] == "1", (tmp_path / "prometheus.log").read_text()[-2000:]

        selector = f'stream_infer_consumer_lag_messages{{pipeline="engines",topic="{engines.input_topic}"}}'

        # The monitor samples every second and Prometheus scrapes every second: wait for zeros.
        def three_zeros():
            result = _query(prom_port, selector)
            return result if len(result) == 3 and all(s["value"][1] == "0" for s in result) else None

        series = _until(three_zeros, 30)
        assert series, _query(prom_port, selector)
        assert sorted(s["metric"]["partition"] for s in series) == ["0", "1", "2"]
        assert all(s["metric"]["job"] == "stream-infer" for s in series)

        seconds = _query(prom_port, f'stream_infer_consumer_lag_seconds{{pipeline="engines",topic="{engines.input_topic}"}}')
        assert len(seconds) == 3 and all(float(s["value"][1]) == 0 for s in seconds)
        predictions = _until(
            lambda: [
                r
                for r in _query(prom_port, 'stream_infer_predictions_total{pipeline="engines"}')
                if float(r["value"][1]) == EVENTS
            ],
            20,
        )
        assert predictions, _query(prom_port, 'stream_infer_predictions_total{pipeline="engines"}')
        mode = _query(prom_port, 'stream_infer_controller_mode{pipeline="engines"} == 1')
        assert [m["metric"]["mode"] for m in mode] == ["latency"]
    finally:
        prom.terminate()
        prom.wait(10)
        worker.stop()
