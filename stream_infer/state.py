"""Per-key state of a pipeline (sliding windows, alert debounce), grouped by input partition.

No Kafka here: :mod:`stream_infer.kafka.changelog` persists snapshots of dirty keys and restores
them. Grouping by partition matters because state moves with partitions on a rebalance: a revoked
partition's keys are dropped and the new owner restores them from the changelog.
"""

from __future__ import annotations

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


@dataclass
class KeyState:
    rows: np.ndarray | None = None  # the key's last window-1 feature rows, oldest first
    alert: AlertState = field(default_factory=AlertState)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"rows": self.rows, "alert": self.alert.__dict__},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyState:
        raw = orjson.loads(data)
        rows = None if raw["rows"] is None else np.asarray(raw["rows"], dtype=np.float32)
        return cls(rows=rows, alert=AlertState(**raw["alert"]))

    @property
    def empty(self) -> bool:
        return self.rows is None and self.alert.neutral


class StateStore:
    """dict of partition -> key -> KeyState, with the set of keys changed since the last checkpoint."""

    def __init__(self) -> None:
        self.partitions: dict[int, dict[str, KeyState]] = {}
        self.dirty: dict[int, set[str]] = {}
        # Keys whose alert run or episode is open: the alert rule must see all their events.
        self.open_alerts: set[str] = set()

    def get(self, partition: int, key: str) -> KeyState:
        keys = self.partitions.setdefault(partition, {})
        state = keys.get(key)
        if state is None:
            state = keys[key] = KeyState()
        return state

    def mark_dirty(self, partition: int, key: str) -> None:
        self.dirty.setdefault(partition, set()).add(key)

    def take_dirty(self) -> dict[int, dict[str, KeyState | None]]:
        """Snapshots of the keys changed since the last call; None marks a key that became empty
        (its changelog record is a tombstone, so compaction forgets it)."""
        out: dict[int, dict[str, KeyState | None]] = {}
        for partition, keys in self.dirty.items():
            states = self.partitions.get(partition, {})
            snap = {}
            for key in keys:
                state = states.get(key)
                if state is None or state.empty:
                    states.pop(key, None)
                    snap[key] = None
                else:
                    snap[key] = state
            out[partition] = snap
        self.dirty = {}
        return out

    def load_partition(self, partition: int, states: dict[str, KeyState]) -> None:
        self.partitions[partition] = states
        self.dirty.pop(partition, None)
        self.open_alerts.update(k for k, s in states.items() if not s.alert.neutral)

    def drop_partition(self, partition: int) -> None:
        self.open_alerts.difference_update(self.partitions.pop(partition, {}))
        self.dirty.pop(partition, None)

    def __len__(self) -> int:
        return sum(len(k) for k in self.partitions.values())
