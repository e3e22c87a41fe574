"""Train, select and export the card-fraud classifier on the transaction simulator.

Contract of the exported ``payments_fraud.onnx``: input ``features`` float32 [None, width] in the
row layout of the demo config's ``transactions`` pipeline (``[pipelines.features]``: the amount,
then the per-card aggregates in order); outputs ``label`` int64 [None] (a 0.5 cut: not for alerts)
and ``probabilities`` float32 [None, 2], column 1 = P(fraud).

One implementation of every feature: the training matrix is built by the worker's own
:class:`~stream_infer.stages.prepare.BatchPreparer` (decode, validate, featurize with per-card
state) over the simulator's events as the worker would consume them, in event-time order.

Periods of the simulated stream (days since its start, :data:`SETTINGS`): the first
:data:`BURN_IN_DAYS` fill the cards' 30-day windows and are not trained on; then training,
validation (model selection, threshold and review band), a gap of :data:`GAP_DAYS` (fraud labels
arrive late: a model is never trained on the days just before it serves), and the test period.
The exported model is the one fitted on the training period, so the validation threshold stays
calibrated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, roc_auc_score

from stream_infer.config import PipelineConfig
from stream_infer.configs import demo_config_data, pipeline_table
from stream_infer.datasets.transactions import SimulatorSettings, day_of, simulate
from stream_infer.records import InputRecord
from stream_infer.stages.prepare import BatchPreparer
from stream_infer.state import StateStore

from . import data, export
from .machines import binary_metrics, choose_thresholds

MODEL_NAME = "payments_fraud"
PIPELINE = "transactions"
LABEL_OUTPUT = "label"
PROBA_OUTPUT = "probabilities"

#: The simulated stream trained on (a seed the demo and the tests do not use).
SETTINGS = SimulatorSettings(seed=20_230, customers=5000, days=120)
BURN_IN_DAYS = 30
TRAIN_DAYS = (30, 75)  # [start, stop)
VALIDATION_DAYS = (75, 90)
GAP_DAYS = 7
TEST_DAYS = (97, 120)
#: Cards ranked per day for card precision@k.
TOP_CARDS = 100
#: Events per prepared batch while building the matrix (any size gives the same rows).
BATCH = 4096


def pipeline_config() -> PipelineConfig:
    """The demo config's `transactions` pipeline: its [features] are the model's input layout.
    Validated from the parsed TOML, not by load_config, which needs the model file this builds."""
    return PipelineConfig.model_validate(pipeline_table(demo_config_data(), PIPELINE))


def feature_matrix(pipeline: PipelineConfig, events: Sequence[dict]) -> np.ndarray:
    """The rows the worker would build for `events` (one card's events in input order), through
    the worker's BatchPreparer with a fresh StateStore bounded like the pipeline's. Every event
    must be valid: a dead letter here is a simulator bug."""
    preparer = BatchPreparer(pipeline, StateStore(key_ttl_ms=pipeline.state.key_ttl_ms, max_keys=pipeline.state.max_keys))
    key_field, topic = pipeline.key_field, pipeline.input_topic
    blocks = []
    for start in range(0, len(events), BATCH):
        chunk = events[start : start + BATCH]
        records = [
            InputRecord(str(e[key_field]).encode(), orjson.dumps(e), topic, 0, start + i, int(e["ts_ms"]))
            for i, e in enumerate(chunk)
        ]
        batch = preparer.prepare(records)
        if batch.dead or batch.matrix is None or len(batch.matrix) != len(chunk):
            reasons = sorted({d.reason for d in batch.dead})
            raise RuntimeError(f"simulated events were rejected ({reasons}): the simulator and the schema disagree")
        blocks.append(batch.matrix)
    return np.concatenate(blocks)


def _candidates() -> list[tuple[str, dict]]:
    base = {"random_state": data.SEED, "early_stopping": False, "l2_regularization": 1.0}
    return [
        ("hgb_lr0.1_it200_leaf31", {**base, "learning_rate": 0.1, "max_iter": 200, "max_leaf_nodes": 31}),
        ("hgb_lr0.05_it400_leaf31", {**base, "learning_rate": 0.05, "max_iter": 400, "max_leaf_nodes": 31}),
        ("hgb_lr0.05_it300_leaf15", {**base, "learning_rate": 0.05, "max_iter": 300, "max_leaf_nodes": 15}),
    ]


def export_onnx(model: Any, width: int) -> Any:
    """Convert a fitted classifier (see export.classifier_to_onnx)."""
    return export.classifier_to_onnx(model, width, MODEL_NAME)


def fraud_probability(model: Any, X: np.ndarray) -> np.ndarray:
    """P(positive class) by onnxruntime on the exported model."""
    return export.positive_probability(model, X)


def card_precision_at_k(scores: np.ndarray, cards: np.ndarray, frauds: np.ndarray, days: np.ndarray, k: int = TOP_CARDS) -> float:
    """Mean over days of: of the `k` cards with the highest score that day (a card's score: its
    highest transaction score of the day), the share with at least one fraud that day."""
    per_day = []
    for day in np.unique(days):
        on = days == day
        day_cards, inverse = np.unique(cards[on], return_inverse=True)
        best = np.full(len(day_cards), -np.inf)
        np.maximum.at(best, inverse, scores[on])
        fraud = np.zeros(len(day_cards), dtype=bool)
        np.logical_or.at(fraud, inverse, frauds[on] == 1)
        top = np.argsort(-best, kind="stable")[:k]
        per_day.append(float(fraud[top].mean()))
    return float(np.mean(per_day))


def quality(
    scores: np.ndarray,
    labels: np.ndarray,
    cards: np.ndarray,
    days: np.ndarray,
    scenarios: np.ndarray,
    threshold: float,
    review_low: float,
) -> dict:
    """Ranking quality (AP, ROC AUC, card precision@100 per day), the decisions at the threshold,
    the review band, and the recall of each fraud scenario at the threshold."""
    in_band = (scores >= review_low) & (scores < threshold)
    recall_by_scenario = {
        str(s): {"frauds": int(np.sum(scenarios == s)), "recall": round(float(np.mean(scores[scenarios == s] >= threshold)), 4)}
        for s in sorted(set(scenarios[labels == 1].tolist()))
    }
    return {
        "average_precision": round(float(average_precision_score(labels, scores)), 6),
        "roc_auc": round(float(roc_auc_score(labels, scores)), 6),
        "card_precision_at_100_per_day": round(card_precision_at_k(scores, cards, labels, days), 6),
        **binary_metrics(scores, labels, threshold),
        "review_n": int(in_band.sum()),
        "review_frauds": int(np.sum(in_band & (labels == 1))),
        "recall_by_scenario": recall_by_scenario,
    }


def train(out_dir: Path = export.DEFAULT_OUT_DIR, log: Callable[[str], None] = print) -> dict:
    """Simulate, featurize through the worker's stages, select, export; write payments_fraud.{onnx,json}."""
    started = time.perf_counter()
    events = simulate(SETTINGS)
    pipeline = pipeline_config()
    X = feature_matrix(pipeline, events)
    y = np.array([e["is_fraud"] for e in events], dtype=np.int64)
    days = np.asarray(day_of(np.array([e["ts_ms"] for e in events], dtype=np.int64), SETTINGS.start_date))
    cards = np.array([e["card_id"] for e in events])
    scenarios = np.array([e["fraud_scenario"] for e in events], dtype=np.int64)
    log(f"transactions: {len(events)} simulated, {int(y.sum())} frauds; features in {time.perf_counter() - started:.0f}s")

    def period(bounds: tuple[int, int]) -> np.ndarray:
        return np.nonzero((days >= bounds[0]) & (days < bounds[1]))[0]

    train_idx, val_idx, test_idx = period(TRAIN_DAYS), period(VALIDATION_DAYS), period(TEST_DAYS)
    table, best = [], None
    for name, params in _candidates():
        t0 = time.perf_counter()
        model = HistGradientBoostingClassifier(**params).fit(X[train_idx], y[train_idx])
        onnx_model = export_onnx(model, X.shape[1])
        ap = float(average_precision_score(y[val_idx], fraud_probability(onnx_model, X[val_idx])))
        table.append({"name": name, "val_average_precision": round(ap, 6), "params": params})
        log(f"  {name:<26} val_average_precision={ap:.4f}  ({time.perf_counter() - t0:.0f}s)")
        if best is None or ap > best[0]:
            best = (ap, name, params, onnx_model)
    assert best is not None
    _, best_name, best_params, onnx_model = best
    model_bytes = export.save_model(onnx_model, out_dir / f"{MODEL_NAME}.onnx")

    val_scores = fraud_probability(model_bytes, X[val_idx])
    threshold, review_low = choose_thresholds(val_scores, y[val_idx])
    test_scores = fraud_probability(model_bytes, X[test_idx])
    val = quality(val_scores, y[val_idx], cards[val_idx], days[val_idx], scenarios[val_idx], threshold, review_low)
    test = quality(test_scores, y[test_idx], cards[test_idx], days[test_idx], scenarios[test_idx], threshold, review_low)
    shapes = export.output_shapes(export.session(model_bytes))
    meta = {
        "model_name": MODEL_NAME,
        "onnx_file": f"{MODEL_NAME}.onnx",
        "task": "binary classification: probability that a card transaction is fraud",
        "input": {"name": export.INPUT_NAME, "dtype": "float32", "shape": [None, X.shape[1]]},
        "outputs": [
            {
                "name": LABEL_OUTPUT,
                "dtype": "int64",
                "shape": shapes[LABEL_OUTPUT],
                "note": "0.5 cut; use probabilities[:, 1] >= threshold",
            },
            {"name": PROBA_OUTPUT, "dtype": "float32", "shape": shapes[PROBA_OUTPUT], "note": "column 1 = P(fraud)"},
        ],
        "feature_order": pipeline.features.fields + [a.name for a in pipeline.features.aggregates],
        "features_from": "stream_infer/configs/demo.toml, pipeline transactions, [pipelines.features]",
        "seed": data.SEED,
        "versions": export.library_versions(),
        "dataset": {
            "name": "stream-infer transaction simulator (stream_infer/datasets/transactions.py)",
            "settings": {k: getattr(SETTINGS, k) for k in ("seed", "customers", "terminals", "days", "start_date", "radius")},
            "transactions": len(events),
            "frauds": int(y.sum()),
        },
        "split": {
            "rule": "by day of the simulated stream; the first days fill the 30-day windows and are not trained on",
            "burn_in_days": [0, BURN_IN_DAYS],
            "train_days": list(TRAIN_DAYS),
            "validation_days": list(VALIDATION_DAYS),
            "gap_days": GAP_DAYS,
            "test_days": list(TEST_DAYS),
            "n_train": int(len(train_idx)),
            "n_val": int(len(val_idx)),
            "n_test": int(len(test_idx)),
            "final_fit": "training period only (no refit), so the validation threshold stays calibrated",
        },
        "selection": {
            "rule": "highest validation average precision (scored through the ONNX export)",
            "selected": best_name,
            "params": best_params,
            "candidates": table,
        },
        "alert_policy": {
            "alert": "probabilities[:, 1] >= threshold",
            "review": "review_low <= probabilities[:, 1] < threshold",
            "threshold_rule": "maximise F1 on validation (ties: higher threshold)",
            "review_rule": "reviewer budget: lowest cut with at most 1% of validation transactions in the band",
        },
        "metrics": {"threshold": threshold, "review_low": review_low, "val": val, "test": test},
        "rebuild": "python -m stream_infer.tools.training transactions",
    }
    export.write_json(out_dir / f"{MODEL_NAME}.json", meta)
    log(f"transactions: selected {best_name}; threshold={threshold} review_low={review_low}")
    for part, m in (("val", val), ("test", test)):
        log(
            f"  {part}: AP={m['average_precision']:.3f} ROC AUC={m['roc_auc']:.3f} CP@100={m['card_precision_at_100_per_day']:.3f} "
            f"precision={m['precision']:.3f} recall={m['recall']:.3f} (review band {m['review_n']}, {m['review_frauds']} frauds)"
        )
    log(
        f"transactions: -> {out_dir / (MODEL_NAME + '.onnx')} ({len(model_bytes) / 1024:.0f} KiB) in {time.perf_counter() - started:.0f}s"
    )
    return meta
