"""Built-in card-issuer consortium: the transaction simulator of Le Borgne et al. (2022).

After "Reproducible Machine Learning for Credit Card Fraud Detection - Practical Handbook",
chapter 3: customers with a home location and a spending profile, terminals with a
location, each customer paying at terminals within a radius, amounts and times of day drawn
from the profile, and three fraud scenarios:

1. any amount above 220 is a fraud (a baseline any model should catch);
2. compromised terminals: each day some terminals are compromised and every transaction on
   them in the next 28 days is a fraud;
3. compromised cards: each day some customers' cards are stolen; over the next 14 days a
   third of their transactions are frauds with five times the usual amount.

Extended to a consortium: customers belong to issuers of unequal size, terminals are shared
by everyone (a compromised terminal hits every issuer's customers), card theft is more or
less frequent at each issuer, and transactions are busier on Saturdays and quieter on
Sundays. Every rate is a fraction of customers or terminals per day, so the fraud rate does
not depend on the consortium's size (about 0.8 % with the defaults).

The world (profiles and compromise schedules) follows from the seed alone; each issuer's
transactions come from its own seeded stream, so a client generates only its own cards.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from fedrisk.generators.credit import institution_names, institution_shares

START = pd.Timestamp("2026-01-05")  # a Monday
GRID = 100.0  # customers and terminals live on a 100 x 100 square
RADIUS = 5.0  # a customer pays at terminals within this distance of home
LARGE_AMOUNT = 220.0  # scenario 1
TERMINAL_RATE = 2e-4  # scenario 2: share of terminals compromised each day (2 of 10,000)
TERMINAL_DAYS = 28
CARD_RATE = 6e-4  # scenario 3: share of customers whose card is stolen each day (3 of 5,000)
CARD_DAYS = 14
CARD_SHARE = 1 / 3  # of a stolen card's transactions are fraudulent ...
CARD_MULTIPLIER = 5.0  # ... at five times the amount
WEEKDAY_ACTIVITY = np.array([1.0, 1.0, 1.0, 1.0, 1.05, 1.25, 0.7])  # Monday .. Sunday

DRIFT_SCENARIOS = ("population_shift", "new_fraud_pattern")
TAKEOVER_RATE = 2e-4  # new pattern: share of customers whose account is taken over each day, per unit of severity
TAKEOVER_DAYS = 7
TAKEOVER_TX_PER_DAY = 3.0  # extra night-time purchases of a taken-over account, at its usual amounts
LABEL_DERIVED = ["tx_fraud_scenario"]  # which scenario made a fraud: for analysis, never a feature
RANGES = {"tx_amount": (0, None)}  # the data spec of the generated columns (data-quality scorecard)
COLUMNS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount",
           "tx_fraud", "tx_fraud_scenario"]


@dataclass(frozen=True)
class World:
    """Everything the issuers share: who banks where, where terminals are, what is stolen."""

    issuer: np.ndarray  # issuer index of each customer
    customer_xy: np.ndarray
    mean_amount: np.ndarray
    std_amount: np.ndarray
    tx_per_day: np.ndarray
    terminal_xy: np.ndarray
    terminal_offsets: np.ndarray  # CSR of the terminals each customer can reach
    terminal_lists: np.ndarray
    terminal_compromised: np.ndarray  # (terminals, days) bool
    card_compromised: np.ndarray  # (customers, days) bool


def issuer_card_risk(n: int) -> np.ndarray:
    """Relative card-theft frequency per issuer: 0.5x to 1.5x the base rate, mean 1."""
    return np.linspace(0.5, 1.5, n) if n > 1 else np.ones(1)


def _window(starts: np.ndarray, days: int) -> np.ndarray:
    """True on the `days` days from each start (inclusive), per row."""
    counts = np.cumsum(starts, axis=1, dtype=np.int32)
    shifted = np.zeros_like(counts)
    shifted[:, days:] = counts[:, :-days]
    return (counts - shifted) > 0


@lru_cache(maxsize=4)
def build_world(issuers: int, customers: int, terminals: int, days: int, seed: int, stream: int = 0) -> World:
    """The shared world; a later window (`stream` > 0) keeps the people and terminals and
    draws its own compromised terminals and stolen cards."""
    rng = np.random.default_rng([seed, 50_021])
    shares = institution_shares(issuers)
    issuer = np.minimum(np.searchsorted(np.cumsum(shares), rng.random(customers)), issuers - 1)
    customer_xy = rng.uniform(0, GRID, (customers, 2))
    mean_amount = rng.uniform(5, 100, customers)
    tx_per_day = rng.uniform(0, 4, customers)
    terminal_xy = rng.uniform(0, GRID, (terminals, 2))
    reach = cKDTree(terminal_xy).query_ball_point(customer_xy, r=RADIUS)
    lengths = np.fromiter((len(r) for r in reach), dtype=np.int64, count=customers)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    lists = np.fromiter((t for r in reach for t in sorted(r)), dtype=np.int64, count=int(offsets[-1]))
    if stream:
        rng = np.random.default_rng([seed, 50_027, stream])
    terminal_starts = rng.random((terminals, days)) < TERMINAL_RATE
    card_rate = CARD_RATE * issuer_card_risk(issuers)[issuer]
    card_starts = rng.random((customers, days)) < card_rate[:, None]
    return World(issuer, customer_xy, mean_amount, mean_amount / 2, tx_per_day, terminal_xy, offsets, lists,
                 _window(terminal_starts, TERMINAL_DAYS), _window(card_starts, CARD_DAYS))


def generate_issuer(
    index: int, issuers: int = 5, customers: int = 5000, terminals: int = 10_000, days: int = 105,
    seed: int = 42, drift: str = "none", severity: float = 0.0, stream: int = 0, start_day: int = 0,
) -> pd.DataFrame:
    """One issuer's transactions, sorted by time, with labels and the scenario that made them.

    `stream` k > 0 draws new transactions of the same cardholders and terminals (a later
    window starting `start_day` days after START, with its own compromises), and `drift`
    shifts them by `severity` (1: a strong shift): `population_shift` raises spending
    (amounts and transactions a day up by half); `new_fraud_pattern` adds account takeovers
    (scenario 4), a pattern absent from training: a taken-over account makes three extra
    purchases a night at its usual amounts, on terminals anywhere, for 7 days.
    """
    if drift not in ("none", *DRIFT_SCENARIOS):
        raise ValueError(f"unknown fraud drift scenario '{drift}' (known: {', '.join(DRIFT_SCENARIOS)})")
    world = build_world(issuers, customers, terminals, days, seed, stream)
    rng = np.random.default_rng([seed, 50_023, index, *([stream] if stream else [])])
    spend = 1.0 + 0.5 * severity if drift == "population_shift" else 1.0
    mine = np.flatnonzero(world.issuer == index)
    activity = WEEKDAY_ACTIVITY[(START.dayofweek + start_day + np.arange(days)) % 7]
    counts = rng.poisson(world.tx_per_day[mine, None] * spend * activity[None, :])
    cell = np.repeat(np.arange(counts.size), counts.ravel())
    customer = mine[cell // days]
    day = cell % days
    seconds = rng.normal(86_400 / 2, 20_000, len(cell))
    reach = world.terminal_offsets[customer + 1] - world.terminal_offsets[customer]
    keep = (seconds > 0) & (seconds < 86_400) & (reach > 0)  # as the handbook: drop, not clip
    customer, day, seconds, reach = customer[keep], day[keep], seconds[keep].astype(np.int64), reach[keep]
    amount = rng.normal(world.mean_amount[customer], world.std_amount[customer]) * spend
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * world.mean_amount[customer[negative]] * spend)
    pick = (rng.random(len(customer)) * reach).astype(np.int64)
    terminal = world.terminal_lists[world.terminal_offsets[customer] + pick]

    scenario = np.zeros(len(customer), dtype=np.int64)
    scenario[amount > LARGE_AMOUNT] = 1
    scenario[world.terminal_compromised[terminal, day]] = 2
    stolen = world.card_compromised[customer, day] & (rng.random(len(customer)) < CARD_SHARE)
    amount[stolen] *= CARD_MULTIPLIER
    scenario[stolen] = 3

    if drift == "new_fraud_pattern" and severity > 0:
        extra = _takeovers(world, mine, days, severity, np.random.default_rng([seed, 50_029, index, stream]))
        customer, terminal, day, seconds, amount, scenario = (
            np.concatenate([a, b]) for a, b in zip((customer, terminal, day, seconds, amount, scenario), extra)
        )

    when = START + pd.to_timedelta((start_day + day) * 86_400 + seconds, unit="s")
    frame = pd.DataFrame({
        "tx_datetime": when,
        "customer_id": customer,
        "terminal_id": terminal,
        "tx_amount": np.round(amount, 2),
        "tx_fraud": (scenario > 0).astype(np.int64),
        "tx_fraud_scenario": scenario,
    }).sort_values(["tx_datetime", "customer_id"], kind="stable", ignore_index=True)
    frame.insert(0, "transaction_id", index * 10**12 + np.arange(len(frame), dtype=np.int64))
    return frame[COLUMNS]


def _takeovers(world: World, mine: np.ndarray, days: int, severity: float,
               rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(customer, terminal, day, seconds, amount, scenario) of account-takeover frauds."""
    starts = rng.random((len(mine), days)) < TAKEOVER_RATE * severity
    taken = _window(starts, TAKEOVER_DAYS)
    counts = rng.poisson(TAKEOVER_TX_PER_DAY * taken)
    cell = np.repeat(np.arange(counts.size), counts.ravel())
    customer = mine[cell // days]
    day = cell % days
    seconds = rng.integers(0, 5 * 3600, len(cell))  # midnight to 5 am
    amount = np.abs(rng.normal(world.mean_amount[customer], world.std_amount[customer]))
    terminal = rng.integers(0, len(world.terminal_xy), len(cell))
    return customer, terminal, day, seconds, amount, np.full(len(cell), 4, dtype=np.int64)


def generate_consortium(
    issuers: int = 5, customers: int = 5000, terminals: int = 10_000, days: int = 105, seed: int = 42
) -> pd.DataFrame:
    """All issuers' transactions with an `issuer` column: for pooled baselines and tests only."""
    names = institution_names(issuers)
    parts = []
    for i, name in enumerate(names):
        part = generate_issuer(i, issuers, customers, terminals, days, seed)
        part.insert(1, "issuer", name)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)
