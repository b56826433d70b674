"""Data-quality scorecard of one institution's rows, computed where the rows are.

Six dimensions, each the share of its checks that pass, on a 0-100 scale; the score is the
weakest dimension, so a score below 90 means some dimension fails more than 10 % of its
checks and one good dimension cannot hide a broken one. Only counts leave the function:
the scorecard names columns, never values.

Wrong types, a missing or non-binary target and absent columns are not scored: the loader
refuses them outright (bad input), and the institution is excluded with that one line.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np
import pandas as pd

DIMENSIONS = ("completeness", "validity", "duplicates", "label_sanity", "class_balance", "freshness")


def _share_score(failed: int, checked: int) -> float:
    return 100.0 if checked == 0 else 100.0 * (1.0 - failed / checked)


def _worst(counts: pd.Series) -> str:
    counts = counts[counts > 0]
    return f"; most in '{counts.idxmax()}' ({int(counts.max())})" if len(counts) else ""


def completeness(frame: pd.DataFrame, columns: list[str]) -> dict[str, Any]:
    missing = frame[columns].isna().sum()
    failed, checked = int(missing.sum()), frame[columns].size
    return {"score": _share_score(failed, checked), "failed": failed, "checked": checked,
            "detail": f"{failed} of {checked} cells missing{_worst(missing)}"}


def validity(frame: pd.DataFrame, ranges: dict[str, tuple[float | None, float | None]],
             categories: dict[str, list[str]]) -> dict[str, Any]:
    """Values outside the spec: numeric ranges (bounds included) and allowed categories."""
    invalid: dict[str, int] = {}
    checked = 0
    for column, (low, high) in ranges.items():
        present = frame[column].dropna()
        values = pd.to_numeric(present, errors="coerce")
        bad = values.isna()  # not a number at all
        if low is not None:
            bad |= values < low
        if high is not None:
            bad |= values > high
        invalid[column], checked = invalid.get(column, 0) + int(bad.sum()), checked + len(present)
    for column, allowed in categories.items():
        present = frame[column].dropna()
        if pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present):
            bad = ~present.isin(pd.to_numeric(pd.Series(allowed, dtype=object), errors="coerce").dropna())
        else:  # text, or True/False however the file wrote them
            bad = ~present.astype(str).str.casefold().isin([str(a).casefold() for a in allowed])
        invalid[column], checked = invalid.get(column, 0) + int(bad.sum()), checked + len(present)
    failed = sum(invalid.values())
    ruled = ", ".join(sorted({*ranges, *categories})) or "none"
    return {"score": _share_score(failed, checked), "failed": failed, "checked": checked,
            "detail": f"{failed} of {checked} values outside the spec (columns with rules: {ruled})"
                      f"{_worst(pd.Series(invalid, dtype=int))}"}


def duplicates(frame: pd.DataFrame) -> dict[str, Any]:
    """Rows repeating an earlier row in every column: a double extract or a replayed batch."""
    failed = int(frame.duplicated().sum())
    return {"score": _share_score(failed, len(frame)), "failed": failed, "checked": len(frame),
            "detail": f"{failed} of {len(frame)} rows repeat an earlier row"}


def label_sanity(frame: pd.DataFrame, target: str) -> dict[str, Any]:
    """Rows whose every other column equals another row's but whose label differs."""
    distinct = frame.drop_duplicates()
    inputs = [c for c in frame.columns if c != target]
    failed = int(distinct.duplicated(subset=inputs, keep=False).sum()) if inputs else 0
    return {"score": _share_score(failed, len(frame)), "failed": failed, "checked": len(frame),
            "detail": f"{failed} of {len(frame)} rows share all their inputs with a row of the other label"}


def class_balance(labels: np.ndarray, band: tuple[float, float]) -> dict[str, Any]:
    """100 inside the expected positive rate; outside, the ratio to the nearer bound."""
    rate = float(np.mean(labels)) if len(labels) else 0.0
    low, high = band
    if rate < low:
        score = 100.0 * rate / low
    elif rate > high:
        score = 100.0 * (1.0 - rate) / (1.0 - high)
    else:
        score = 100.0
    return {"score": score, "failed": int(not low <= rate <= high), "checked": 1,
            "detail": f"positive rate {rate:.4%}, expected {low:.4%} to {high:.4%}"}


def freshness(newest: date | None, basis: str, as_of: date, max_age_days: int) -> dict[str, Any]:
    """100 up to `max_age_days` old; older data lose in proportion (twice as old: 50)."""
    if newest is None:
        return {"score": 100.0, "failed": 0, "checked": 0, "detail": f"{basis}: current"}
    age = (as_of - newest).days
    # a record dated after as_of is a wrong clock or a wrong column: scored like a stale one
    distance = abs(age) if age < -1 else max(age, 0)
    score = 100.0 if distance <= max_age_days else 100.0 * max_age_days / distance
    when = f"{age} days before" if age >= 0 else f"{-age} days AFTER"
    return {"score": score, "failed": int(distance > max_age_days), "checked": 1,
            "detail": f"newest record {newest.isoformat()} ({basis}), {when} {as_of.isoformat()}; "
                      f"at most {max_age_days} days old expected"}


def scorecard(dimensions: dict[str, dict[str, Any]], rows: int, min_score: float) -> dict[str, Any]:
    """The card: every dimension, the score (the weakest dimension) and whether it passes."""
    weakest = min(DIMENSIONS, key=lambda d: dimensions[d]["score"])
    score = float(dimensions[weakest]["score"])
    return {"score": round(score, 2), "passed": score >= min_score, "min_score": min_score, "weakest": weakest,
            "rows": rows, "dimensions": {d: {**dimensions[d], "score": round(float(dimensions[d]["score"]), 2)}
                                         for d in DIMENSIONS}}


def exclusion_reason(name: str, source: str, card: dict[str, Any]) -> str:
    weakest = card["dimensions"][card["weakest"]]
    return (f"institution {name}, file {source}: data quality {card['score']:.2f} below {card['min_score']:g} "
            f"({card['weakest'].replace('_', ' ')}: {weakest['detail']})")


def suppressed(card: dict[str, Any], minimum: int) -> dict[str, Any]:
    """The scorecard as it may leave the institution: a count of failed checks below the policy's
    minimum is withheld (its detail says so) and scores are rounded to one decimal."""
    dimensions = {}
    for name, dim in card["dimensions"].items():
        small = 0 < int(dim.get("failed", 0)) < minimum and int(dim.get("checked", 0)) > 1
        dimensions[name] = {**dim, "score": round(float(dim["score"]), 1),
                            **({"failed": None, "detail": f"fewer than {minimum} of {dim['checked']} checks failed"}
                               if small else {})}
    return {**card, "score": round(float(card["score"]), 1), "dimensions": dimensions,
            "rows": None if 0 < card["rows"] < minimum else card["rows"]}
