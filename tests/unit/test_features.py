"""The serving featurizer builds exactly the rows training built, from the shipped demo config.

C-MAPSS events are fed in replay order (interleaved by cycle) in uneven batches through one
StateStore, and every row must equal `training.data.window_features` of the unit's history so far.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_infer.config import FeatureSpec, PipelineConfig, load_config
from stream_infer.stages import features
from stream_infer.stages.features import Featurizer
from stream_infer.state import AlertState, KeyState, StateStore
from stream_infer.tools.replay import dataset_events
from stream_infer.tools.training import data

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "stream_infer" / "configs" / "demo.toml"
PARTITIONS = 6  # as the demo's input topics: a key always maps to one partition
BATCH_SIZES = (1, 7, 256)  # then the rest in one batch


@functools.cache
def _pipeline(name: str) -> PipelineConfig:
    return next(p for p in load_config(DEMO_CONFIG).pipelines if p.name == name)


def _engines_spec() -> FeatureSpec:
    return _pipeline("engines").features


def _partition(key: str) -> int:
    return int(key) % PARTITIONS


def _feed(featurizer: Featurizer, keys: list[str], rows: np.ndarray, store: StateStore, sizes: tuple[int, ...]) -> np.ndarray:
    """Run `windowed` over consecutive batches of the given sizes (the last batch takes the rest)."""
    out, start = [], 0
    for size in (*sizes, len(keys)):
        stop = min(len(keys), start + size)
        if stop > start:
            out.append(featurizer.windowed(keys[start:stop], [_partition(k) for k in keys[start:stop]], rows[start:stop], store))
        start = stop
    assert start == len(keys)
    return np.concatenate(out)


@functools.cache
def _cmapss_replay() -> tuple[list[str], list[dict]]:
    keys, events = [], []
    for key, value in dataset_events("cmapss-test"):
        keys.append(key.decode())
        events.append(orjson.loads(value))
    return keys, events


@functools.cache
def _expected_windows() -> np.ndarray:
    """window_features(history so far) for every replay event, computed from load_cmapss('test')."""
    raw = data.load_cmapss("test")
    sensors = data.engine_sensor_rows(raw)
    units, cycles = raw[:, 0].astype(int), raw[:, 1].astype(int)
    first_row = {u: int(np.argmax(units == u)) for u in np.unique(units)}
    row_of = {(u, c): i for i, (u, c) in enumerate(zip(units.tolist(), cycles.tolist()))}
    _, events = _cmapss_replay()
    out = np.empty((len(events), data.ENGINE_WINDOW * len(data.ENGINE_FEATURES)), dtype=np.float32)
    for n, event in enumerate(events):
        i = row_of[(event["unit"], event["cycle"])]
        out[n] = data.window_features(sensors[first_row[event["unit"]] : i + 1])
    return out


@functools.cache
def _served_cmapss() -> tuple[np.ndarray, StateStore]:
    keys, events = _cmapss_replay()
    featurizer = Featurizer(_engines_spec())
    store = StateStore()
    matrix = _feed(featurizer, keys, featurizer.numeric_rows(events), store, BATCH_SIZES)
    return matrix, store


# --- the shipped config is the training layout --------------------------------------------------


def test_demo_config_features_are_the_training_layout() -> None:
    """demo.toml's feature specs are the column layouts the bundled models were trained on."""
    engines, machines = _engines_spec(), _pipeline("machines").features
    assert engines.fields == data.ENGINE_FEATURES
    assert engines.window == data.ENGINE_WINDOW
    assert engines.one_hot == {}
    assert engines.width == 420
    assert machines.one_hot == {"type": data.MACHINE_TYPES}
    assert machines.fields == data.MACHINE_NUMERIC
    assert machines.window == 1
    assert machines.width == len(data.MACHINE_FEATURES)


# --- windowed (engines) -------------------------------------------------------------------------


def test_replay_order_interleaves_units() -> None:
    """Premise of the next test: the replay interleaves engines, so state is really per key."""
    keys, events = _cmapss_replay()
    assert len(events) == data.load_cmapss("test").shape[0]
    assert len(set(keys[:100])) == 100
    assert [e["cycle"] for e in events[:100]] == [1] * 100


def test_windowed_rows_equal_training_window_features_exactly() -> None:
    """Every served row (uneven batches, one store) == window_features(unit history so far), bit for bit."""
    served, _ = _served_cmapss()
    expected = _expected_windows()
    assert served.dtype == np.float32 and served.shape == expected.shape
    mismatched = np.flatnonzero((served.view(np.uint32) != expected.view(np.uint32)).any(axis=1))
    assert mismatched.size == 0, f"{mismatched.size} rows differ, first at replay index {mismatched[:5].tolist()}"


def test_windowed_rows_equal_the_training_matrix() -> None:
    """Reordered to file order, the served rows are exactly training's engine_windows matrix."""
    served, _ = _served_cmapss()
    _, events = _cmapss_replay()
    X, units, cycles = data.engine_windows(data.load_cmapss("test"))
    position = {(e["unit"], e["cycle"]): n for n, e in enumerate(events)}
    order = [position[(int(u), int(c))] for u, c in zip(units, cycles)]
    assert np.array_equal(served[order].view(np.uint32), X.view(np.uint32))


@pytest.mark.parametrize("sizes", [(1,) * 40, (3, 50), (13_096,)], ids=["one-by-one", "3-then-rest", "one-batch"])
def test_batch_boundaries_do_not_change_rows(sizes: tuple[int, ...]) -> None:
    """The same events cut into other batches give the same rows (the first 2000 replay events)."""
    keys, events = _cmapss_replay()
    keys, events = keys[:2000], events[:2000]
    featurizer = Featurizer(_engines_spec())
    served = _feed(featurizer, keys, featurizer.numeric_rows(events), StateStore(), sizes)
    assert np.array_equal(served, _expected_windows()[:2000])


def test_short_history_is_left_padded_with_the_first_row() -> None:
    """A key with k < 30 rows gets its first row repeated 30 - k times on the left; state holds the k rows."""
    spec = _engines_spec()
    featurizer = Featurizer(spec)
    width = len(spec.fields)
    rows = (np.arange(5 * width, dtype=np.float32).reshape(5, width) + 1) * 1.5
    store = StateStore()
    outputs = [featurizer.windowed(["7"], [1], rows[i : i + 1], store)[0] for i in range(3)]
    outputs += list(featurizer.windowed(["7", "7"], [1, 1], rows[3:5], store))
    for k, out in enumerate(outputs, start=1):
        expected = np.concatenate([np.repeat(rows[:1], spec.window - k, axis=0), rows[:k]]).reshape(-1)
        assert np.array_equal(out, expected), f"after {k} rows"
        assert np.array_equal(out, data.window_features(rows[:k]))
    state = store.partitions[1]["7"]
    assert np.array_equal(state.rows, rows)
    assert store.dirty == {1: {"7"}}


def test_state_keeps_only_the_last_window_minus_one_rows() -> None:
    """After 40 rows the key's state is exactly its last 29 rows, and its window the last 30."""
    spec = _engines_spec()
    featurizer = Featurizer(spec)
    rows = np.random.default_rng(3).normal(size=(40, len(spec.fields))).astype(np.float32)
    store = StateStore()
    first = featurizer.windowed(["9"] * 25, [0] * 25, rows[:25], store)
    assert store.get(0, "9").rows.shape == (25, len(spec.fields))
    second = featurizer.windowed(["9"] * 15, [0] * 15, rows[25:], store)
    state = store.get(0, "9")
    assert state.rows.shape == (spec.window - 1, len(spec.fields))
    assert np.array_equal(state.rows, rows[-(spec.window - 1) :])
    assert np.array_equal(second[-1], rows[-spec.window :].reshape(-1))
    assert np.array_equal(first[0], np.repeat(rows[:1], spec.window, axis=0).reshape(-1))


def test_keys_in_one_batch_do_not_share_windows() -> None:
    """Interleaved keys in one batch each see only their own rows, in their input order."""
    spec = _engines_spec()
    featurizer = Featurizer(spec)
    width = len(spec.fields)
    rows = np.arange(6 * width, dtype=np.float32).reshape(6, width)
    keys = ["a", "b", "a", "c", "b", "a"]
    out = featurizer.windowed(keys, [0] * 6, rows, StateStore())
    for n, key in enumerate(keys):
        own = rows[[i for i in range(n + 1) if keys[i] == key]]
        assert np.array_equal(out[n], data.window_features(own)), f"event {n} ({key})"


def test_small_and_vectorised_paths_give_the_same_rows_and_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 1-60 events over 25 keys (repeats in a batch, new keys, short histories), fed once
    through the event-by-event path and once through the vectorised one: bit-equal rows, and the
    same state rows and dirty keys after every batch."""
    spec = _engines_spec()
    rng = np.random.default_rng(11)
    batches = []
    for _ in range(120):
        n = int(rng.integers(1, 61))
        keys = [str(k) for k in rng.integers(0, 25, size=n)]
        batches.append((keys, [int(k) % 3 for k in keys], rng.normal(size=(n, len(spec.fields))).astype(np.float32)))
    results = {}
    for small_batch in (10**9, 0):  # everything event by event; everything vectorised
        monkeypatch.setattr(features, "SMALL_BATCH", small_batch)
        featurizer, store = Featurizer(spec), StateStore()
        outs, states = [], []
        for keys, partitions, rows in batches:
            outs.append(featurizer.windowed(keys, partitions, rows, store))
            states.append(
                (
                    {p: {k: s.rows.copy() for k, s in ks.items()} for p, ks in store.partitions.items()},
                    {p: set(d) for p, d in store.take_dirty().items()},
                )
            )
        results[small_batch] = outs, states
    (each, each_states), (vec, vec_states) = results[10**9], results[0]
    for i, (a, b) in enumerate(zip(each, vec)):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), f"batch {i}"
    for i, ((a, dirty_a), (b, dirty_b)) in enumerate(zip(each_states, vec_states)):
        assert dirty_a == dirty_b and a.keys() == b.keys(), f"batch {i}"
        for p in a:
            assert a[p].keys() == b[p].keys() and all(np.array_equal(a[p][k], b[p][k]) for k in a[p]), f"batch {i}"


# --- stateless (machines) -----------------------------------------------------------------------


def test_stateless_machine_rows_equal_training_machine_features() -> None:
    """AI4I events -> one-hot type [L, M, H] then the 5 numeric fields, exactly training's machine_features."""
    events = [orjson.loads(value) for _, value in dataset_events("ai4i")]
    featurizer = Featurizer(_pipeline("machines").features)
    served = featurizer.stateless(events, featurizer.numeric_rows(events))
    expected = data.machine_features(events)
    assert served.dtype == np.float32 and served.shape == (len(events), len(data.MACHINE_FEATURES))
    assert np.array_equal(served, expected)
    assert np.array_equal(served[:, :3].sum(axis=1), np.ones(len(events), dtype=np.float32))
    assert {e["type"] for e in events} == set(data.MACHINE_TYPES)  # every category exercised


# --- state snapshots ----------------------------------------------------------------------------


def test_key_state_round_trips_exactly() -> None:
    """to_bytes/from_bytes restores every key's rows bit for bit (float32) and its alert state."""
    _, store = _served_cmapss()
    states = [s for keys in store.partitions.values() for s in keys.values()]
    assert len(states) == 100
    for state in states:
        restored = KeyState.from_bytes(state.to_bytes())
        assert restored.rows.dtype == np.float32
        assert np.array_equal(restored.rows.view(np.uint32), state.rows.view(np.uint32))
        assert restored.alert == state.alert

    alert = AlertState(
        run=2,
        in_episode=True,
        clear_run=3,
        run_inputs=[
            {"topic": "engines.telemetry", "partition": 4, "offset": 17, "timestamp_ms": 1_700_000_000_123},
            {"topic": "engines.telemetry", "partition": 4, "offset": 18, "timestamp_ms": 1_700_000_000_456},
        ],
    )
    tricky = np.array([[0.0, -0.0, 1e-45, 3.4028235e38, -3.4028235e38, 1.1754944e-38, 0.1, 643.02] * 2], dtype=np.float32)[:, :14]
    restored = KeyState.from_bytes(KeyState(rows=tricky, alert=alert).to_bytes())
    assert np.array_equal(restored.rows.view(np.uint32), tricky.view(np.uint32))
    assert restored.alert == alert

    empty = KeyState.from_bytes(KeyState().to_bytes())
    assert empty.rows is None and empty.alert == AlertState() and empty.empty

    for sequence in (0, 1, -5, 2**62, -(2**63) + 1):
        restored = KeyState.from_bytes(KeyState(rows=tricky, last_sequence=sequence).to_bytes())
        assert restored.last_sequence == sequence and not KeyState(last_sequence=sequence).empty
    assert KeyState.from_bytes(KeyState(rows=tricky).to_bytes()).last_sequence is None


def test_key_state_of_the_previous_binary_format_still_restores() -> None:
    """Format 2 (no sequence number) restores with last_sequence None."""
    rows = np.arange(3 * 14, dtype=np.float32).reshape(3, 14)
    alert_json = orjson.dumps(AlertState(run=1).__dict__)
    data = struct.pack("<Biii", 2, 3, 14, len(alert_json)) + alert_json + rows.astype("<f4").tobytes()
    restored = KeyState.from_bytes(data)
    assert np.array_equal(restored.rows, rows) and restored.alert == AlertState(run=1) and restored.last_sequence is None


def test_key_state_snapshots_are_compact_and_the_first_format_still_restores() -> None:
    """Snapshots are binary (rows as raw float32, not numbers as text: 10x cheaper to write, which
    the checkpoint does for every changed key); changelogs written in the first (JSON) format
    still restore exactly."""
    rows = np.arange(29 * 14, dtype=np.float32).reshape(29, 14) / 7
    alert = AlertState(run=1, run_inputs=[{"topic": "t", "partition": 0, "offset": 3, "timestamp_ms": 5}])
    state = KeyState(rows=rows, alert=alert)
    assert len(state.to_bytes()) < rows.nbytes + 200
    first_format = orjson.dumps({"rows": rows, "alert": alert.__dict__}, option=orjson.OPT_SERIALIZE_NUMPY)
    restored = KeyState.from_bytes(first_format)
    assert np.array_equal(restored.rows.view(np.uint32), rows.view(np.uint32)) and restored.alert == alert
    assert KeyState.from_bytes(b'{"rows": null, "alert": {}}').empty
    with pytest.raises(ValueError, match="unknown key state format"):
        KeyState.from_bytes(b"\x09" + state.to_bytes()[1:])


def test_restored_state_continues_the_windows_exactly() -> None:
    """Snapshot every key mid-stream, restore into a fresh store: the remaining rows are unchanged."""
    keys, events = _cmapss_replay()
    featurizer = Featurizer(_engines_spec())
    rows = featurizer.numeric_rows(events)
    half = 6000
    first = StateStore()
    _feed(featurizer, keys[:half], rows[:half], first, (500,))
    restored = StateStore()
    for partition, states in first.partitions.items():
        restored.load_partition(partition, {k: KeyState.from_bytes(s.to_bytes()) for k, s in states.items()})
    rest = _feed(featurizer, keys[half:], rows[half:], restored, (999,))
    assert np.array_equal(rest, _expected_windows()[half:])
