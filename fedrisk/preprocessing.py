"""Federated preprocessing: bounds, scales, imputation values and vocabularies from noised sums.

Three steps, each from sums the institutions release with DP noise (`fedrisk.institution`):

1. `local_bounds`: each numeric column counted on a fixed log grid of raw values; from the
   summed noised counts the server reads the consortium's clipping bounds (`bounds_from_counts`:
   the outermost cells whose noised count is significant, so a value held by enough rows is
   never clipped, the tails being where a rare event's signal lies) and the column's decile
   edges (for drift);
2. `local_statistics`: with values clipped to those bounds, each institution's present and
   missing counts, sums and sums of squares (scaled to [-1, 1] per value: one row moves each
   by at most 1), and category counts (released by DP partition selection);
3. `fit_preprocessor`: means, scales, vocabularies and modes from the sums.

A value beyond the bounds is winsorised (clipped) by `Preprocessor.transform` too, so no single
row, a 1e308 typed by mistake included, moves the shared statistics or the model's inputs by
more than its clipped contribution.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from fedrisk.columns import Columns
from fedrisk.errors import FedriskInputError
from fedrisk.mechanisms import LOG_GRID, grid_bounds, log_grid_counts, quantiles_from_histogram, significant

GRID_STEP = 10.0 ** 0.2  # the log grid's ratio between edges
TAIL_ROWS = 10  # nor below this many rows, noise or not: a few typos never set a bound
BOUND_SIGMAS = 5.0  # a log-grid cell counts only above this many noise standard deviations: among
# thousands of empty cells, one at three would otherwise set a bound at 1e8
DECILES = tuple(np.arange(1, 10) / 10)


def category_labels(series: pd.Series) -> pd.Series:
    """Categories as text, the same at every institution: a code read as 2.0 is '2'."""
    present = series.dropna()
    if pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present):
        values = present.astype(float)
        if (values == values.round()).all():
            return values.astype(np.int64).astype(str)
        return values.astype(str)
    return present.astype(str)


def schema(columns: Columns) -> dict[str, list[str]]:
    """The column schema institutions must share (sorted: file column order does not matter)."""
    return {"numeric": sorted(columns.numeric), "categorical": sorted(columns.categorical),
            "protected": sorted(columns.protected)}


def local_bounds(frame: pd.DataFrame, columns: Columns) -> dict[str, np.ndarray]:
    """Each numeric column's counts on `LOG_GRID` (the last cell: missing values); not of the
    consortium's columns, whose bounds come from the shared table itself."""
    return {column: log_grid_counts(pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float))
            for column in columns.own_numeric}


@dataclass(frozen=True)
class Bounds:
    """The consortium's clipping range of a numeric column, and its decile edges inside it."""

    lower: float
    upper: float
    deciles: list[float]


def bounds_from_counts(counts: dict[str, np.ndarray], noise: float) -> dict[str, Bounds]:
    """Clipping bounds and decile edges from the institutions' summed, noised log-grid counts.

    The bounds are the outermost cells holding values: cells within five standard deviations
    of `noise` (the sum's), or below `TAIL_ROWS`, count as empty, so that neither the noise of
    empty cells nor a few stray values widen them.
    """
    out = {}
    for column, values in counts.items():
        cells = np.asarray(values, dtype=float)[:-1]
        present = np.where(cells >= TAIL_ROWS, significant(cells, noise, BOUND_SIGMAS), 0.0)
        if not present.any():  # few rows: the run of cells around the largest one, above one noise sd
            present = _around_largest(cells, noise)
        held = np.flatnonzero(present)
        if not held.size:
            raise FedriskInputError("no values at any institution (or too few to release)", column=column)
        lower = grid_bounds(int(held[0]))[0]
        upper = grid_bounds(int(held[-1]))[1]
        # the open cells at the ends of the grid: one step of the grid's ratio beyond its last edge
        lower = LOG_GRID[0] * GRID_STEP if not np.isfinite(lower) else lower
        upper = LOG_GRID[-1] * GRID_STEP if not np.isfinite(upper) else upper
        deciles = sorted({min(max(grid_bounds(i)[1], lower), upper)
                          for i in quantiles_from_histogram(present, DECILES)} - {lower, upper})
        out[column] = Bounds(float(lower), float(upper), [float(d) for d in deciles if np.isfinite(d)])
    return out


def _around_largest(cells: np.ndarray, noise: float) -> np.ndarray:
    """The largest cell and its neighbours on either side while they stay above one noise sd."""
    out = np.zeros_like(cells)
    top = int(np.argmax(cells))
    if cells[top] <= noise:
        return out
    low = high = top
    while low > 0 and cells[low - 1] > noise:
        low -= 1
    while high < len(cells) - 1 and cells[high + 1] > noise:
        high += 1
    out[low:high + 1] = cells[low:high + 1]
    return out


def _scaled(values: np.ndarray, bounds: Bounds) -> np.ndarray:
    """Values clipped to the bounds and scaled to [-1, 1]: one row's share of a sum is at most 1
    (clipped again after scaling, whatever bounds a request carries)."""
    centre, half = (bounds.upper + bounds.lower) / 2, max((bounds.upper - bounds.lower) / 2, 1e-12)
    return np.clip((np.clip(values, bounds.lower, bounds.upper) - centre) / half, -1.0, 1.0)


def check_bounds(bounds: dict[str, Bounds], numeric: list[str], name: str) -> None:
    """A request's clipping bounds: one finite interval per numeric column, lower below upper."""
    for column in numeric:
        b = bounds.get(column)
        if b is None or not (np.isfinite(b.lower) and np.isfinite(b.upper) and b.lower < b.upper):
            raise FedriskInputError("the request's clipping bounds are not a finite interval", institution=name,
                                    column=column)


NUMERIC_STATS = ("count", "missing", "sum", "sumsq")  # count and missing: one block; sum; sum of squares


def local_statistics(frame: pd.DataFrame, columns: Columns, bounds: dict[str, Bounds]) -> dict[str, Any]:
    """Exact counts and clipped, scaled sums of the training rows, before the node noises them."""
    numeric = {}
    for column in columns.numeric:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        present = values[~np.isnan(values)]
        scaled = _scaled(present, bounds[column])
        numeric[column] = {"count": float(present.size), "missing": float(values.size - present.size),
                           "sum": float(scaled.sum()), "sumsq": float(np.square(scaled).sum())}
    categories = {}
    for column in [*columns.categorical, *columns.protected]:
        series = frame[column]
        categories[column] = {"counts": {str(k): float(v) for k, v in category_labels(series).value_counts().items()},
                              "missing": float(series.isna().sum())}
    return {"numeric": numeric, "categories": categories}


def merge_statistics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum institutions' released statistics (a value one institution did not release counts 0 there)."""
    if not parts:
        raise ValueError("no statistics to merge")
    merged: dict[str, Any] = {"numeric": {}, "categories": {}}
    for part in parts:
        for column, stats in part["numeric"].items():
            into = merged["numeric"].setdefault(column, dict.fromkeys(NUMERIC_STATS, 0.0))
            for key in NUMERIC_STATS:
                into[key] += stats[key]
        for column, stats in part["categories"].items():
            into = merged["categories"].setdefault(column, {"counts": {}, "missing": 0.0})
            into["missing"] += stats["missing"]
            for value, count in stats["counts"].items():
                into["counts"][value] = into["counts"].get(value, 0.0) + count
    return merged


@dataclass(frozen=True)
class Preprocessor:
    """Shared preprocessing: winsorise and standardise numerics, one-hot categories, impute by rule.

    Rule: a numeric is clipped to the consortium's bounds, a missing one takes the federated
    mean; a missing category takes the federated most frequent value; a category the
    consortium did not release (too rare, or new) encodes as all zeros.
    """

    numeric: list[str]
    means: list[float]
    scales: list[float]
    lower: list[float]
    upper: list[float]
    categorical: list[str]
    vocabularies: list[list[str]]
    modes: list[str]

    @property
    def input_columns(self) -> list[str]:
        return self.numeric + self.categorical

    @property
    def output_names(self) -> list[str]:
        names = list(self.numeric)
        for column, vocab in zip(self.categorical, self.vocabularies):
            names += [f"{column}={value}" for value in vocab]
        return names

    @property
    def width(self) -> int:
        return len(self.output_names)

    def output_slices(self) -> dict[str, slice]:
        """Where each input column lands in the model matrix (`transform`): one column per numeric
        input, in order, then one per vocabulary value of each categorical input."""
        out = {column: slice(i, i + 1) for i, column in enumerate(self.numeric)}
        start = len(self.numeric)
        for column, vocab in zip(self.categorical, self.vocabularies, strict=True):
            out[column] = slice(start, start + len(vocab))
            start += len(vocab)
        return out

    def imputed_row(self) -> np.ndarray:
        """The model inputs of a row whose every value is missing (numerics at the federated mean,
        categories at the mode): what `transform` makes of a blanked column, column by column."""
        return self.transform(pd.DataFrame({column: [np.nan] for column in self.input_columns}, index=[0]))[0]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocessor:
        return cls(**json.loads(text))

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw feature columns -> model matrix (float32)."""
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise KeyError(f"column '{missing[0]}' missing from the input")
        blocks = []
        if self.numeric:
            values = frame[self.numeric].to_numpy(dtype=float)
            means = np.asarray(self.means)
            values = np.where(np.isnan(values), means, np.clip(values, self.lower, self.upper))
            blocks.append((values - means) / np.asarray(self.scales))
        for column, vocab, mode in zip(self.categorical, self.vocabularies, self.modes):
            labels = category_labels(frame[column]).reindex(frame.index, fill_value=mode)
            codes = pd.Categorical(labels, categories=vocab).codes
            onehot = np.zeros((len(frame), len(vocab)))
            known = codes >= 0
            onehot[np.flatnonzero(known), codes[known]] = 1.0
            blocks.append(onehot)
        if not blocks:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return np.hstack(blocks).astype(np.float32)


def fit_preprocessor(merged: dict[str, Any], schema: dict[str, list[str]], bounds: dict[str, Bounds]) -> Preprocessor:
    """Derive the shared preprocessing from summed statistics."""
    means, scales, lower, upper = [], [], [], []
    for column in schema["numeric"]:
        stats, b = merged["numeric"][column], bounds[column]
        count = stats["count"]
        if count < 1:
            raise FedriskInputError("no values at any institution (or too few to release)", column=column)
        centre, half = (b.upper + b.lower) / 2, max((b.upper - b.lower) / 2, 1e-12)
        mean = float(np.clip(stats["sum"] / count, -1.0, 1.0))
        variance = max(stats["sumsq"] / count - mean * mean, 0.0)
        std = float(np.sqrt(variance)) * half
        means.append(centre + half * mean)
        scales.append(std if std > 1e-12 else 1.0)
        lower.append(b.lower)
        upper.append(b.upper)
    vocabularies, modes = [], []
    for column in schema["categorical"]:
        counts = merged["categories"][column]["counts"]
        if not counts:
            raise FedriskInputError("no value is frequent enough at any institution to be shared (DP partition "
                                    "selection); add it to data.drop", column=column)
        vocabularies.append(sorted(counts))
        modes.append(max(sorted(counts), key=lambda value: counts[value]))
    return Preprocessor(schema["numeric"], means, scales, lower, upper, schema["categorical"], vocabularies, modes)


def exact_preprocessor(frames: list[pd.DataFrame], columns: Columns) -> Preprocessor:
    """The federated preprocessing of institutions whose training rows are `frames`, without
    noise: the same steps a campaign runs, for pooled baselines and tests (the consortium's
    columns' bounds too are read off the rows)."""
    counts = [local_bounds(frame, replace(columns, shared=())) for frame in frames]
    bounds = bounds_from_counts({column: sum(part[column] for part in counts) for column in counts[0]}, 0.0)
    merged = merge_statistics([local_statistics(frame, columns, bounds) for frame in frames])
    return fit_preprocessor(merged, schema(columns), bounds)


def protected_groups(merged: dict[str, Any], schema: dict[str, list[str]]) -> dict[str, list[str]]:
    """The protected groups the consortium measures: the values some institution released."""
    return {column: sorted(merged["categories"][column]["counts"]) for column in schema.get("protected", [])}


def missing_counts(stats: dict[str, Any]) -> dict[str, float]:
    """Imputed values per column, from one institution's (noised) statistics."""
    out = {c: s["missing"] for c, s in stats["numeric"].items()}
    out.update({c: s["missing"] for c, s in stats["categories"].items()})
    return out
