"""The fault scenarios. Each gets a set-up :class:`~stream_infer.tools.faults.harness.Trial`, starts its
workers and the stream, and injects its faults at moments drawn from the trial's seeded random
generator (all draws happen in a fixed order, so a seed replays the same trial). Moments are
fractions of the stream's duration, clamped so that the survivors still have stream to recover on.
"""

from __future__ import annotations

from collections.abc import Callable

from stream_infer.tools.faults.harness import PARTITIONS, Scenario, Trial

# A killed worker keeps its partitions until the group's session timeout passes; a fault comes
# at the latest this long before the stream ends plus that timeout, so the takeover happens on
# a running stream.
RECOVERY_ROOM_S = 10.0
BROKER_KILL_NODES = 3


def worker_kill(trial: Trial) -> None:
    """Two workers; a third joins mid-stream; then one of the three, at random, is killed with
    SIGKILL and not restarted. Recovery: each partition the victim owned (from the group's
    assignment just before the kill), until data flows again."""
    rng, duration = trial.rng, trial.settings.duration
    join_at = rng.uniform(0.15, 0.3) * duration
    kill_at = rng.uniform(0.4, 0.6) * duration
    victim = rng.choice(["w1", "w2", "w3"])
    trial.start_workers("w1", "w2")
    trial.start_stream()
    trial.wait_until(join_at)
    trial.mark("start worker w3")
    trial.start_workers("w3")
    trial.mark("worker w3 ready")
    trial.wait_group(3, timeout=30)
    trial.wait_until(min(kill_at, duration - trial.session_timeout_s - RECOVERY_ROOM_S))
    before = trial.kafka.group_members()
    killed_at = trial.kill_worker(victim)
    after = trial.wait_group(2, timeout=trial.session_timeout_s + 30)
    gone = set(before) - set(after)
    if len(gone) == 1:
        owned = before[gone.pop()]
    else:  # the group changed in a way that hides the victim: measure every partition instead
        owned = set(range(PARTITIONS))
        trial.result.notes.append(f"victim's partitions unknown (members before {before}, after {after}): all measured")
    trial.result.faults[-1]["partitions"] = sorted(owned)
    trial.probe(f"kill {victim}", killed_at, owned)


def rolling_restart(trial: Trial) -> None:
    """Two workers, A and B; mid-stream A is stopped with SIGTERM (it must exit with status 0
    within 10 s), started again and waited for until ready; then the same for B. Recovery: every
    partition, after each stop."""
    rng, duration = trial.rng, trial.settings.duration
    moments = {"a": rng.uniform(0.2, 0.3) * duration, "b": rng.uniform(0.5, 0.65) * duration}
    trial.start_workers("a", "b")
    trial.start_stream()
    for name, at in moments.items():
        trial.wait_until(at)
        stopped_at = trial.mark(f"SIGTERM worker {name}")
        outcome = trial.stop_worker(name, graceful_required=True)
        trial.result.faults[-1].update(exit_code=outcome.code, exit_s=outcome.seconds)
        trial.probe(f"stop {name}", stopped_at, set(range(PARTITIONS)))
        trial.start_workers(name)
        trial.mark(f"worker {name} ready again")


def broker_kill(trial: Trial) -> None:
    """A 3-node cluster (replication 3, min.insync.replicas 2) and two workers; mid-stream the
    broker leading the most input partitions is killed with SIGKILL and stays dead. Recovery:
    every input partition."""

    def most_leaderships(leaders: dict[int, int]) -> int:
        counts: dict[int, int] = {}
        for leader in leaders.values():
            counts[leader] = counts.get(leader, 0) + 1
        most = max(counts.values())
        return trial.rng.choice(sorted(b for b, c in counts.items() if c == most))

    _kill_a_broker(trial, most_leaderships)


def coordinator_kill(trial: Trial) -> None:
    """As broker_kill, but the broker killed is the consumer group's coordinator (which also
    coordinates the group's transactional offset commits). Recovery: every input partition."""
    _kill_a_broker(trial, lambda leaders: trial.kafka.group_coordinator())


def _kill_a_broker(trial: Trial, choose: Callable[[dict[int, int]], int]) -> None:
    """Two workers on the 3-node cluster; mid-stream the broker `choose` picks (given each input
    partition's leader) is killed with SIGKILL and stays dead."""
    kill_at = trial.rng.uniform(0.3, 0.5) * trial.settings.duration
    trial.start_workers("w1", "w2")
    trial.start_stream()
    trial.wait_until(min(kill_at, trial.settings.duration - trial.session_timeout_s - RECOVERY_ROOM_S))
    leaders = trial.kafka.input_leaders()
    victim = choose(leaders)
    killed_at = trial.kill_broker(victim)
    trial.result.faults[-1]["led_partitions"] = sorted(p for p, b in leaders.items() if b == victim)
    trial.probe(f"kill broker {victim}", killed_at, set(range(PARTITIONS)))


SCENARIOS: dict[str, Scenario] = {
    "worker_kill": worker_kill,
    "rolling_restart": rolling_restart,
    "broker_kill": broker_kill,
    "coordinator_kill": coordinator_kill,
}
# The scenarios that kill a broker: each trial gets a 3-node cluster of its own.
BROKER_SCENARIOS = ("broker_kill", "coordinator_kill")
