"""Accounting of one fault trial, and the report lines: pure functions over what a trial observed.

Inputs are identified by (partition, offset) in the input topic, as every prediction names its
source. For each input fed (known from the feeder's delivery reports), a trial counts:

* predicted: inputs with at least one prediction; lost: inputs with none when the trial ended
  (the drain timeout after the stream), so a partition stalled past that counts as loss too;
* duplicates: predictions beyond the first for an input (at-least-once allows them, exactly-once
  must have none, since its reader only sees committed transactions);
* mismatched: predictions, duplicates included, whose score differs from the reference for the
  input's (unit, cycle) (equal_to_reference is "none differs, none names an unknown input").

Alerts: an alert is identified by the input that raised it (the last of its run's `inputs`, by
(partition, offset)) and its score. Expected are the reference's alerts for the (unit, cycle) of
every fed input, with the reference's score; seen are the distinct alerts read. Then:

* alerts_missing: expected alerts never seen (with the expected score);
* alerts_unexpected: seen alerts that are not expected: raised by an input that was not fed, by one
  for which the reference raises none, or with another score (an alert with a wrong score is
  therefore both missing and unexpected);
* alerts_duplicates: alert records beyond the first per alert, so seen = expected - missing +
  unexpected. At-least-once may repeat an alert (a replay after a kill re-runs the events that
  raised it); exactly-once must not, its reader sees each committed alert once.

Timing, all on the wall clock (predictions carry the input's producer timestamp):

* recovery after a fault, per partition: from the fault until a prediction arrives (at the
  reader) for an input produced after the fault: the moment the partition's data flows again end
  to end, which neither an in-flight prediction of the old owner nor a replay of older inputs fakes;
* feed recovery, the same up to the broker's acknowledgement of such an input to the feeder:
  where recovery is long, this tells the cluster's share (leader election) from the worker's;
* latency_max: the longest any input waited from being produced to its first prediction arriving,
  which also catches stalls away from the fault moments (a rebalance when a worker joins).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

UnitCycle = tuple[int, int]
Source = tuple[int, int]  # (input partition, input offset)

# A stopped worker must hand its partitions over and exit within this many seconds, with status 0.
GRACEFUL_STOP_LIMIT_S = 10.0
# How soon affected partitions must make progress again (docs/guarantees.md): a killed worker's
# partitions within the session timeout (10 s in the trial config) plus 5 s; every partition
# within 15 s of a broker's death.
RECOVERY_LIMIT_S = {"worker_kill": 15.0, "broker_kill": 15.0, "coordinator_kill": 15.0}


@dataclass(frozen=True, slots=True)
class Observation:
    """One prediction as the reader received it."""

    partition: int  # source partition and offset: the input it answers
    offset: int
    score: float
    arrived: float  # wall-clock seconds when the reader received it
    input_ms: int  # the input's producer timestamp (wall-clock milliseconds)


@dataclass(frozen=True, slots=True)
class AlertObservation:
    """One alert as the reader received it."""

    partition: int  # source partition and offset of the last input of the alert's run: the event that raised it
    offset: int
    score: float
    arrived: float  # wall-clock seconds when the reader received it


@dataclass
class Accounting:
    """What :func:`account` counted; the module docstring defines each count."""

    inputs: int = 0  # fed: acknowledged to the feeder
    predicted: int = 0  # inputs with at least one prediction
    lost: int = 0  # inputs with none when the trial ended
    duplicates: int = 0  # predictions beyond the first per input
    mismatched: int = 0  # predictions whose score is not the reference's
    unexpected: int = 0  # predictions naming an input that was never fed
    max_abs_error: float = 0.0  # over the mismatched scores (inf: an input without a reference score)
    alerts_expected: int = 0  # see the module docstring
    alerts_seen: int = 0
    alerts_missing: int = 0
    alerts_unexpected: int = 0
    alerts_duplicates: int = 0
    lost_by_partition: dict[int, int] = field(default_factory=dict)
    lost_examples: list[Source] = field(default_factory=list)
    duplicate_examples: list[dict] = field(default_factory=list)  # inputs predicted more than once
    mismatch_examples: list[dict] = field(default_factory=list)
    alerts_missing_examples: list[dict] = field(default_factory=list)
    alerts_unexpected_examples: list[dict] = field(default_factory=list)
    alerts_duplicate_examples: list[dict] = field(default_factory=list)

    @property
    def equal_to_reference(self) -> bool:
        """Every prediction equals the reference's (alerts are judged on their own: alerts_equal)."""
        return self.mismatched == 0 and self.unexpected == 0

    @property
    def alerts_equal(self) -> bool:
        """The alerts seen are exactly the expected ones, each with its score (repeats aside)."""
        return self.alerts_missing == 0 and self.alerts_unexpected == 0


def account(
    inputs: Mapping[Source, UnitCycle],
    observations: Iterable[Observation],
    reference: Mapping[UnitCycle, float],
    *,
    alerts: Iterable[AlertObservation] = (),
    reference_alerts: Mapping[UnitCycle, float] | None = None,
    examples: int = 5,
) -> Accounting:
    """Count lost, duplicated and mismatched predictions of the fed `inputs`, and expected, seen,
    missing, unexpected and repeated `alerts` against `reference_alerts` (see module docstring).

    `reference` is the score per (unit, cycle); an input whose (unit, cycle) has no reference value
    counts as mismatched: the reference must cover the whole stream, or nothing is being checked.
    `reference_alerts` is the score of the alert per (unit, cycle) of the event that raised it;
    None (or empty) expects no alert, so every alert seen is unexpected."""
    result = Accounting(inputs=len(inputs))
    seen: dict[Source, int] = {}
    for obs in observations:
        source = (obs.partition, obs.offset)
        seen[source] = seen.get(source, 0) + 1
        identity = inputs.get(source)
        if identity is None:
            result.unexpected += 1
            continue
        expected = reference.get(identity)
        if expected is None or obs.score != expected:
            result.mismatched += 1
            error = float("inf") if expected is None else abs(obs.score - expected)
            result.max_abs_error = max(result.max_abs_error, error)
            if len(result.mismatch_examples) < examples:
                result.mismatch_examples.append(
                    {
                        "partition": obs.partition,
                        "offset": obs.offset,
                        "unit": identity[0],
                        "cycle": identity[1],
                        "got": obs.score,
                        "expected": expected,
                    }
                )
    result.predicted = sum(1 for source in inputs if source in seen)
    result.lost = result.inputs - result.predicted
    result.duplicates = sum(count - 1 for source, count in seen.items() if source in inputs)
    if result.duplicates:
        repeated = sorted(source for source, count in seen.items() if count > 1 and source in inputs)
        result.duplicate_examples = [{"partition": p, "offset": o, "count": seen[(p, o)]} for p, o in repeated[:examples]]
    if result.lost:
        lost = sorted(source for source in inputs if source not in seen)
        result.lost_examples = lost[:examples]
        for partition, _offset in lost:
            result.lost_by_partition[partition] = result.lost_by_partition.get(partition, 0) + 1
    _account_alerts(result, inputs, alerts, reference_alerts or {}, examples)
    return result


def _account_alerts(
    result: Accounting,
    inputs: Mapping[Source, UnitCycle],
    alerts: Iterable[AlertObservation],
    reference_alerts: Mapping[UnitCycle, float],
    examples: int,
) -> None:
    """Fill the alert counts of `result` (see the module docstring)."""
    # Expected: every fed input whose (unit, cycle) raises an alert in the reference. Sources are
    # unique per trial, so (source, score) identifies an alert even where loops repeat a (unit, cycle).
    expected: dict[Source, float] = {
        source: reference_alerts[identity] for source, identity in inputs.items() if identity in reference_alerts
    }
    counts: dict[tuple[Source, float], int] = {}
    for alert in alerts:
        key = ((alert.partition, alert.offset), alert.score)
        counts[key] = counts.get(key, 0) + 1
    result.alerts_expected = len(expected)
    result.alerts_seen = len(counts)
    missing = sorted(source for source, score in expected.items() if (source, score) not in counts)
    unexpected = sorted(key for key in counts if not (key[0] in expected and expected[key[0]] == key[1]))
    repeated = sorted(key for key, count in counts.items() if count > 1)
    result.alerts_missing = len(missing)
    result.alerts_unexpected = len(unexpected)
    result.alerts_duplicates = sum(count - 1 for count in counts.values())

    def where(source: Source) -> dict:
        identity = inputs.get(source)
        return {
            "partition": source[0],
            "offset": source[1],
            "unit": None if identity is None else identity[0],
            "cycle": None if identity is None else identity[1],
        }

    result.alerts_missing_examples = [{**where(s), "expected": expected[s]} for s in missing[:examples]]
    result.alerts_unexpected_examples = [
        {**where(s), "got": got, "expected": expected.get(s)} for s, got in unexpected[:examples]
    ]
    result.alerts_duplicate_examples = [
        {**where(s), "score": score, "count": counts[(s, score)]} for s, score in repeated[:examples]
    ]


# (partition, producer timestamp of an input in ms, wall-clock seconds when it was seen somewhere)
Sighting = tuple[int, int, float]


def recovery_seconds(fault_at: float, partitions: Iterable[int], sightings: Iterable[Sighting]) -> dict[int, float | None]:
    """Per partition: seconds from `fault_at` until the first sighting of an input produced at
    or after it; None where there was none (the partition never recovered). Sightings are the
    predictions' arrivals (recovery of the whole path) or the feeder's acknowledgements (when
    the input topic took new data again)."""
    wanted = set(partitions)
    fault_ms = fault_at * 1000
    first: dict[int, float] = {}
    for partition, produced_ms, seen_at in sightings:
        if partition in wanted and produced_ms >= fault_ms and seen_at < first.get(partition, float("inf")):
            first[partition] = seen_at
    return {p: (round(max(0.0, first[p] - fault_at), 3) if p in first else None) for p in sorted(wanted)}


def predictions_seen(observations: Iterable[Observation]) -> list[Sighting]:
    """Each prediction as a sighting of its input, at its arrival."""
    return [(o.partition, o.input_ms, o.arrived) for o in observations]


def latency_max(observations: Iterable[Observation]) -> float | None:
    """The longest wait of any input from being produced to its first prediction arriving."""
    first: dict[Source, Observation] = {}
    for obs in observations:
        key = (obs.partition, obs.offset)
        if key not in first or obs.arrived < first[key].arrived:
            first[key] = obs
    if not first:
        return None
    return round(max(obs.arrived - obs.input_ms / 1000 for obs in first.values()), 3)


@dataclass
class WorkerExit:
    """How a worker ended: by SIGTERM (`stopped`, timed) or by SIGKILL (the fault itself)."""

    name: str
    code: int | None
    seconds: float | None  # from SIGTERM to exit
    how: str  # "stopped" or "killed"
    graceful_required: bool = False  # a rolling restart's stop: must exit 0 within the limit

    @property
    def violates(self) -> bool:
        return self.graceful_required and (self.code != 0 or self.seconds is None or self.seconds > GRACEFUL_STOP_LIMIT_S)


@dataclass
class TrialResult:
    scenario: str
    guarantee: str | None  # None: the config carried no processing_guarantee key
    seed: int
    accounting: Accounting = field(default_factory=Accounting)
    recovery: dict[str, dict[int, float | None]] = field(default_factory=dict)  # fault label -> partition -> s
    feed_recovery: dict[str, dict[int, float | None]] = field(default_factory=dict)  # the same, to the input topic
    latency_max_s: float | None = None
    exits: list[WorkerExit] = field(default_factory=list)
    restarts: int = 0  # workers that exited on their own and were started again
    faults: list[dict] = field(default_factory=list)  # what happened when (seconds after the feed started)
    final_lag: int | None = None  # input events not committed by the group at the end
    final_assignment: list[list[int]] | None = None  # input partitions of each group member at the end
    feed_errors: int = 0  # inputs the feeder could not deliver (not counted as inputs)
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the trial could not run to the end

    @property
    def recovery_max_s(self) -> float | None:
        """The slowest recovery of any affected partition after any fault; inf if one never recovered."""
        return _slowest(self.recovery)

    @property
    def feed_recovery_max_s(self) -> float | None:
        return _slowest(self.feed_recovery)

    def failures(self) -> list[str]:
        """Why this trial fails; empty when it passes.

        error: it could not run to the end. lost: an input without a prediction. not_equal: a
        prediction unlike the reference's. duplicates: a repeated prediction under exactly_once,
        or in a rolling restart whatever the guarantee (a graceful hand-over repeats nothing).
        alerts: an expected alert missing, or an alert seen that is not expected (or with another
        score), whatever the guarantee. alert_duplicates: an alert repeated, under exactly_once
        or in a rolling restart: at-least-once may repeat an alert only when it replays the
        events that raised it after a crash.
        slow_recovery: a partition recovered past the scenario's limit. graceful_stop: a required
        graceful stop failed or took too long."""
        out = []
        a = self.accounting
        if self.error:
            out.append("error")
        if a.lost:
            out.append("lost")
        if not a.equal_to_reference:
            out.append("not_equal")
        if a.duplicates and (self.guarantee == "exactly_once" or self.scenario == "rolling_restart"):
            out.append("duplicates")  # a graceful hand-over repeats nothing, whatever the guarantee
        if not a.alerts_equal:
            out.append("alerts")
        if a.alerts_duplicates and (self.guarantee == "exactly_once" or self.scenario == "rolling_restart"):
            out.append("alert_duplicates")
        limit = RECOVERY_LIMIT_S.get(self.scenario)
        slowest = self.recovery_max_s
        if limit is not None and slowest is not None and slowest > limit:
            out.append("slow_recovery")
        if any(e.violates for e in self.exits):
            out.append("graceful_stop")
        return out

    def to_json(self) -> dict:
        data = asdict(self)
        data["accounting"]["equal_to_reference"] = self.accounting.equal_to_reference
        data["accounting"]["alerts_equal"] = self.accounting.alerts_equal
        data["accounting"]["max_abs_error"] = _json_number(self.accounting.max_abs_error)
        data["recovery_max_s"] = _json_number(self.recovery_max_s)
        data["feed_recovery_max_s"] = _json_number(self.feed_recovery_max_s)
        data["failures"] = self.failures()
        for name in ("recovery", "feed_recovery"):
            data[name] = {label: {str(p): s for p, s in parts.items()} for label, parts in getattr(self, name).items()}
        data["accounting"]["lost_by_partition"] = {str(p): n for p, n in self.accounting.lost_by_partition.items()}
        return data


def _slowest(recovery: dict[str, dict[int, float | None]]) -> float | None:
    values = [v for partitions in recovery.values() for v in partitions.values()]
    if not values:
        return None
    known = [v for v in values if v is not None]
    return float("inf") if len(known) < len(values) else max(known)


def _json_number(value: float | None) -> float | str | None:
    return "inf" if value == float("inf") else value


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return "never" if value == float("inf") else f"{value:.2f}"


def trial_line(result: TrialResult) -> str:
    """One line per trial, `key=value` fields in a fixed order (see the CLI's help), then
    `alerts=<seen>/<expected>`, then only where non-zero alerts_missing, alerts_unexpected and
    alerts_duplicates, then only where there are any lost_by_partition and error."""
    a = result.accounting
    exits = ",".join(f"{e.name}:{e.how}:{'-' if e.code is None else e.code}@{_seconds(e.seconds)}s" for e in result.exits) or "-"
    failures = result.failures()
    fields = [
        f"scenario={result.scenario}",
        f"guarantee={result.guarantee or 'unset'}",
        f"seed={result.seed}",
        f"inputs={a.inputs}",
        f"predicted={a.predicted}",
        f"lost={a.lost}",
        f"duplicates={a.duplicates}",
        f"equal_to_reference={'yes' if a.equal_to_reference else 'no'}",
        f"recovery_max_s={_seconds(result.recovery_max_s)}",
        f"feed_recovery_max_s={_seconds(result.feed_recovery_max_s)}",
        f"latency_max_s={_seconds(result.latency_max_s)}",
        f"exits={exits}",
        f"restarts={result.restarts}",
        f"final_lag={'-' if result.final_lag is None else result.final_lag}",
        f"duration_s={result.duration_s:.1f}",
        f"result={'FAIL(' + ','.join(failures) + ')' if failures else 'ok'}",
        f"alerts={a.alerts_seen}/{a.alerts_expected}",
    ]
    for name in ("alerts_missing", "alerts_unexpected", "alerts_duplicates"):
        if value := getattr(a, name):
            fields.append(f"{name}={value}")
    if a.lost_by_partition:
        fields.append("lost_by_partition=" + ",".join(f"{p}:{n}" for p, n in sorted(a.lost_by_partition.items())))
    if result.error:
        fields.append(f"error={result.error!r}")
    return " ".join(fields)


@dataclass
class SummaryRow:
    scenario: str
    guarantee: str
    trials: int
    failed: int
    lost: int
    duplicates: int
    all_equal: bool
    recovery_median_s: float | None
    recovery_max_s: float | None
    cluster_recovery_max_s: float | None = None  # the input topic's own (feed_recovery), broker scenarios


def summarize(results: Iterable[TrialResult]) -> list[SummaryRow]:
    """One row per (scenario, guarantee), in the order first seen."""
    groups: dict[tuple[str, str], list[TrialResult]] = {}
    for r in results:
        groups.setdefault((r.scenario, r.guarantee or "unset"), []).append(r)
    rows = []
    for (scenario, guarantee), trials in groups.items():
        recoveries = [r.recovery_max_s for r in trials if r.recovery_max_s is not None]
        rows.append(
            SummaryRow(
                scenario=scenario,
                guarantee=guarantee,
                trials=len(trials),
                failed=sum(1 for r in trials if r.failures()),
                lost=sum(r.accounting.lost for r in trials),
                duplicates=sum(r.accounting.duplicates for r in trials),
                all_equal=all(r.accounting.equal_to_reference and not r.error for r in trials),
                recovery_median_s=statistics.median(recoveries) if recoveries else None,
                recovery_max_s=max(recoveries) if recoveries else None,
                cluster_recovery_max_s=max(feeds)
                if (feeds := [r.feed_recovery_max_s for r in trials if r.feed_recovery_max_s is not None])
                else None,
            )
        )
    return rows


_COLUMNS = (
    "scenario",
    "guarantee",
    "trials",
    "failed",
    "lost",
    "duplicates",
    "all_equal",
    "recovery_s median/max",
    "cluster_s max",
)


def table(rows: list[SummaryRow]) -> str:
    """The final table, aligned in plain text."""
    body = [
        (
            r.scenario,
            r.guarantee,
            str(r.trials),
            str(r.failed),
            str(r.lost),
            str(r.duplicates),
            "yes" if r.all_equal else "no",
            f"{_seconds(r.recovery_median_s)} / {_seconds(r.recovery_max_s)}",
            "-" if r.cluster_recovery_max_s is None else _seconds(r.cluster_recovery_max_s),
        )
        for r in rows
    ]
    widths = [max(len(c), *(len(line[i]) for line in body)) if body else len(c) for i, c in enumerate(_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in body]
    return "\n".join(lines)


def summary_json(results: list[TrialResult]) -> dict:
    rows = summarize(results)
    return {
        "trials": [r.to_json() for r in results],
        "summary": [
            {
                **asdict(row),
                "recovery_median_s": _json_number(row.recovery_median_s),
                "recovery_max_s": _json_number(row.recovery_max_s),
                "cluster_recovery_max_s": _json_number(row.cluster_recovery_max_s),
            }
            for row in rows
        ],
        "failed": any(r.failures() for r in results),
    }
