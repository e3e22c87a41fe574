"""A seeded simulator of card payments with labelled fraud, for the ``transactions`` data set.

An independent, vectorised implementation of the *design* of the transaction simulator published in
Le Borgne, Siblini, Lebichot and Bontempi, "Reproducible Machine Learning for Credit Card Fraud
Detection - Practical Handbook" (Université Libre de Bruxelles, 2022), chapter "Transaction data
simulator". None of the Handbook's code is used; stream_infer/datasets/README.md lists the parameters
and the label rules.

The model, in the order the random numbers are drawn from ``np.random.default_rng(seed)``:

1. Customers: location (x, y) uniform on a 100 x 100 grid, mean amount uniform(5, 100), standard
   deviation of the amount half the mean, mean number of transactions per day uniform(0, 4).
2. Terminals: location uniform on the same grid. A customer uses the terminals within ``radius``
   (Euclidean distance, inclusive) of its location; a customer with none never transacts.
3. Every day, every customer makes Poisson(mean per day) transactions. Time of day ~
   Normal(43 200 s, 20 000 s), floored to the millisecond; a transaction whose time falls outside
   the day [0, 86 400 s) is dropped. Amount ~ Normal(mean, std); a negative one is redrawn
   uniform(0, 2 * mean); amounts are rounded to cents and at least 0.01. The terminal is uniform
   among the customer's reachable terminals.
4. Fraud, applied in this order, a later scenario overriding an earlier one's ``fraud_scenario``
   (``is_fraud`` is 1 for any of them):

   1. any amount > 220 is fraud (scenario 1);
   2. each day d, 2 terminals drawn at random (without replacement) are compromised for days
      d .. d+27: every transaction on them in that window is fraud (scenario 2);
   3. each day d, 3 customers drawn at random are compromised for days d .. d+13. A customer's
      compromised days form stretches (overlapping windows merge); in each stretch exactly
      floor(n / 3) of its n transactions, drawn at random, are fraud (scenario 3) and have their
      amount multiplied by 5 (rounded to cents). A transaction is multiplied at most once.

So every amount above 220 is fraud (scenario 1, or a later scenario that overrode it), and every
transaction on a compromised terminal in its window is fraud (scenario 2, or 3 that overrode it).

Events are sorted by event time (``ts_ms``); transactions with the same millisecond keep the order
they were generated in (day, customer, draw), and ``tx_id`` numbers them in the sorted order, so ties
are in ``tx_id`` order. The same settings give the same events, byte for byte.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple, overload

import numpy as np
import orjson

#: The label fields :func:`simulate` (and ``transaction_events(labels=True)``) add to an event.
LABEL_FIELDS: tuple[str, ...] = ("is_fraud", "fraud_scenario")

GRID = 100.0  # side of the square the customers and terminals live on
MS_PER_DAY = 86_400_000
TIME_OF_DAY_MEAN_S = 86_400 / 2
TIME_OF_DAY_STD_S = 20_000.0
FRAUD_AMOUNT = 220.0  # scenario 1: an amount above this is fraud
COMPROMISED_TERMINALS_PER_DAY = 2
TERMINAL_WINDOW_DAYS = 28
COMPROMISED_CUSTOMERS_PER_DAY = 3
CUSTOMER_WINDOW_DAYS = 14
SCENARIO_3_FACTOR = 5.0
CURRENCY = "EUR"
# The schema's upper bound of ts_ms (2100-01-01T00:00:00Z).
MAX_TS_MS = 4_102_444_800_000
# Events are turned into dicts and JSON this many at a time (bounded memory for a long run).
_CHUNK = 65_536


@dataclass(frozen=True)
class SimulatorSettings:
    """What a simulated run depends on; the same settings give the same events.

    ``terminals`` None means twice the customers. ``start_date`` is day 0 (an ISO date, midnight
    UTC). ``radius`` is the distance within which a customer uses a terminal."""

    seed: int = 1
    customers: int = 1000
    terminals: int | None = None
    days: int = 30
    start_date: str = "2026-04-01"
    radius: float = 5.0

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, not {self.seed}")
        if self.customers < 1:
            raise ValueError(f"customers must be >= 1, not {self.customers}")
        if self.terminals is not None and self.terminals < 1:
            raise ValueError(f"terminals must be >= 1 (or None), not {self.terminals}")
        if self.days < 1:
            raise ValueError(f"days must be >= 1, not {self.days}")
        if not self.radius > 0:
            raise ValueError(f"radius must be > 0, not {self.radius}")
        start = _start_ms(self.start_date)
        if start < 0 or start + self.days * MS_PER_DAY > MAX_TS_MS:
            raise ValueError(f"the run ({self.start_date} + {self.days} days) must lie in 1970-01-01 .. 2100-01-01")

    @property
    def terminal_count(self) -> int:
        return 2 * self.customers if self.terminals is None else self.terminals


class _Columns(NamedTuple):
    """One simulated run, one entry per transaction in event-time order (arrays are read-only)."""

    ts_ms: np.ndarray  # int64, epoch milliseconds UTC
    customer: np.ndarray  # int64 index: card_id is c{customer:06d}
    terminal: np.ndarray  # int64 index: terminal_id is m{terminal:06d}
    amount: np.ndarray  # float64, cents
    fraud_scenario: np.ndarray  # int8, 0 (genuine) .. 3
    customers: int
    terminals: int
    compromised_terminals: np.ndarray  # (days, 2) int64: row d, the terminals compromised on day d
    compromised_customers: np.ndarray  # (days, 3) int64: row d, the customers compromised on day d


class Compromised(NamedTuple):
    """The compromises a run drew (the ground truth behind scenarios 2 and 3): ``terminals[d]``
    are the terminal ids compromised on day d for days d .. d+27, ``customers[d]`` the card ids
    compromised on day d for days d .. d+13."""

    terminals: list[list[str]]
    customers: list[list[str]]


def _start_ms(start_date: str) -> int:
    day = dt.date.fromisoformat(start_date)
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1000


@overload
def day_of(ts_ms: int, start_date: str = ...) -> int: ...
@overload
def day_of(ts_ms: np.ndarray, start_date: str = ...) -> np.ndarray: ...
def day_of(ts_ms: int | np.ndarray, start_date: str = "2026-04-01") -> int | np.ndarray:
    """The day index of `ts_ms` (epoch ms UTC) counted from `start_date` (day 0, midnight UTC);
    floor division, so an instant before the start has a negative day. Elementwise on an array."""
    if isinstance(ts_ms, np.ndarray):
        return (ts_ms - _start_ms(start_date)) // MS_PER_DAY
    return (int(ts_ms) - _start_ms(start_date)) // MS_PER_DAY


def _reachable_terminals(customer_xy: np.ndarray, terminal_xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Each customer's terminals within `radius`, as CSR: customer i uses
    ``indices[indptr[i]:indptr[i + 1]]`` (ascending terminal index).

    Terminals sorted by x: a customer's candidates are the run whose x is within `radius` of its
    own (two binary searches); only those pairs get a distance. Customers go a block at a time so
    the pairs of a block stay a few million."""
    by_x = np.argsort(terminal_xy[:, 0], kind="stable")
    xs, ys = terminal_xy[by_x, 0], terminal_xy[by_x, 1]
    lo = np.searchsorted(xs, customer_xy[:, 0] - radius, side="left")
    hi = np.searchsorted(xs, customer_xy[:, 0] + radius, side="right")
    width = hi - lo
    owners, found = [], []
    block = max(1, 4_000_000 // max(1, int(width.max(initial=0))))
    for first in range(0, len(customer_xy), block):
        rows = np.arange(first, min(first + block, len(customer_xy)))
        n = width[rows]
        owner = np.repeat(rows, n)
        # Position of each pair within its customer's run, then the sorted terminal it points at.
        offset = np.arange(len(owner)) - np.repeat(np.cumsum(n) - n, n)
        pos = lo[owner] + offset
        d2 = (xs[pos] - customer_xy[owner, 0]) ** 2 + (ys[pos] - customer_xy[owner, 1]) ** 2
        near = d2 <= radius * radius
        owners.append(owner[near])
        found.append(by_x[pos[near]])
    owner = np.concatenate(owners)
    terminal = np.concatenate(found).astype(np.int64)
    order = np.lexsort((terminal, owner))
    indptr = np.zeros(len(customer_xy) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=len(customer_xy)), out=indptr[1:])
    return indptr, terminal[order]


def _round_cents(amount: np.ndarray) -> np.ndarray:
    return np.maximum(np.round(amount, 2), 0.01)


@functools.lru_cache(maxsize=1)
def _simulate(settings: SimulatorSettings) -> _Columns:
    """The run of `settings` as columns (cached: replay asks for the size, then the events)."""
    rng = np.random.default_rng(settings.seed)
    n_customers, n_terminals, days = settings.customers, settings.terminal_count, settings.days

    # Profiles.
    customer_xy = rng.uniform(0, GRID, size=(n_customers, 2))
    mean_amount = rng.uniform(5, 100, size=n_customers)
    std_amount = mean_amount / 2
    mean_per_day = rng.uniform(0, 4, size=n_customers)
    terminal_xy = rng.uniform(0, GRID, size=(n_terminals, 2))
    indptr, reachable = _reachable_terminals(customer_xy, terminal_xy, settings.radius)
    degree = np.diff(indptr)

    # Daily process: counts per (day, customer), then one entry per drawn transaction in
    # generation order (day, customer, draw).
    counts = rng.poisson(mean_per_day, size=(days, n_customers))
    counts[:, degree == 0] = 0
    total = int(counts.sum())
    day = np.repeat(np.repeat(np.arange(days, dtype=np.int64), n_customers), counts.ravel())
    customer = np.repeat(np.tile(np.arange(n_customers, dtype=np.int64), days), counts.ravel())
    time_ms = np.floor(rng.normal(TIME_OF_DAY_MEAN_S, TIME_OF_DAY_STD_S, size=total) * 1000)
    mean, std = mean_amount[customer], std_amount[customer]
    amount = rng.normal(mean, std)
    fallback = rng.uniform(0, 2 * mean)
    amount = _round_cents(np.where(amount < 0, fallback, amount))
    pick = rng.integers(0, degree[customer])  # every customer here has degree >= 1
    terminal = reachable[indptr[customer] + pick]

    keep = (time_ms >= 0) & (time_ms < MS_PER_DAY)
    day, customer, terminal, amount = day[keep], customer[keep], terminal[keep], amount[keep]
    time_ms = time_ms[keep].astype(np.int64)

    scenario = np.zeros(len(day), dtype=np.int8)
    # Scenario 1: large amounts.
    scenario[amount > FRAUD_AMOUNT] = 1

    # Scenario 2: compromised[d, t] is whether terminal t is compromised on day d.
    compromised = np.zeros((days, n_terminals), dtype=bool)
    terminal_draws = np.empty((days, min(COMPROMISED_TERMINALS_PER_DAY, n_terminals)), dtype=np.int64)
    for d in range(days):
        terminal_draws[d] = rng.choice(n_terminals, size=terminal_draws.shape[1], replace=False)
        compromised[d : d + TERMINAL_WINDOW_DAYS, terminal_draws[d]] = True
    scenario[compromised[day, terminal]] = 2

    # Scenario 3: compromised customers; each transaction in a compromised stretch gets a random
    # key, and the floor(n / 3) smallest keys of each stretch are the frauds.
    exposed = np.zeros((days, n_customers), dtype=bool)
    customer_draws = np.empty((days, min(COMPROMISED_CUSTOMERS_PER_DAY, n_customers)), dtype=np.int64)
    for d in range(days):
        customer_draws[d] = rng.choice(n_customers, size=customer_draws.shape[1], replace=False)
        exposed[d : d + CUSTOMER_WINDOW_DAYS, customer_draws[d]] = True
    began = exposed & ~np.vstack([np.zeros((1, n_customers), dtype=bool), exposed[:-1]])
    stretch_of = np.cumsum(began, axis=0)  # per customer: the number of its stretches begun so far
    candidates = np.flatnonzero(exposed[day, customer])
    draw = rng.random(len(candidates))
    group = customer[candidates] * (days + 1) + stretch_of[day[candidates], customer[candidates]]
    order = np.lexsort((draw, group))
    grouped = group[order]
    first = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    size = np.diff(np.r_[first, len(grouped)])
    rank = np.arange(len(grouped)) - np.repeat(first, size)
    frauds = candidates[order[rank < np.repeat(size // 3, size)]]
    amount[frauds] = _round_cents(amount[frauds] * SCENARIO_3_FACTOR)
    scenario[frauds] = 3

    # Event time; a stable sort keeps generation order among equal milliseconds.
    ts_ms = _start_ms(settings.start_date) + day * MS_PER_DAY + time_ms
    by_time = np.argsort(ts_ms, kind="stable")
    columns = _Columns(
        ts_ms[by_time],
        customer[by_time],
        terminal[by_time],
        amount[by_time],
        scenario[by_time],
        n_customers,
        n_terminals,
        terminal_draws,
        customer_draws,
    )
    for array in columns:
        if isinstance(array, np.ndarray):
            array.flags.writeable = False
    return columns


def transaction_count(settings: SimulatorSettings) -> int:
    """How many transactions the run of `settings` has (what :func:`simulate` would return)."""
    return len(_simulate(settings).ts_ms)


def compromised(settings: SimulatorSettings) -> Compromised:
    """The terminals and cards the run of `settings` compromised, day by day (see :class:`Compromised`)."""
    cols = _simulate(settings)
    return Compromised(
        [[_terminal_id(t) for t in row] for row in cols.compromised_terminals.tolist()],
        [[_card_id(c) for c in row] for row in cols.compromised_customers.tolist()],
    )


def _card_id(customer: int) -> str:
    return f"c{customer:06d}"


def _terminal_id(terminal: int) -> str:
    return f"m{terminal:06d}"


def _event_chunks(settings: SimulatorSettings, labels: bool) -> Iterator[list[dict]]:
    """The events of the run as dicts, in event-time order, `_CHUNK` at a time."""
    cols = _simulate(settings)
    cards = np.array([_card_id(i) for i in range(cols.customers)], dtype=object)
    terminals = np.array([_terminal_id(i) for i in range(cols.terminals)], dtype=object)
    for lo in range(0, len(cols.ts_ms), _CHUNK):
        hi = min(lo + _CHUNK, len(cols.ts_ms))
        ts = cols.ts_ms[lo:hi]
        iso = np.datetime_as_string(ts.astype("datetime64[ms]"), unit="ms", timezone="UTC").tolist()
        rows = zip(
            (f"t{n:09d}" for n in range(lo, hi)),
            cards[cols.customer[lo:hi]].tolist(),
            terminals[cols.terminal[lo:hi]].tolist(),
            cols.amount[lo:hi].tolist(),
            ts.tolist(),
            iso,
        )
        events = [
            {
                "schema_version": 1,
                "tx_id": tx_id,
                "card_id": card,
                "terminal_id": term,
                "amount": amount,
                "currency": CURRENCY,
                "ts_ms": ms,
                "tx_time": when,
            }
            for tx_id, card, term, amount, ms, when in rows
        ]
        if labels:
            scenarios = cols.fraud_scenario[lo:hi]
            for event, fraud, scenario in zip(events, (scenarios > 0).astype(np.int64).tolist(), scenarios.tolist()):
                event["is_fraud"] = fraud
                event["fraud_scenario"] = scenario
        yield events


def simulate(settings: SimulatorSettings) -> list[dict]:
    """Every transaction of the run, with its labels, in event-time order (ties by ``tx_id``).

    Each dict has exactly ``schema_version`` (1), ``tx_id`` ("t" + 9 digits, numbering the events
    in this order), ``card_id`` ("c" + 6 digits), ``terminal_id`` ("m" + 6 digits), ``amount``
    (float > 0, cents), ``currency`` ("EUR"), ``ts_ms`` (int, epoch ms UTC), ``tx_time`` (the same
    instant, ISO 8601 UTC with milliseconds and a trailing Z), ``is_fraud`` (0/1) and
    ``fraud_scenario`` (0 genuine, else the scenario 1..3 that labelled it)."""
    return [event for chunk in _event_chunks(settings, labels=True) for event in chunk]


def transaction_events(settings: SimulatorSettings, *, labels: bool = False) -> Iterator[tuple[bytes, bytes]]:
    """The run as Kafka records (key = card_id as UTF-8, value = the event as orjson JSON), in the
    order of :func:`simulate`; without the label fields unless `labels`. Byte-identical for the same
    settings."""
    dumps = orjson.dumps
    for chunk in _event_chunks(settings, labels):
        for event in chunk:
            yield event["card_id"].encode(), dumps(event)
