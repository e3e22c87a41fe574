"""Prometheus metrics of the worker (prefix `stream_infer_`). Names are a public interface:
dashboards and alert rules in deploy/ use them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client import Counter, Gauge, Histogram, Info

EVENTS = Counter("stream_infer_events_consumed", "Input events consumed", ["pipeline"])
PREDICTIONS = Counter("stream_infer_predictions", "Prediction records produced", ["pipeline"])
ALERTS = Counter("stream_infer_alerts", "Alert records produced", ["pipeline", "rule"])
REVIEWS = Counter("stream_infer_reviews", "Predictions sent to the review topic", ["pipeline"])
DEAD_LETTERS = Counter("stream_infer_dead_letters", "Input events sent to the dead-letter topic", ["pipeline", "reason"])
OUTPUTS_DROPPED = Counter(
    "stream_infer_outputs_dropped",
    "Output messages the producer refused that could not go to the dead-letter topic either (skipped)",
    ["pipeline", "topic"],
)
REPLAYS_SKIPPED = Counter(
    "stream_infer_replayed_events_skipped",
    "Events below a restored checkpoint, already processed before a restart, skipped",
    ["pipeline"],
)
SKIPPED = Counter(
    "stream_infer_events_skipped",
    "Input events skipped by the staleness policy (summarised on <pipeline>.skipped)",
    ["pipeline", "reason"],
)
CHECKPOINTS = Counter(
    "stream_infer_checkpoints", "Checkpoint transactions committed (state, offsets, exactly-once outputs)", ["pipeline"]
)
CHECKPOINT_ABORTS = Counter(
    "stream_infer_checkpoint_aborts",
    "Checkpoint transactions aborted (group generation moved on, coordinator moved, "
    "timeout): retried at the next checkpoint (at-least-once) or rewound (exactly-once)",
    ["pipeline"],
)
REWINDS = Counter(
    "stream_infer_rewinds",
    "Exactly-once rewinds to the last committed checkpoint after an aborted transaction",
    ["pipeline"],
)
CHECKPOINT_CUTS = Counter(
    "stream_infer_checkpoint_cuts",
    "Checkpoint snapshots by how they were taken: idle (between batches, all outputs "
    "already acknowledged) or paused (the batch path waited for the acks)",
    ["pipeline", "how"],
)
BATCH_SIZE = Histogram(
    "stream_infer_batch_size",
    "Events per micro-batch",
    ["pipeline"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)
INFERENCE_SECONDS = Histogram(
    "stream_infer_inference_seconds",
    "ONNX Runtime time per batch",
    ["pipeline"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
)
BATCH_WAIT_SECONDS = Histogram(
    "stream_infer_batcher_wait_seconds",
    "Time a batch waited between being fetched and being processed",
    ["pipeline"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1),
)
READY = Gauge("stream_infer_ready", "1 once models are warm and partitions assigned")
MODEL = Info("stream_infer_model", "Model served by a pipeline: name, version, execution provider", ["pipeline"])
END_TO_END_SECONDS = Histogram(
    "stream_infer_end_to_end_latency_seconds",
    "From the input record's timestamp to its outputs handed to the producer",
    ["pipeline"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
LAG_MESSAGES = Gauge(
    "stream_infer_consumer_lag_messages", "Log-end offset minus the group's committed offset", ["pipeline", "topic", "partition"]
)
LAG_SECONDS = Gauge(
    "stream_infer_consumer_lag_seconds",
    "Now minus the timestamp of the oldest unprocessed record (0 without lag)",
    ["pipeline", "topic", "partition"],
)
CONTROLLER_BATCH_SIZE = Gauge("stream_infer_controller_batch_size", "Batch size the controller sets now", ["pipeline"])
CONTROLLER_MODE = Gauge("stream_infer_controller_mode", "1 for the controller's current mode", ["pipeline", "mode"])
IN_FLIGHT_BATCHES = Gauge(
    "stream_infer_in_flight_batches", "Batches fetched whose outputs are not yet acknowledged", ["pipeline"]
)
IN_FLIGHT_EVENTS = Gauge("stream_infer_in_flight_events", "Events fetched whose outputs are not yet acknowledged", ["pipeline"])
PAUSES = Counter("stream_infer_pauses", "Times the worker paused its partitions (in-flight bound reached)", ["pipeline"])
PAUSED_PARTITIONS = Gauge("stream_infer_paused_partitions", "Input partitions paused by backpressure", ["pipeline"])


def observe_many(histogram, values: Sequence[float] | np.ndarray) -> None:
    """Observe many values at once (one numpy pass instead of a Python call per event).

    prometheus_client has no batch observe; this adds to the child's bucket counters and sum the
    same amounts that `observe` would, one bucket per value (its cumulative view is built on
    exposition). Relies on the child's `_upper_bounds`, `_buckets` and `_sum`, stable across
    prometheus_client releases; tests/unit/test_metrics.py holds it equal to per-value observe.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size <= 4:  # a handful: observe() each, cheaper than the numpy calls below
        for value in values.tolist():
            histogram.observe(value)
        return
    bounds = np.asarray(histogram._upper_bounds, dtype=np.float64)
    # observe() puts v into the first bucket with v <= bound.
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist()):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum()))


STATE_KEYS = Gauge("stream_infer_state_keys", "Keys whose per-key state this worker holds, after the last batch", ["pipeline"])
STATE_EVICTIONS = Counter(
    "stream_infer_state_evictions",
    "Keys removed from per-key state by its bounds: reason ttl (idle past state.key_ttl_ms of event time) or "
    "max_keys (least recently seen, past state.max_keys)",
    ["pipeline", "reason"],
)
