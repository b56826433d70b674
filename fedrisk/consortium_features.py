"""Terminal risk learned across issuers: a shared, noised table of per-terminal counts.

A compromised terminal hits every issuer's cardholders, but each issuer sees only its share
of the evidence. Each issuer therefore counts, from its own transactions, the transactions
and the frauds at every terminal per period of `cell_days` days, into a fixed-size table:
a terminal id never travels, it is mapped by a keyed hash (the consortium's sketch key, part
of the federation's set-up, never of a campaign config) to one of `width` buckets, a one-row
count-min sketch. Every issuer's table has the same shape whatever terminals it saw, so the
consortium sums them (SecAgg+ in a deployment, a plain sum in simulation), and each issuer
computes, for its own transactions, the consortium's transactions and fraud share at the
transaction's terminal over the look-back windows, next to its own.

Privacy: one transaction adds 1 to one cell of the transaction counts and at most 1 to the
same cell of the fraud counts, so the whole table has L2 sensitivity sqrt(2) per transaction
and a Gaussian release of it is one mechanism (`fedrisk.budget`, `shared_counts`). A customer
with many transactions is protected as a group of them (docs/privacy.md).

Label delay: a fraud counts in the look-back of a transaction on day d only if it happened on
or before day d - delay - 1, when it is known; the table's calendar ends on the test window's
last day minus the delay and starts where the train window's first transaction looks back
to: days outside the look-back windows are never sent.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedrisk.errors import FedriskInputError

COUNT, FRAUD = 0, 1  # the table's last axis
KEY_BYTES = 32
SENSITIVITY_BLOCKS = 2  # one transaction: one cell of each count
TABLE_SCALE = 8.0  # under SecAgg+ a cell goes as count / 8: +/- 256 counts fit the default clipping range 32


def feature_names(windows: list[int]) -> list[str]:
    """The consortium's columns, in the order `consortium_features` returns them."""
    return ([f"consortium_terminal_nb_tx_{w}d" for w in windows]
            + [f"consortium_terminal_risk_{w}d" for w in windows])


@dataclass(frozen=True)
class Calendar:
    """The table's days: `cells` periods of `cell_days` days, the first starting on `first_day`
    (days since 1970)."""

    first_day: int
    cell_days: int
    cells: int

    @property
    def last_day(self) -> int:
        return self.first_day + self.cells * self.cell_days - 1

    def cell_of(self, days: np.ndarray) -> np.ndarray:
        """The cell of each day (-1 before the calendar, `cells` after it)."""
        days = np.asarray(days, dtype=np.int64)
        cell = (days - self.first_day) // self.cell_days
        return np.where(days < self.first_day, -1, np.minimum(cell, self.cells))


def calendar(first_row_day: int, last_row_day: int, windows: list[int], delay_days: int, cell_days: int) -> Calendar:
    """The cells a campaign needs for transactions from `first_row_day` to `last_row_day`: from
    the first one's longest look-back (one cell earlier, for the partly known cell) to the last
    one's newest known day."""
    last = last_row_day - delay_days - 1
    first = first_row_day - delay_days - 1 - max(windows) - cell_days
    cells = max(math.ceil((last - first + 1) / cell_days), 1)
    return Calendar(last - cells * cell_days + 1, cell_days, cells)


def load_key(path: Path, create: bool = False) -> bytes:
    """The consortium's sketch key. Created (random, owner-only) only where fedrisk sets the
    federation up: a simulation's home root, or `fedrisk federation certs`."""
    if not path.is_file():
        if not create:
            raise FedriskInputError("no consortium sketch key (it comes with the federation's set-up; give its "
                                    "file as node config sketch-key=/absolute/path)", file=str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(KEY_BYTES))
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise FedriskInputError("the consortium sketch key is not 16 or more bytes of hex", file=str(path))
    return key


def check_table(table: np.ndarray, cal: Calendar, width: int) -> np.ndarray:
    """A summed table as received, refused in one line unless it has the calendar's shape and
    finite counts."""
    expected = (cal.cells, width, 2)
    if table.shape != expected or not np.isfinite(table).all():
        raise FedriskInputError(f"refused the consortium's terminal table of shape {table.shape}: expected "
                                f"{expected} finite counts")
    return np.asarray(table, dtype=float)


def buckets(terminals: pd.Series | np.ndarray, key: bytes, width: int) -> np.ndarray:
    """Each transaction's bucket: a keyed hash (HMAC-SHA256) of its terminal id, modulo `width`.
    Ids are hashed as text, so 17 and "17" are one terminal in every issuer's file."""
    codes, unique = pd.factorize(pd.Series(np.asarray(terminals)).astype(str), sort=False)
    table = np.fromiter((int.from_bytes(hmac.new(key, str(t).encode(), hashlib.sha256).digest()[:8], "big") % width
                         for t in unique), dtype=np.int64, count=len(unique))
    return table[codes]


def local_table(days: np.ndarray, bucket: np.ndarray, fraud: np.ndarray, cal: Calendar, width: int) -> np.ndarray:
    """(cells, width, 2) exact counts of the issuer's transactions and frauds inside the calendar."""
    cell = cal.cell_of(days)
    inside = (cell >= 0) & (cell < cal.cells)
    index = cell[inside] * width + np.asarray(bucket)[inside]
    size = cal.cells * width
    counts = np.bincount(index, minlength=size).astype(float)
    frauds = np.bincount(index, weights=np.asarray(fraud, dtype=float)[inside], minlength=size)
    return np.stack([counts, frauds], axis=-1).reshape(cal.cells, width, 2)


def consortium_features(table: np.ndarray, cal: Calendar, days: np.ndarray, bucket: np.ndarray,
                        windows: list[int], delay_days: int) -> pd.DataFrame:
    """For each transaction (day, bucket): the consortium's transactions and fraud share at its
    bucket over the whole cells of each window that are known (ending on day - delay - 1 or
    before). A noised count below 0 reads as 0; the share is frauds / max(transactions, 1),
    within [0, 1]."""
    days = np.asarray(days, dtype=np.int64)
    bucket = np.asarray(bucket, dtype=np.int64)
    newest = (days - delay_days - 1 - cal.first_day + 1) // cal.cell_days  # cells fully known: [0, newest)
    newest = np.clip(newest, 0, cal.cells)
    out: dict[str, np.ndarray] = {}
    shares: dict[str, np.ndarray] = {}
    for w in windows:
        total = window_sums(table, math.ceil(w / cal.cell_days))[newest, bucket]  # (rows, 2)
        count = np.clip(total[:, COUNT], 0.0, None)
        out[f"consortium_terminal_nb_tx_{w}d"] = count
        shares[f"consortium_terminal_risk_{w}d"] = np.clip(total[:, FRAUD] / np.maximum(count, 1.0), 0.0, 1.0)
    return pd.DataFrame({**out, **shares})[feature_names(windows)]


def window_sums(table: np.ndarray, span: int) -> np.ndarray:
    """(cells + 1, width, 2): at index k, the sum of the `span` cells before cell k."""
    prefix = np.concatenate([np.zeros((1, *table.shape[1:])), np.cumsum(table, axis=0)])
    older = np.concatenate([np.zeros((span, *table.shape[1:])), prefix[:-span]]) if span < len(prefix) \
        else np.zeros_like(prefix)
    return prefix - older


def shared_bounds(table: np.ndarray, cal: Calendar, windows: list[int],
                  levels: tuple[float, ...]) -> dict[str, tuple[float, float, list[float]]]:
    """(lower, upper, quantiles at `levels`) of each consortium column, read off the summed table
    alone (post-processing of a DP release): the values the issuers' transactions will see,
    weighted by the table's own transaction counts. Counts are clipped at their 99.9 % point."""
    weights = np.clip(np.concatenate([table[:, :, COUNT], table[-1:, :, COUNT]]), 0.0, None).ravel()
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    out = {}
    for w in windows:
        sums = window_sums(table, math.ceil(w / cal.cell_days))
        count = np.clip(sums[:, :, COUNT], 0.0, None).ravel()
        share = np.clip(sums[:, :, FRAUD].ravel() / np.maximum(count, 1.0), 0.0, 1.0)
        top = float(np.quantile(count, 0.999, weights=weights, method="inverted_cdf"))
        out[f"consortium_terminal_nb_tx_{w}d"] = (0.0, max(top, 1.0), [
            float(q) for q in np.quantile(count, levels, weights=weights, method="inverted_cdf")])
        out[f"consortium_terminal_risk_{w}d"] = (0.0, 1.0, [
            float(q) for q in np.quantile(share, levels, weights=weights, method="inverted_cdf")])
    return {name: out[name] for name in feature_names(windows)}


def kept_table(campaign: str) -> str:
    """Where, under an institution's home, its node keeps a campaign's summed terminal table: a
    later message, another process and `fedrisk score` read it there."""
    return f"shared_tables/{hashlib.sha256(campaign.encode()).hexdigest()[:32]}.npy"
