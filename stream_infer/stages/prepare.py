"""The front half of the batch path, on the event loop: staleness policy, decode and validate,
non-finite features, order per key, featurize (updating per-key windows) and the state bounds.

Contract: :meth:`BatchPreparer.prepare` returns a :class:`PreparedBatch` in which every record
handed in is accounted for exactly once: as a row of `matrix` (with its key and record), a dead
letter in `dead`, or a stale skip in `stale`. Records of one key keep their input order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from stream_infer import metrics
from stream_infer.config import PipelineConfig
from stream_infer.records import InputRecord
from stream_infer.stages.decode import DeadLetter, DecodedBatch, EventDecoder
from stream_infer.stages.features import Featurizer
from stream_infer.state import StateStore


@dataclass
class PreparedBatch:
    """A batch after decode and featurize: what inference needs, and what is already decided."""

    records: list[InputRecord] = field(default_factory=list)  # valid events' records, in input order
    keys: list[str] = field(default_factory=list)
    matrix: np.ndarray | None = None  # None: nothing to infer
    dead: list[DeadLetter] = field(default_factory=list)
    skipped: int = 0  # replays below a restored checkpoint
    stale: list[InputRecord] = field(default_factory=list)  # skipped by the staleness policy
    timestamps_ms: np.ndarray | None = None  # of every record processed (valid or dead), for e2e latency
    echo: list[dict] | None = None  # per valid event, its `outputs.echo` fields (None: nothing echoed)


class BatchPreparer:
    """Turns records into a :class:`PreparedBatch` for one pipeline (see the module docstring)."""

    def __init__(self, config: PipelineConfig, store: StateStore) -> None:
        self.config = config
        self.name = config.name
        self.decoder = EventDecoder(
            config.schema_file,
            max_message_bytes=config.max_message_bytes,
            key_field=config.key_field,
            max_key_bytes=config.max_key_bytes,
        )
        self.featurizer = Featurizer(config.features)
        self.store = store
        self.staleness = config.staleness
        self._stale_seen = 0
        # The store's clock when the last prepare() began using keys: keys used since then stay
        # through the next eviction (see _bound_state).
        self._state_clock = 0
        self._uses_store = (
            config.features.window > 1
            or bool(config.features.aggregates)
            or config.alert is not None
            or config.sequence_field is not None
        )
        self._echo = config.outputs.echo
        self._events = metrics.EVENTS.labels(self.name)
        self._state_keys = metrics.STATE_KEYS.labels(self.name)
        self._evictions = {reason: metrics.STATE_EVICTIONS.labels(self.name, reason) for reason in ("ttl", "max_keys")}

    def prepare(self, records: Sequence[InputRecord], skipped: int = 0) -> PreparedBatch:
        """Decode, validate and featurize `records` (updates per-key state); `skipped` replays
        below a restored checkpoint were already taken out and are only counted."""
        batch = PreparedBatch(skipped=skipped)
        self._events.inc(len(records) + skipped)
        if not records:
            return batch
        timestamps = np.fromiter((r.timestamp_ms for r in records), dtype=np.int64, count=len(records))
        if self.staleness.max_event_age_ms:
            fresh = self._drop_stale(records, timestamps, batch)
            if fresh is not None:
                records, timestamps = [r for r, k in zip(records, fresh.tolist()) if k], timestamps[fresh]
                if not records:
                    return batch
        batch.timestamps_ms = timestamps.astype(np.float64)
        decoded = self.decoder.decode(records)
        batch.dead = decoded.dead
        if not decoded.events:
            return batch
        rows = self.featurizer.numeric_rows(decoded.events)
        aggregates = self.featurizer.aggregates
        inputs = None
        unusable = non_finite = ~np.isfinite(rows).all(axis=1)
        if aggregates is not None:
            inputs = aggregates.inputs(decoded.events)
            agg_non_finite, bad_time = aggregates.invalid(inputs)
            non_finite = non_finite | agg_non_finite
            unusable = non_finite | bad_time  # a bad time only where every value is finite (the letter says which)
        if unusable.any():
            for i in np.nonzero(unusable)[0].tolist():
                if non_finite[i]:
                    letter = DeadLetter(
                        decoded.records[i], "non_finite_number", "a feature is NaN/Infinity or beyond float32 range"
                    )
                else:
                    field_name = self.config.features.timestamp_field
                    letter = DeadLetter(
                        decoded.records[i],
                        "schema_violation",
                        f"{field_name} {decoded.events[i].get(field_name)!r} is not epoch milliseconds in [0, 2**53)",
                    )
                batch.dead.append(letter)
            kept = np.nonzero(~unusable)[0].tolist()
            rows = _keep_rows(decoded, rows, kept)
            inputs = inputs.take(kept) if inputs is not None else None
            if not decoded.events:
                return batch
        store = self.store
        if store.key_ttl_ms:
            # Event time for the TTL, capped at this worker's clock (see StateStore.advance): the
            # events' timestamp_field where the aggregates read one (so a key expires by the same
            # clock its windows use, online and offline), else the records' Kafka timestamps.
            event_times = (
                inputs.times.astype(np.int64).tolist() if inputs is not None else [r.timestamp_ms for r in decoded.records]
            )
            store.advance([r.partition for r in decoded.records], event_times, ceiling_ms=int(time.time() * 1000))
        keep_from, self._state_clock = self._state_clock, store.clock + 1  # this batch's first get() ticks to clock + 1
        if self.config.sequence_field is not None:
            in_order = self._in_sequence(decoded, batch.dead)
            if in_order is not None:
                kept = np.nonzero(in_order)[0].tolist()
                rows = _keep_rows(decoded, rows, kept)
                inputs = inputs.take(kept) if inputs is not None else None
        if decoded.events:
            batch.records, batch.keys = decoded.records, decoded.keys
            partitions = [r.partition for r in decoded.records]
            batch.matrix = self.featurizer.matrix(decoded.events, batch.keys, partitions, store, rows, inputs)
            if self._echo:
                batch.echo = [{name: event.get(name) for name in self._echo} for event in decoded.events]
        if self._uses_store:
            self._bound_state(keep_from)
        return batch

    def _in_sequence(self, decoded: DecodedBatch, dead: list[DeadLetter]) -> np.ndarray | None:
        """Order per key: an event whose `sequence_field` is not greater than the highest its key
        had accepted (kept in the key's state, so it survives restarts and rebalances) goes to
        `dead` as `out_of_order`, unless `out_of_order = "accept"`; then it is processed and the
        highest stays. An event without an integer `sequence_field` is not checked (the schema
        decides whether it must have one). Returns the mask of events to keep, None for all.

        A loop over the batch's events: each compares with the one before it of the same key,
        and the state lookups are those the window would make anyway."""
        field_name = self.config.sequence_field
        reject = self.config.out_of_order == "dead_letter"
        get, mark_dirty = self.store.get, self.store.mark_dirty
        keep: np.ndarray | None = None
        for i, (event, key, record) in enumerate(zip(decoded.events, decoded.keys, decoded.records)):
            sequence = event.get(field_name)
            if type(sequence) is not int:
                continue
            state = get(record.partition, key)
            last = state.last_sequence
            if last is None or sequence > last:
                state.last_sequence = sequence
                mark_dirty(record.partition, key)
            elif reject:
                if keep is None:
                    keep = np.ones(len(decoded.events), dtype=bool)
                keep[i] = False
                dead.append(
                    DeadLetter(
                        record, "out_of_order", f"{field_name} {sequence} is not greater than the key's last accepted {last}"
                    )
                )
        return keep

    def _bound_state(self, keep_from: int) -> None:
        """Once per prepared batch, after its features: expire and evict keys as `config.state`
        says, then count. Keys used from clock `keep_from` on (this batch and the one prepared
        before it) stay: a batch split in halves prepares both before finishing either, and the
        alert rule uses a batch's keys when it finishes."""
        expired, evicted = self.store.evict(keep_from)
        if expired:
            self._evictions["ttl"].inc(expired)
        if evicted:
            self._evictions["max_keys"].inc(evicted)
        self._state_keys.set(len(self.store))

    def _drop_stale(self, records: Sequence[InputRecord], timestamps: np.ndarray, batch: PreparedBatch) -> np.ndarray | None:
        """The staleness policy: records older than max_event_age_ms go to `batch.stale` (all of
        them with `skip`; all but 1 in sample_every with `sample`); returns the mask of records to
        process, or None when none is stale."""
        policy = self.staleness
        stale = timestamps < int(time.time() * 1000) - policy.max_event_age_ms
        if not stale.any():
            return None
        drop = stale.copy()
        if policy.policy == "sample":
            # Keep every sample_every-th stale event, counted across batches.
            stale_idx = np.nonzero(stale)[0]
            ordinal = self._stale_seen + np.arange(len(stale_idx))
            drop[stale_idx[ordinal % policy.sample_every == 0]] = False
            self._stale_seen += len(stale_idx)
        batch.stale = [r for r, d in zip(records, drop.tolist()) if d]
        return ~drop


def _keep_rows(decoded: DecodedBatch, rows: np.ndarray, kept: list[int]) -> np.ndarray:
    """Keep only the events at `kept` (ascending) in `decoded`; returns their feature rows."""
    decoded.records = [decoded.records[i] for i in kept]
    decoded.events = [decoded.events[i] for i in kept]
    decoded.keys = [decoded.keys[i] for i in kept]
    return rows[kept]
