"""The card-transaction simulator (stream_infer.datasets.transactions) and `replay transactions`.

No broker: the events are checked against the contract (the JSON Schema, the key, the order), the
label rules of each fraud scenario, determinism, the `--out` file of the replay command, and the
decoder's reason for each of bad_events("transactions").
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import fastjsonschema
import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from stream_infer.cli import replay_cmd
from stream_infer.cli.replay_cmd import replay
from stream_infer.datasets import transactions
from stream_infer.datasets.transactions import (
    LABEL_FIELDS,
    SimulatorSettings,
    compromised,
    day_of,
    simulate,
    transaction_count,
    transaction_events,
)
from stream_infer.records import InputRecord
from stream_infer.stages.decode import REASONS, EventDecoder
from stream_infer.tools import replay as replay_tool
from stream_infer.tools.replay import bad_events, dataset_events, dataset_size

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "stream_infer" / "schemas" / "transactions-event.v1.json"
DEFAULT = SimulatorSettings()
SMALL = SimulatorSettings(seed=7, customers=150, days=5)
EVENT_FIELDS = ("schema_version", "tx_id", "card_id", "terminal_id", "amount", "currency", "ts_ms", "tx_time")
ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


# --- helpers ------------------------------------------------------------------------------------


@functools.cache
def _events(settings: SimulatorSettings = DEFAULT) -> tuple[dict, ...]:
    return tuple(simulate(settings))


@functools.cache
def _decoder() -> EventDecoder:
    return EventDecoder(SCHEMA, max_message_bytes=65_536, key_field="card_id")


def _record(key: bytes | None, value: bytes | None, offset: int) -> InputRecord:
    return InputRecord(key=key, value=value, topic="in", partition=0, offset=offset, timestamp_ms=1_700_000_000_000 + offset)


def _fresh_bytes(settings: SimulatorSettings, *, labels: bool = False) -> list[tuple[bytes, bytes]]:
    """The events of a run simulated from scratch (not the module's cached run)."""
    transactions._simulate.cache_clear()
    return list(transaction_events(settings, labels=labels))


def _windows(schedule: list[list[str]], length: int) -> dict[str, list[tuple[int, int]]]:
    """id -> the [first, last] day windows the schedule compromised it for."""
    out: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for day, ids in enumerate(schedule):
        for entity in ids:
            out[entity].append((day, day + length - 1))
    return out


def _in_any(day: int, windows: list[tuple[int, int]]) -> bool:
    return any(first <= day <= last for first, last in windows)


# --- determinism --------------------------------------------------------------------------------


def test_same_settings_give_identical_bytes_and_another_seed_differs() -> None:
    """Two runs of the same settings give byte-identical (key, value) pairs; another seed does not."""
    first = _fresh_bytes(SMALL, labels=True)
    second = _fresh_bytes(SMALL, labels=True)
    assert first and first == second
    other = _fresh_bytes(SimulatorSettings(seed=8, customers=150, days=5), labels=True)
    assert other != first


def test_same_settings_give_identical_bytes_in_another_process() -> None:
    """Determinism does not hang on process state (hash seed, import order): a fresh interpreter
    gives the same bytes."""
    code = (
        "import hashlib, sys\n"
        "from stream_infer.datasets.transactions import SimulatorSettings, transaction_events\n"
        "h = hashlib.sha256()\n"
        "for k, v in transaction_events(SimulatorSettings(seed=7, customers=150, days=5)):\n"
        "    h.update(k + b'|' + v + b'\\n')\n"
        "sys.stdout.write(h.hexdigest())\n"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    digest = hashlib.sha256()
    for key, value in _fresh_bytes(SMALL):
        digest.update(key + b"|" + value + b"\n")
    assert child.stdout == digest.hexdigest()


def test_events_are_simulate_without_the_labels() -> None:
    """transaction_events is simulate() in the same order, labels dropped unless asked for."""
    events = _events(SMALL)
    plain = list(transaction_events(SMALL))
    labelled = list(transaction_events(SMALL, labels=True))
    assert [orjson.loads(v) for _, v in labelled] == list(events)
    assert [orjson.loads(v) for _, v in plain] == [{k: e[k] for k in EVENT_FIELDS} for e in events]
    assert transaction_count(SMALL) == len(events)


# --- the contract -------------------------------------------------------------------------------


def test_events_follow_the_schema_and_the_key_is_the_card() -> None:
    """Every event, with or without labels, validates against transactions-event.v1.json, has
    exactly the contract's fields, and its Kafka key is its card_id."""
    validate = fastjsonschema.compile(orjson.loads(SCHEMA.read_bytes()))
    for labels in (False, True):
        for key, value in transaction_events(DEFAULT, labels=labels):
            event = orjson.loads(value)
            validate(event)
            assert tuple(event) == EVENT_FIELDS + (LABEL_FIELDS if labels else ())
            assert key == event["card_id"].encode()


def test_every_event_passes_the_decoder() -> None:
    """The worker's decoder (the batch path and the per-event path) accepts every event as is."""
    good = list(transaction_events(DEFAULT))
    records = [_record(k, v, i) for i, (k, v) in enumerate(good)]
    out = _decoder().decode(records)
    assert out.dead == [] and len(out.events) == len(good)
    one_by_one = _decoder()._decode_each(records[:2000])
    assert one_by_one.dead == [] and len(one_by_one.events) == 2000


def test_field_values() -> None:
    """Ids are formatted as documented and unique; amounts are positive cents in EUR; tx_time is
    ts_ms as ISO 8601 UTC with milliseconds; every event lies in the simulated days."""
    events = _events()
    assert len({e["tx_id"] for e in events}) == len(events)
    start = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    for e in events:
        assert re.fullmatch(r"c\d{6}", e["card_id"]) and re.fullmatch(r"m\d{6}", e["terminal_id"])
        assert e["currency"] == "EUR" and e["schema_version"] == 1
        amount = e["amount"]
        assert type(amount) is float and amount >= 0.01 and round(amount, 2) == amount
        assert type(e["ts_ms"]) is int and ISO_MS_Z.match(e["tx_time"])
        when = dt.datetime.fromisoformat(e["tx_time"].replace("Z", "+00:00"))
        assert when == dt.datetime.fromtimestamp(e["ts_ms"] / 1000, dt.UTC)
        assert start <= when < start + dt.timedelta(days=DEFAULT.days)
        assert type(e["is_fraud"]) is int and type(e["fraud_scenario"]) is int
    # Customers and terminals: ids within the population, cards many, each using several terminals.
    assert max(int(e["card_id"][1:]) for e in events) < DEFAULT.customers
    assert max(int(e["terminal_id"][1:]) for e in events) < 2 * DEFAULT.customers
    per_card = collections.defaultdict(set)
    for e in events:
        per_card[e["card_id"]].add(e["terminal_id"])
    assert len(per_card) > 0.9 * DEFAULT.customers
    assert np.mean([len(t) for t in per_card.values()]) > 5


def test_event_time_order_and_tx_id_numbering() -> None:
    """Events come in event-time order; tx_id numbers them in that order (so it breaks ties)."""
    events = _events()
    ts = [e["ts_ms"] for e in events]
    assert ts == sorted(ts)
    assert [e["tx_id"] for e in events] == [f"t{i:09d}" for i in range(len(events))]
    assert len(ts) > len(set(ts))  # ties do occur: the tie-break is exercised


def test_day_of() -> None:
    """day_of counts whole UTC days from start_date, for an int or an array."""
    start = int(dt.datetime(2026, 4, 1, tzinfo=dt.UTC).timestamp() * 1000)
    assert day_of(start) == 0 and day_of(start + 86_399_999) == 0 and day_of(start + 86_400_000) == 1
    assert day_of(start - 1) == -1
    assert day_of(start, "2026-03-31") == 1
    ts = np.array([e["ts_ms"] for e in _events()])
    days = day_of(ts)
    assert isinstance(days, np.ndarray) and days.min() == 0 and days.max() == DEFAULT.days - 1
    assert day_of(int(ts[-1])) == int(days[-1])


def test_settings_change_the_population_and_the_span() -> None:
    """customers, terminals, days and start_date do what they say."""
    settings = SimulatorSettings(seed=3, customers=40, terminals=15, days=4, start_date="2026-01-30")
    events = simulate(settings)
    assert {int(e["card_id"][1:]) for e in events} <= set(range(40))
    assert {int(e["terminal_id"][1:]) for e in events} <= set(range(15))
    assert sorted({e["tx_time"][:10] for e in events}) == ["2026-01-30", "2026-01-31", "2026-02-01", "2026-02-02"]


def test_customers_without_a_terminal_never_transact() -> None:
    """A customer with no terminal within the radius makes no transaction: a radius no terminal
    falls in gives an empty run, and a small radius leaves most cards silent."""
    assert simulate(SimulatorSettings(radius=1e-9)) == []
    assert transaction_count(SimulatorSettings(radius=1e-9)) == 0
    sparse = simulate(SimulatorSettings(customers=400, radius=1.0))
    assert 0 < len({e["card_id"] for e in sparse}) < 0.5 * 400


@pytest.mark.parametrize(
    "changes",
    [{"seed": -1}, {"customers": 0}, {"terminals": 0}, {"days": 0}, {"radius": 0.0}, {"start_date": "2099-12-30", "days": 5}],
)
def test_invalid_settings_are_refused(changes: dict) -> None:
    """Settings that cannot make a valid run raise ValueError at construction."""
    with pytest.raises(ValueError):
        SimulatorSettings(**changes)


# --- fraud scenarios ----------------------------------------------------------------------------


def test_every_scenario_occurs_and_labels_agree() -> None:
    """All three scenarios label some transactions; is_fraud is 1 exactly when fraud_scenario > 0."""
    events = _events()
    counts = collections.Counter(e["fraud_scenario"] for e in events)
    assert set(counts) == {0, 1, 2, 3} and all(counts[s] > 0 for s in (1, 2, 3))
    assert all(e["is_fraud"] == int(e["fraud_scenario"] > 0) for e in events)


def test_scenario_1_every_amount_above_220_is_fraud() -> None:
    """An amount above 220 is always fraud; scenario 1 labels only amounts above 220."""
    for e in _events():
        if e["amount"] > 220:
            assert e["is_fraud"] == 1
        if e["fraud_scenario"] == 1:
            assert e["amount"] > 220


def test_scenario_2_every_transaction_on_a_compromised_terminal_in_its_window_is_fraud() -> None:
    """Each day 2 terminals are compromised for 28 days: all their transactions in that window are
    fraud (scenario 2, or 3 where a compromised card overrode it), and scenario 2 labels nothing else."""
    schedule = compromised(DEFAULT)
    assert len(schedule.terminals) == DEFAULT.days and all(len(set(row)) == 2 for row in schedule.terminals)
    windows = _windows(schedule.terminals, 28)
    inside = 0
    for e in _events():
        day = day_of(e["ts_ms"])
        if _in_any(day, windows.get(e["terminal_id"], [])):
            inside += 1
            assert e["fraud_scenario"] in (2, 3)
        else:
            assert e["fraud_scenario"] != 2
    assert inside > 0


def test_scenario_3_a_third_of_a_compromised_cards_transactions_are_five_times_larger() -> None:
    """Each day 3 cards are compromised for 14 days; in each stretch of compromised days (overlapping
    windows merged) exactly floor(n / 3) of the card's n transactions are scenario 3, and nothing
    outside one is. Their amount is 5 times a whole number of cents, and far above the genuine ones."""
    schedule = compromised(DEFAULT)
    assert len(schedule.customers) == DEFAULT.days and all(len(set(row)) == 3 for row in schedule.customers)
    exposed: dict[str, set[int]] = collections.defaultdict(set)
    for card, windows in _windows(schedule.customers, 14).items():
        for first, last in windows:
            exposed[card].update(range(first, min(last, DEFAULT.days - 1) + 1))
    stretch_of: dict[tuple[str, int], int] = {}
    for card, days in exposed.items():
        stretch = 0
        for day in sorted(days):
            if day - 1 not in days:
                stretch += 1
            stretch_of[card, day] = stretch
    total: collections.Counter = collections.Counter()
    frauds: collections.Counter = collections.Counter()
    for e in _events():
        where = stretch_of.get((e["card_id"], day_of(e["ts_ms"])))
        if where is None:
            assert e["fraud_scenario"] != 3
            continue
        total[e["card_id"], where] += 1
        if e["fraud_scenario"] == 3:
            frauds[e["card_id"], where] += 1
            assert round(e["amount"] * 100) % 5 == 0
    assert sum(frauds.values()) > 0
    assert all(frauds[group] == n // 3 for group, n in total.items())
    amounts = collections.defaultdict(list)
    for e in _events():
        amounts[e["fraud_scenario"]].append(e["amount"])
    assert np.mean(amounts[3]) > 3 * np.mean(amounts[0])


def test_fraud_rate_at_the_handbook_scale() -> None:
    """With the Handbook's population (5000 cards, 10000 terminals) the fraud rate is the Handbook's
    order, about 0.5-1% (it grows over the first 28 days as compromised terminals accumulate). The
    daily compromise counts are fixed, so a smaller population has a higher rate."""
    big = simulate(SimulatorSettings(customers=5000, days=30))
    rate = sum(e["is_fraud"] for e in big) / len(big)
    assert 0.004 < rate < 0.012
    default_rate = sum(e["is_fraud"] for e in _events()) / len(_events())
    assert rate < default_rate < 0.05


# --- replay -------------------------------------------------------------------------------------


def test_replay_tool_knows_the_dataset() -> None:
    """The replay tool lists transactions; its events and size are the default run's; the CLI's
    spelt-out names and defaults agree with the tool and the simulator."""
    assert replay_cmd.DATASETS == replay_tool.DATASETS
    assert (replay_cmd.DEFAULT_SEED, replay_cmd.DEFAULT_DAYS, replay_cmd.DEFAULT_CUSTOMERS) == (
        DEFAULT.seed,
        DEFAULT.days,
        DEFAULT.customers,
    )
    assert list(dataset_events("transactions")) == list(transaction_events(DEFAULT))
    assert dataset_size("transactions") == len(_events())
    assert dataset_size("transactions", SMALL) == len(_events(SMALL))
    with pytest.raises(ValueError):
        dataset_events("ai4i", SMALL)
    with pytest.raises(ValueError):
        dataset_events("ai4i", labels=True)


def _lines(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(value + b"\n" for _, value in pairs)


@pytest.mark.parametrize("labels", [False, True])
def test_replay_out_writes_the_events_as_json_lines(tmp_path: Path, labels: bool) -> None:
    """`replay transactions --out FILE` writes transaction_events' values, one per line, with the
    chosen seed, days and customers, and no --topic or broker."""
    out = tmp_path / "tx.jsonl"
    args = ["transactions", "--out", str(out), "--seed", "7", "--days", "5", "--customers", "150", "--no-progress"]
    result = CliRunner().invoke(replay, args + (["--labels"] if labels else []))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == _lines(list(transaction_events(SMALL, labels=labels)))
    assert f"wrote {len(_events(SMALL))} event(s)" in result.stderr


def test_replay_out_dash_is_stdout_and_limit_applies() -> None:
    """--out - writes to stdout (the summary goes to stderr); --limit keeps the first events."""
    result = CliRunner().invoke(replay, ["transactions", "--out", "-", "--limit", "25", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == _lines(list(transaction_events(DEFAULT))[:25])
    assert "wrote 25 event(s)" in result.stderr


def test_replay_out_works_for_the_bundled_datasets(tmp_path: Path) -> None:
    """--out is not tied to transactions: ai4i writes its replay events the same way."""
    out = tmp_path / "ai4i.jsonl"
    result = CliRunner().invoke(replay, ["ai4i", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == _lines(list(dataset_events("ai4i")))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["transactions"], "-t/--topic"),
        (["transactions", "-t", "in", "--out", "-"], "not both"),
        (["ai4i", "--out", "-", "--seed", "3"], "--seed"),
        (["cmapss-test", "-t", "in", "--days", "3", "--customers", "9"], "--days, --customers"),
        (["ai4i", "--out", "-", "--labels"], "--labels"),
    ],
)
def test_replay_usage_errors(args: list[str], message: str) -> None:
    """A missing destination, two destinations, or a simulator option with another data set is a
    usage error (exit 2) that names the problem, before any broker is contacted."""
    result = CliRunner().invoke(replay, args)
    assert result.exit_code == 2
    assert message in result.output


def test_replay_help_describes_the_new_options() -> None:
    """--help lists the dataset and says what each new option does."""
    result = CliRunner().invoke(replay, ["--help"])
    assert result.exit_code == 0
    for text in ("transactions", "--out", "--seed", "--days", "--customers", "--labels", "stdout"):
        assert text in result.output


# --- bad transactions ---------------------------------------------------------------------------


@functools.cache
def _bad() -> tuple[tuple[str, bytes | None, bytes], ...]:
    return tuple(bad_events("transactions"))


def test_bad_transactions_cover_every_input_reason_and_the_contracts_cases() -> None:
    """bad_events("transactions") has every reason the decoder can give, and the transaction
    contract's own cases: a negative amount, an amount as a string, an unknown currency, no tx_id,
    a key that is not the card."""
    bad = _bad()
    assert {reason for reason, _, _ in bad} == set(REASONS) - {"model_error", "output_rejected", "out_of_order"}
    key, good = next(iter(dataset_events("transactions")))
    event = orjson.loads(good)
    values = [
        (reason, k, orjson.loads(v) if reason not in ("invalid_encoding", "invalid_json", "non_finite_number") else None)
        for reason, k, v in bad
    ]
    assert ("schema_violation", key, dict(event, amount=-12.5)) in values
    assert ("wrong_type", key, dict(event, amount="12.5")) in values
    assert ("schema_violation", key, dict(event, currency="XXX")) in values
    assert ("schema_violation", key, {k: v for k, v in event.items() if k != "tx_id"}) in values
    assert any(reason == "key_mismatch" and k != key for reason, k, _ in bad)


@pytest.mark.parametrize(
    ("reason", "key", "value"), [pytest.param(*entry, id=f"{i}-{entry[0]}") for i, entry in enumerate(bad_events("transactions"))]
)
def test_bad_transaction_is_dead_lettered_with_its_listed_reason(reason: str, key: bytes | None, value: bytes) -> None:
    """Each bad transaction becomes exactly one DeadLetter carrying the listed reason, and no event."""
    record = _record(key, value, 42)
    out = _decoder().decode([record])
    assert out.events == [] and out.records == []
    assert len(out.dead) == 1
    letter = out.dead[0]
    assert letter.reason == reason, letter.detail
    assert letter.record is record and letter.detail


def test_bad_transactions_in_one_batch_keep_their_own_reasons() -> None:
    """Decoded together with good ones, every bad transaction still gets its own reason and every good one passes."""
    good = list(transaction_events(DEFAULT))[:50]
    entries = [("ok", k, v) for k, v in good[:25]] + list(_bad()) + [("ok", k, v) for k, v in good[25:]]
    records = [_record(k, v, i) for i, (_, k, v) in enumerate(entries)]
    out = _decoder().decode(records)
    assert {d.record.offset: d.reason for d in out.dead} == {i: r for i, (r, _, _) in enumerate(entries) if r != "ok"}
    assert [r.offset for r in out.records] == [i for i, (r, _, _) in enumerate(entries) if r == "ok"]
