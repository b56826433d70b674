"""Federated preprocessing: scales, imputation values and vocabularies from summed counts.

Each institution computes `local_statistics` on its own training rows; the server adds them
with `merge_statistics` and derives the shared `Preprocessor` with `fit_preprocessor`. The
result equals what the same rules give on the pooled data, without anyone pooling it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedrisk.columns import Columns
from fedrisk.errors import FedriskInputError


def category_labels(series: pd.Series) -> pd.Series:
    """Categories as text, the same at every institution: a code read as 2.0 is '2'."""
    present = series.dropna()
    if pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present):
        values = present.astype(float)
        if (values == values.round()).all():
            return values.astype(np.int64).astype(str)
        return values.astype(str)
    return present.astype(str)


def local_statistics(frame: pd.DataFrame, columns: Columns) -> dict[str, Any]:
    """Counts, sums and category counts: the only thing preprocessing lets leave."""
    numeric = {}
    for column in columns.numeric:
        values = frame[column].to_numpy(dtype=float)
        present = values[~np.isnan(values)]
        numeric[column] = {
            "count": int(present.size),
            "sum": float(present.sum()),
            "sumsq": float(np.square(present).sum()),
            "missing": int(values.size - present.size),
        }
    categorical = {}
    for column in columns.categorical:
        series = frame[column]
        counts = category_labels(series).value_counts()
        categorical[column] = {
            "counts": {str(k): int(v) for k, v in counts.items()},
            "missing": int(series.isna().sum()),
        }
    return {
        "rows": int(len(frame)),
        "numeric": numeric,
        "categorical": categorical,
        # Sorted, so that institutions whose files order columns differently still agree.
        "schema": {"numeric": sorted(columns.numeric), "categorical": sorted(columns.categorical)},
    }


def merge_statistics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum institutions' statistics; they must share one schema."""
    if not parts:
        raise ValueError("no statistics to merge")
    schema = parts[0]["schema"]
    merged: dict[str, Any] = {"rows": 0, "numeric": {}, "categorical": {}, "schema": schema}
    for part in parts:
        if part["schema"] != schema:
            raise ValueError("institutions disagree on the column schema")
        merged["rows"] += part["rows"]
        for column, stats in part["numeric"].items():
            into = merged["numeric"].setdefault(
                column, {"count": 0, "sum": 0.0, "sumsq": 0.0, "missing": 0}
            )
            for key in into:
                into[key] += stats[key]
        for column, stats in part["categorical"].items():
            into = merged["categorical"].setdefault(column, {"counts": {}, "missing": 0})
            into["missing"] += stats["missing"]
            for value, count in stats["counts"].items():
                into["counts"][value] = into["counts"].get(value, 0) + count
    return merged


@dataclass(frozen=True)
class Preprocessor:
    """Shared preprocessing: standardise numerics, one-hot categories, impute by rule.

    Rule: a missing numeric takes the federated mean; a missing category takes the
    federated most frequent value; a category never seen in training encodes as all zeros.
    """

    numeric: list[str]
    means: list[float]
    scales: list[float]
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
            values = np.where(np.isnan(values), means, values)
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


def fit_preprocessor(merged: dict[str, Any]) -> Preprocessor:
    """Derive the shared preprocessing from summed statistics."""
    numeric = merged["schema"]["numeric"]
    categorical = merged["schema"]["categorical"]
    means, scales = [], []
    for column in numeric:
        stats = merged["numeric"][column]
        if stats["count"] == 0:
            raise FedriskInputError("no values at any institution", column=column)
        mean = stats["sum"] / stats["count"]
        variance = max(stats["sumsq"] / stats["count"] - mean * mean, 0.0)
        std = float(np.sqrt(variance))
        means.append(mean)
        scales.append(std if std > 1e-12 else 1.0)
    vocabularies, modes = [], []
    for column in categorical:
        counts = merged["categorical"][column]["counts"]
        if not counts:
            raise FedriskInputError("no values at any institution", column=column)
        vocabularies.append(sorted(counts))
        modes.append(max(sorted(counts), key=lambda value: counts[value]))
    return Preprocessor(numeric, means, scales, categorical, vocabularies, modes)


def missing_counts(stats: dict[str, Any]) -> dict[str, int]:
    """Imputed values per column, from one institution's statistics."""
    out = {c: s["missing"] for c, s in stats["numeric"].items()}
    out.update({c: s["missing"] for c, s in stats["categorical"].items()})
    return out
