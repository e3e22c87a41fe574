"""MicroBatcher: size, idle and max_wait flushes, the oldest item's latency bound, and backpressure.

Plain tests driving their own event loop with asyncio.run (no pytest-asyncio). The machine is
small and shared, so timings are asserted as bounds with generous slack, never as exact values.
"""

from __future__ import annotations

import asyncio
import time

from stream_infer.batcher import MicroBatcher

SLACK = 0.25  # seconds of scheduling noise tolerated on a loaded 2-core machine


def test_flushes_immediately_at_max_size() -> None:
    """max_size waiting items are released at once, in arrival order, even with long max_wait and idle."""

    async def scenario() -> tuple[list, list, float, int]:
        batcher: MicroBatcher[int] = MicroBatcher(5, 10.0, idle=10.0, capacity=20)
        for i in range(12):
            await batcher.put(i)
        started = time.monotonic()
        first = await batcher.next_batch()
        second = await batcher.next_batch()
        return first, second, time.monotonic() - started, len(batcher)

    first, second, elapsed, left = asyncio.run(scenario())
    assert [item for item, _ in first] == [0, 1, 2, 3, 4]
    assert [item for item, _ in second] == [5, 6, 7, 8, 9]
    assert elapsed < SLACK
    assert left == 2  # the rest waits: neither max_wait nor idle has passed


def test_waiting_consumer_wakes_when_max_size_arrives() -> None:
    """A consumer already waiting gets the batch as soon as the max_size-th item is put."""

    async def scenario() -> tuple[list, float]:
        batcher: MicroBatcher[str] = MicroBatcher(4, 10.0, idle=10.0)
        consumer = asyncio.ensure_future(batcher.next_batch())
        await asyncio.sleep(0.02)
        assert not consumer.done()
        started = time.monotonic()
        for item in "abcd":
            await batcher.put(item)
        batch = await asyncio.wait_for(consumer, 5)
        return batch, time.monotonic() - started

    batch, elapsed = asyncio.run(scenario())
    assert [item for item, _ in batch] == list("abcd")
    assert elapsed < SLACK


def test_lone_item_is_flushed_after_idle_not_max_wait() -> None:
    """At low load one item leaves after `idle` (default 2 ms), far sooner than max_wait = 1 s."""

    async def scenario(idle: float | None) -> tuple[list, float, float]:
        batcher: MicroBatcher[str] = MicroBatcher(100, 1.0, idle=idle)
        started = time.monotonic()
        await batcher.put("only")
        batch = await batcher.next_batch()
        return batch, time.monotonic() - started, batcher.idle

    for idle in (None, 0.02):
        batch, elapsed, effective_idle = asyncio.run(scenario(idle))
        assert [item for item, _ in batch] == ["only"]
        assert elapsed >= effective_idle  # not before idle: a burst could still be arriving
        assert elapsed < 1.0 / 2, f"idle={idle}: lone item held {elapsed:.3f} s"
    assert MicroBatcher(10, 1.0).idle == 0.002


async def _trickle(batcher: MicroBatcher[int], count: int, every: float) -> None:
    for i in range(count):
        await batcher.put(i)
        await asyncio.sleep(every)


def _drain_trickle(max_wait: float, idle: float, count: int) -> list[tuple[list[tuple[int, float]], float]]:
    """Trickle `count` items one every 1 ms; return each batch with the time it was returned."""

    async def scenario() -> list[tuple[list[tuple[int, float]], float]]:
        batcher: MicroBatcher[int] = MicroBatcher(10_000, max_wait, idle=idle)
        producer = asyncio.ensure_future(_trickle(batcher, count, 0.001))
        batches, seen = [], 0
        while seen < count:
            batch = await asyncio.wait_for(batcher.next_batch(), 10)
            batches.append((batch, time.monotonic()))
            seen += len(batch)
        await producer
        return batches

    return asyncio.run(scenario())


def test_steady_trickle_bounds_the_oldest_items_wait() -> None:
    """An item every 1 ms never leaves a 5 ms idle gap, yet the first batch comes within ~max_wait of
    the first item, and no batch's oldest item waited much longer than max_wait."""
    max_wait = 0.05
    # 600 items take >= 0.6 s: far longer than max_wait + SLACK, so only max_wait can end a batch early.
    batches = _drain_trickle(max_wait, idle=0.005, count=600)
    items = [item for batch, _ in batches for item, _ in batch]
    assert items == list(range(600))  # all, once, in order
    first_batch, returned = batches[0]
    assert first_batch[0][0] == 0
    assert returned - first_batch[0][1] <= max_wait + SLACK
    for batch, returned in batches:
        assert returned - batch[0][1] <= max_wait + SLACK


def test_max_wait_alone_releases_a_trickle() -> None:
    """With idle out of play (10 s), batches leave because the oldest item reached max_wait: never
    earlier, and not much later, so a busy key cannot hold events indefinitely."""
    max_wait = 0.05
    batches = _drain_trickle(max_wait, idle=10.0, count=150)
    assert [item for batch, _ in batches for item, _ in batch] == list(range(150))
    assert len(batches) >= 2  # 150 items at >= 1 ms each span more than one max_wait
    for batch, returned in batches[:-1]:
        waited = returned - batch[0][1]
        assert max_wait <= waited <= max_wait + SLACK


def test_put_blocks_at_capacity_until_a_batch_is_taken() -> None:
    """With `capacity` items waiting, put waits; taking a batch frees room and the put completes."""

    async def scenario() -> None:
        batcher: MicroBatcher[int] = MicroBatcher(3, 10.0, idle=10.0, capacity=4)
        for i in range(4):
            await asyncio.wait_for(batcher.put(i), 1)
        blocked = asyncio.ensure_future(batcher.put(4))
        await asyncio.sleep(0.05)
        assert not blocked.done(), "put did not block at capacity"
        assert len(batcher) == 4
        batch = await batcher.next_batch()
        assert [item for item, _ in batch] == [0, 1, 2]
        await asyncio.wait_for(blocked, 2)
        assert len(batcher) == 2
        assert [item for item, _ in batcher._items] == [3, 4]

    asyncio.run(scenario())


def test_default_capacity_is_twice_max_size() -> None:
    """Without an explicit capacity, 2 * max_size items may wait before put blocks."""

    async def scenario() -> None:
        batcher: MicroBatcher[int] = MicroBatcher(3, 10.0, idle=10.0)
        for i in range(6):
            await asyncio.wait_for(batcher.put(i), 1)
        blocked = asyncio.ensure_future(batcher.put(6))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        await batcher.next_batch()
        await asyncio.wait_for(blocked, 2)

    asyncio.run(scenario())


def test_next_batch_times_out_empty() -> None:
    """With nothing waiting, next_batch(timeout=0.05) returns [] after about 0.05 s (not before)."""

    async def scenario() -> tuple[list, float]:
        batcher: MicroBatcher[int] = MicroBatcher(10, 1.0)
        started = time.monotonic()
        batch = await batcher.next_batch(timeout=0.05)
        return batch, time.monotonic() - started

    batch, elapsed = asyncio.run(scenario())
    assert batch == []
    assert 0.05 <= elapsed < 0.05 + SLACK


def test_item_arriving_during_a_timeout_wait_is_returned() -> None:
    """An item put while next_batch(timeout) waits is returned (after idle), not dropped for []."""

    async def scenario() -> list:
        batcher: MicroBatcher[str] = MicroBatcher(10, 1.0, idle=0.005)
        consumer = asyncio.ensure_future(batcher.next_batch(timeout=2.0))
        await asyncio.sleep(0.01)
        await batcher.put("late")
        return await asyncio.wait_for(consumer, 5)

    assert [item for item, _ in asyncio.run(scenario())] == ["late"]
