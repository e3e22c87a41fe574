"""The batching controller's policy, tick by tick (no Kafka): see stream_infer.controller."""

from __future__ import annotations

from stream_infer.controller import LATENCY, THROUGHPUT, BatchController, InferenceProfile


def _profile(per_row_ms: float = 0.01, fixed_ms: float = 0.05) -> InferenceProfile:
    profile = InferenceProfile()
    for rows in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
        profile.observe(rows, (fixed_ms + per_row_ms * rows) / 1000)
    return profile


def _controller(cap: int = 1024, budget_ms: float = 1.0) -> BatchController:
    return BatchController(cap, max_wait=0.02, latency_budget=budget_ms / 1000, profile=_profile())


def test_profile_estimates_and_latency_size() -> None:
    profile = _profile()
    assert abs(profile.estimate(100) - profile.seconds[128]) < 1e-12  # the bucket at or above
    assert abs(profile.estimate(4096) - profile.seconds[1024] * 4) < 1e-12  # linear beyond the largest
    # 0.05 ms + 0.01 ms/row: 64 rows = 0.69 ms fits 1 ms, 128 rows = 1.33 ms does not.
    assert profile.largest_within(0.001, 1024) == 64
    assert profile.largest_within(1.0, 1000) == 1000  # the cap itself when everything fits
    assert profile.largest_within(1e-9, 1024) == 1  # never below one
    assert InferenceProfile().estimate(10) is None


def test_profile_follows_live_measurements() -> None:
    profile = _profile()
    for _ in range(30):  # the model got 10x slower (another tenant on the CPU, a bigger model)
        profile.observe(64, profile.seconds[64] * 10)
    assert profile.largest_within(0.001, 1024) < 64


def test_low_steady_backlog_stays_in_latency_mode() -> None:
    controller = _controller()
    for backlog in [0, 3, 0, 120, 40, 900, 1000, 0, 1024, 0] * 5:
        setting = controller.update(backlog)
        assert setting.mode == LATENCY and setting.linger == 0 and setting.batch_size == 64 and setting.coalesce == 0.001


def test_burst_enters_throughput_mode_grows_batches_and_returns() -> None:
    controller = _controller()
    backlog = [0, 0, 50_000, 60_000, 55_000, 45_000, 35_000, 25_000, 15_000, 5_000, 800, 100, 0, 0, 0, 0]
    settings = [controller.update(b) for b in backlog]
    modes = [s.mode for s in settings]
    assert modes[:3] == [LATENCY] * 3  # one high tick is not enough
    assert modes[3] == THROUGHPUT
    sizes = [s.batch_size for s in settings if s.mode == THROUGHPUT]
    assert sizes == sorted(sizes) and sizes[0] == 128 and max(sizes) == 1024  # doubling up to the cap
    assert all(s.linger == 0.02 for s in settings if s.mode == THROUGHPUT)
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


def test_latency_mode_coalesces_within_the_budget_and_throughput_mode_does_not_need_to() -> None:
    controller = _controller(budget_ms=5.0)
    assert controller.setting.coalesce == 0.005 and controller.setting.linger == 0
    for backlog in (50_000, 50_000):
        setting = controller.update(backlog)
    assert setting.mode == THROUGHPUT and setting.linger == 0.02
    for _ in range(3):
        setting = controller.update(0)
    assert setting.mode == LATENCY and setting.linger == 0 and setting.coalesce == 0.005
