"""Per-key event-time aggregates against a plain-Python reference.

Random event sequences with late, out-of-order and duplicate-timestamp events, a history cap
that truncates, state round-tripped through its changelog bytes between batches, and keys that
the store evicts (they start afresh, as a never-seen key does)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from stream_infer.config import AggregateFeature, FeatureSpec, duration_ms
from stream_infer.stages.aggregates import AggregateFeaturizer, text_hashes
from stream_infer.stages.features import Featurizer
from stream_infer.state import KeyState, StateStore

OPS = [
    ("n_1m", "count", None, "1m"),
    ("n_10m", "count", None, "10m"),
    ("sum_5m", "sum", "amount", "5m"),
    ("mean_10m", "mean", "amount", "10m"),
    ("std_10m", "std", "amount", "10m"),
    ("min_5m", "min", "amount", "5m"),
    ("max_5m", "max", "amount", "5m"),
    ("last_10m", "last", "amount", "10m"),
    ("since_10m", "seconds_since_last", None, "10m"),
    ("ratio_10m", "ratio_to_mean", "amount", "10m"),
    ("seen_10m", "seen_before", "terminal", "10m"),
    ("seen_1m", "seen_before", "terminal", "1m"),
    ("temp_mean_1m", "mean", "temp", "1m"),
]


def _spec(history: int) -> FeatureSpec:
    aggregates = [AggregateFeature(name=n, op=op, of=of, window=w) for n, op, of, w in OPS]  # type: ignore[arg-type]
    return FeatureSpec(fields=["amount"], timestamp_field="ts", aggregates=aggregates, history_events=history)


def _reference(history: list[dict], event: dict, cap: int) -> list[float]:
    """Each op as AggregateFeature documents it, event by event, from the key's earlier events."""
    out = []
    earlier = history[-cap:]
    t = event["ts"]
    for _, op, of, window in OPS:
        w = duration_ms(window)
        prior = [h for h in earlier if t - w < h["ts"] <= t]
        if op == "count":
            out.append(len(prior) + 1)
            continue
        if op == "seconds_since_last":
            out.append((t - max(h["ts"] for h in prior)) / 1000 if prior else w / 1000)
            continue
        if op == "seen_before":
            out.append(float(any(str(h[of]) == str(event[of]) for h in prior)))
            continue
        own = event[of]
        values = [h[of] for h in prior]
        if op == "sum":
            out.append(sum(values) + own)
        elif op == "mean":
            out.append((sum(values) + own) / (len(values) + 1))
        elif op == "std":
            all_values = values + [own]
            mean = sum(all_values) / len(all_values)
            out.append(math.sqrt(sum((v - mean) ** 2 for v in all_values) / len(all_values)))
        elif op == "min":
            out.append(min(values + [own]))
        elif op == "max":
            out.append(max(values + [own]))
        elif op == "last":
            if not prior:
                out.append(own)
            else:
                latest = max(h["ts"] for h in prior)
                out.append([h for h in prior if h["ts"] == latest][-1][of])
        elif op == "ratio_to_mean":
            usual = sum(values) / len(values) if values else 0.0
            out.append(own / usual if values and usual != 0 else 1.0)
    return out


def _events(rng: random.Random, n: int, keys: int) -> list[dict]:
    """Mostly ascending per key, with late events, exact duplicates of a time, and jumps."""
    clock = {f"k{i}": 1_700_000_000_000 + rng.randrange(0, 60_000) for i in range(keys)}
    events = []
    for _ in range(n):
        key = f"k{rng.randrange(keys)}"
        roll = rng.random()
        if roll < 0.15:
            ts = clock[key] - rng.randrange(0, 400_000)  # late: up to almost 7 minutes back
        elif roll < 0.25:
            ts = clock[key]  # the same instant as the key's newest
        elif roll < 0.3:
            ts = clock[key] + rng.randrange(600_000, 2_000_000)  # a gap longer than the windows
            clock[key] = ts
        else:
            ts = clock[key] + rng.randrange(0, 40_000)
            clock[key] = ts
        events.append(
            {
                "key": key,
                "ts": ts,
                "amount": round(rng.uniform(0.01, 300), 2),
                "temp": rng.choice([-3.5, 0.0, 12.25, 1e-3]),
                # Strings of different lengths and an integer: the hash must not depend on the batch's widest.
                "terminal": rng.choice(["t1", "t22", "terminal-333", "é", "", 7]),
            }
        )
    return events


def _batches(rng: random.Random, n: int) -> list[tuple[int, int]]:
    bounds, start = [], 0
    while start < n:
        stop = min(n, start + rng.choice([1, 2, 3, 17, 64, 300]))
        bounds.append((start, stop))
        start = stop
    return bounds


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cap", [4, 128])
def test_aggregates_equal_the_reference(seed: int, cap: int) -> None:
    rng = random.Random(seed)
    events = _events(rng, 1500, keys=12)
    featurizer = AggregateFeaturizer(_spec(cap))
    store = StateStore(max_keys=9)  # fewer than the keys: least recently used ones are evicted
    histories: dict[str, list[dict]] = {}
    got, want = [], []
    for start, stop in _batches(rng, len(events)):
        batch = events[start:stop]
        keys = [e["key"] for e in batch]
        partitions = [int(k[1:]) % 3 for k in keys]
        out = featurizer.compute(keys, partitions, featurizer.inputs(batch), store)
        for e in batch:
            want.append(_reference(histories.get(e["key"], []), e, cap))
            histories.setdefault(e["key"], []).append(e)
        got.append(out)
        before = {k for part in store.partitions.values() for k in part}
        store.evict(keep_from=store.clock + 1)
        after = {k for part in store.partitions.values() for k in part}
        for key in before - after:
            histories.pop(key)  # evicted: the key starts afresh, in the reference too
        if rng.random() < 0.3:  # restart: every key's state from its changelog bytes
            for partition, snapshot in store.take_dirty().items():
                for key, state in snapshot.items():
                    if state is not None:
                        store.partitions[partition][key] = KeyState.from_bytes(state.to_bytes())
    assert len(histories) < 12, "the test must see evictions"
    np.testing.assert_allclose(np.concatenate(got), np.array(want, dtype=np.float32), rtol=2e-7, atol=1e-6)


def test_features_do_not_depend_on_batching() -> None:
    rng = random.Random(7)
    events = _events(rng, 800, keys=5)
    keys = [e["key"] for e in events]
    outputs = []
    for sizes in ([800], [1] * 800, [13, 400, 387]):
        featurizer = Featurizer(_spec(16))
        store = StateStore()
        parts, start = [], 0
        for size in sizes:
            chunk = events[start : start + size]
            parts.append(featurizer.matrix(chunk, keys[start : start + size], [0] * len(chunk), store))
            start += size
        outputs.append(np.concatenate(parts))
    # Bit for bit: an event's features are computed from the same gathered row in every batching.
    assert all(np.array_equal(outputs[0], o) for o in outputs[1:])
    assert outputs[0].shape == (800, 1 + len(OPS))


def test_text_hashes_are_stable_and_width_independent() -> None:
    alone = text_hashes(["t1"])
    with_longer = text_hashes(["t1", "a-much-longer-terminal-id"])
    assert alone[0] == with_longer[0]
    assert text_hashes([7])[0] == text_hashes(["7"])[0]
    assert len(set(text_hashes([f"m{i:06d}" for i in range(10_000)]).tolist())) == 10_000
    # FNV-1a 64 of "a": a fixed value, so a key's history in the changelog stays valid across versions.
    assert int(text_hashes(["a"])[0]) == 0xAF63DC4C8601EC8C


def test_history_round_trips_and_plain_state_keeps_format_3() -> None:
    plain = KeyState(last_sequence=4)
    assert plain.to_bytes()[0] == 3
    events = np.arange(12, dtype=np.uint64).reshape(3, 4)
    state = KeyState(rows=np.ones((2, 3), dtype=np.float32), last_sequence=9, events=events)
    back = KeyState.from_bytes(state.to_bytes())
    assert back.to_bytes()[0] == 4
    assert back.last_sequence == 9 and back.rows is not None and back.rows.shape == (2, 3)
    assert back.events is not None and np.array_equal(back.events, events)
    assert not KeyState(events=events).empty


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"aggregates": [{"name": "n", "op": "count", "window": "1h"}]}, "timestamp_field"),
        (
            {"timestamp_field": "ts", "aggregates": [{"name": "n", "op": "count", "of": "amount", "window": "1h"}]},
            "reads no field",
        ),
        ({"timestamp_field": "ts", "aggregates": [{"name": "m", "op": "mean", "window": "1h"}]}, "needs `of`"),
        ({"timestamp_field": "ts", "aggregates": [{"name": "n", "op": "count", "window": "1 fortnight"}]}, "not a duration"),
        ({"timestamp_field": "ts", "aggregates": [{"name": "n", "op": "median", "of": "a", "window": "1h"}]}, "op"),
    ],
)
def test_bad_aggregate_specs_are_refused(table: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeatureSpec.model_validate({"fields": ["amount"], **table})
