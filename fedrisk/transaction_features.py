"""Fraud features an issuer computes from its own transactions, before anything is shared.

The feature set of Le Borgne et al. (2022, chapter 3.4): weekend and night flags, each
customer's spending over the last 1, 7 and 30 days (count and mean amount, current
transaction included), and each terminal's fraud risk over the same windows shifted back by
the label delay, so only frauds already known when the transaction happens are counted.
Customer and terminal identifiers are used here, inside the institution, and dropped after.

Windows are exact time windows (t - w, t], as pandas' time-based rolling counts them, but
computed for all customers at once with one sort and binary searches instead of a groupby.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DAY = 86_400  # seconds
NIGHT_END_HOUR = 6  # a transaction at or before 06:59 counts as at night, as in the handbook


def window_names(windows: list[int]) -> list[str]:
    """Names of the engineered columns, in the order `transaction_features` returns them."""
    names = ["tx_during_weekend", "tx_during_night"]
    names += [f"customer_nb_tx_{w}d" for w in windows] + [f"customer_avg_amount_{w}d" for w in windows]
    names += [f"terminal_nb_tx_{w}d" for w in windows] + [f"terminal_risk_{w}d" for w in windows]
    return names


MAX_LOOK_BACK_DAYS = 2 * 365  # window + delay: keeps groups apart in the sort key


def _grouped_order(group: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row order sorted by (group, time), and a key that keeps groups further apart than any window."""
    codes = pd.factorize(group)[0].astype(np.int64)
    order = np.lexsort((seconds, codes))
    span = int(seconds.max() - seconds.min()) + (MAX_LOOK_BACK_DAYS + 1) * DAY if len(seconds) else 1
    key = codes[order] * span + (seconds[order] - (seconds.min() if len(seconds) else 0))
    return order, key


def _prefix(values: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(values, dtype=float)])


def customer_spending(
    customer: np.ndarray, seconds: np.ndarray, amount: np.ndarray, windows: list[int]
) -> dict[str, np.ndarray]:
    """Count and mean amount of each customer's transactions in (t - w days, t], this one included."""
    order, key = _grouped_order(customer, seconds)
    sums = _prefix(amount[order])
    position = np.arange(len(order))
    out: dict[str, np.ndarray] = {}
    for w in windows:
        first = np.searchsorted(key, key - w * DAY, side="right")
        count = position - first + 1
        total = sums[position + 1] - sums[first]
        out[f"customer_nb_tx_{w}d"] = _unsort(order, count.astype(float))
        out[f"customer_avg_amount_{w}d"] = _unsort(order, total / count)
    return out


def terminal_risk(
    terminal: np.ndarray, seconds: np.ndarray, fraud: np.ndarray, windows: list[int], delay_days: int
) -> dict[str, np.ndarray]:
    """Transactions and share of frauds at each terminal in (t - delay - w, t - delay] days."""
    order, key = _grouped_order(terminal, seconds)
    frauds = _prefix(fraud[order])
    last = np.searchsorted(key, key - delay_days * DAY, side="right")
    out: dict[str, np.ndarray] = {}
    for w in windows:
        first = np.searchsorted(key, key - (delay_days + w) * DAY, side="right")
        count = (last - first).astype(float)
        known = frauds[last] - frauds[first]
        risk = np.divide(known, count, out=np.zeros_like(count), where=count > 0)
        out[f"terminal_nb_tx_{w}d"] = _unsort(order, count)
        out[f"terminal_risk_{w}d"] = _unsort(order, risk)
    return out


def _unsort(order: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[order] = values
    return out


def transaction_features(
    timestamps: pd.Series, customer: pd.Series, terminal: pd.Series, amount: pd.Series,
    fraud: pd.Series, windows: list[int], delay_days: int,
) -> pd.DataFrame:
    """The engineered features of every transaction, aligned with the inputs' rows."""
    when = pd.DatetimeIndex(timestamps)
    seconds = when.to_numpy(dtype="datetime64[s]").astype(np.int64)
    frame = {
        "tx_during_weekend": (when.dayofweek >= 5).astype(float),
        "tx_during_night": (when.hour <= NIGHT_END_HOUR).astype(float),
    }
    frame.update(customer_spending(customer.to_numpy(), seconds, amount.to_numpy(dtype=float), windows))
    frame.update(terminal_risk(terminal.to_numpy(), seconds, fraud.to_numpy(dtype=float), windows, delay_days))
    return pd.DataFrame(frame, index=timestamps.index)[window_names(windows)]
