"""The benchmark harness runs every phase end to end (tiny sizes) and writes its JSON and PNG.

Figures are not asserted here (timed assertions do not belong in tests); `make bench` prints them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stream_infer.tools.bench.harness import Plan, run_bench


def test_bench_harness_smoke(kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    lines: list[str] = []
    results = run_bench(quick=True, out_dir=tmp_path, echo=lines.append, plan=Plan.smoke())
    written = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert (tmp_path / "burst.png").stat().st_size > 10_000
    burst = written["burst"]
    assert burst["burst_events"] == 20_000 and burst["drain_seconds"] > 0 and burst["samples"]
    assert burst["samples"][-1]["mode"] == "latency" and burst["samples"][-1]["lag_messages"] == 0
    for mode in ("service", "service_eos", "per_event", "ceiling"):
        assert written["throughput_eps"][mode] > 0
        assert written["process"][mode]["peak_rss_mb"] > 0
    assert written["process"]["service"]["events"] >= 4_000 and written["process"]["ceiling"]["events"] >= 4_000
    assert set(written["latency_ms"]) == {"10eps", "10pct", "50pct", "80pct"}
    warm = written["latency_warmup"]  # a broker the run did not start: no PID to watch, the minimum only
    assert warm["events"] > 0 and warm["seconds"] >= 0.5 and warm["broker_jit_cores"] is None and warm["p99_last_5s"] >= 0
    assert all(v["events"] > 0 and v["p99"] >= v["p50"] >= 0 for v in written["latency_ms"].values())
    assert set(results["targets"]) >= {
        "service_vs_ceiling",
        "ok_service_ge_0.7_ceiling",
        "ok_p99_at_10eps_le_15ms",
        "exactly_once_vs_service",
        "ok_exactly_once_ge_0.8_service",
    }
    assert any(line.startswith("service") for line in lines)
    assert os.environ["KAFKA_BOOTSTRAP_SERVERS"] == kafka_bootstrap


def test_decision_bench_smoke(kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench --transactions` end to end at a low rate: warm-up, measured phase, JSON."""
    from stream_infer.tools.bench.decisions import run_decision_bench

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    lines: list[str] = []
    results = run_decision_bench(rate=200, seconds=2, warmup_seconds=1, warmup_max_seconds=2, out_dir=tmp_path, echo=lines.append)
    written = json.loads((tmp_path / "decisions.json").read_text())
    assert written == results
    assert written["pipeline"] == "transactions" and written["decisions"] == 400
    lat = written["latency_ms"]
    assert lat["p99"] >= lat["p95"] >= lat["p50"] >= 0 and written["in_worker_ms"]["p99"] >= 0
    warm = written["warm_up"]  # a broker the run did not start: no PID to watch, the minimum only
    assert warm["events"] >= 200 and warm["broker_jit_cores"] is None and not warm["broker_jit_settled"]
    assert any(line.startswith("decision latency at 200 tx/s over 400 decisions") for line in lines)
