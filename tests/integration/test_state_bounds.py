"""Bounded per-key state (`pipelines[].state`): keys idle too long by event time expire, past
`max_keys` the least recently seen are evicted, and either way the key leaves memory, leaves the
open-alert set and is tombstoned at the next checkpoint; a returning key starts a new window.

The last test feeds 200,000 distinct keys through the real batch path (Pipeline.prepare: decode,
featurize, evict; no broker, no model run: state lives in prepare) in two child processes, one
bounded and one not, and holds the bounded one's RSS growth under a bound derived from the
unbounded one's measured bytes per key.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import prometheus_client
import pytest

import stream_infer.metrics  # noqa: F401  # registers the metrics read below
from stream_infer.config import FeatureSpec, PipelineConfig, StateConfig, load_config
from stream_infer.records import InputRecord
from stream_infer.stages.features import Featurizer
from stream_infer.state import AlertState, KeyState, StateStore

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000  # event times in the past: the worker's clock never caps them


def _touch(store: StateStore, *keys: tuple[int, str]) -> None:
    """Use each key as the featurizer does: get (now the most recent), give it rows, mark it dirty."""
    for partition, key in keys:
        state = store.get(partition, key)
        if state.rows is None:
            state.rows = np.zeros((1, 2), np.float32)
        store.mark_dirty(partition, key)


def _held(store: StateStore) -> set[tuple[int, str]]:
    return {(p, k) for p, keys in store.partitions.items() for k in keys}


# --- StateStore ---------------------------------------------------------------------------------


def test_unbounded_store_never_evicts() -> None:
    store = StateStore()
    _touch(store, *((i % 3, str(i)) for i in range(100)))
    assert store.evict(store.clock + 1) == (0, 0)
    assert len(store) == 100 and not store.bounded
    assert type(store.partitions[0]) is dict  # no recency bookkeeping when off


def test_max_keys_evicts_the_least_recently_seen_across_partitions() -> None:
    store = StateStore(max_keys=3)
    _touch(store, (0, "a"), (1, "b"), (0, "c"), (2, "d"), (0, "a"))  # a used again: b is now the oldest
    store.take_dirty()
    assert store.evict(store.clock + 1) == (0, 1)
    assert _held(store) == {(0, "a"), (0, "c"), (2, "d")}
    _touch(store, (1, "e"))
    assert store.evict(store.clock + 1) == (0, 1)
    assert _held(store) == {(0, "a"), (2, "d"), (1, "e")}  # c: the oldest left, in another partition than e
    # Both evicted keys are tombstones in the next snapshot; the untouched keys are not in it.
    assert store.take_dirty() == {1: {"b": None, "e": store.partitions[1]["e"]}, 0: {"c": None}}


def test_keys_in_use_are_never_evicted() -> None:
    """Keys used at or after `keep_from` stay however far past max_keys: a batch's keys must
    survive until the batch is finished (its alerts read them)."""
    store = StateStore(max_keys=2)
    _touch(store, (0, "old"))
    keep_from = store.clock + 1
    _touch(store, *((0, f"k{i}") for i in range(5)))
    assert store.evict(keep_from) == (0, 1)  # only "old" may go
    assert len(store) == 5 and (0, "old") not in _held(store)
    assert store.evict(store.clock + 1) == (0, 3)
    assert _held(store) == {(0, "k3"), (0, "k4")}


def test_ttl_is_event_time_per_partition() -> None:
    """A key expires once its partition's newest event time is key_ttl_ms past the key's last
    use; wall-clock time and other partitions' event times do not age it."""
    store = StateStore(key_ttl_ms=1_000)
    store.advance([0, 1], [T0, T0])
    _touch(store, (0, "a"), (1, "lagging"))
    store.advance([0], [T0 + 400])
    _touch(store, (0, "b"))
    store.advance([0, 0], [T0 + 999, T0 + 600])  # out of order: the newest counts
    assert store.evict(store.clock + 1) == (0, 0)  # 999 ms idle: not yet
    store.advance([0], [T0 + 1_000])
    assert store.evict(store.clock + 1) == (1, 0)
    assert _held(store) == {(0, "b"), (1, "lagging")}
    store.advance([0], [T0 + 100_000])
    assert store.evict(store.clock + 1) == (1, 0)
    # Partition 1 saw no newer event: its key has not aged, however far partition 0 went.
    assert _held(store) == {(1, "lagging")}
    store.advance([1], [T0 + 500])  # watermarks never go back
    store.advance([1], [T0 + 5])
    assert store.watermarks[1] == T0 + 500
    assert store.take_dirty() == {0: {"a": None, "b": None}, 1: {"lagging": store.partitions[1]["lagging"]}}


def test_ttl_spares_keys_in_use_and_caps_future_timestamps() -> None:
    store = StateStore(key_ttl_ms=1_000)
    store.advance([0], [T0])
    _touch(store, (0, "a"))
    keep_from = store.clock  # "a" counts as in use
    store.advance([0], [T0 + 5_000])
    assert store.evict(keep_from) == (0, 0)
    # A record stamped a day ahead of the caller's clock moves the watermark only to that clock.
    store.advance([0], [T0 + 86_400_000], ceiling_ms=T0 + 5_500)
    assert store.watermarks[0] == T0 + 5_500
    _touch(store, (0, "b"))
    assert store.evict(store.clock + 1) == (1, 0)
    assert _held(store) == {(0, "b")}


def test_restored_keys_count_toward_the_bounds() -> None:
    """Restored keys have no last-use time: least recently used (in restore order), seen at the
    partition's first watermark after the restore."""
    store = StateStore(max_keys=3)
    store.load_partition(4, {k: KeyState(rows=np.ones((2, 3), np.float32)) for k in ("r1", "r2", "r3")})
    _touch(store, (4, "r2"), (5, "new"))
    assert store.evict(store.clock + 1) == (0, 1)
    assert _held(store) == {(4, "r2"), (4, "r3"), (5, "new")}  # r1: first restored, never used since
    assert store.take_dirty() == {4: {"r1": None, "r2": store.partitions[4]["r2"]}, 5: {"new": store.partitions[5]["new"]}}

    ttl = StateStore(key_ttl_ms=1_000)
    ttl.load_partition(4, {"r": KeyState(rows=np.ones((2, 3), np.float32))})
    ttl.advance([4], [T0])  # the restore's first watermark: "r" counts as seen now
    assert ttl.evict(ttl.clock + 1) == (0, 0)
    ttl.advance([4], [T0 + 999])
    assert ttl.evict(ttl.clock + 1) == (0, 0)
    ttl.advance([4], [T0 + 1_000])
    assert ttl.evict(ttl.clock + 1) == (1, 0) and len(ttl) == 0


def test_evicted_key_leaves_open_alerts() -> None:
    store = StateStore(max_keys=1)
    store.get(0, "alerting").alert = AlertState(run=2, run_inputs=[{}, {}])
    store.open_alerts.add("alerting")
    _touch(store, (0, "other"))
    assert store.evict(store.clock + 1) == (0, 1)
    assert store.open_alerts == set()
    assert store.take_dirty() == {0: {"alerting": None, "other": store.partitions[0]["other"]}}
    assert store.get(0, "alerting").alert.neutral  # back: a fresh state, no run in progress


def test_take_dirty_leaves_other_partitions_dirty() -> None:
    """A checkpoint takes only its own partitions: another partition's evicted keys keep their
    tombstone for that partition's next checkpoint."""
    store = StateStore(max_keys=1)
    _touch(store, (0, "a"))
    store.take_dirty()
    _touch(store, (1, "b"))
    store.evict(store.clock + 1)  # "a" of partition 0 goes
    assert store.take_dirty({1}) == {1: {"b": store.partitions[1]["b"]}}
    assert store.dirty == {0: {"a"}}
    assert store.take_dirty({0}) == {0: {"a": None}}
    assert store.dirty == {}


def test_drop_and_reload_keep_the_bookkeeping_consistent() -> None:
    store = StateStore(key_ttl_ms=1_000, max_keys=10)
    store.advance([0], [T0 + 50_000])
    _touch(store, (0, "a"))
    store.drop_partition(0)
    assert len(store) == 0 and 0 not in store.watermarks and store.dirty == {}
    store.load_partition(0, {"a": KeyState(rows=np.ones((1, 3), np.float32))})
    store.advance([0], [T0])  # a new owner's first event time, older than the old watermark
    assert store.evict(store.clock + 1) == (0, 0)
    assert len(store) == 1


# --- the featurizer path ------------------------------------------------------------------------


def _spec(window: int = 5) -> FeatureSpec:
    return FeatureSpec(fields=["x", "y"], window=window)


@pytest.mark.parametrize("batch", [4, 64], ids=["event-by-event", "vectorised"])
def test_an_evicted_key_starts_a_new_window(batch: int) -> None:
    """Back after eviction, a key's window is a never-seen key's: its new first row repeated,
    nothing of its history before the eviction."""
    featurizer = Featurizer(_spec())
    rng = np.random.default_rng(1)
    bounded = StateStore(max_keys=batch)
    history = rng.random((batch, 2), dtype=np.float32)
    featurizer.windowed(["k"] * batch, [0] * batch, history, bounded)
    others = [f"o{i}" for i in range(batch)]
    keep_from = bounded.clock + 1
    featurizer.windowed(others, [0] * batch, rng.random((batch, 2), dtype=np.float32), bounded)
    assert bounded.evict(keep_from) == (0, 1)
    assert (0, "k") not in _held(bounded)
    back = rng.random((batch, 2), dtype=np.float32)
    served = featurizer.windowed(["k"] * batch, [0] * batch, back, bounded)
    fresh = featurizer.windowed(["k"] * batch, [0] * batch, back, StateStore())
    assert np.array_equal(served, fresh)
    first = served[0].reshape(5, 2)
    assert np.array_equal(first, np.repeat(back[:1], 5, axis=0))


def test_bounded_store_serves_the_same_windows_while_nothing_is_evicted() -> None:
    """Recency bookkeeping changes no row: with bounds that never bite, windows equal the
    unbounded store's, batch for batch, on both featurizer paths."""
    featurizer = Featurizer(_spec(window=4))
    rng = np.random.default_rng(2)
    keys = [str(k) for k in rng.integers(0, 40, 3_000)]
    rows = rng.random((len(keys), 2), dtype=np.float32)
    plain, bounded = StateStore(), StateStore(key_ttl_ms=10**9, max_keys=10**6)
    start = 0
    for size in (1, 7, 33, 300, 2_659):
        part = [int(k) % 3 for k in keys[start : start + size]]
        bounded.advance(part, [T0 + start] * size)
        a = featurizer.windowed(keys[start : start + size], part, rows[start : start + size], plain)
        b = featurizer.windowed(keys[start : start + size], part, rows[start : start + size], bounded)
        assert np.array_equal(a, b)
        assert bounded.evict(bounded.clock + 1) == (0, 0)
        start += size
    assert start == len(keys)


# --- the pipeline -------------------------------------------------------------------------------


def _engines_config(tmp_path: Path, **state: int) -> PipelineConfig:
    from stream_infer.tools.bench.harness import engines_config

    config = load_config(engines_config(tmp_path / "c.toml", group="g", input_topic="in", output_prefix="out")).pipelines[0]
    return config.model_copy(update={"state": StateConfig(**state)})


def _engine_event() -> dict:
    from stream_infer.tools.replay import cmapss_events

    return orjson.loads(next(iter(cmapss_events("train")))[1])


def _records(base: dict, units: range, partitions: int = 3, offset: int = 0, ts: int = T0) -> list[InputRecord]:
    return [
        InputRecord(str(u).encode(), orjson.dumps(dict(base, unit=u)), "in", u % partitions, offset + i, ts + i)
        for i, u in enumerate(units)
    ]


def _sample(name: str, **labels: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


def test_pipeline_evicts_after_each_batch_counts_and_tombstones(tmp_path: Path) -> None:
    """Pipeline.prepare evicts once per batch, sparing the keys of this batch and of the one
    prepared before it (a large batch runs as two halves, both prepared before either finishes);
    the metrics count evictions and keys held; the next checkpoint tombstones the evicted keys."""
    from stream_infer.stages.pipeline import Pipeline

    config = _engines_config(tmp_path, max_keys=100).model_copy(update={"name": "bounded-pipe"})
    pipeline = Pipeline(config, producer=None, changelog=None)
    pipeline.partitions.changelog = object()  # type: ignore[assignment]  # snapshot() only checks it is set
    pipeline.partitions.owned = {p: 1 for p in range(3)}
    pipeline.partitions.loaded.update(range(3))
    base = _engine_event()
    evicted = lambda: _sample("stream_infer_state_evictions_total", pipeline="bounded-pipe", reason="max_keys")  # noqa: E731
    try:
        held = []
        for n in range(3):
            records = _records(base, range(1 + 300 * n, 1 + 300 * (n + 1)), offset=300 * n)
            batch = pipeline.prepare(records)
            assert len(batch.keys) == 300 and not batch.dead
            pipeline.partitions.advance(records)
            held.append(len(pipeline.store))
        # Batch 1: nothing older to evict; batch 2: batch 1 still in flight; batch 3: batch 1 goes.
        assert held == [300, 600, 600]
        assert evicted() == 300
        assert _sample("stream_infer_state_keys", pipeline="bounded-pipe") == 600
        checkpoint = pipeline.partitions.snapshot()
        assert checkpoint is not None
        tombstones = {k for keys in checkpoint.snapshots.values() for k, v in keys.items() if v is None}
        assert tombstones == {str(u) for u in range(1, 301)}
        # A fourth batch of the same keys as the third: only the second batch's keys can go.
        records = _records(base, range(601, 901), offset=900, ts=T0 + 900)
        pipeline.prepare(records)
        assert len(pipeline.store) == 300  # batch 2's keys went; batch 3's (the same as this one's) stayed
        assert evicted() == 600
        assert _sample("stream_infer_state_evictions_total", pipeline="bounded-pipe", reason="ttl") == 0
    finally:
        pipeline.close()


def test_pipeline_ttl_uses_the_records_event_time(tmp_path: Path) -> None:
    from stream_infer.stages.pipeline import Pipeline

    config = _engines_config(tmp_path, key_ttl_ms=60_000).model_copy(update={"name": "ttl-pipe"})
    pipeline = Pipeline(config, producer=None, changelog=None)
    pipeline.partitions.loaded.update(range(3))
    base = _engine_event()
    try:
        pipeline.prepare(_records(base, range(1, 31), ts=T0))
        pipeline.prepare(_records(base, range(31, 61), offset=30, ts=T0 + 30_000))
        pipeline.prepare(_records(base, range(61, 91), offset=60, ts=T0 + 70_000))
        # Event time moved 70 s: the first batch's keys (idle >= 60 s in every partition) expired.
        assert {int(k) for keys in pipeline.store.partitions.values() for k in keys} == set(range(31, 91))
        assert _sample("stream_infer_state_evictions_total", pipeline="ttl-pipe", reason="ttl") == 30
    finally:
        pipeline.close()


class _Producer:
    """What Pipeline.process needs of a producer, without Kafka: every message acknowledged at once."""

    def __init__(self) -> None:
        self.messages: list[tuple] = []

    def send_batch(self, messages, on_rejected=None) -> int:
        self.messages.extend(messages)
        return len(messages)

    async def wait_acknowledged(self) -> None:
        return None

    def idle(self) -> bool:
        return True


def test_overlapped_halves_keep_their_keys_until_finished(tmp_path: Path) -> None:
    """A batch of 1,024 runs as two halves, the second prepared (and its eviction run) before the
    first is finished: with max_keys = 1, the alert rule still finds every key of the half it
    finishes, and nothing is lost between batches."""
    import asyncio

    from stream_infer.stages.pipeline import OVERLAP_MIN_EVENTS, Pipeline

    config = _engines_config(tmp_path, max_keys=1).model_copy(update={"name": "overlap-pipe"})
    producer = _Producer()
    pipeline = Pipeline(config, producer=producer, changelog=None)  # type: ignore[arg-type]
    base = _engine_event()
    missing: list[str] = []
    apply = pipeline.finisher.alerts.apply

    def checked_apply(keys, records, scores, store, model):
        missing.extend(k for k, r in zip(keys, records) if k not in store.partitions.get(r.partition, {}))
        return apply(keys, records, scores, store, model)

    pipeline.finisher.alerts.apply = checked_apply  # type: ignore[method-assign]
    try:
        for n in range(3):
            records = _records(base, range(1 + 1024 * n, 1 + 1024 * (n + 1)), offset=1024 * n)
            assert len(records) >= OVERLAP_MIN_EVENTS
            result = asyncio.run(pipeline.process(records, time.monotonic()))
            assert result.predictions == 1024
        assert missing == []
        # After the third batch: its two halves' keys (the last two prepared) are all that is left.
        assert len(pipeline.store) == 1024
        assert _sample("stream_infer_state_evictions_total", pipeline="overlap-pipe", reason="max_keys") == 2048
    finally:
        pipeline.close()


# --- 200,000 distinct keys: memory stays bounded ------------------------------------------------

KEYS = 200_000
MAX_KEYS = 20_000
BATCH = 1_024
CHECKPOINT_EVERY = 8  # batches: ~8,000 events, as a 500 ms checkpoint at ~16,000 events/s


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _measure(max_keys: int, keys: int, events_per_key: int = 1) -> dict:
    """In a fresh process: `keys` distinct engine ids through Pipeline.prepare, in groups of BATCH
    keys, each group `events_per_key` batches of one event per key (30: every key ends with a
    full window), with a checkpoint every CHECKPOINT_EVERY batches. Returns the peak RSS growth
    over a warm pipeline, and the line fitted to (keys fed, RSS growth) sampled after each
    group: its slope is the bytes a key costs, its intercept the fixed cost."""
    import tempfile

    from stream_infer.stages.pipeline import Pipeline

    config = _engines_config(Path(tempfile.mkdtemp()), max_keys=max_keys)
    pipeline = Pipeline(config, producer=None, changelog=None)
    pipeline.partitions.owned = {p: 1 for p in range(6)}
    pipeline.partitions.loaded.update(range(6))
    base = _engine_event()
    first_unit = 10_000_000  # the warm-up's keys are distinct from the measured ones
    warm = _records(base, range(first_unit - BATCH, first_unit), partitions=6)
    pipeline.prepare(warm)
    pipeline.partitions.advance(warm)
    pipeline.partitions.snapshot()
    gc.collect()
    baseline = peak = _rss_bytes()
    trace: list[tuple[int, int]] = []
    batches, offset = 0, 0
    started = time.perf_counter()
    for start in range(0, keys, BATCH):
        units = range(first_unit + start, first_unit + min(keys, start + BATCH))
        for _ in range(events_per_key):
            # Built per batch, so the test's own input does not add to the RSS.
            records = _records(base, units, partitions=6, offset=offset)
            offset += len(records)
            pipeline.prepare(records)
            pipeline.partitions.advance(records)
            batches += 1
            if batches % CHECKPOINT_EVERY == 0:
                pipeline.partitions.snapshot()
            peak = max(peak, _rss_bytes())
        trace.append((start + len(units), _rss_bytes() - baseline))
    pipeline.partitions.snapshot()
    seconds = time.perf_counter() - started
    fed, growth = np.array(trace, dtype=np.float64).T
    slope, intercept = np.polyfit(fed, growth, 1)
    return {
        "held": len(pipeline.store),
        "evicted": _sample("stream_infer_state_evictions_total", pipeline="engines", reason="max_keys"),
        "growth": peak - baseline,
        "bytes_per_key": round(float(slope)),
        "fixed_bytes": round(float(intercept)),
        "seconds": round(seconds, 1),
    }


def test_200k_distinct_keys_stay_under_the_max_keys_bound() -> None:
    """Two fresh processes feed the same 200,000 distinct keys (one event each, as a flood of
    new ids does): one unbounded, one with max_keys = 20,000. The unbounded one measures what a
    key costs: RSS growth = fixed + keys x bytes per key (a line fitted to samples taken as the
    keys arrive; ~600 bytes a key, ~10 MiB fixed). The bounded one's peak RSS growth must stay
    under

        fixed + (max_keys + 2 x batch) x (bytes per key + 256) + 8 MiB

    its keys (max_keys, plus at most the two batches' keys that eviction spares) at the measured
    cost plus 256 bytes for the bounded store's recency order (~80 measured) and allocator
    rounding, and 8 MiB for allocator fragmentation from the churn of evicted keys. The unbounded
    growth must be over twice that, so the test fails if eviction stops working."""
    procs = {
        name: subprocess.Popen([sys.executable, __file__, str(max_keys), str(KEYS)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for name, max_keys in (("bounded", MAX_KEYS), ("unbounded", 0))
    }
    results = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} measurement failed"
        results[name] = json.loads(out.strip().splitlines()[-1])
    bounded, unbounded = results["bounded"], results["unbounded"]
    assert unbounded["held"] == KEYS + BATCH and unbounded["evicted"] == 0
    bytes_per_key = unbounded["bytes_per_key"]
    assert 200 < bytes_per_key < 3_000, f"implausible bytes per key: {results}"
    bound = max(0, unbounded["fixed_bytes"]) + (MAX_KEYS + 2 * BATCH) * (bytes_per_key + 256) + 8 * 2**20
    print(
        f"bytes per key {bytes_per_key}; bounded growth {bounded['growth'] / 2**20:.1f} MiB, "
        f"bound {bound / 2**20:.1f} MiB, unbounded growth {unbounded['growth'] / 2**20:.1f} MiB; {results}"
    )
    assert MAX_KEYS <= bounded["held"] <= MAX_KEYS + 2 * BATCH
    assert bounded["evicted"] == KEYS + BATCH - bounded["held"]
    assert bounded["growth"] < bound
    assert unbounded["growth"] > 2 * bound


if __name__ == "__main__":
    # The child of the test above, and the measurement docs/state.md quotes:
    # python tests/integration/test_state_bounds.py MAX_KEYS KEYS [EVENTS_PER_KEY]
    print(json.dumps(_measure(*map(int, sys.argv[1:]))))
