"""Pipeline.calibrate: which batches run on the event loop (inline) and which in the executor.

Contract: batches run inline up to the largest size for which every size up to it measured within
the inline budget (by default the latency budget, latency_budget_ms or max_wait_ms / 4); the
profile the batching controller reads is seeded at every size measured. Only the two ends are
asserted (a budget nothing fits, one everything fits), so machine speed does not decide the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_infer.config import load_config
from stream_infer.stages.pipeline import Pipeline
from stream_infer.tools.bench.harness import engines_config


def _pipeline(tmp_path: Path, **batching) -> Pipeline:
    config = load_config(engines_config(tmp_path / "c.toml", group="g", input_topic="in", output_prefix="out", batching=batching))
    return Pipeline(config.pipelines[0], producer=None, changelog=None)


@pytest.mark.parametrize("cap", [256, 100])
def test_a_generous_budget_inlines_up_to_the_cap_and_seeds_the_profile(tmp_path: Path, cap: int) -> None:
    pipeline = _pipeline(tmp_path, max_batch_size=cap)
    try:
        assert pipeline.calibrate(inline_budget_s=10.0) == cap == pipeline.inline_rows
        assert 1 in pipeline.inference_cost.buckets and max(pipeline.inference_cost.buckets) >= cap
    finally:
        pipeline.close()


def test_a_budget_nothing_fits_sends_every_batch_to_the_executor(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path)
    try:
        assert pipeline.calibrate(inline_budget_s=1e-9) == 0 == pipeline.inline_rows
    finally:
        pipeline.close()


def test_the_default_budget_is_the_latency_budget(tmp_path: Path) -> None:
    def budget(**batching) -> float:
        config = load_config(
            engines_config(tmp_path / "c.toml", group="g", input_topic="in", output_prefix="out", batching=batching)
        )
        return config.pipelines[0].batching.latency_budget_s

    assert budget(max_wait_ms=20) == pytest.approx(0.005)
    assert budget(max_wait_ms=20, latency_budget_ms=0.25) == pytest.approx(0.00025)
