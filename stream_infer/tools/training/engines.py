"""Train, select and export the engine remaining-useful-life model (NASA C-MAPSS FD001).

Contract of the exported ``engines_rul.onnx``:

* input ``features``: float32 [None, 420] = the last 30 cycles of one engine, oldest first, each
  cycle's 14 sensors in :data:`~stream_infer.tools.training.data.ENGINE_FEATURES` order, flattened
  row-major, left-padded with the engine's first row when it has fewer than 30 cycles
  (:func:`~stream_infer.tools.training.data.window_features` builds it);
* output ``rul``: float32 [None, 1], predicted remaining useful life in cycles, clipped to
  [0, 125] inside the graph.

Model selection: a few seeded candidates are fitted on 80 of the 100 training engines and scored
(through their ONNX export) on every window of the 20 held-out engines; the best is refitted on all
100 engines and exported. The test set is only scored after that choice, for the report.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from . import data, export

MODEL_NAME = "engines_rul"
OUTPUT_NAME = "rul"


@dataclass(frozen=True)
class Candidate:
    """One model configuration tried during selection."""

    name: str
    build: Callable[[], Any]
    params: dict


def _mlp(hidden: tuple[int, ...], alpha: float) -> Candidate:
    """A scaled MLP with early stopping; larger alpha = stronger L2 penalty (the windows overfit)."""
    params = {
        "hidden_layer_sizes": list(hidden),
        "alpha": alpha,
        "early_stopping": True,
        "validation_fraction": 0.1,
        "n_iter_no_change": 10,
        "max_iter": 300,
        "random_state": data.SEED,
    }

    def build() -> Pipeline:
        mlp_params = dict(params, hidden_layer_sizes=hidden)
        return Pipeline([("scale", StandardScaler()), ("model", MLPRegressor(**mlp_params))])

    name = "mlp_" + "x".join(str(h) for h in hidden) + f"_alpha{alpha:g}"
    return Candidate(name, build, {"estimator": "StandardScaler+MLPRegressor", **params})


def _ridge(alpha: float) -> Candidate:
    """Linear baseline on the raw scaled window, to show what the hidden layers add."""
    return Candidate(
        f"ridge_alpha{alpha:g}",
        lambda: Pipeline([("scale", StandardScaler()), ("model", Ridge(alpha=alpha))]),
        {"estimator": "StandardScaler+Ridge", "alpha": alpha},
    )


#: Candidates, in the order they are tried. All are seeded; the best validation RMSE wins.
CANDIDATES: list[Candidate] = [
    _ridge(10.0),
    _mlp((64,), 1.0),
    _mlp((64,), 10.0),
    _mlp((128, 64), 1.0),
    _mlp((128, 64), 10.0),
]


def rmse(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Root mean squared error of two 1-D arrays."""
    return float(np.sqrt(np.mean((np.asarray(predicted, np.float64) - truth) ** 2)))


def export_onnx(model: Any) -> Any:
    """Convert a fitted pipeline to ONNX with output ``rul`` [None, 1] clipped to [0, RUL_CAP]."""
    onnx_model = export.to_onnx(model, len(data.ENGINE_FEATURES) * data.ENGINE_WINDOW, MODEL_NAME)
    (raw_output,) = [o.name for o in onnx_model.graph.output]
    export.rename_output(onnx_model, raw_output, OUTPUT_NAME)
    export.clip_output(onnx_model, OUTPUT_NAME, 0.0, data.RUL_CAP)
    export.check_io(onnx_model, {OUTPUT_NAME: TensorProto.FLOAT})
    return onnx_model


def onnx_predict(onnx_model: Any, X: np.ndarray) -> np.ndarray:
    """Run an exported model with onnxruntime; returns RUL predictions as float32 (N,)."""
    (rul,) = export.session(onnx_model).run([OUTPUT_NAME], {export.INPUT_NAME: X})
    return rul.reshape(-1)


def fit(candidate: Candidate, X: np.ndarray, y: np.ndarray) -> Any:
    """Fit a fresh estimator; MLP convergence warnings are expected with early stopping."""
    model = candidate.build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    return model


def select(X: np.ndarray, y: np.ndarray, units: np.ndarray, log: Callable[[str], None]) -> tuple[Candidate, list[dict]]:
    """Score every candidate on held-out engines; return the best and a score table."""
    train_units, val_units = data.split_units(units)
    is_train = np.isin(units, train_units)
    scores = []
    rmse_vals: list[float] = []  # scores[i]["rmse_val"], typed
    for candidate in CANDIDATES:
        start = time.perf_counter()
        model = fit(candidate, X[is_train], y[is_train])
        score = rmse(onnx_predict(export_onnx(model), X[~is_train]), y[~is_train])
        rmse_vals.append(round(score, 6))
        scores.append({"name": candidate.name, "rmse_val": rmse_vals[-1], "params": candidate.params})
        log(f"  {candidate.name:<24} rmse_val={score:7.3f}  ({time.perf_counter() - start:.1f}s)")
    best = min(range(len(CANDIDATES)), key=rmse_vals.__getitem__)
    return CANDIDATES[best], scores


def score_test(onnx_model: Any) -> dict:
    """Standard FD001 protocol: each test engine's last window vs RUL_FD001 (uncapped and capped)."""
    X_test, _ = data.last_windows(data.load_cmapss("test"))
    truth = data.load_rul()
    predicted = onnx_predict(onnx_model, X_test)
    return {
        "rmse_test": round(rmse(predicted, truth), 6),
        "rmse_test_capped": round(rmse(predicted, np.minimum(truth, data.RUL_CAP)), 6),
        "n_test_engines": int(len(truth)),
    }


def metadata(
    best: Candidate,
    scores: list[dict],
    metrics: dict,
    train_units: np.ndarray,
    val_units: np.ndarray,
    n_windows: int,
    output_shape: list,
) -> dict:
    """Everything the server and README need to use and describe the exported model."""
    n_features = len(data.ENGINE_FEATURES) * data.ENGINE_WINDOW
    return {
        "model_name": MODEL_NAME,
        "onnx_file": f"{MODEL_NAME}.onnx",
        "task": "regression: remaining useful life (cycles) of one engine",
        "input": {"name": export.INPUT_NAME, "dtype": "float32", "shape": [None, n_features]},
        "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": output_shape}],
        "feature_order": data.ENGINE_FEATURES,
        "window": data.ENGINE_WINDOW,
        "window_layout": (
            "last `window` cycles of one engine, oldest first, current cycle last; flattened "
            "row-major (all 14 sensors of the oldest cycle first); fewer cycles than `window`: "
            "left-pad by repeating the engine's first observed row"
        ),
        "event_key": "unit",
        "rul_cap": data.RUL_CAP,
        "output_clipped_to": [0.0, data.RUL_CAP],
        "seed": data.SEED,
        "versions": export.library_versions(),
        "dataset": {
            "name": "NASA C-MAPSS FD001 (Saxena and Goebel 2008, public domain)",
            "files": ["datasets/cmapss/train_FD001.txt", "datasets/cmapss/test_FD001.txt", "datasets/cmapss/RUL_FD001.txt"],
            "target": "min(last cycle of the engine in train - cycle, rul_cap)",
        },
        "split": {
            "rule": "by engine (unit), seeded: numpy default_rng(seed).permutation of the 100 "
            "train units, first 20 = validation; see data.split_units",
            "train_units": [int(u) for u in train_units],
            "val_units": [int(u) for u in val_units],
            "final_fit": "selected configuration refitted on all 100 train engines",
            "n_train_windows": n_windows,
            "test": "each of the 100 test engines' last window vs RUL_FD001.txt",
        },
        "selection": {
            "rule": "lowest rmse_val (all windows of the validation engines, capped target, scored through the ONNX export)",
            "selected": best.name,
            "params": best.params,
            "candidates": scores,
        },
        "metrics": {
            "rmse_val": next(s["rmse_val"] for s in scores if s["name"] == best.name),
            "rmse_val_note": "from the selection fit on the 80 training engines; the exported "
            "model was refitted on all 100, so it cannot be recomputed from it",
            **metrics,
        },
        "rebuild": export.REBUILD_COMMAND,
    }


def train(out_dir: Path = export.DEFAULT_OUT_DIR, log: Callable[[str], None] = print) -> dict:
    """Select, refit, export and score the engine model; write ``engines_rul.{onnx,json}``."""
    train_data = data.load_cmapss("train")
    X, units, _ = data.engine_windows(train_data)
    y = data.train_rul_targets(train_data)
    log(f"engines: {len(X)} windows of shape {X.shape[1]} from {len(np.unique(units))} engines")

    best, scores = select(X, y, units, log)
    log(f"engines: selected {best.name}; refitting on all train engines")
    onnx_model = export_onnx(fit(best, X, y))
    model_bytes = export.save_model(onnx_model, out_dir / f"{MODEL_NAME}.onnx")

    metrics = score_test(model_bytes)
    train_units, val_units = data.split_units(units)
    shape = export.output_shapes(export.session(model_bytes))[OUTPUT_NAME]
    meta = metadata(best, scores, metrics, train_units, val_units, int(len(X)), shape)
    export.write_json(out_dir / f"{MODEL_NAME}.json", meta)
    log(
        f"engines: rmse_test={metrics['rmse_test']:.3f} rmse_test_capped={metrics['rmse_test_capped']:.3f} "
        f"-> {out_dir / (MODEL_NAME + '.onnx')} ({len(model_bytes) / 1024:.0f} KiB)"
    )
    return meta
