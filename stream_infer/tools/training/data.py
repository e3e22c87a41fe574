"""Feature builders and splits shared by training and tests; the loaders of the bundled data sets
are :mod:`stream_infer.datasets` (re-exported here for the training code).

Contract: this module imports only numpy and the standard library (never sklearn or pandas), so the
serving side can build exactly the same feature vectors the models were trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from stream_infer.datasets import (
    AI4I_EVENT_FIELDS,
    AI4I_LABEL_FIELDS,
    CMAPSS_COLUMNS,
    DATASETS_DIR,
    load_ai4i,
    load_cmapss,
    load_rul,
)

#: Folder holding the bundled ONNX models and their metadata JSON (the training default output).

#: Seed used for every random choice in training and in the data splits.
SEED: int = 42

# --------------------------------------------------------------------------------------------
# C-MAPSS (engines)
# --------------------------------------------------------------------------------------------

#: The 14 informative sensors, in model input order (the other 7 are constant in FD001).
ENGINE_FEATURES: list[str] = [
    "s2",
    "s3",
    "s4",
    "s7",
    "s8",
    "s9",
    "s11",
    "s12",
    "s13",
    "s14",
    "s15",
    "s17",
    "s20",
    "s21",
]

#: Number of cycles in one model input window.
ENGINE_WINDOW: int = 30

#: Remaining useful life targets are capped here: early in life the RUL is not observable.
RUL_CAP: float = 125.0

_FEATURE_COLUMNS = [CMAPSS_COLUMNS.index(name) for name in ENGINE_FEATURES]


def window_features(history: np.ndarray, window: int = ENGINE_WINDOW) -> np.ndarray:
    """Turn one engine's sensor history into one model input row.

    ``history`` has shape (k, 14), k >= 1, columns in :data:`ENGINE_FEATURES` order, oldest cycle
    first. Keeps the last ``window`` rows; when k < window the first observed row is repeated on
    the left (a new engine is assumed to have looked like its first reading). Returns a float32
    vector of ``window * 14`` values, row-major: all 14 sensors of the oldest cycle first.
    """
    history = np.asarray(history, dtype=np.float64)
    if history.ndim != 2 or history.shape[0] == 0 or history.shape[1] != len(ENGINE_FEATURES):
        raise ValueError(f"history must have shape (k>=1, {len(ENGINE_FEATURES)}), got {history.shape}")
    tail = history[-window:]
    if tail.shape[0] < window:
        pad = np.repeat(tail[:1], window - tail.shape[0], axis=0)
        tail = np.concatenate([pad, tail], axis=0)
    return tail.reshape(-1).astype(np.float32)


def engine_sensor_rows(data: np.ndarray) -> np.ndarray:
    """Select the :data:`ENGINE_FEATURES` columns from a (rows, 26) C-MAPSS array."""
    return data[:, _FEATURE_COLUMNS]


def _unit_slices(units: np.ndarray) -> list[tuple[float, slice]]:
    """Contiguous row ranges per unit, in file order (the files are sorted by unit, cycle)."""
    starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
    ends = np.r_[starts[1:], len(units)]
    return [(float(units[s]), slice(int(s), int(e))) for s, e in zip(starts, ends)]


def engine_windows(data: np.ndarray, window: int = ENGINE_WINDOW) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build one window ending at every row of a C-MAPSS array.

    Returns ``(X, units, cycles)``: X float32 (rows, window * 14) built with
    :func:`window_features` semantics, and the unit and cycle of the row each window ends at.
    """
    sensors = engine_sensor_rows(data)
    blocks = []
    for _, rows in _unit_slices(data[:, 0]):
        unit_sensors = sensors[rows]
        # Pad once per unit, then take every window as a strided view: same result as calling
        # window_features on each growing prefix, without the quadratic cost.
        padded = np.concatenate([np.repeat(unit_sensors[:1], window - 1, axis=0), unit_sensors])
        views = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (k, 14, window)
        blocks.append(views.transpose(0, 2, 1).reshape(len(unit_sensors), -1))
    X = np.concatenate(blocks).astype(np.float32)
    return X, data[:, 0].copy(), data[:, 1].copy()


def train_rul_targets(data: np.ndarray, cap: float = RUL_CAP) -> np.ndarray:
    """RUL target for every row of a run-to-failure array: (unit's last cycle - cycle), capped."""
    units, cycles = data[:, 0], data[:, 1]
    last = np.empty_like(cycles)
    for _, rows in _unit_slices(units):
        last[rows] = cycles[rows].max()
    return np.minimum(last - cycles, cap)


def last_windows(data: np.ndarray, window: int = ENGINE_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """The window ending at each unit's last row: ``(X (units, window * 14) float32, unit ids)``.

    This is the standard C-MAPSS test protocol, to compare with :func:`load_rul`.
    """
    sensors = engine_sensor_rows(data)
    slices = _unit_slices(data[:, 0])
    X = np.stack([window_features(sensors[rows], window) for _, rows in slices])
    return X, np.asarray([unit for unit, _ in slices])


def split_units(units: Iterable[float], val_fraction: float = 0.2, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Split engine ids (not rows) into sorted ``(train_units, val_units)``, seeded.

    Splitting by engine keeps every window of one engine on one side, so validation measures
    generalisation to unseen engines, as the test set does.
    """
    unique = np.unique(np.asarray(list(units), dtype=np.float64))
    shuffled = np.random.default_rng(seed).permutation(unique)
    n_val = int(round(len(unique) * val_fraction))
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])


# --------------------------------------------------------------------------------------------
# AI4I 2020 (machines)
# --------------------------------------------------------------------------------------------

#: Machine model input order: one-hot of ``type`` then the five numeric event fields.
MACHINE_TYPES: list[str] = ["L", "M", "H"]
MACHINE_NUMERIC: list[str] = [
    "air_temperature_k",
    "process_temperature_k",
    "rotational_speed_rpm",
    "torque_nm",
    "tool_wear_min",
]
MACHINE_FEATURES: list[str] = [f"type_{t}" for t in MACHINE_TYPES] + MACHINE_NUMERIC


def machine_feature_vector(event: Mapping) -> np.ndarray:
    """One machine event -> float32 vector (8,) in :data:`MACHINE_FEATURES` order.

    Raises ``ValueError`` for a ``type`` outside L/M/H and ``KeyError`` for a missing field.
    """
    machine_type = event["type"]
    if machine_type not in MACHINE_TYPES:
        raise ValueError(f"unknown machine type {machine_type!r}, expected one of {MACHINE_TYPES}")
    one_hot = [1.0 if machine_type == t else 0.0 for t in MACHINE_TYPES]
    return np.asarray(one_hot + [float(event[k]) for k in MACHINE_NUMERIC], dtype=np.float32)


def machine_features(events: Sequence[Mapping]) -> np.ndarray:
    """Many machine events -> float32 array (N, 8), see :func:`machine_feature_vector`."""
    if not events:
        return np.zeros((0, len(MACHINE_FEATURES)), dtype=np.float32)
    return np.stack([machine_feature_vector(e) for e in events])


def stratified_split(labels: np.ndarray, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = SEED) -> list[np.ndarray]:
    """Seeded stratified split of row indices, one sorted index array per fraction.

    Written with numpy alone (instead of sklearn's ``train_test_split``) so the offline tests
    and the server can rebuild the same split without sklearn. Within each class the rows are
    permuted once, then cut by cumulative fraction; rounding leftovers go to the last part.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        bounds = np.round(np.cumsum(fractions)[:-1] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, bounds)):
            part.append(chunk)
    return [np.sort(np.concatenate(chunks)) for chunks in parts]


def ids_digest(ids: Iterable[int]) -> str:
    """Short sha256 of a set of integer ids, to check that a split was rebuilt identically."""
    text = ",".join(str(int(i)) for i in sorted(ids))
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


__all__ = ["AI4I_EVENT_FIELDS", "AI4I_LABEL_FIELDS", "CMAPSS_COLUMNS", "DATASETS_DIR", "load_ai4i", "load_cmapss", "load_rul"]
