"""Smoke test of the GPU benchmark and of the timing-only CNN model (runs on a CPU-only machine).

Contract checked: :func:`stream_infer.tools.bench.gpu.run_bench` measures CPU rows for both models with
positive throughput; CUDA rows are either measured (a CUDA provider works here) or reported as
``skipped`` with a reason, never raised; ``engines_cnn_large.onnx`` has the engines signature and
matches the parameter count and hash recorded in its JSON. Needs numpy + onnxruntime only.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest

from stream_infer.tools.bench import gpu
from stream_infer.tools.training import cnn_large

MODELS = ("engines_rul", "engines_cnn_large")
CNN_ONNX = gpu.MODELS_DIR / "engines_cnn_large.onnx"
CNN_JSON = gpu.MODELS_DIR / "engines_cnn_large.json"


@pytest.fixture(scope="module")
def report() -> dict:
    # 0.2 s per config keeps the whole module well under 10 s on 2 cores.
    return gpu.run_bench(MODELS, [1, 64], 0.2, log=lambda _line: None)


def test_cpu_rows_are_measured(report: dict) -> None:
    cpu = [r for r in report["results"] if r["mode"] == "cpu"]
    assert {(r["model"], r["batch"]) for r in cpu} == {(m, b) for m in MODELS for b in (1, 64)}
    for row in cpu:
        assert row["status"] == "ok", row
        assert row["rows_per_s"] > 0 and row["batches"] >= gpu.MIN_TIMED_BATCHES
        assert 0 < row["p50_ms"] <= row["p99_ms"]


def test_cuda_rows_are_skipped_or_measured(report: dict) -> None:
    cuda_rows = [r for r in report["results"] if r["mode"] in gpu.CUDA_MODES]
    assert len(cuda_rows) == len(MODELS) * 2 * 2  # every model x batch x CUDA mode is reported
    if report["cuda"]["available"]:
        for row in cuda_rows:
            assert row["status"] == "ok", row
            assert row["rows_per_s"] > 0 and row["outputs_agree"], row
    else:
        assert report["cuda"]["reason"]
        assert all(r["status"] == "skipped" and r["note"] for r in cuda_rows)
        if gpu.CUDA_PROVIDER not in ort.get_available_providers():
            assert "no CUDAExecutionProvider" in report["cuda"]["reason"]


def test_report_describes_machine_and_is_json(report: dict) -> None:
    machine = report["machine"]
    assert machine["cpu_count"] and machine["onnxruntime_device"] and machine["available_providers"]
    json.dumps(report)  # what --json writes
    assert "SKIPPED" in gpu.format_table(report["results"]) or report["cuda"]["available"]


def test_cnn_large_signature_and_recorded_parameters() -> None:
    meta = json.loads(CNN_JSON.read_text(encoding="utf-8"))
    session = ort.InferenceSession(str(CNN_ONNX), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type) == ("features", "tensor(float)")
    assert inp.shape[1] == 420 and not isinstance(inp.shape[0], int)  # [None, 420]
    assert [o.name for o in session.get_outputs()] == ["rul"]
    assert session.run(["rul"], {"features": np.zeros((3, 420), np.float32)})[0].shape == (3, 1)

    # onnxruntime cannot list initializers, so the count is recorded at build time; check it
    # against the architecture (numpy-only) and against the file: float32 weights take 4 bytes each.
    params = meta["parameters"]
    assert abs(params - cnn_large.param_count()["total"]) <= 0.01 * params
    assert 900_000 <= params <= 1_100_000
    data = CNN_ONNX.read_bytes()
    assert 4 * params <= len(data) < 4 * params + 64_000 and len(data) < 5_000_000
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()  # the JSON describes this very file
    assert meta["purpose"] == "timing only: random weights, not trained"


def test_cuda_provider_that_falls_back_is_reported_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    # onnxruntime-gpu lists CUDA even when libcudart/cuDNN cannot load; the session then silently
    # runs on CPU. Simulate that: the probe must say so and print the LD_LIBRARY_PATH line.
    class FallbackSession:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def get_providers(self) -> list[str]:
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(gpu.ort, "get_available_providers", lambda: [gpu.CUDA_PROVIDER, "CPUExecutionProvider"])
    monkeypatch.setattr(gpu.ort, "InferenceSession", FallbackSession)
    monkeypatch.setattr(gpu, "preload_cuda_dlls", lambda: "stubbed")
    monkeypatch.setattr(gpu, "nvidia_library_dirs", lambda: ["/sp/nvidia/cu13/lib", "/sp/nvidia/cudnn/lib"])
    status = gpu.prepare_cuda(CNN_ONNX)
    assert not status.available and "fell back" in status.reason
    assert "export LD_LIBRARY_PATH=/sp/nvidia/cu13/lib:/sp/nvidia/cudnn/lib" in status.hint


def test_cli_writes_json(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert gpu.main(["--models", "engines_rul", "--batch-sizes", "8", "--seconds", "0.05", "--json", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert [r["mode"] for r in report["results"]] == list(gpu.MODES)
    assert "rows/s" in capsys.readouterr().out
