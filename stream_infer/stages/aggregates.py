"""Per-key event-time aggregates (counts, sums, means, deviations, extremes, last values, time
since last, "seen before"): the stateful half of the featurizer for transaction-like streams.

No Kafka and no model code here. What each op means is stated once, in
:class:`stream_infer.config.AggregateFeature`; docs/features.md has the rules for late events and
the memory per key.

State: each key keeps its last `history_events` events (in input order) as one uint64 matrix in
:attr:`stream_infer.state.KeyState.events`, a row per event: word 0 the event time (int64 ms),
then each numeric field the aggregates read (float64 bits), then a 64-bit FNV-1a hash of each
categorical field (its text). Exact while a key has no more than `history_events` events in its
longest window; beyond that the oldest are not counted.

Mechanism, vectorised over the batch (no per-event Python): every key of the batch gets one
block of a scratch matrix, `history_events` slots (its history, right-aligned; empty slots carry
an event time that no window contains) followed by its new events in input order. An event's
earlier events are then the `history_events` slots just before its own, gathered for the whole
batch in one indexing operation into an (events, history_events) view, and each op is a masked
reduction along that axis. The gathered row of an event is the same whatever the batch it came
in (its last `history_events` predecessors, right-aligned), so features do not depend on batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from stream_infer.config import AggregateFeature, FeatureSpec
from stream_infer.state import StateStore

# The event time of an empty history slot: below every window's start.
_NO_TIME = np.iinfo(np.int64).min
# Event times (ms) the windows accept: integers a float64 holds exactly.
MAX_TIME_MS = 2**53
# Gather at most this many slots at once (events x history_events), so the scratch views of a
# large batch with a long history stay a few megabytes.
_GATHER_SLOTS = 1 << 18
# The ops that read a field's sum over their window.
_SUM_OPS = ("sum", "ratio_to_mean", "mean", "std")

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def text_hashes(values: Sequence[object]) -> np.ndarray:
    """uint64 FNV-1a of each value's text (str(value)), over its UTF-32 code points, vectorised
    over the values: one numpy pass per character position. Stable across processes and
    versions (Python's hash() is not), so hashes in the changelog stay valid after a restart."""
    text = np.array(values, dtype=np.str_).reshape(len(values))
    if text.dtype.itemsize == 0:  # every value empty
        return np.full(len(values), _FNV_OFFSET, dtype=np.uint64)
    points = text.view(np.uint32).reshape(len(values), -1).astype(np.uint64)
    hashes = np.full(len(values), _FNV_OFFSET, dtype=np.uint64)
    for column in points.T:  # trailing zeros are padding of shorter strings: they leave the hash as it is
        hashes = np.where(column != 0, (hashes ^ column) * _FNV_PRIME, hashes)
    return hashes


@dataclass
class AggregateInputs:
    """What the aggregates read from a batch of events, one row per event."""

    times: np.ndarray  # float64 (n,): the timestamp field as read (checked by `invalid`)
    values: np.ndarray  # float64 (n, numeric fields)
    hashes: np.ndarray  # uint64 (n, categorical fields)

    def take(self, kept: Sequence[int] | np.ndarray) -> AggregateInputs:
        return AggregateInputs(self.times[kept], self.values[kept], self.hashes[kept])

    def __len__(self) -> int:
        return len(self.times)


class AggregateFeaturizer:
    """The `aggregates` columns of a :class:`FeatureSpec` (see the module docstring)."""

    def __init__(self, spec: FeatureSpec) -> None:
        if spec.timestamp_field is None or not spec.aggregates:
            raise ValueError("AggregateFeaturizer needs a spec with aggregates and a timestamp_field")
        self.spec = spec
        self.aggregates: list[AggregateFeature] = list(spec.aggregates)
        self.history = spec.history_events
        self.numeric = spec.numeric_of
        self.categorical = spec.categorical_of
        self.words = 1 + len(self.numeric) + len(self.categorical)
        self._time = itemgetter(spec.timestamp_field)
        self._numeric = [itemgetter(f) for f in self.numeric]
        self._categorical = [itemgetter(f) for f in self.categorical]
        # The columns grouped by op: for each op, the output columns, their windows (indices
        # into self.windows) and their fields (indices among the numeric or categorical fields).
        self.windows = np.array(sorted({agg.window_ms for agg in self.aggregates}), dtype=np.int64)
        where = {int(w): i for i, w in enumerate(self.windows)}
        groups: dict[str, list[tuple[int, int, int]]] = {}
        for c, agg in enumerate(self.aggregates):
            fields = self.categorical if agg.op == "seen_before" else self.numeric
            groups.setdefault(agg.op, []).append((c, where[agg.window_ms], -1 if agg.of is None else fields.index(agg.of)))
        self._groups = {op: tuple(np.array(v, dtype=np.int64) for v in zip(*rows)) for op, rows in groups.items()}
        # The (window, field) sums the sum-based ops read, each computed once a batch; for each
        # such op, the index of every one of its columns' sum among them.
        summed = sorted({(w, j) for op in _SUM_OPS for _, w, j in groups.get(op, [])})
        self._summed_w = np.array([w for w, _ in summed], dtype=np.int64)
        self._summed_j = np.array([j for _, j in summed], dtype=np.int64)
        self._sum_of = {
            op: np.array([summed.index((w, j)) for _, w, j in groups[op]], dtype=np.int64) for op in _SUM_OPS if op in groups
        }

    # --- inputs -----------------------------------------------------------------------------

    def inputs(self, events: Sequence[dict]) -> AggregateInputs:
        """Read the timestamp, numeric and categorical fields of `events` (the schema requires
        them: the config's load checks it). Values beyond float64's range become inf, which
        :meth:`invalid` reports."""
        n = len(events)
        with np.errstate(over="ignore"):
            times = np.array(list(map(self._time, events)), dtype=np.float64).reshape(n)
            values = np.empty((n, len(self._numeric)), dtype=np.float64)
            for j, get in enumerate(self._numeric):
                values[:, j] = np.array(list(map(get, events)), dtype=np.float64).reshape(n)
        hashes = np.empty((n, len(self._categorical)), dtype=np.uint64)
        for j, get in enumerate(self._categorical):
            hashes[:, j] = text_hashes(list(map(get, events)))
        return AggregateInputs(times, values, hashes)

    @staticmethod
    def invalid(inputs: AggregateInputs) -> tuple[np.ndarray, np.ndarray]:
        """Masks of the events the aggregates cannot use: (a value is not finite, the timestamp
        is not epoch milliseconds in [0, 2**53))."""
        non_finite = ~np.isfinite(inputs.values).all(axis=1)
        times = inputs.times
        with np.errstate(invalid="ignore"):
            bad_time = ~((times >= 0) & (times < MAX_TIME_MS))  # NaN fails both comparisons
        return non_finite, bad_time & ~non_finite

    # --- the batch --------------------------------------------------------------------------

    def compute(self, keys: Sequence[str], partitions: Sequence[int], inputs: AggregateInputs, store: StateStore) -> np.ndarray:
        """float32 (n, len(aggregates)): each event's aggregates over its key's earlier events and
        itself; appends the batch's events to each key's history in `store` (marked dirty).
        Events of one key must come in their input order."""
        n, history, words = len(keys), self.history, self.words
        out = np.empty((n, len(self.aggregates)), dtype=np.float32)
        if n == 0:
            return out
        index: dict[str, int] = {}
        inverse = np.fromiter((index.setdefault(k, len(index)) for k in keys), dtype=np.int64, count=n)
        uniq = list(index)
        counts = np.bincount(inverse, minlength=len(uniq))
        order = np.argsort(inverse, kind="stable")  # grouped by key, input order inside a key
        first = order[np.cumsum(counts) - counts]  # each key's first event in the batch
        states = [store.get(partitions[i], key) for key, i in zip(uniq, first.tolist())]
        held = [s.events if s.events is not None else np.empty((0, words), dtype=np.uint64) for s in states]
        had = np.fromiter((len(h) for h in held), dtype=np.int64, count=len(uniq))

        block = history + counts
        block_start = np.cumsum(block) - block
        scratch = np.zeros((int(block.sum()), words), dtype=np.uint64)
        scratch[:, 0] = np.uint64(_NO_TIME & 0xFFFFFFFFFFFFFFFF)
        if had.any():  # histories, right-aligned in their blocks' first `history` slots
            starts = block_start + history - had
            slots = np.repeat(starts, had) + (np.arange(int(had.sum())) - np.repeat(np.cumsum(had) - had, had))
            scratch[slots] = np.concatenate(held)
        key_of = inverse[order]
        rank = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
        position = np.empty(n, dtype=np.int64)
        position[order] = block_start[key_of] + history + rank
        new = np.empty((n, words), dtype=np.uint64)
        new[:, 0] = np.floor(inputs.times).astype(np.int64).view(np.uint64)
        new[:, 1 : 1 + len(self.numeric)] = inputs.values.view(np.uint64)
        new[:, 1 + len(self.numeric) :] = inputs.hashes
        scratch[position] = new

        chunk = max(1, _GATHER_SLOTS // history)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            earlier = scratch[position[lo:hi, None] - history + np.arange(history)]  # (m, history, words)
            out[lo:hi] = self._columns(earlier, new[lo:hi])

        # Each key keeps its last `history` events, oldest first.
        keep = np.minimum(had + counts, history).tolist()
        ends = (block_start + history + counts).tolist()
        for k, (state, key) in enumerate(zip(states, uniq)):
            state.events = scratch[ends[k] - keep[k] : ends[k]].copy()  # a copy: a view would pin the scratch
            store.mark_dirty(partitions[first[k]], key)
        return out

    def _columns(self, earlier: np.ndarray, new: np.ndarray) -> np.ndarray:
        """The aggregates of m events from their earlier events (m, history, words) and their own
        words (m, words). Vectorised over the columns too: one set of array operations per op,
        whatever the number of columns, on arrays whose last axis is the history (so every sum
        runs along a contiguous axis, as numpy's pairwise summation of a row does)."""
        n_numeric = len(self.numeric)
        m = len(new)
        times = earlier[:, :, 0].view(np.int64)  # (m, H)
        values = earlier[:, :, 1 : 1 + n_numeric].view(np.float64).transpose(0, 2, 1)  # (m, numeric, H)
        hashes = earlier[:, :, 1 + n_numeric :].transpose(0, 2, 1)  # (m, categorical, H)
        now = new[:, 0].view(np.int64)
        own_values = new[:, 1 : 1 + n_numeric].view(np.float64)
        own_hashes = new[:, 1 + n_numeric :]
        columns = np.empty((m, len(self.aggregates)), dtype=np.float64)
        rows = np.arange(m)[:, None]
        groups = self._groups
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            # masks[e, w, h]: slot h holds an earlier event inside window w of event e
            masks = (times[:, None, :] > (now[:, None] - self.windows)[:, :, None]) & (times <= now[:, None])[:, None, :]
            prior = masks.sum(axis=2)  # (m, windows)
            if "count" in groups:
                c, w, _ = groups["count"]
                columns[:, c] = prior[:, w] + 1.0
            if "seen_before" in groups:
                c, w, j = groups["seen_before"]
                columns[:, c] = (masks[:, w, :] & (hashes[:, j, :] == own_hashes[:, j, None])).any(axis=2)
            if "seconds_since_last" in groups or "last" in groups:
                stamped = np.where(masks, times[:, None, :], _NO_TIME)  # (m, windows, H)
                latest = stamped.max(axis=2)
                if "seconds_since_last" in groups:
                    c, w, _ = groups["seconds_since_last"]
                    since = (now[:, None] - latest[:, w]) / 1000.0
                    columns[:, c] = np.where(prior[:, w] > 0, since, self.windows[w] / 1000.0)
                if "last" in groups:  # the latest earlier event in the window; of equal times, the later in input order
                    c, w, j = groups["last"]
                    at = stamped.shape[2] - 1 - np.argmax(stamped[:, w, ::-1] == latest[:, w, None], axis=2)
                    columns[:, c] = np.where(prior[:, w] > 0, values[rows, j, at], own_values[:, j])
            for op, fill, reduce, combine in (("min", np.inf, np.min, np.minimum), ("max", -np.inf, np.max, np.maximum)):
                if op in groups:
                    c, w, j = groups[op]
                    columns[:, c] = combine(reduce(np.where(masks[:, w, :], values[:, j, :], fill), axis=2), own_values[:, j])
            if self._sum_of:
                sums = np.where(masks[:, self._summed_w, :], values[:, self._summed_j, :], 0.0).sum(axis=2)
            for op, sum_index in self._sum_of.items():
                c, w, j = groups[op]
                prior_sum = sums[:, sum_index]
                own, count = own_values[:, j], prior[:, w]
                if op == "sum":
                    columns[:, c] = prior_sum + own
                elif op == "ratio_to_mean":
                    usual = prior_sum / np.maximum(count, 1)
                    columns[:, c] = np.where((count > 0) & (usual != 0), own / usual, 1.0)
                else:
                    mean = (prior_sum + own) / (count + 1)
                    if op == "mean":
                        columns[:, c] = mean
                    else:  # std (population)
                        deviations = (values[:, j, :] - mean[:, :, None]) ** 2
                        squares = np.where(masks[:, w, :], deviations, 0.0).sum(axis=2) + (own - mean) ** 2
                        columns[:, c] = np.sqrt(squares / (count + 1))
        return columns
