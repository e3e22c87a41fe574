"""Featurize: validated events in, a float32 matrix out (one row per event), with per-key windows.

No Kafka and no model code here. The layout is the one :class:`stream_infer.config.FeatureSpec`
documents; training (`stream_infer.training`) builds the same layout, and the tests check that the
served predictions equal the offline ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from stream_infer.config import FeatureSpec
from stream_infer.state import StateStore


class Featurizer:
    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        fields = spec.fields
        # itemgetter pulls all fields of an event in one C call; for one field it returns a scalar.
        self._numeric = itemgetter(*fields) if len(fields) > 1 else (lambda e, _f=fields[0]: (e[_f],))
        self._categories = {name: {c: i for i, c in enumerate(cats)} for name, cats in spec.one_hot.items()}

    def numeric_rows(self, events: Sequence[dict]) -> np.ndarray:
        """(N, len(fields)) float32 of the numeric fields. Values beyond float32's range become inf,
        which the caller's finite check sends to the dead-letter topic."""
        with np.errstate(over="ignore"):
            return np.array(list(map(self._numeric, events)), dtype=np.float32).reshape(len(events), len(self.spec.fields))

    def stateless(self, events: Sequence[dict], rows: np.ndarray) -> np.ndarray:
        """One-hot columns followed by the numeric rows."""
        if not self._categories:
            return rows
        blocks = []
        for name, index in self._categories.items():
            codes = np.fromiter((index.get(e.get(name), -1) for e in events), dtype=np.int64, count=len(events))
            onehot = np.zeros((len(events), len(index)), dtype=np.float32)
            known = codes >= 0  # unknown categories are rejected by the schema; stay all-zero if not
            onehot[np.nonzero(known)[0], codes[known]] = 1.0
            blocks.append(onehot)
        return np.hstack(blocks + [rows])

    def windowed(self, keys: Sequence[str], partitions: Sequence[int], rows: np.ndarray, store: StateStore) -> np.ndarray:
        """Each event's row becomes its key's last `window` rows (oldest first), flattened.

        Updates each key's state in `store` as a side effect. Events of one key must appear in their
        input order (they do: one partition, consumed in order).
        """
        window, width = self.spec.window, rows.shape[1]
        out = np.empty((len(keys), window * width), dtype=np.float32)
        key_array = np.asarray(keys, dtype=object)
        uniq, inverse = np.unique(key_array, return_inverse=True)
        order = np.argsort(inverse, kind="stable")  # groups events by key, keeping input order inside a key
        bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1]
        for key, idx in zip(uniq, np.split(order, bounds)):
            state = store.get(partitions[idx[0]], key)
            new = rows[idx]
            history = new if state.rows is None else np.concatenate([state.rows, new])
            pad = window - 1 - (0 if state.rows is None else len(state.rows))
            # A key with fewer than `window` rows so far is left-padded with its first row.
            extended = np.concatenate([np.repeat(history[:1], pad, axis=0), history]) if pad > 0 else history
            out[idx] = sliding_window_view(extended, (window, width))[:, 0].reshape(len(idx), window * width)
            state.rows = history[-(window - 1):].copy() if window > 1 else None
            store.mark_dirty(partitions[idx[0]], key)
        return out

