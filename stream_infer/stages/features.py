"""Featurize: validated events in, a float32 matrix out (one row per event), with per-key windows
and per-key event-time aggregates (:mod:`stream_infer.stages.aggregates`).

No Kafka and no model code here. The layout is the one :class:`stream_infer.config.FeatureSpec`
documents; training (`stream_infer.tools.training`) builds the same layout, and the tests check that the
served predictions equal the offline ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter

import numpy as np

from stream_infer.config import FeatureSpec
from stream_infer.stages.aggregates import AggregateFeaturizer, AggregateInputs
from stream_infer.state import StateStore

# Batches up to this many events build their windows event by event (see _windowed_each): on the
# benchmark machine that was 2-9x cheaper below this size than the vectorised path, whose fixed
# cost (two dozen numpy calls) dominates a small batch, and no dearer up to about 100.
SMALL_BATCH = 32


class Featurizer:
    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        fields = spec.fields
        # itemgetter pulls all fields of an event in one C call; for one field it returns a scalar.
        self._numeric: Callable[[dict], tuple]
        if len(fields) > 1:
            self._numeric = itemgetter(*fields)
        elif fields:
            only = fields[0]
            self._numeric = lambda e: (e[only],)
        else:
            self._numeric = lambda e: ()
        #: The per-key event-time aggregates, when the spec declares any.
        self.aggregates = AggregateFeaturizer(spec) if spec.aggregates else None
        # Category -> column, looked up by whatever value an event holds (None when it has none).
        self._categories: dict[str, dict[object, int]] = {
            name: {c: i for i, c in enumerate(cats)} for name, cats in spec.one_hot.items()
        }

    def numeric_rows(self, events: Sequence[dict]) -> np.ndarray:
        """(N, len(fields)) float32 of the numeric fields. Values beyond float32's range become inf,
        which the caller's finite check sends to the dead-letter topic."""
        with np.errstate(over="ignore"):
            return np.array(list(map(self._numeric, events)), dtype=np.float32).reshape(len(events), len(self.spec.fields))

    def matrix(
        self,
        events: Sequence[dict],
        keys: Sequence[str],
        partitions: Sequence[int],
        store: StateStore,
        rows: np.ndarray | None = None,
        aggregate_inputs: AggregateInputs | None = None,
    ) -> np.ndarray:
        """The model's input rows for valid `events` of the given keys (in input order per key),
        updating their keys' state in `store`: the one entry point the worker (through
        :class:`~stream_infer.stages.prepare.BatchPreparer`), `stream-infer score` and training
        share. `rows` and `aggregate_inputs`, when the caller has read them already (to check
        them), are :meth:`numeric_rows` and ``aggregates.inputs`` of `events`."""
        if rows is None:
            rows = self.numeric_rows(events)
        if self.spec.window > 1:
            return self.windowed(keys, partitions, rows, store)
        matrix = self.stateless(events, rows)
        if self.aggregates is None:
            return matrix
        if aggregate_inputs is None:
            aggregate_inputs = self.aggregates.inputs(events)
        return np.hstack([matrix, self.aggregates.compute(keys, partitions, aggregate_inputs, store)])

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

        Updates each key's state in `store` as a side effect (its last `window` - 1 rows, fewer
        while the key has fewer). Events of one key must appear in their input order (they do:
        one partition, consumed in order).

        Vectorised over the batch: a fleet sends a batch of mostly distinct keys, so per-key numpy
        calls cost more than the model. Every key gets one block in a scratch array, its history
        (left-padded to `window` - 1 rows with its first row) followed by its new rows; each
        event's window is then a slice of that array, all gathered in one indexing operation.
        """
        window, width, n = self.spec.window, rows.shape[1], len(keys)
        if n <= SMALL_BATCH:
            return self._windowed_each(keys, partitions, rows, store)
        hist = window - 1
        index: dict[str, int] = {}
        inverse = np.fromiter((index.setdefault(k, len(index)) for k in keys), dtype=np.int64, count=n)
        uniq = list(index)
        n_keys = len(uniq)
        counts = np.bincount(inverse, minlength=n_keys)
        first = np.full(n_keys, n, dtype=np.int64)
        np.minimum.at(first, inverse, np.arange(n))  # each key's first event in the batch
        states = [store.get(partitions[i], key) for key, i in zip(uniq, first.tolist())]
        had = np.fromiter((0 if s.rows is None else len(s.rows) for s in states), dtype=np.int64, count=n_keys)
        # Histories, all left-padded to `hist` rows with the key's first row ever.
        padded = [
            s.rows if h == hist and s.rows is not None else _left_pad(s.rows, rows[i], hist)
            for s, h, i in zip(states, had.tolist(), first.tolist())
        ]
        block = hist + counts  # rows per key in the scratch array
        block_start = np.cumsum(block) - block
        scratch = np.empty((int(block.sum()), width), dtype=np.float32)
        scratch[(block_start[:, None] + np.arange(hist)).ravel()] = np.stack(padded).reshape(-1, width)
        order = np.argsort(inverse, kind="stable")  # events grouped by key, input order inside a key
        key_of = inverse[order]
        rank = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)  # position inside its key
        scratch[block_start[key_of] + hist + rank] = rows[order]
        # Each event's window: `window` consecutive scratch rows from its start, one gather for all.
        starts = block_start[key_of] + rank
        out = np.empty((n, window * width), dtype=np.float32)
        out[order] = scratch[starts[:, None] + np.arange(window)].reshape(n, window * width)
        # New state: each key's last rows, as many as it has seen (at most `hist`).
        tails = scratch[(block_start + counts)[:, None] + np.arange(hist)]
        keep = np.minimum(had + counts, hist).tolist()
        for k, (state, key) in enumerate(zip(states, uniq)):
            state.rows = tails[k, hist - keep[k] :].copy()  # a copy: a view would pin the batch's array
            store.mark_dirty(partitions[first[k]], key)
        return out

    def _windowed_each(self, keys: Sequence[str], partitions: Sequence[int], rows: np.ndarray, store: StateStore) -> np.ndarray:
        """:meth:`windowed` event by event, for small batches: a few numpy calls per event instead
        of the vectorised path's two dozen per batch. Same rows and state (a test holds them equal)."""
        window = self.spec.window
        hist = window - 1
        out = np.empty((len(keys), window * rows.shape[1]), dtype=np.float32)
        for i, (key, partition) in enumerate(zip(keys, partitions)):
            state = store.get(partition, key)
            history = state.rows
            had = 0 if history is None else len(history)
            row = rows[i : i + 1]
            if had == hist and history is not None:  # had == hist >= 1: a history
                block = np.concatenate((history, row))
            else:
                block = np.concatenate((_left_pad(history, rows[i], hist), row))
            out[i] = block.ravel()
            # The key's last rows, as many as it has seen: a view of this event's own block (one
            # row more than kept), never of an array shared with other keys.
            state.rows = block[window - min(had + 1, hist) :]
            store.mark_dirty(partition, key)
        return out


def _left_pad(history: np.ndarray | None, first_new_row: np.ndarray, rows: int) -> np.ndarray:
    """`history` (None or fewer than `rows` rows) left-padded with its first row to `rows` rows."""
    if history is None or len(history) == 0:
        return np.repeat(first_new_row[None, :], rows, axis=0)
    return np.concatenate([np.repeat(history[:1], rows - len(history), axis=0), history])
