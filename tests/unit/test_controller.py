"""The batching controller's policy, tick by tick (no Kafka): see stream_infer.controller."""

from __future__ import annotations

import pytest

from stream_infer.controller import LATENCY, THROUGHPUT, BatchController, CostProfile, largest_within


def _cost(rows: float, per_row_ms: float = 0.01, fixed_ms: float = 0.05) -> float:
    return (fixed_ms + per_row_ms * rows) / 1000


def _profile(
    per_row_ms: float = 0.01, fixed_ms: float = 0.05, sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
) -> CostProfile:
    profile = CostProfile()
    for rows in sizes:
        profile.observe(rows, _cost(rows, per_row_ms, fixed_ms))
    return profile


def _controller(cap: int = 1024, budget_ms: float = 1.0, *profiles: CostProfile) -> BatchController:
    return BatchController(cap, max_wait=0.02, latency_budget=budget_ms / 1000, profiles=profiles or (_profile(),))


def test_profile_estimates_and_latency_size() -> None:
    profile = _profile()
    assert profile.estimate(100) == pytest.approx(_cost(100))  # linear between buckets: exact for fixed + per row
    assert profile.estimate(4096) == pytest.approx(_cost(1024) * 4)  # through the origin beyond the largest
    # 0.05 ms + 0.01 ms/row: 64 rows = 0.69 ms fits 1 ms, 128 rows = 1.33 ms does not.
    assert largest_within(0.001, 1024, profile) == 64
    assert largest_within(1.0, 1000, profile) == 1000  # the cap itself when everything fits
    assert largest_within(1e-9, 1024, profile) == 1  # never below one
    assert CostProfile().estimate(10) is None
    assert largest_within(1e-9, 1024, CostProfile()) == 1024  # nothing measured: nothing objects


def test_a_bucket_stands_for_the_rows_it_saw() -> None:
    """Batches of 40 rows land in the 64 bucket; the estimate for 64 must not be their cost."""
    profile = _profile(sizes=(1, 40))
    assert profile.estimate(40) == pytest.approx(_cost(40))
    assert profile.estimate(64) == pytest.approx(_cost(40) * 64 / 40)  # beyond: conservative
    assert profile.estimate(20) == pytest.approx(_cost(1) + (_cost(40) - _cost(1)) * 19 / 39)


def test_one_measured_size_scales_both_ways_so_the_size_can_move() -> None:
    """From one bucket the estimate scales through the origin: below it optimistic (a smaller size
    gets tried and measured), above it pessimistic (a larger one only once it surely fits)."""
    profile = _profile(sizes=(1024,))  # a first batch of 1024 took 10.29 ms
    size = largest_within(0.001, 1024, profile)
    assert size == 64  # 64/1024 x 10.29 ms = 0.64 ms; 128 would be 1.29 ms
    profile.observe(size, _cost(size))  # measured: 0.69 ms
    assert largest_within(0.001, 1024, profile) == 64  # interpolation now: 128 = 1.33 ms does not fit


def test_profile_follows_live_measurements() -> None:
    profile = _profile()
    for _ in range(30):  # the model got 10x slower (another tenant on the CPU, a bigger model)
        profile.observe(64, _cost(64) * 10)
    assert largest_within(0.001, 1024, profile) < 64


def test_the_latency_size_is_what_every_profile_allows() -> None:
    """Inference alone fits the cap; the whole batch (decode to produce) does not: the whole
    batch decides. A profile without measurements (before the first live batch) does not."""
    inference, whole = _profile(per_row_ms=0.0005, fixed_ms=0.02), _profile(per_row_ms=0.04, fixed_ms=0.3)
    assert _controller(1024, 5.0, inference).latency_size() == 1024
    assert _controller(1024, 5.0, inference, whole).latency_size() == 64  # 0.3 + 0.04 x 64 = 2.86 ms; 128: 5.42
    assert _controller(1024, 5.0, inference, CostProfile()).latency_size() == 1024


def test_low_steady_backlog_stays_in_latency_mode() -> None:
    controller = _controller()
    for backlog in [0, 3, 0, 120, 40, 900, 1000, 0, 1024, 0] * 5:
        setting = controller.update(backlog)
        assert setting.mode == LATENCY and setting.linger == 0 and setting.batch_size == 64 and setting.coalesce == 0.001


def test_burst_enters_throughput_mode_at_the_cap_and_returns() -> None:
    controller = _controller()
    backlog = [0, 0, 50_000, 60_000, 55_000, 45_000, 35_000, 25_000, 15_000, 5_000, 800, 100, 0, 0, 0, 0]
    settings = [controller.update(b) for b in backlog]
    modes = [s.mode for s in settings]
    assert modes[:3] == [LATENCY] * 3  # one high tick is not enough
    assert modes[3] == THROUGHPUT
    assert {s.batch_size for s in settings if s.mode == THROUGHPUT} == {1024}  # the cap from the first tick
    assert all(s.linger == 0.001 for s in settings if s.mode == THROUGHPUT)  # the latency budget (< max_wait)
    # Back only after three ticks at or below the low-water mark (the cap).
    first_low = backlog.index(800)
    assert modes[first_low : first_low + 2] == [THROUGHPUT] * 2 and modes[first_low + 2] == LATENCY
    assert settings[-1].batch_size == 64 and settings[-1].linger == 0


def test_steadily_growing_backlog_enters_throughput_mode_below_the_high_water_mark() -> None:
    controller = _controller()
    modes = [controller.update(b).mode for b in (1100, 1500, 2000, 2600, 3300)]
    assert modes[-1] == THROUGHPUT and max(1100, 3300) < controller.high_water


def test_no_oscillation_around_a_threshold() -> None:
    """A backlog hovering around the high-water mark, or just above the low one, flips the mode
    at most once each way."""
    controller = _controller()
    hovering = [3_000, 5_000] * 20  # around 4 x cap = 4096
    modes = [controller.update(b).mode for b in hovering]
    assert sum(a != b for a, b in zip(modes, modes[1:])) == 0  # never two high ticks in a row
    controller = _controller()
    modes = [controller.update(b).mode for b in [50_000, 50_000] + [900, 1_100] * 20]
    assert modes[1] == THROUGHPUT and set(modes[1:]) == {THROUGHPUT}  # never three low ticks in a row: stays put


def test_latency_mode_coalesces_within_the_budget_and_throughput_mode_waits_at_most_max_wait() -> None:
    """Throughput mode waits for a batch to fill at most the latency budget, and never past max_wait."""
    controller = _controller(budget_ms=5.0)
    assert controller.setting.coalesce == 0.005 and controller.setting.linger == 0
    for backlog in (50_000, 50_000):
        setting = controller.update(backlog)
    assert setting.mode == THROUGHPUT and setting.linger == 0.005
    slow = _controller(budget_ms=50.0)  # a budget above max_wait (20 ms): max_wait bounds the wait
    for backlog in (50_000, 50_000):
        assert slow.update(backlog).linger <= 0.02
    assert slow.setting.mode == THROUGHPUT and slow.setting.linger == 0.02
    for _ in range(3):
        setting = controller.update(0)
    assert setting.mode == LATENCY and setting.linger == 0 and setting.coalesce == 0.005


def test_throughput_mode_leaves_when_batches_stop_filling_whatever_the_backlog() -> None:
    """A steady stream below capacity, in throughput mode: one batch filling and one queued keep
    the backlog near the low-water mark; no fetch filling the cap shows there is nothing to drain.
    Three such ticks in a row return to latency mode; a tick with a full batch starts the count over."""
    controller = _controller()
    for backlog in (50_000, 50_000):
        controller.update(backlog)
    assert controller.mode == THROUGHPUT
    modes = [controller.update(1_200, batches_filled=filled).mode for filled in (False, False, True, False, False, False)]
    assert modes == [THROUGHPUT] * 5 + [LATENCY]
    # The same backlog with full batches: a backlog to drain, throughput mode stays.
    controller = _controller()
    for backlog in (50_000, 50_000):
        controller.update(backlog)
    assert {controller.update(1_200, batches_filled=True).mode for _ in range(10)} == {THROUGHPUT}
    # In latency mode batches_filled does not count: only the backlog decides.
    controller = _controller()
    assert {controller.update(500, batches_filled=False).mode for _ in range(5)} == {LATENCY}


def test_a_backlog_at_the_first_tick_is_drained_in_throughput_mode_at_once() -> None:
    """A worker starting on a backlog (restart, rebalance) need not wait two ticks; later, one
    high tick is still not enough (a burst may be gone by the next)."""
    controller = _controller()
    assert controller.update(50_000).mode == THROUGHPUT
    controller = _controller()
    assert [controller.update(b).mode for b in (0, 50_000, 0)] == [LATENCY] * 3
