"""Adaptive micro-batching: the batch size and wait, from the backlog and measured inference times.

No Kafka and no model here: the worker feeds :meth:`BatchController.update` once per lag-monitor
tick (about every second) with the backlog (messages on the pipeline's assigned partitions not yet
processed) and :meth:`InferenceProfile.observe` with every batch's inference time.

Policy (the README's "Operating it" repeats it):

* **latency mode** (start, and whenever the backlog is small): batches are at most the *latency
  size*: the largest power of two (<= the cap) whose measured inference time fits the latency
  budget. A lone event is handed over at once, never held. A fetch that already brings
  COALESCE_EVENTS or more (events arrive faster than they are taken) may wait up to one latency
  budget for more (`Setting.coalesce`): at thousands of events/s a few milliseconds turn batches
  of a handful into batches of dozens, and the per-batch cost, in the worker and in the broker's
  requests, stops dominating. Decided per fetch, so a step from 10 to 20,000 events/s needs no
  controller tick to be batched well. The worker fetches only when its agent is free in this mode.
* **throughput mode**, entered when the backlog stays above the high-water mark (4 x the cap) for
  `enter_after` ticks in a row, or keeps growing for `enter_after` + 1 ticks above the low-water
  mark (the cap): each tick doubles the batch size up to the configured cap, and batches may wait
  up to `max_wait` to fill. Larger batches amortise the per-batch cost, so the backlog drains
  faster; the worker fetches the next batch while its agent works on the current one.
* back to **latency mode** only after the backlog has stayed at or below the low-water mark for
  `leave_after` ticks in a row.

Why no oscillation: the two marks are 4x apart and each switch needs several consecutive ticks,
so a backlog hovering near one threshold cannot flip the mode every tick; and the batch size only
grows within throughput mode and resets once, on leaving it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

LATENCY, THROUGHPUT = "latency", "throughput"
# A fetch bringing this many events at once shows a stream, not a lone event: worth coalescing.
COALESCE_EVENTS = 2


@dataclass
class InferenceProfile:
    """Seconds per batch by batch size (power-of-two buckets), as an exponential moving average."""

    alpha: float = 0.2
    seconds: dict[int, float] = field(default_factory=dict)  # bucket (power of two) -> seconds

    def observe(self, rows: int, seconds: float) -> None:
        bucket = 1 << max(0, math.ceil(math.log2(max(rows, 1))))
        old = self.seconds.get(bucket)
        self.seconds[bucket] = seconds if old is None else old + self.alpha * (seconds - old)

    def estimate(self, rows: int) -> float | None:
        """Seconds for a batch of `rows`: the nearest measured bucket at or above it, else the
        largest measured one scaled linearly (inference cost grows at most linearly with rows)."""
        if not self.seconds:
            return None
        above = [b for b in self.seconds if b >= rows]
        if above:
            return self.seconds[min(above)]
        largest = max(self.seconds)
        return self.seconds[largest] * rows / largest

    def largest_within(self, budget: float, cap: int) -> int:
        """The largest power of two <= cap (or the cap itself) whose estimate fits `budget`; at least 1."""
        sizes = [1 << i for i in range(cap.bit_length()) if (1 << i) <= cap]
        if cap not in sizes:
            sizes.append(cap)
        best = 1
        for size in sizes:
            estimate = self.estimate(size)
            if estimate is None or estimate <= budget:
                best = size
            else:
                break
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
        profile: InferenceProfile,
        *,
        enter_after: int = 2,
        leave_after: int = 3,
    ) -> None:
        self.cap = cap
        self.max_wait = max_wait
        self.latency_budget = latency_budget
        self.profile = profile
        self.enter_after, self.leave_after = enter_after, leave_after
        self.high_water, self.low_water = 4 * cap, cap
        self.mode = LATENCY
        self._high_ticks = self._growing_ticks = self._low_ticks = 0
        self._last_backlog: int | None = None
        self.setting = self._latency_setting()

    def _latency_setting(self) -> Setting:
        return Setting(self.latency_size(), 0.0, LATENCY, coalesce=self.latency_budget)

    def latency_size(self) -> int:
        return self.profile.largest_within(self.latency_budget, self.cap)

    def update(self, backlog: int) -> Setting:
        """One control step; returns (and keeps in `setting`) what the consumer should use now."""
        growing = self._last_backlog is not None and backlog > self._last_backlog
        self._last_backlog = backlog
        self._high_ticks = self._high_ticks + 1 if backlog > self.high_water else 0
        self._growing_ticks = self._growing_ticks + 1 if growing and backlog > self.low_water else 0
        self._low_ticks = self._low_ticks + 1 if backlog <= self.low_water else 0

        if self.mode == LATENCY:
            if self._high_ticks >= self.enter_after or self._growing_ticks > self.enter_after:
                self.mode = THROUGHPUT
                size = min(self.cap, max(2 * self.setting.batch_size, 1))
                self.setting = Setting(size, self.max_wait, THROUGHPUT)
            else:
                # The latency size follows the measured inference times.
                self.setting = self._latency_setting()
        elif self._low_ticks >= self.leave_after:
            self.mode = LATENCY
            self._high_ticks = self._growing_ticks = 0
            self.setting = self._latency_setting()
        elif backlog > self.low_water:
            self.setting = Setting(min(self.cap, 2 * self.setting.batch_size), self.max_wait, THROUGHPUT)
        return self.setting
