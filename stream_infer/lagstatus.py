"""Health of a consumer group judged from its offsets alone, after Burrow's lag evaluation rules.

Pure functions over samples: no Kafka here, so every rule is unit-tested with synthetic windows.

A *sample* of a partition is its committed offset and log-end offset read at one instant. Lag is
Kafka's own definition, ``log_end - committed``, as `kafka-consumer-groups --describe` prints it
(it can be negative when a commit points past the log end, e.g. after truncation). A partition
the group never committed has no lag (None; the tool prints "-").

A *window* is the last N samples of one partition, taken a fixed interval apart. Its status is
decided by the first rule that matches, in this order (lag below 0 counts as 0, as in Burrow):

1. OK      some sample in the window has lag 0: the consumer caught up at least once.
2. REWIND  the committed offset went backwards between two consecutive samples.
3. STOP    the committed offset never changed, lag > 0 throughout, and the log end grew:
           records keep arriving and nobody consumes them (a dead or hung consumer).
4. STALL   the committed offset never changed, lag > 0 throughout, and the log end did not
           grow either: a backlog sits there untouched while nothing new arrives.
5. WARN    the consumer commits (offset advanced), yet lag never fell between samples and
           ended higher than it started: it is falling behind.
6. OK      anything else (e.g. lag high but shrinking: catching up).

Differences from Burrow, forced by seeing offsets only: Burrow's STOP means "no commit for longer
than the window spans" and its STALL "commits keep arriving with the same offset". A commit of
an unchanged offset is invisible in the committed offsets, so the two are told apart here by
whether the log end grew. Burrow also judges per commit; here samples are taken on a clock.

With fewer than two samples (``--samples 1``) no trend exists, so only rules 1 and 6 can apply:
the status is always OK. Samples where the partition has no committed offset are left out of its
window; a partition with no committed offset in its latest sample is not judged (status None).

The group status is the worst partition status, by :data:`SEVERITY`: OK < WARN < STALL < STOP <
REWIND (STALL, STOP and REWIND are Burrow's errors; a backlog that grows (STOP) is worse than one
that stands still (STALL); a rewind means records are processed twice, which no wait can undo).
A group with no judged partition at all has the status NOTFOUND, Burrow's name for that case.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

PartitionKey = tuple[str, int]  # (topic, partition)


class Status(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    STALL = "STALL"
    STOP = "STOP"
    REWIND = "REWIND"
    NOTFOUND = "NOTFOUND"  # group level only: no partition could be judged


# Worse is higher. NOTFOUND has no rank: it only arises when there is nothing to rank.
SEVERITY: dict[Status, int] = {Status.OK: 0, Status.WARN: 1, Status.STALL: 2, Status.STOP: 3, Status.REWIND: 4}


@dataclass(frozen=True)
class OffsetSample:
    """One partition's offsets at one instant. `committed` None: the group has no commit for it."""

    committed: int | None
    log_end: int

    @property
    def lag(self) -> int | None:
        """Kafka's lag, log_end - committed (negative if the commit is past the log end)."""
        return None if self.committed is None else self.log_end - self.committed


def evaluate_partition(window: Sequence[OffsetSample]) -> Status | None:
    """The status of one partition over its window (oldest sample first); see the module rules."""
    if not window or window[-1].committed is None:
        return None
    committed = [s.committed for s in window if s.committed is not None]
    log_ends = [s.log_end for s in window if s.committed is not None]
    lags = [max(0, end - offset) for offset, end in zip(committed, log_ends)]
    if any(lag == 0 for lag in lags) or len(committed) < 2:
        return Status.OK
    if any(later < earlier for earlier, later in pairwise(committed)):
        return Status.REWIND
    # No rewind, so the offsets never fall: equal ends mean the offset never moved.
    if committed[0] == committed[-1]:
        return Status.STOP if log_ends[-1] > log_ends[0] else Status.STALL
    if all(later >= earlier for earlier, later in pairwise(lags)) and lags[-1] > lags[0]:
        return Status.WARN
    return Status.OK


def group_status(statuses: Iterable[Status | None]) -> Status:
    """The worst of the partitions' statuses; NOTFOUND when none was judged."""
    judged = [s for s in statuses if s is not None]
    return max(judged, key=SEVERITY.__getitem__) if judged else Status.NOTFOUND


class Windows:
    """The last `size` samples of every partition: a sliding window fed one round at a time.

    A round holds every partition reported at that instant; partitions absent from a round are
    forgotten (their offsets were deleted, or a topic filter no longer matches), so a report
    always covers exactly the latest round's partitions.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"window size must be at least 1, not {size}")
        self.size = size
        self._windows: dict[PartitionKey, deque[OffsetSample]] = {}

    def add(self, round_: Mapping[PartitionKey, OffsetSample]) -> None:
        self._windows = {key: self._windows.get(key, deque(maxlen=self.size)) for key in round_}
        for key, sample in round_.items():
            self._windows[key].append(sample)

    def latest(self) -> dict[PartitionKey, OffsetSample]:
        """Each partition's newest sample, sorted by (topic, partition)."""
        return {key: self._windows[key][-1] for key in sorted(self._windows)}

    def statuses(self) -> dict[PartitionKey, Status | None]:
        """Each partition's status over its window, sorted by (topic, partition)."""
        return {key: evaluate_partition(self._windows[key]) for key in sorted(self._windows)}


@dataclass(frozen=True)
class PartitionReport:
    topic: str
    partition: int
    committed: int | None
    log_end: int
    lag: int | None
    lag_seconds: float | None  # age of the oldest unprocessed record; None: unknown
    status: Status | None

    def to_dict(self) -> dict[str, object]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "log_end": self.log_end,
            "lag": self.lag,
            "lag_seconds": self.lag_seconds,
            "status": None if self.status is None else self.status.value,
        }


@dataclass(frozen=True)
class GroupReport:
    group: str
    status: Status
    partitions: list[PartitionReport]

    def to_dict(self) -> dict[str, object]:
        return {"group": self.group, "status": self.status.value, "partitions": [p.to_dict() for p in self.partitions]}


def lag_seconds(sample: OffsetSample, now: float, oldest_unprocessed_ts: float | None) -> float | None:
    """Seconds since the oldest unprocessed record was written: 0 with no lag, None if unknown.

    A record stamped in the future (producer clock ahead of ours) counts as 0 s old, not negative.
    """
    lag = sample.lag
    if lag is None:
        return None
    if lag <= 0:
        return 0.0
    if oldest_unprocessed_ts is None:
        return None
    return round(max(0.0, now - oldest_unprocessed_ts), 3)


def build_report(group: str, windows: Windows, now: float, timestamps: Mapping[PartitionKey, float]) -> GroupReport:
    """The report of the latest round: its offsets, each window's status and the group's.

    `timestamps` maps a partition to the timestamp (epoch seconds) of its record at the committed
    offset; `now` is the wall-clock time the latest round was taken.
    """
    statuses = windows.statuses()
    partitions = [
        PartitionReport(
            topic,
            partition,
            sample.committed,
            sample.log_end,
            sample.lag,
            lag_seconds(sample, now, timestamps.get((topic, partition))),
            statuses[(topic, partition)],
        )
        for (topic, partition), sample in windows.latest().items()
    ]
    return GroupReport(group, group_status(statuses.values()), partitions)
