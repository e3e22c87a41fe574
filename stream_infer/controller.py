"""Adaptive micro-batching: the batch size and wait, from the backlog and measured inference times.

No Kafka and no model here: the worker feeds :meth:`BatchController.update` once per lag-monitor
tick (about every second) with the backlog (messages on the pipeline's assigned partitions not yet
processed), and the pipeline feeds two :class:`CostProfile` with every batch: its inference time
(also calibrated at start) and its whole time on the event loop, decode to produce.

Policy (docs/operating.md repeats it; docs/performance.md has the measurements behind it):

* **latency mode** (start, and whenever the backlog is small): batches are at most the *latency
  size*: the largest power of two (<= the cap) whose measured cost fits the latency budget, the
  cost being the whole batch (decode, check, windows, inference, outputs), not inference alone:
  with a fast model the rest is most of it (for the engines model about 15 us an event in all,
  2-3 of it inference), and a size from inference alone would be the cap. A lone event is handed
  over at once, never held. A fetch that already brings COALESCE_EVENTS or more (events arrive
  faster than they are taken) may wait up to one latency budget for more (`Setting.coalesce`):
  at thousands of events/s a few milliseconds turn batches of a handful into batches of dozens,
  and the per-batch cost, in the worker and in the broker's requests, stops dominating. Decided
  per fetch, so a step from 10 to 20,000 events/s needs no controller tick to be batched well.
  The worker fetches only when its agent is free in this mode.
* **throughput mode**, entered when the backlog stays above the high-water mark (4 x the cap) for
  `enter_after` ticks in a row (at the first tick already: a worker starting on a backlog, after
  a restart or a rebalance, has no burst to wait out), or keeps growing for `enter_after` + 1
  ticks above the low-water mark (the cap). Batches are the cap, and may wait up to the latency
  budget (never more than `max_wait`) to fill. Larger batches amortise the per-batch cost, so
  the backlog drains faster; the worker fetches the next batch while its agent works on the
  current one. Straight to the cap rather than doubling each tick: from a latency size of 16 (a
  trickle's one-event batches cost about 0.3 ms each) doubling took six seconds to reach 1024,
  and a 60,000-event burst drained in 6.1 s instead of 3.5-4.0. Why not wait `max_wait`: under a
  backlog batches fill without waiting, so the wait only matters to a stream the worker keeps up
  with, and there it is latency (docs/performance.md).
* back to **latency mode** only after `leave_after` low ticks in a row: the backlog at or below
  the low-water mark, or no fetch filling the batch size since the previous tick. Why the
  second: with a cap of 1024 and a 20 ms wait, a steady 31,700 events/s is about 630 events a
  wait; one batch filling and one queued kept the backlog around the low-water mark (1024), and
  the worker stayed in throughput mode, every event waiting for a batch to fill.

Why no oscillation: the two marks are 4x apart and each switch needs several consecutive ticks,
so a backlog hovering near one threshold cannot flip the mode every tick.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

LATENCY, THROUGHPUT = "latency", "throughput"
# A fetch bringing this many events at once shows a stream, not a lone event: worth coalescing.
COALESCE_EVENTS = 2


@dataclass
class CostProfile:
    """Seconds per batch by batch size, as exponential moving averages in power-of-two buckets.

    Each bucket keeps the average rows and the average seconds of the batches it saw, so a bucket
    fed batches of 40 rows stands for 40 rows, not 64. Estimates interpolate linearly between
    buckets (a batch's cost is a fixed part plus a part per row), and outside the measured range
    scale the nearest bucket through the origin: above it that overestimates (conservative), below
    it underestimates, which lets a size no batch has reached yet be tried, and then measured.
    """

    alpha: float = 0.2
    buckets: dict[int, tuple[float, float]] = field(default_factory=dict)  # bucket -> (rows, seconds)

    def observe(self, rows: int, seconds: float) -> None:
        rows = max(rows, 1)
        bucket = 1 << math.ceil(math.log2(rows))
        old = self.buckets.get(bucket)
        if old is None:
            self.buckets[bucket] = (float(rows), seconds)
        else:
            self.buckets[bucket] = (old[0] + self.alpha * (rows - old[0]), old[1] + self.alpha * (seconds - old[1]))

    def estimate(self, rows: int) -> float | None:
        """Seconds for a batch of `rows`, or None before any batch was measured."""
        if not self.buckets:
            return None
        points = sorted(self.buckets.values())
        if rows <= points[0][0]:
            return points[0][1] * rows / points[0][0]
        for (r0, s0), (r1, s1) in zip(points, points[1:]):
            if rows <= r1:
                return s0 + (s1 - s0) * (rows - r0) / (r1 - r0) if r1 > r0 else s1
        last_rows, last_seconds = points[-1]
        return last_seconds * rows / last_rows


def batch_sizes(cap: int) -> list[int]:
    """The sizes profiles are calibrated at and the latency size is chosen from: the powers of
    two up to the cap, and the cap itself, ascending."""
    return sorted({1 << i for i in range(cap.bit_length())} | {cap})


def largest_within(budget: float, cap: int, *profiles: CostProfile) -> int:
    """The largest of :func:`batch_sizes` that every profile estimates within `budget` (a profile
    with no measurement yet does not object); at least 1."""
    best = 1
    for size in batch_sizes(cap):
        estimates = [e for e in (p.estimate(size) for p in profiles) if e is not None]
        if estimates and max(estimates) > budget:
            break
        best = size
    return best


@dataclass(frozen=True)
class Setting:
    batch_size: int
    linger: float  # seconds a batch may wait to fill
    mode: str
    coalesce: float = 0.0  # seconds a batch that already holds COALESCE_EVENTS may wait to fill


class BatchController:
    def __init__(
        self,
        cap: int,
        max_wait: float,
        latency_budget: float,
        profiles: Sequence[CostProfile],
        *,
        enter_after: int = 2,
        leave_after: int = 3,
    ) -> None:
        self.cap = cap
        self.max_wait = max_wait
        self.latency_budget = latency_budget
        self.profiles = tuple(profiles)
        self.enter_after, self.leave_after = enter_after, leave_after
        self.high_water, self.low_water = 4 * cap, cap
        self.mode = LATENCY
        self._high_ticks = self._growing_ticks = self._low_ticks = 0
        self._last_backlog: int | None = None
        self.setting = self._latency_setting()

    def _latency_setting(self) -> Setting:
        return Setting(self.latency_size(), 0.0, LATENCY, coalesce=self.latency_budget)

    def latency_size(self) -> int:
        return largest_within(self.latency_budget, self.cap, *self.profiles)

    def update(self, backlog: int, batches_filled: bool = True) -> Setting:
        """One control step; returns (and keeps in `setting`) what the consumer should use now.

        `batches_filled`: whether any fetch since the previous step filled the batch size. In
        throughput mode a step where none did counts as low whatever the backlog: the batcher
        waited for events, so there is no backlog to drain, only the events the waits hold."""
        last = self._last_backlog
        first = last is None
        growing = last is not None and backlog > last
        self._last_backlog = backlog
        self._high_ticks = self._high_ticks + 1 if backlog > self.high_water else 0
        self._growing_ticks = self._growing_ticks + 1 if growing and backlog > self.low_water else 0
        low = backlog <= self.low_water or (self.mode == THROUGHPUT and not batches_filled)
        self._low_ticks = self._low_ticks + 1 if low else 0

        if self.mode == LATENCY:
            # The first step's backlog was there before this worker: no burst to wait out.
            if (
                self._high_ticks >= self.enter_after
                or self._growing_ticks > self.enter_after
                or (first and backlog > self.high_water)
            ):
                self.mode = THROUGHPUT
                self.setting = Setting(self.cap, min(self.max_wait, self.latency_budget), THROUGHPUT)
            else:
                # The latency size follows the measured costs.
                self.setting = self._latency_setting()
        elif self._low_ticks >= self.leave_after:
            self.mode = LATENCY
            self._high_ticks = self._growing_ticks = 0
            self.setting = self._latency_setting()
        return self.setting
