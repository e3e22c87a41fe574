"""Train, select and export the machine failure classifier (AI4I 2020).

Contract of the exported ``machines_failure.onnx``:

* input ``features``: float32 [None, 8] in :data:`~stream_infer.tools.training.data.MACHINE_FEATURES`
  order (:func:`~stream_infer.tools.training.data.machine_feature_vector` builds it from one event);
* outputs ``label`` int64 [None] (argmax, i.e. a 0.5 cut: the service should NOT use it for
  alerts) and ``probabilities`` float32 [None, 2], column 1 = P(failure).

Alerting policy, chosen on the validation split and stored in the metadata:

* alert when P(failure) >= ``threshold``; the threshold maximises F1 on validation;
* human review when ``review_low`` <= P(failure) < ``threshold``. The band is sized by reviewer
  workload: ``review_low`` is the lowest cut for which at most 1% of validation readings fall in
  the band. (A precision rule does not work here: the failures the model misses on validation
  mostly score like normal readings, so no band below the threshold reaches a useful precision;
  the band's real failure count is reported in the metadata.)

Split: stratified on ``machine_failure``, seeded, 60% train / 20% validation / 20% test
(:func:`~stream_infer.tools.training.data.stratified_split`). The exported model is the one fitted on the
60% train part, not refitted, so the threshold chosen on validation stays calibrated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.metrics import average_precision_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PolynomialFeatures

from . import data, export

MODEL_NAME = "machines_failure"
LABEL_OUTPUT = "label"
PROBA_OUTPUT = "probabilities"

#: Largest share of validation readings allowed in the review band (reviewer workload).
REVIEW_BUDGET = 0.01


@dataclass(frozen=True)
class Candidate:
    """One model configuration tried during selection."""

    name: str
    build: Callable[[], Any]
    params: dict


def _products() -> PolynomialFeatures:
    """Pairwise products of the inputs: the failure modes of this machine depend on products
    (power = torque x speed, strain = torque x tool wear), which axis-aligned trees only
    approximate from the raw columns. It is converted to ONNX with the rest of the pipeline."""
    return PolynomialFeatures(degree=2, interaction_only=True, include_bias=False)


def _gb(products: bool, subsample: float) -> Candidate:
    """Gradient boosting, optionally on pairwise products; subsample < 1 adds bagging noise."""
    params = {"n_estimators": 300, "learning_rate": 0.05, "max_depth": 3, "subsample": subsample, "random_state": data.SEED}

    def build() -> Any:
        model = GradientBoostingClassifier(**params)
        return Pipeline([("products", _products()), ("model", model)]) if products else model

    name = ("products_" if products else "") + f"gb_sub{subsample:g}"
    estimator = ("PolynomialFeatures(2, interactions)+" if products else "") + "GradientBoostingClassifier"
    return Candidate(name, build, {"estimator": estimator, **params})


def _rf(products: bool) -> Candidate:
    """Random forest baseline, optionally on pairwise products."""
    params = {"n_estimators": 300, "min_samples_leaf": 2, "random_state": data.SEED, "n_jobs": 2}

    def build() -> Any:
        model = RandomForestClassifier(**params)
        return Pipeline([("products", _products()), ("model", model)]) if products else model

    name = ("products_" if products else "") + "rf"
    estimator = ("PolynomialFeatures(2, interactions)+" if products else "") + "RandomForestClassifier"
    return Candidate(name, build, {"estimator": estimator, **params})


#: Candidates, in the order they are tried; the best validation average precision wins.
CANDIDATES: list[Candidate] = [
    _rf(products=False),
    _gb(products=False, subsample=1.0),
    _rf(products=True),
    _gb(products=True, subsample=1.0),
    _gb(products=True, subsample=0.8),
]


def export_onnx(model: Any) -> Any:
    """Convert a fitted classifier (see export.classifier_to_onnx)."""
    return export.classifier_to_onnx(model, len(data.MACHINE_FEATURES), MODEL_NAME)


def onnx_failure_probability(onnx_model: Any, X: np.ndarray) -> np.ndarray:
    """P(positive class) by onnxruntime on the exported model."""
    return export.positive_probability(onnx_model, X)


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Confusion counts and precision/recall/F1 of ``scores >= threshold`` (0 when undefined)."""
    predicted = scores >= threshold
    positive = labels == 1
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 6),
        "recall": round(recall, 6),
        "f1": round(f1, 6),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": int(len(labels) - tp - fp - fn),
        "n": int(len(labels)),
        "positives": int(positive.sum()),
    }


def _cut_between(high: float, low: float) -> float:
    """A threshold strictly between two adjacent distinct scores, so that a 1-ulp difference in
    a score computed elsewhere cannot flip a decision; rounded to 6 decimals when that stays
    strictly between them (easier to read in the metadata)."""
    middle = (float(high) + float(low)) / 2.0
    rounded = round(middle, 6)
    return rounded if low < rounded < high else middle


def _cut_below(distinct_desc: np.ndarray, index: int) -> float:
    """Threshold that keeps ``distinct_desc[:index + 1]`` at or above it and the rest below."""
    if index + 1 < len(distinct_desc):
        return _cut_between(distinct_desc[index], distinct_desc[index + 1])
    return float(distinct_desc[index]) / 2.0


def choose_thresholds(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(threshold, review_low)`` from validation scores, following the module docstring.

    Every distinct score is a candidate cut. Ties in F1 go to the higher cut (fewer alerts).
    """
    distinct = np.unique(scores)[::-1]  # descending
    stats = [binary_metrics(scores, labels, s) for s in distinct]
    f1 = np.array([s["f1"] for s in stats])
    best = int(np.flatnonzero(f1 == f1.max())[0])
    threshold = _cut_below(distinct, best)
    # Walk down from the alert cut while the band [cut, threshold) stays within the budget.
    alerted = int(np.sum(scores >= distinct[best]))
    budget = int(REVIEW_BUDGET * len(scores))
    review = None
    for i in range(best + 1, len(distinct)):
        if int(np.sum(scores >= distinct[i])) - alerted > budget:
            break
        review = i
    review_low = threshold if review is None else _cut_below(distinct, review)
    return threshold, min(review_low, threshold)


def band_counts(scores: np.ndarray, labels: np.ndarray, low: float, high: float) -> dict:
    """How many rows, and how many real failures, fall in the review band [low, high)."""
    in_band = (scores >= low) & (scores < high)
    return {"review_n": int(in_band.sum()), "review_failures": int(np.sum(in_band & (labels == 1)))}


def evaluate(onnx_model: Any, X: np.ndarray, y: np.ndarray, threshold: float, review_low: float) -> dict:
    """Metrics at the alert threshold plus review-band counts, all through onnxruntime."""
    scores = onnx_failure_probability(onnx_model, X)
    return {
        **binary_metrics(scores, y, threshold),
        **band_counts(scores, y, review_low, threshold),
        "average_precision": round(float(average_precision_score(y, scores)), 6),
    }


def select(
    X: np.ndarray, y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, log: Callable[[str], None]
) -> tuple[Any, Candidate, list[dict]]:
    """Fit every candidate on train, score validation average precision via ONNX, keep the best."""
    results = []
    for candidate in CANDIDATES:
        start = time.perf_counter()
        model = candidate.build().fit(X[train_idx], y[train_idx])
        scores = onnx_failure_probability(export_onnx(model), X[val_idx])
        ap = float(average_precision_score(y[val_idx], scores))
        results.append((ap, model, candidate))
        log(f"  {candidate.name:<24} val_average_precision={ap:.4f}  ({time.perf_counter() - start:.1f}s)")
    table = [{"name": c.name, "val_average_precision": round(ap, 6), "params": c.params} for ap, _, c in results]
    best = max(range(len(results)), key=lambda i: results[i][0])  # first max wins ties
    return results[best][1], results[best][2], table


def metadata(
    best: Candidate,
    table: list[dict],
    threshold: float,
    review_low: float,
    val: dict,
    test: dict,
    split_sizes: dict,
    digests: dict,
    output_shapes: dict,
) -> dict:
    """Everything the server and README need to use and describe the exported model."""
    return {
        "model_name": MODEL_NAME,
        "onnx_file": f"{MODEL_NAME}.onnx",
        "task": "binary classification: probability that a machine reading is a failure",
        "input": {"name": export.INPUT_NAME, "dtype": "float32", "shape": [None, len(data.MACHINE_FEATURES)]},
        "outputs": [
            {
                "name": LABEL_OUTPUT,
                "dtype": "int64",
                "shape": output_shapes[LABEL_OUTPUT],
                "note": "argmax of probabilities (0.5 cut); use probabilities[:, 1] >= threshold",
            },
            {"name": PROBA_OUTPUT, "dtype": "float32", "shape": output_shapes[PROBA_OUTPUT], "note": "column 1 = P(failure)"},
        ],
        "feature_order": data.MACHINE_FEATURES,
        "event_fields": list(data.AI4I_EVENT_FIELDS.values()),
        "type_categories": data.MACHINE_TYPES,
        "seed": data.SEED,
        "versions": export.library_versions(),
        "dataset": {
            "name": "AI4I 2020 Predictive Maintenance (Matzka 2020, UCI, CC BY 4.0)",
            "files": ["datasets/ai4i2020/ai4i2020.csv"],
            "target": "Machine_failure",
        },
        "split": {
            "rule": "stratified on Machine_failure, seeded: data.stratified_split(labels, "
            "(0.6, 0.2, 0.2), seed) over the csv rows in file order",
            **split_sizes,
            "udi_sha256_16": digests,
            "final_fit": "train part only (no refit), so the validation threshold stays calibrated",
        },
        "selection": {
            "rule": "highest validation average precision (scored through the ONNX export)",
            "selected": best.name,
            "params": best.params,
            "candidates": table,
        },
        "alert_policy": {
            "alert": "probabilities[:, 1] >= threshold",
            "review": "review_low <= probabilities[:, 1] < threshold",
            "threshold_rule": "maximise F1 on validation (ties: higher threshold); cut halfway "
            "between adjacent validation scores",
            "review_rule": f"reviewer budget: lowest cut with at most {REVIEW_BUDGET:.0%} of "
            "validation readings in [review_low, threshold); cut halfway between "
            "adjacent validation scores",
        },
        "metrics": {"threshold": threshold, "review_low": review_low, "val": val, "test": test},
        "rebuild": export.REBUILD_COMMAND,
    }


def train(out_dir: Path = export.DEFAULT_OUT_DIR, log: Callable[[str], None] = print) -> dict:
    """Select, export, threshold and score the machine model; write ``machines_failure.{onnx,json}``."""
    events = data.load_ai4i()
    X = data.machine_features(events)
    y = np.array([e["machine_failure"] for e in events], dtype=np.int64)
    udi = np.array([e["udi"] for e in events], dtype=np.int64)
    train_idx, val_idx, test_idx = data.stratified_split(y)
    log(f"machines: {len(X)} rows, {int(y.sum())} failures; split {len(train_idx)}/{len(val_idx)}/{len(test_idx)}")

    model, best, table = select(X, y, train_idx, val_idx, log)
    onnx_model = export_onnx(model)
    model_bytes = export.save_model(onnx_model, out_dir / f"{MODEL_NAME}.onnx")

    threshold, review_low = choose_thresholds(onnx_failure_probability(model_bytes, X[val_idx]), y[val_idx])
    val = evaluate(model_bytes, X[val_idx], y[val_idx], threshold, review_low)
    test = evaluate(model_bytes, X[test_idx], y[test_idx], threshold, review_low)
    sizes = {f"n_{k}": int(len(v)) for k, v in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    digests = {k: data.ids_digest(udi[v]) for k, v in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    shapes = export.output_shapes(export.session(model_bytes))
    meta = metadata(best, table, threshold, review_low, val, test, sizes, digests, shapes)
    export.write_json(out_dir / f"{MODEL_NAME}.json", meta)
    log(f"machines: selected {best.name}; threshold={threshold} review_low={review_low}")
    for part, m in (("val", val), ("test", test)):
        log(
            f"  {part}: precision={m['precision']:.3f} recall={m['recall']:.3f} f1={m['f1']:.3f} "
            f"(tp={m['tp']} fp={m['fp']} fn={m['fn']}; review band {m['review_n']} rows, "
            f"{m['review_failures']} failures)"
        )
    log(f"machines: -> {out_dir / (MODEL_NAME + '.onnx')} ({len(model_bytes) / 1024:.0f} KiB)")
    return meta
