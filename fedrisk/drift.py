"""Population stability from summed bin counts: reference deciles, PSI and CSI.

Every institution counts its rows in bins the server fixes, and releases the counts with DP
noise; they add up, so the federated PSI is the PSI of the pooled rows on the same bins, up
to that noise (which `noise_bound` allows for). A numeric input's bins are its federated
decile edges (from the DP histogram that also gave its clipping bounds); the score is first
counted on a fine log-odds grid, from which the server reads the pooled decile edges, grid
edges, so the reference counts per decile are sums of the fine counts. A categorical
column's bins are its vocabulary, one bin for unseen values, and every column has a last
bin for missing values.

PSI = sum over bins of (a - e) ln(a / e) for current and reference shares a and e; it is
the symmetric Kullback-Leibler divergence. Under no drift, n_eff * PSI is asymptotically
chi-square with bins - 1 degrees of freedom, 1/n_eff = 1/n + 1/N (Yurdakul & Naranjo,
2020, "Statistical properties of the population stability index", J. Risk Model
Validation 14(4)), which gives the sampling-noise bound.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd

from fedrisk.mechanisms import significant
from fedrisk.metrics import logit_edges
from fedrisk.preprocessing import Preprocessor, category_labels

SHARE_FLOOR = 1e-4  # an empty bin counts as this share, so that ln(a/e) stays finite
DECILES = np.arange(1, 10) / 10
SCORE = "score"
UNSEEN = "__unseen__"


def reference_edges(numeric_deciles: dict[str, list[float]], score_bins: int) -> dict[str, list[float]]:
    """The bins of the drift reference: a fine log-odds grid for the score (its deciles are read
    from the sums) and each numeric column's federated decile edges (`fedrisk.preprocessing`)."""
    return {SCORE: logit_edges(score_bins).tolist(), **{c: list(e) for c, e in numeric_deciles.items()}}


def bin_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts in the bins (-inf, e1), [e1, e2), ..., [ek, inf), then missing (NaN)."""
    values = np.asarray(values, dtype=float)
    missing = np.isnan(values)
    index = np.searchsorted(np.asarray(edges, dtype=float), values[~missing], side="right")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return np.append(counts, missing.sum()).astype(np.int64)


def category_counts(series: pd.Series, vocabulary: list[str]) -> np.ndarray:
    """Counts per vocabulary value, then values unseen in training, then missing."""
    labels = category_labels(series)
    codes = pd.Categorical(labels, categories=vocabulary).codes
    counts = np.bincount(codes[codes >= 0], minlength=len(vocabulary))
    return np.concatenate([counts, [(codes < 0).sum(), len(series) - len(labels)]]).astype(np.int64)


def column_counts(frame: pd.DataFrame, scores: np.ndarray, preprocessor: Preprocessor,
                  edges: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """Bin counts of the score and of every model input, on the given numeric edges."""
    out = {SCORE: bin_counts(scores, edges[SCORE])}
    for column in preprocessor.numeric:
        out[column] = bin_counts(frame[column].to_numpy(dtype=float), edges[column])
    for column, vocabulary in zip(preprocessor.categorical, preprocessor.vocabularies):
        out[column] = category_counts(frame[column], vocabulary)
    return out


def decile_edges(fine_counts: np.ndarray, grid: list[float], noise: float = 0.0) -> list[float]:
    """Pooled decile edges, as grid edges, from summed fine counts (last entry: missing).

    Each decile edge is the upper edge of the fine bin holding that quantile; repeated
    edges (a column with few distinct values) collapse, so such a column has fewer bins. Cells
    within four standard deviations of the sums' `noise` count as empty.
    """
    present = significant(np.asarray(fine_counts[:-1], dtype=float), noise)
    if present.sum() == 0:
        return []
    cdf = np.cumsum(present) / present.sum()
    edges = []
    for q in DECILES:
        i = int(np.searchsorted(cdf, q - 1e-12))  # first bin reaching the quantile
        if i < len(grid):  # the overflow bin has no upper edge
            edges.append(float(grid[i]))
    return sorted(set(edges))


def coarsen(fine_counts: np.ndarray, grid: list[float], edges: list[float]) -> np.ndarray:
    """Counts on `edges` (a subset of `grid`) from counts on `grid`; missing stays last."""
    fine = np.asarray(fine_counts)
    position = np.searchsorted(np.asarray(edges), np.asarray(grid), side="right")
    # fine bin i lies in coarse bin j = number of coarse edges <= its lower edge grid[i-1]
    coarse_of_bin = np.concatenate([[0], position])
    coarse = np.bincount(coarse_of_bin, weights=fine[:-1], minlength=len(edges) + 1)
    return np.append(coarse, fine[-1])


def build_reference(score: np.ndarray, score_grid: list[float], numeric: dict[str, np.ndarray],
                    numeric_edges: dict[str, list[float]], categorical: dict[str, np.ndarray],
                    vocabularies: dict[str, list[str]], noise: float = 0.0) -> dict[str, Any]:
    """Reference edges and counts of every column from the institutions' summed counts: the
    score's deciles read from its fine grid, the inputs on the bins they were counted on."""
    edges = decile_edges(score, score_grid, noise)
    columns: dict[str, Any] = {SCORE: {"kind": "numeric", "edges": edges,
                                       "counts": coarsen(score, score_grid, edges).tolist()}}
    for column, counts in numeric.items():
        columns[column] = {"kind": "numeric", "edges": list(numeric_edges[column]),
                           "counts": np.asarray(counts, dtype=float).tolist()}
    for column, counts in categorical.items():
        columns[column] = {"kind": "categorical", "values": [*vocabularies[column], UNSEEN],
                           "counts": np.asarray(counts).tolist()}
    return {"columns": columns}


def held_cells(reference: np.ndarray, current: np.ndarray, reference_noise: float | np.ndarray = 0.0,
               current_noise: float | np.ndarray = 0.0, sigmas: float = 3.0) -> np.ndarray:
    """The cells a PSI compares: those holding rows on either side (a noised count above `sigmas`
    of its noise). A cell empty on both sides holds noise only, and the share floor would turn
    that noise into PSI."""
    e, a = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    return (e > sigmas * reference_noise) | (a > sigmas * current_noise)


def psi(reference: np.ndarray, current: np.ndarray, reference_noise: float | np.ndarray = 0.0,
        current_noise: float | np.ndarray = 0.0) -> float:
    """Population stability index of `current` counts against `reference` counts.

    A noised count is taken as at least its noise's standard deviation: below that it cannot be
    told from an empty cell, and a cell noised down to near zero would otherwise weigh ln(a / e)
    with e at the share floor (a stable institution's CSI of 0.57 on a cell of 116 rows noised
    with sd 56 was seen; its 99th percentile under no drift fell from 0.51 to 0.18 with this).
    """
    e = np.maximum(np.asarray(reference, dtype=float), reference_noise)
    a = np.maximum(np.asarray(current, dtype=float), current_noise)
    if e.sum() <= 0 or a.sum() <= 0:
        return float("nan")
    return float(_psi_of_shares(np.maximum(e / e.sum(), SHARE_FLOOR), np.maximum(a / a.sum(), SHARE_FLOOR)))


def _psi_of_shares(e: np.ndarray, a: np.ndarray) -> float | np.ndarray:
    return np.sum((a - e) * np.log(a / e), axis=-1)


@functools.lru_cache(maxsize=8)
def _standard_normals(draws: int, cells: int) -> np.ndarray:
    """The bootstrap's draws, the same for every bound (seeded): made once per shape."""
    return np.random.default_rng(0).standard_normal((4, draws, cells))


def noise_bound(reference: np.ndarray, current: np.ndarray, confidence: float = 0.99,
                reference_noise: float | np.ndarray = 0.0, current_noise: float | np.ndarray = 0.0,
                draws: int = 20_000) -> float:
    """PSI that sampling noise, and the DP noise of the counts, exceed with probability 1 - confidence.

    A parametric bootstrap: reference and window drawn again from one distribution (the two
    pooled), at their sizes, with Gaussian noise of standard deviation s per count (one for
    all cells, or one per cell), and their PSI taken as `psi` takes it; seeded, so that a
    window's bound is reproducible. Without noise this is the chi-square law of n_eff PSI
    (1/n_eff = 1/n + 1/N); with noise comparable to the counts that approximation
    under-covers (a heavy tail from the 1/share weights and the logarithm), the bootstrap not.
    """
    e, a = np.clip(np.asarray(reference, dtype=float), 0, None), np.clip(np.asarray(current, dtype=float), 0, None)
    n, big_n = float(a.sum()), float(e.sum())
    if n == 0 or big_n == 0:
        return float("nan")
    if int(np.count_nonzero((e + a) > 0)) < 2:
        return 0.0
    shares = (e + a) / (n + big_n)
    normals = _standard_normals(draws, len(shares))

    def drawn(rows: float, noise: float | np.ndarray, sampling: np.ndarray, released: np.ndarray) -> np.ndarray:
        # multinomial counts by their normal approximation (covariance rows * (diag p - p p'),
        # five times faster than drawing them), plus the release's noise
        g = sampling * np.sqrt(shares)
        counts = rows * shares + np.sqrt(rows) * (g - shares * g.sum(axis=1, keepdims=True))
        sd = np.broadcast_to(np.asarray(noise, dtype=float), shares.shape)
        counts = np.maximum(counts + released * sd, sd)  # as `psi` takes a noised count
        total = counts.sum(axis=1, keepdims=True)
        return np.maximum(counts / np.where(total > 0, total, 1.0), SHARE_FLOOR)

    ref, win = drawn(big_n, reference_noise, normals[0], normals[1]), drawn(n, current_noise, normals[2], normals[3])
    return float(np.quantile(_psi_of_shares(ref, win), confidence))
