"""Per-key state of a pipeline (sliding windows, event histories, alert debounce), grouped by input partition.

No Kafka here: :mod:`stream_infer.state.changelog` persists snapshots of dirty keys and restores
them. Grouping by partition matters because state moves with partitions on a rebalance: a revoked
partition's keys are dropped and the new owner restores them from the changelog.

The store can be bounded (:class:`stream_infer.config.StateConfig`): keys idle too long by event
time expire, and past a key count the least recently seen keys are evicted. Either way the key
leaves memory and its next changelog snapshot is a tombstone.
"""

from __future__ import annotations

import heapq
import struct
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson


@dataclass
class AlertState:
    """Debounce state of one key: see :class:`stream_infer.config.AlertRule`."""

    run: int = 0  # breaching events in a row
    in_episode: bool = False  # alerted, and not yet re-armed
    clear_run: int = 0  # non-breaching events in a row while in an episode
    run_inputs: list[dict] = field(default_factory=list)  # sources of the current run (<= consecutive)

    @property
    def neutral(self) -> bool:
        return self.run == 0 and not self.in_episode


# A key's snapshot in the changelog: a 13-byte header (format, row count or -1 for none, row
# width, length of the alert JSON), the alert state as JSON, then the rows as little-endian
# float32. Why binary: the first format (one JSON document, rows as numbers) cost 32 us a key to
# write, and the checkpoint writes every key changed since the last one: about 4,000 keys, 128 ms
# of the event loop twice a second at 9,000 events/s, which was the worker's p99 latency.
# Snapshots in the first format (they begin with "{") are still read.
# Format 3 adds the key's last sequence number (int64; INT64_MIN for none) after the header.
# Format 4 (written only for keys with an event history, so pipelines without aggregates keep
# writing format 3) appends the history: its shape (two int32) and its 8-byte words, little-endian.
_HEADER = struct.Struct("<Biii")
_SEQUENCE = struct.Struct("<q")
_HISTORY = struct.Struct("<ii")
_FORMAT = 3
_FORMAT_HISTORY = 4
_NO_SEQUENCE = -(2**63)
_NEUTRAL_ALERT = orjson.dumps(AlertState().__dict__)


@dataclass
class KeyState:
    rows: np.ndarray | None = None  # the key's last window-1 feature rows, oldest first
    alert: AlertState = field(default_factory=AlertState)
    last_sequence: int | None = None  # the highest `sequence_field` value accepted (see Pipeline)
    # The key's last events for the aggregates, oldest first: uint64 (n, 1 + fields + categories),
    # the layout of stream_infer.stages.aggregates.EventHistory.
    events: np.ndarray | None = None

    # Recency, kept only by a bounded StateStore and never persisted. Class attributes, not
    # fields: an unbounded store's states (and restored ones until touched) carry no per-instance
    # copy. seen_seq: the store's clock at the key's last use (0: restored, not used since);
    # seen_ms: its partition's event-time watermark then (-1: not known, see StateStore).
    seen_seq = 0
    seen_ms = -1

    def to_bytes(self) -> bytes:
        alert = self.alert
        alert_json = (
            _NEUTRAL_ALERT if alert.neutral and not alert.clear_run and not alert.run_inputs else orjson.dumps(alert.__dict__)
        )
        rows = self.rows
        sequence = _SEQUENCE.pack(_NO_SEQUENCE if self.last_sequence is None else self.last_sequence)
        events = self.events
        version = _FORMAT if events is None else _FORMAT_HISTORY
        if rows is None:
            data = _HEADER.pack(version, -1, 0, len(alert_json)) + sequence + alert_json
        else:
            n, width = rows.shape
            data = (
                _HEADER.pack(version, n, width, len(alert_json))
                + sequence
                + alert_json
                + rows.astype("<f4", copy=False).tobytes()
            )
        if events is None:
            return data
        return data + _HISTORY.pack(*events.shape) + events.astype("<u8", copy=False).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyState:
        if data[:1] == b"{":  # the first format: one JSON document
            raw = orjson.loads(data)
            rows = None if raw["rows"] is None else np.asarray(raw["rows"], dtype=np.float32)
            return cls(rows=rows, alert=AlertState(**raw["alert"]))
        version, n, width, alert_len = _HEADER.unpack_from(data)
        if version not in (2, _FORMAT, _FORMAT_HISTORY):
            raise ValueError(f"unknown key state format {version}: written by a newer stream-infer?")
        last_sequence, alert_at = None, _HEADER.size
        if version >= _FORMAT:
            (sequence,) = _SEQUENCE.unpack_from(data, _HEADER.size)
            last_sequence = None if sequence == _NO_SEQUENCE else sequence
            alert_at += _SEQUENCE.size
        start = alert_at + alert_len
        alert = AlertState(**orjson.loads(data[alert_at:start]))
        # Read-only view of the record's bytes: windows replace a key's rows, never write into them.
        rows = (
            None
            if n < 0
            else np.frombuffer(data, dtype="<f4", count=n * width, offset=start).astype(np.float32, copy=False).reshape(n, width)
        )
        events = None
        if version == _FORMAT_HISTORY:
            at = start + 4 * max(n, 0) * width
            count, words = _HISTORY.unpack_from(data, at)
            events = np.frombuffer(data, dtype="<u8", count=count * words, offset=at + _HISTORY.size)
            events = events.astype(np.uint64, copy=False).reshape(count, words)
        return cls(rows=rows, alert=alert, last_sequence=last_sequence, events=events)

    @property
    def empty(self) -> bool:
        return self.rows is None and self.alert.neutral and self.last_sequence is None and self.events is None


class StateStore:
    """dict of partition -> key -> KeyState, with the set of keys changed since the last checkpoint.

    Bounded (`key_ttl_ms` or `max_keys` > 0), it also keeps each partition's keys in recency order
    (an OrderedDict, least recently used first, moved on every :meth:`get`) with each key's
    :attr:`KeyState.seen_seq` and :attr:`KeyState.seen_ms`, and :meth:`evict` drops:

    * by TTL: keys whose last use is `key_ttl_ms` or more of event time behind their partition's
      watermark (the newest event time :meth:`advance` was given for it). Per partition, so a
      partition catching up on a backlog does not age out the keys it is using, and one that
      receives nothing does not age at all (`max_keys` still bounds it);
    * by count: past `max_keys` keys (all partitions together), the least recently used.

    Keys used at or after the clock value passed to :meth:`evict` are never evicted. A removed
    key is marked dirty, so :meth:`take_dirty` reports it as None (a changelog tombstone), and
    leaves :attr:`open_alerts`; if it comes back, :meth:`get` gives it a fresh KeyState.

    Keys restored by :meth:`load_partition` carry no last-use time (the changelog does not hold
    one): they count as least recently used (in restore order) and as seen at the partition's
    first watermark after the restore.

    Cost: :meth:`get` adds a few O(1) dict operations; :meth:`evict` is O(partitions + keys
    evicted) (plus O(log partitions) per key evicted by count): it walks each partition's order
    from its oldest end and stops at the first key it keeps.
    """

    def __init__(self, *, key_ttl_ms: int = 0, max_keys: int = 0) -> None:
        if key_ttl_ms < 0 or max_keys < 0:
            raise ValueError("key_ttl_ms and max_keys must be >= 0 (0: off)")
        self.partitions: dict[int, dict[str, KeyState]] = {}
        self.dirty: dict[int, set[str]] = {}
        # Keys whose alert run or episode is open: the alert rule must see all their events.
        self.open_alerts: set[str] = set()
        self.key_ttl_ms = key_ttl_ms
        self.max_keys = max_keys
        self.bounded = bool(key_ttl_ms or max_keys)
        # Bounded only: one tick per get(); a key's seen_seq is the tick of its last get(), so each
        # partition's OrderedDict is in ascending seen_seq order (and, per partition, ascending seen_ms).
        self.clock = 0
        self.watermarks: dict[int, int] = {}  # partition -> newest event time (ms) given to advance()
        # Partition -> its first watermark since it was loaded or first used: the event time keys
        # with seen_ms -1 (restored, not used since) count as last seen at.
        self._first_ms: dict[int, int] = {}

    def get(self, partition: int, key: str) -> KeyState:
        """The key's state, created empty if absent. Bounded: also marks it used now (most recent)."""
        keys = self.partitions.get(partition)
        if keys is None:
            keys = self.partitions[partition] = OrderedDict() if self.bounded else {}
        state = keys.get(key)
        if state is None:
            state = keys[key] = KeyState()  # inserted last: most recent
        elif self.bounded:
            assert isinstance(keys, OrderedDict), "a bounded store keeps each partition in an OrderedDict"
            keys.move_to_end(key)
        if self.bounded:
            self.clock += 1
            state.seen_seq = self.clock
            if self.key_ttl_ms:
                state.seen_ms = self.watermarks.get(partition, -1)
        return state

    def mark_dirty(self, partition: int, key: str) -> None:
        self.dirty.setdefault(partition, set()).add(key)

    def take_dirty(self, partitions: Collection[int] | None = None) -> dict[int, dict[str, KeyState | None]]:
        """Snapshots of the keys changed since the last call; None marks a key that became empty
        or was evicted (its changelog record is a tombstone, so compaction forgets it).

        `partitions`: take only these partitions' keys (the others stay dirty for a later call);
        None: all."""
        out: dict[int, dict[str, KeyState | None]] = {}
        for partition in list(self.dirty):
            if partitions is not None and partition not in partitions:
                continue
            keys = self.dirty.pop(partition)
            states = self.partitions.get(partition, {})
            snap: dict[str, KeyState | None] = {}
            for key in keys:
                state = states.get(key)
                if state is None or state.empty:
                    states.pop(key, None)
                    snap[key] = None
                else:
                    snap[key] = state
            out[partition] = snap
        return out

    def load_partition(self, partition: int, states: dict[str, KeyState]) -> None:
        """The partition's restored states (they replace any held). Bounded: they count toward
        `max_keys` as least recently used, in `states`' order (the changelog's)."""
        self.partitions[partition] = OrderedDict(states) if self.bounded else states
        self.dirty.pop(partition, None)
        self.open_alerts.update(k for k, s in states.items() if not s.alert.neutral)
        if partition in self.watermarks:
            self._first_ms[partition] = self.watermarks[partition]
        else:
            self._first_ms.pop(partition, None)  # set by the partition's next advance()

    def drop_partition(self, partition: int) -> None:
        self.open_alerts.difference_update(self.partitions.pop(partition, {}))
        self.dirty.pop(partition, None)
        self.watermarks.pop(partition, None)
        self._first_ms.pop(partition, None)

    def advance(self, partitions: Sequence[int], timestamps_ms: Sequence[int], ceiling_ms: int | None = None) -> None:
        """Move each partition's event-time watermark to the newest of the given event times (one
        per event, with its partition), capped at `ceiling_ms` (the caller's clock: a record
        stamped in the future must not expire a partition's keys). Watermarks never go back.
        Call before the batch's :meth:`get` calls, so its keys are stamped with its event time."""
        newest: dict[int, int] = {}
        for partition, ts in zip(partitions, timestamps_ms):
            if ts > newest.get(partition, -1):
                newest[partition] = ts
        marks = self.watermarks
        for partition, ts in newest.items():
            if ceiling_ms is not None and ts > ceiling_ms:
                ts = ceiling_ms
            if partition not in marks:
                marks[partition] = ts
                self._first_ms.setdefault(partition, ts)
            elif ts > marks[partition]:
                marks[partition] = ts

    def evict(self, keep_from: int) -> tuple[int, int]:
        """Remove expired keys (TTL), then the least recently used past `max_keys`; keys used at
        clock value `keep_from` or later (see :attr:`clock`) stay whatever their age. Returns how
        many were removed (by TTL, by count). Unbounded: (0, 0)."""
        expired = self._expire(keep_from) if self.key_ttl_ms else 0
        evicted = self._shrink(keep_from) if self.max_keys else 0
        return expired, evicted

    def _expire(self, keep_from: int) -> int:
        removed = 0
        ttl = self.key_ttl_ms
        for partition, keys in self.partitions.items():
            newest = self.watermarks.get(partition)
            if newest is None or not keys:
                continue  # no event time yet: nothing has aged
            restored_ms = self._first_ms.get(partition, newest)
            # Oldest first; seen_ms ascends along the order, so the first key kept ends the walk.
            while keys:
                key = next(iter(keys))
                state = keys[key]
                seen = state.seen_ms if state.seen_ms >= 0 else restored_ms
                if state.seen_seq >= keep_from or newest - seen < ttl:
                    break
                del keys[key]
                self._forget(partition, key, state)
                removed += 1
        return removed

    def _shrink(self, keep_from: int) -> int:
        excess = len(self) - self.max_keys
        if excess <= 0:
            return 0
        # The globally least recently used key is the oldest of the partitions' oldest keys.
        heads = [(keys[next(iter(keys))].seen_seq, partition) for partition, keys in self.partitions.items() if keys]
        heapq.heapify(heads)
        removed = 0
        while removed < excess and heads:
            seq, partition = heads[0]
            if seq >= keep_from:
                break  # every other key is at least as recent
            keys = self.partitions[partition]
            assert isinstance(keys, OrderedDict), "a bounded store keeps each partition in an OrderedDict"
            key, state = keys.popitem(last=False)
            self._forget(partition, key, state)
            removed += 1
            if keys:
                heapq.heapreplace(heads, (keys[next(iter(keys))].seen_seq, partition))
            else:
                heapq.heappop(heads)
        return removed

    def _forget(self, partition: int, key: str, state: KeyState) -> None:
        """A key just removed from memory: tombstone it at the next take_dirty, close its alert."""
        self.dirty.setdefault(partition, set()).add(key)
        if not state.alert.neutral:
            self.open_alerts.discard(key)

    def __len__(self) -> int:
        return sum(len(k) for k in self.partitions.values())
