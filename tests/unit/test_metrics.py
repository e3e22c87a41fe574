"""Batch observation of a histogram equals observing each value."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from stream_infer.metrics import observe_many


def test_observe_many_equals_per_value_observe() -> None:
    values = np.concatenate([np.random.default_rng(1).exponential(0.05, 5000), [0.01, 0.02, 0.0, 1e9, 0.005]])
    exposed = []
    for batch in (False, True):
        registry = CollectorRegistry()
        hist = Histogram("lat", "latency", ["pipeline"], buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 1), registry=registry)
        child = hist.labels("p")
        if batch:  # big and small calls (the small ones take another path)
            observe_many(child, values[:3000])
            observe_many(child, values[3000:4990])
            for start in range(4990, len(values), 3):
                observe_many(child, values[start : start + 3])
            observe_many(child, [])
        else:
            for v in values:
                child.observe(float(v))
        exposed.append(generate_latest(registry).decode())
    per_value, batched = exposed
    assert 'lat_bucket{le="0.01",pipeline="p"}' in per_value
    assert [line for line in batched.splitlines() if "_created" not in line and "_sum" not in line] == [
        line for line in per_value.splitlines() if "_created" not in line and "_sum" not in line
    ]
    sums = [float(next(line for line in text.splitlines() if line.startswith("lat_sum")).split()[-1]) for text in exposed]
    assert abs(sums[0] - sums[1]) <= 1e-6 * sums[0]
