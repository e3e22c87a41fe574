"""Offline checks of the bundled ONNX models against their metadata (numpy + onnxruntime only).

Rebuilds the test features from the bundled data sets with ``stream_infer.tools.training.data`` (which
must not need sklearn or pandas) and recomputes the published metrics through onnxruntime, so the
JSON figures are exactly what the server will reproduce. No Kafka, no sklearn.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from stream_infer.models import MODELS_DIR
from stream_infer.tools.training import data

TOLERANCE = 1e-4
MAX_MODEL_BYTES = 5 * 1024 * 1024
ONNX_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}


def _metadata(name: str) -> dict:
    return json.loads((MODELS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def _session(name: str) -> ort.InferenceSession:
    path: Path = MODELS_DIR / _metadata(name)["onnx_file"]
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _shape(dims: list) -> list:
    """ONNX shapes name their batch dimension; the metadata writes unknown dimensions as null."""
    return [d if isinstance(d, int) else None for d in dims]


@pytest.mark.parametrize("name", ["engines_rul", "machines_failure"])
def test_io_matches_metadata(name: str) -> None:
    meta, sess = _metadata(name), _session(name)
    assert (MODELS_DIR / meta["onnx_file"]).stat().st_size < MAX_MODEL_BYTES
    (model_input,) = sess.get_inputs()
    assert model_input.name == meta["input"]["name"] == "features"
    assert model_input.type == ONNX_TYPES[meta["input"]["dtype"]]
    assert _shape(model_input.shape) == meta["input"]["shape"] == [None, len(meta["feature_order"]) * meta.get("window", 1)]
    outputs = [(o.name, o.type, _shape(o.shape)) for o in sess.get_outputs()]
    assert outputs == [(o["name"], ONNX_TYPES[o["dtype"]], o["shape"]) for o in meta["outputs"]]


def test_feature_orders_match_code() -> None:
    assert _metadata("engines_rul")["feature_order"] == data.ENGINE_FEATURES
    assert _metadata("engines_rul")["window"] == data.ENGINE_WINDOW
    assert _metadata("machines_failure")["feature_order"] == data.MACHINE_FEATURES


def test_loader_needs_no_training_libraries() -> None:
    code = "import sys, stream_infer.tools.training.data; print(sorted({'sklearn', 'pandas', 'skl2onnx'} & set(sys.modules)))"
    repo_root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    assert out.stdout.strip() == "[]"


def test_window_layout() -> None:
    history = np.arange(3 * 14, dtype=np.float64).reshape(3, 14)  # 3 cycles, 14 sensors
    window = data.window_features(history).reshape(data.ENGINE_WINDOW, 14)
    assert np.array_equal(window[: data.ENGINE_WINDOW - 2], np.repeat(history[:1], data.ENGINE_WINDOW - 2, axis=0))
    assert np.array_equal(window[-3:], history)  # current cycle last
    train = data.load_cmapss("train")[:200]
    X, _, _ = data.engine_windows(train)
    sensors = data.engine_sensor_rows(train)
    assert np.array_equal(X[40], data.window_features(sensors[:41]))


def test_engines_rmse_matches_metadata() -> None:
    meta = _metadata("engines_rul")
    X, units = data.last_windows(data.load_cmapss("test"))
    truth = data.load_rul()
    assert X.shape == (100, 420) and np.array_equal(units, np.arange(1, 101))
    (rul,) = _session("engines_rul").run(["rul"], {"features": X})
    rul = rul.reshape(-1).astype(np.float64)
    assert rul.min() >= 0.0 and rul.max() <= data.RUL_CAP  # clipped inside the graph
    rmse = float(np.sqrt(np.mean((rul - truth) ** 2)))
    rmse_capped = float(np.sqrt(np.mean((rul - np.minimum(truth, data.RUL_CAP)) ** 2)))
    assert rmse == pytest.approx(meta["metrics"]["rmse_test"], abs=TOLERANCE)
    assert rmse_capped == pytest.approx(meta["metrics"]["rmse_test_capped"], abs=TOLERANCE)
    assert rmse <= 18.0


def test_machines_metrics_match_metadata() -> None:
    meta = _metadata("machines_failure")
    metrics = meta["metrics"]
    events = data.load_ai4i()
    X = data.machine_features(events)
    y = np.array([e["machine_failure"] for e in events])
    udi = np.array([e["udi"] for e in events])
    parts = dict(zip(["train", "val", "test"], data.stratified_split(y)))
    assert {k: data.ids_digest(udi[v]) for k, v in parts.items()} == meta["split"]["udi_sha256_16"]

    sess = _session("machines_failure")
    threshold, review_low = metrics["threshold"], metrics["review_low"]
    assert 0.0 < review_low <= threshold < 1.0
    for part in ("val", "test"):
        label, proba = sess.run(["label", "probabilities"], {"features": X[parts[part]]})
        assert np.array_equal(label, np.argmax(proba, axis=1))
        score, truth = proba[:, 1], y[parts[part]] == 1
        alert = score >= threshold
        tp, fp, fn = int(np.sum(alert & truth)), int(np.sum(alert & ~truth)), int(np.sum(~alert & truth))
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        expected = metrics[part]
        assert (tp, fp, fn) == (expected["tp"], expected["fp"], expected["fn"])
        assert precision == pytest.approx(expected["precision"], abs=TOLERANCE)
        assert recall == pytest.approx(expected["recall"], abs=TOLERANCE)
        assert 2 * precision * recall / (precision + recall) == pytest.approx(expected["f1"], abs=TOLERANCE)
        assert int(np.sum((score >= review_low) & ~alert)) == expected["review_n"]
