"""Prometheus metrics of the worker (prefix `stream_infer_`). Names are a public interface:
dashboards and alert rules in deploy/ use them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

EVENTS = Counter("stream_infer_events_consumed", "Input events consumed", ["pipeline"])
PREDICTIONS = Counter("stream_infer_predictions", "Prediction records produced", ["pipeline"])
ALERTS = Counter("stream_infer_alerts", "Alert records produced", ["pipeline", "rule"])
REVIEWS = Counter("stream_infer_reviews", "Predictions sent to the review topic", ["pipeline"])
DEAD_LETTERS = Counter("stream_infer_dead_letters", "Input events sent to the dead-letter topic", ["pipeline", "reason"])
REPLAYS_SKIPPED = Counter(
    "stream_infer_replayed_events_skipped",
    "Events below a restored checkpoint, already processed before a restart, skipped",
    ["pipeline"],
)
CHECKPOINTS = Counter("stream_infer_checkpoints", "State checkpoints written", ["pipeline"])
BATCH_SIZE = Histogram(
    "stream_infer_batch_size", "Events per micro-batch", ["pipeline"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)
INFERENCE_SECONDS = Histogram(
    "stream_infer_inference_seconds", "ONNX Runtime time per batch", ["pipeline"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
)
BATCH_WAIT_SECONDS = Histogram(
    "stream_infer_batcher_wait_seconds", "Time a batch waited between being fetched and being processed", ["pipeline"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1),
)
READY = Gauge("stream_infer_ready", "1 once models are warm and partitions assigned")
MODEL = Info("stream_infer_model", "Model served by a pipeline: name, version, execution provider", ["pipeline"])
