"""Micro-batch: collect events and release them as batches. No Kafka and no model code here.

Contract of :meth:`MicroBatcher.next_batch`: returns at most `max_size` items, in arrival order,
as soon as one of these holds:

* `max_size` items wait (throughput);
* the OLDEST waiting item has waited `max_wait` (the latency bound: an event waits in the batcher
  at most `max_wait`, plus the time of the one batch being processed when it arrived);
* nothing new arrived for `idle` seconds (at low load a lone event is not held for `max_wait`:
  when nothing else is coming there is nothing to wait for).

`put` blocks while `capacity` items wait, so a slow consumer of batches stops the producer of
items (the Faust agent), whose stream then stops fetching: memory stays bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    def __init__(self, max_size: int, max_wait: float, *, idle: float | None = None, capacity: int | None = None) -> None:
        self.max_size = max_size
        self.max_wait = max_wait
        # 2 ms: long enough to collect a burst that Faust delivers event by event, short enough
        # that a lone event at low load is answered in milliseconds.
        self.idle = min(max_wait, 0.002) if idle is None else idle
        self.capacity = capacity or 2 * max_size
        self._items: deque[tuple[T, float]] = deque()
        self._last_arrival = 0.0
        self._arrived = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> None:
        while len(self._items) >= self.capacity:
            self._space.clear()
            await self._space.wait()
        now = time.monotonic()
        self._items.append((item, now))
        self._last_arrival = now
        self._arrived.set()

    async def next_batch(self, timeout: float | None = None) -> list[tuple[T, float]]:
        """The next batch of (item, arrival monotonic time); [] if `timeout` passed with nothing to flush."""
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self._items:
                oldest = self._items[0][1]
                if len(self._items) >= self.max_size or now >= oldest + self.max_wait or now >= self._last_arrival + self.idle:
                    return self._take()
                wake = min(oldest + self.max_wait, self._last_arrival + self.idle)
            else:
                wake = give_up
            if give_up is not None:
                if now >= give_up and not self._items:
                    return []
                wake = min(wake, give_up) if wake is not None else give_up
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), None if wake is None else max(0.0, wake - now))
            except asyncio.TimeoutError:
                pass

    def _take(self) -> list[tuple[T, float]]:
        n = min(self.max_size, len(self._items))
        batch = [self._items.popleft() for _ in range(n)]
        self._space.set()
        return batch
