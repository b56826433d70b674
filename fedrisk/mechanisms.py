"""The Gaussian mechanism and the few things built from it that an institution releases.

- `noised`: a release of clipped contributions plus Gaussian noise, drawn from the operating
  system's randomness (never from the campaign seed, so no one holding the config can replay it);
- `LOG_GRID`: a data-independent grid of raw values (sign x 10^(k/5)), on which a noised
  histogram of each numeric column gives the consortium's clipping bounds and decile edges
  (`quantiles_from_histogram`) without any one institution's extremes leaving;
- `select_partitions`: DP partition selection (Gaussian noise and a threshold, as in Google's
  and OpenDP's sparse histograms): a category value leaves only when its noised count clears
  the threshold, so a value held by a handful of customers never does.

The privacy cost of each release is its plan's (`fedrisk.budget`); these functions only draw.
"""

from __future__ import annotations

import os
from statistics import NormalDist
from typing import Any

import numpy as np


def secure_rng() -> np.random.Generator:
    """A generator seeded from the operating system: DP noise must not be reproducible."""
    return np.random.default_rng(int.from_bytes(os.urandom(16), "little"))


def noised(values: Any, noise: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """`values` plus independent Gaussian noise of standard deviation `noise` per cell."""
    values = np.asarray(values, dtype=float)
    if noise <= 0:
        return values.copy()
    return values + (rng or secure_rng()).normal(0.0, noise, size=values.shape)


_POWERS = np.arange(-20, 61) / 5.0  # 10^-4 .. 10^12, five steps per decade (x 1.58 per bin)
LOG_GRID = np.concatenate([-(10.0 ** _POWERS[::-1]), [0.0], 10.0 ** _POWERS])


def log_grid_counts(values: np.ndarray) -> np.ndarray:
    """Counts of raw values on `LOG_GRID` (bins below, between and above its edges), then missing."""
    values = np.asarray(values, dtype=float)
    missing = np.isnan(values)
    index = np.searchsorted(LOG_GRID, values[~missing], side="right")
    return np.append(np.bincount(index, minlength=len(LOG_GRID) + 1), missing.sum()).astype(float)


def grid_bounds(bin_index: int) -> tuple[float, float]:
    """(lower, upper) raw value of a `LOG_GRID` bin (infinite at the ends)."""
    low = LOG_GRID[bin_index - 1] if bin_index > 0 else -np.inf
    high = LOG_GRID[bin_index] if bin_index < len(LOG_GRID) else np.inf
    return float(low), float(high)


def significant(counts: np.ndarray, noise: float, sigmas: float = 4.0) -> np.ndarray:
    """Noised counts with cells below `sigmas` standard deviations of their noise set to zero (at 4, one
    empty cell in 30,000 passes): empty cells' noise otherwise piles up in the tails of a distribution."""
    counts = np.asarray(counts, dtype=float)
    return np.where(counts > sigmas * noise, counts, 0.0)


def quantiles_from_histogram(counts: np.ndarray, levels: list[float] | np.ndarray) -> list[int]:
    """The bin holding each quantile level of a (cleaned) histogram; [] when it is empty."""
    counts = np.clip(np.asarray(counts, dtype=float), 0, None)
    total = counts.sum()
    if total <= 0:
        return []
    cdf = np.cumsum(counts) / total
    return [int(min(np.searchsorted(cdf, level - 1e-12), len(counts) - 1)) for level in levels]


def partition_threshold(noise: float, delta: float, min_count: int) -> float:
    """The noised count a category value must reach to be released: one row's value clears it
    with probability at most `delta`, and no count below the policy's minimum leaves."""
    return max(float(min_count), 1.0 - noise * NormalDist().inv_cdf(delta)) if noise > 0 else float(min_count)


def select_partitions(counts: dict[str, float], noise: float, threshold: float,
                      rng: np.random.Generator | None = None) -> dict[str, float]:
    """DP partition selection: every value's count noised, those clearing `threshold` released."""
    rng = rng or secure_rng()
    released = {}
    for value, count in counts.items():
        noisy = float(noised(count, noise, rng))
        if noisy >= threshold:
            released[value] = noisy
    return released
