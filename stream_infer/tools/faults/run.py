"""A run of many fault trials, and the Kafka clusters they need.

Clusters: the worker scenarios share one single-node local cluster (or the one named by
KAFKA_BOOTSTRAP_SERVERS, where each trial deletes its topics afterwards); each broker_kill and
coordinator_kill trial gets a fresh 3-node cluster, because it leaves a broker dead. Only one cluster runs at a time: a
3-node cluster is three JVMs, and the workers, feeder and reader need the rest of the machine.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from stream_infer.config import load_config
from stream_infer.configs import DEMO_CONFIG
from stream_infer.tools.devkafka import local
from stream_infer.tools.devkafka.jars import KafkaSetupError
from stream_infer.tools.faults.harness import run_trial
from stream_infer.tools.faults.reference import EventStream, load_reference
from stream_infer.tools.faults.report import TrialResult
from stream_infer.tools.faults.scenarios import BROKER_KILL_NODES, BROKER_SCENARIOS, SCENARIOS


def run_faults(
    plan: Sequence[tuple[str, str | None]],
    *,
    trials: int,
    seed: int,
    rate: float,
    duration: float,
    work_dir: Path,
    stable_ids: bool = False,
    bootstrap: str | None = None,
    on_result: Callable[[TrialResult], None] = lambda r: None,
    on_skip: Callable[[str], None] = lambda msg: None,
) -> list[TrialResult]:
    """Run `trials` trials of each (scenario, guarantee) in `plan`; trial i uses seed + i.

    With `bootstrap` the given cluster serves the worker scenarios and the broker scenarios are skipped;
    otherwise local clusters are started in a temporary directory and stopped afterwards. Raises
    KafkaSetupError if the single-node cluster cannot start; a 3-node cluster that cannot start
    fails only its trial."""
    stream = EventStream()
    engines = next(p for p in load_config(DEMO_CONFIG).pipelines if p.name == "engines")
    reference = load_reference(engines, stream, work_dir / "reference")
    common = dict(work_dir=work_dir, stream=stream, reference=reference, rate=rate, duration=duration, stable_ids=stable_ids)
    results: list[TrialResult] = []
    tmp = Path(tempfile.mkdtemp(prefix="stream-infer-faults-"))
    single_dir = tmp / "kafka-1"
    try:
        for scenario, guarantee in plan:
            if scenario in BROKER_SCENARIOS and bootstrap is not None:
                on_skip(
                    f"{scenario} skipped: it kills a broker, which only a local cluster started here allows "
                    "(unset KAFKA_BOOTSTRAP_SERVERS to run it)"
                )
                continue
            for i in range(trials):
                if scenario in BROKER_SCENARIOS:
                    local.down(single_dir, wipe=True, timeout=15)  # one cluster at a time
                    result = broker_trial(scenario, tmp / f"kafka-3-{scenario}-{guarantee}-{i}", guarantee, seed + i, common)
                else:
                    target = bootstrap or local.up(single_dir, port=0, nodes=1)[0].bootstrap
                    result = run_trial(
                        scenario,
                        SCENARIOS[scenario],
                        guarantee,
                        seed + i,
                        bootstrap=target,
                        delete_topics=bootstrap is not None,
                        **common,
                    )
                results.append(result)
                on_result(result)
    finally:
        local.down(single_dir, wipe=True, timeout=15)
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def broker_trial(scenario: str, cluster_dir: Path, guarantee: str | None, seed: int, common: dict) -> TrialResult:
    """One trial of a broker scenario on a fresh 3-node cluster, stopped and wiped afterwards."""
    try:
        cluster, _ = local.up(cluster_dir, port=0, nodes=BROKER_KILL_NODES)
    except KafkaSetupError as err:
        return TrialResult(scenario, guarantee, seed, error=f"3-node cluster did not start: {str(err).splitlines()[0]}")
    try:
        return run_trial(
            scenario,
            SCENARIOS[scenario],
            guarantee,
            seed,
            bootstrap=cluster.bootstrap,
            replication=BROKER_KILL_NODES,
            cluster_dir=cluster_dir,
            **common,
        )
    finally:
        local.down(cluster_dir, wipe=True, timeout=15)
