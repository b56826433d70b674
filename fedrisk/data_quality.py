"""Data-quality scorecard of one institution's rows: counted where the rows are, released noised.

Six dimensions, each the share of its checks that pass, on a 0-100 scale; the score is the
weakest dimension, so a score below 90 means some dimension fails more than 10 % of its
checks and one good dimension cannot hide a broken one.

The institution counts (`measure`); what leaves is those counts with Gaussian noise (`release`),
charged to its ledger with the admission's other statistics, and the scorecard is computed from
them (`scorecard`, at the server; with exact counts in a local check). Every count moves by at
most one when one row is added or removed, so each is one block of the release:

- completeness: missing cells, per checked column; scored on the worst column, so that 40 %
  missing in one model input scores 60, however complete the others;
- validity: values outside the campaign's ranges or categories, per ruled column, scored on the
  worst column (missing
  values are completeness' business and count as valid), and rows holding a number beyond
  `PLAUSIBLE`, ranged or not (a 1e308 typed by mistake: winsorised at the
  consortium's bounds in training, `fedrisk.preprocessing`, and counted here);
- duplicates: rows repeating an earlier row;
- label sanity: distinct input patterns, and those seen with both labels;
- class balance: positives (the rows count is shared by all);
- freshness: rows dated within `max_age_days` of `as_of` (a date column or the timestamps);
  with neither, the file's modification date (not a customer's value) or, for the built-in
  generator, current.

The campaign chooses the spec (ranges, categories, bands), so the counts answer its questions:
noised and charged, a question asked many times costs budget and learns noise.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from fedrisk.mechanisms import noised, secure_rng

DIMENSIONS = ("completeness", "validity", "duplicates", "label_sanity", "class_balance", "freshness")
FRESH_SIGMAS = 3.0  # fresh rows count as present above this many noise standard deviations
BENEFIT = 2.0  # noise standard deviations a released count is given in the institution's favour
PLAUSIBLE = 1e15  # no amount, count or ratio of a customer is larger: beyond it, a typo or a sentinel


def _missing(frame: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    return {c: float(frame[c].isna().sum()) for c in columns}


def _invalid(frame: pd.DataFrame, ranges: dict[str, tuple[float | None, float | None]],
             categories: dict[str, list[str]]) -> dict[str, float]:
    """Values outside the spec per ruled column: numeric ranges (bounds included), allowed
    categories; a value failing both rules of its column counts once (one row, one per column)."""
    bad: dict[str, pd.Series] = {}
    for column, (low, high) in ranges.items():
        present = frame[column].dropna()
        values = pd.to_numeric(present, errors="coerce")
        wrong = values.isna()  # not a number at all
        if low is not None:
            wrong |= values < low
        if high is not None:
            wrong |= values > high
        bad[column] = bad[column] | wrong if column in bad else wrong
    for column, allowed in categories.items():
        present = frame[column].dropna()
        if pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present):
            wrong = ~present.isin(pd.to_numeric(pd.Series(allowed, dtype=object), errors="coerce").dropna())
        else:  # text, or True/False however the file wrote them
            wrong = ~present.astype(str).str.casefold().isin([str(a).casefold() for a in allowed])
        bad[column] = bad[column] | wrong if column in bad else wrong
    return {column: float(mask.sum()) for column, mask in bad.items()}


def _extreme(frame: pd.DataFrame, columns: list[str]) -> float:
    """Rows holding a number beyond +/- `PLAUSIBLE` in any of `columns` (one row counts once)."""
    numeric = [c for c in columns if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    if not numeric:
        return 0.0
    values = frame[numeric].to_numpy(dtype=float)
    return float((np.abs(np.nan_to_num(values, nan=0.0)) > PLAUSIBLE).any(axis=1).sum())


def measure(frame: pd.DataFrame, checked: list[str], target: str, labels: np.ndarray,
            ranges: dict[str, tuple[float | None, float | None]], categories: dict[str, list[str]],
            dates: pd.Series | None, as_of: date, max_age_days: int, newest: date | None, basis: str) -> dict[str, Any]:
    """The exact counts of every dimension (they never leave as such: see `release`).

    `frame[checked]` are the rows as read, identifiers dropped (a replay may renumber rows);
    `dates`: each row's date when there is a date column or timestamps; `newest`: the file's
    date otherwise (None for the built-in generator).
    """
    rows = frame[checked]
    distinct = rows.drop_duplicates()
    inputs = [c for c in checked if c != target]
    patterns = distinct.groupby(inputs, dropna=False)[target].nunique() if inputs else pd.Series([1])
    fresh = None
    if dates is not None:
        since = as_of - timedelta(days=max_age_days)
        day = pd.to_datetime(dates).dt.date
        fresh = float(((day >= since) & (day <= as_of + timedelta(days=1))).sum())
    return {
        "rows": float(len(frame)),
        "missing": _missing(frame, checked),
        "invalid": _invalid(frame, ranges, categories),
        "extreme": _extreme(frame, [c for c in checked if c != target]),
        "duplicates": float(rows.duplicated().sum()),
        "patterns": float(len(patterns)),
        "conflicting": float((patterns > 1).sum()),
        "positives": float(np.sum(labels)),
        "fresh": fresh,
        "newest": newest.isoformat() if newest is not None else None,
        "basis": basis,
    }


def blocks(counts: dict[str, Any]) -> int:
    """Unit-sensitivity cells of a release of these counts (see the module docstring)."""
    return 6 + len(counts["missing"]) + len(counts["invalid"]) + (counts["fresh"] is not None)


def release(counts: dict[str, Any], noise: float, rng: np.random.Generator | None = None) -> dict[str, Any]:
    """The counts as they leave the institution: every one with Gaussian noise of `noise`."""
    rng = rng or secure_rng()

    def n(value: float) -> float:
        return float(noised(value, noise, rng))

    return {**counts, "rows": n(counts["rows"]), "missing": {c: n(v) for c, v in counts["missing"].items()},
            "invalid": {c: n(v) for c, v in counts["invalid"].items()}, "extreme": n(counts["extreme"]),
            "duplicates": n(counts["duplicates"]),
            "patterns": n(counts["patterns"]), "conflicting": n(counts["conflicting"]),
            "positives": n(counts["positives"]), "fresh": None if counts["fresh"] is None else n(counts["fresh"]),
            "noise": noise}


def _share_score(failed: float, checked: float) -> float:
    if checked <= 0:
        return 100.0
    return float(np.clip(100.0 * (1.0 - failed / checked), 0.0, 100.0))


def _worst(counts: dict[str, float], noise: float, rows: float | None = None) -> str:
    floor = (3 + np.sqrt(2 * np.log(max(len(counts), 1)))) * noise  # above what the largest of k noises reaches
    shown = {c: v for c, v in counts.items() if v > floor}
    if not shown:
        return ""
    worst = max(shown, key=shown.get)
    share = f" ({max(shown[worst], 0.0) / rows:.0%} of rows)" if rows else ""
    return f"; most in '{worst}'{share}"


def _about(value: float, noise: float) -> str:
    return f"{value:.0f}" if noise == 0 else f"about {max(value, 0.0):.0f}"


def _dimensions(counts: dict[str, Any], positive_rate: tuple[float, float], as_of: date, max_age_days: int,
                benefit: float = 0.0) -> dict[str, dict[str, Any]]:
    """Every dimension's score; with `benefit` > 0, each failure count lowered (and the rate moved
    towards the band) by that many standard deviations of its noise: the best the data could be."""
    noise = float(counts.get("noise", 0.0))
    rows = max(counts["rows"], 1.0)

    def fewer(value: float, cells: int = 1) -> float:
        return max(value - benefit * noise * np.sqrt(max(cells, 1)), 0.0)

    def worst(values: list[float]) -> float:
        """The largest count, less what the largest of so many noises adds by itself (about
        sqrt(2 ln k) standard deviations of k): 2,000 complete columns are not one incomplete.
        The card's `benefit` already covers the largest of all its counts' noises: it replaces
        this correction, never adds to it."""
        if not values:
            return 0.0
        return max(max(values) - (benefit or np.sqrt(2 * np.log(len(values)))) * noise, 0.0)

    missing = fewer(sum(counts["missing"].values()), len(counts["missing"]))
    worst_missing = worst(list(counts["missing"].values()))
    extreme = fewer(counts.get("extreme", 0.0))
    invalid = fewer(sum(counts["invalid"].values()), len(counts["invalid"]))
    worst_invalid = max(extreme, worst(list(counts["invalid"].values())))
    cells = rows * len(counts["missing"])
    low, high = positive_rate
    rate = float(np.clip(counts["positives"] / rows, 0.0, 1.0))
    spread = benefit * noise / rows  # the rate's noise interval; its point nearest the band
    nearest = (rate + spread if rate + spread < low else rate - spread if rate - spread > high
               else float(np.clip(rate, low, high)))
    balance = (100.0 * nearest / low if nearest < low else
               100.0 * (1.0 - nearest) / (1.0 - high) if nearest > high else 100.0)
    return {
        "completeness": {"score": _share_score(worst_missing, rows),
                         "detail": f"{_about(missing, noise)} of {_about(cells, noise)} cells missing"
                                   f"{_worst(counts['missing'], noise, rows)}"},
        "validity": {"score": _share_score(worst_invalid, rows),
                     "detail": f"{_about(invalid, noise)} values outside the spec (columns with rules: "
                               f"{', '.join(sorted(counts['invalid'])) or 'none'}){_worst(counts['invalid'], noise)}; "
                               f"{_about(counts.get('extreme', 0.0), noise)} rows with a number beyond "
                               f"+/-{PLAUSIBLE:.0e} (winsorised in training)"},
        "duplicates": {"score": _share_score(fewer(counts["duplicates"]), rows),
                       "detail": f"{_about(counts['duplicates'], noise)} of {_about(rows, noise)} rows repeat an "
                                 "earlier row"},
        "label_sanity": {"score": _share_score(fewer(counts["conflicting"]), counts["patterns"]),
                         "detail": f"{_about(counts['conflicting'], noise)} of {_about(counts['patterns'], noise)} "
                                   "input patterns seen with both labels"},
        "class_balance": {"score": float(np.clip(balance, 0.0, 100.0)),
                          "detail": f"positive rate {rate:.1%}, expected {low:.1%} to {high:.1%}"},
        "freshness": _freshness(counts, as_of, max_age_days, noise),
    }


def benefit(counts: dict[str, Any]) -> float:
    """Noise deviations each released count is lowered by before the card can fail: `BENEFIT`, plus
    what the largest of the card's k counts' noises reaches by itself (sqrt(2 ln k)): with 2 alone, a
    thousand good 1,000-row lenders (noise 57 a count, 35 counts each) lost one a campaign to noise."""
    return BENEFIT + float(np.sqrt(2 * np.log(max(blocks(counts), 1))))


def scorecard(counts: dict[str, Any], min_score: float, positive_rate: tuple[float, float], as_of: date,
              max_age_days: int) -> dict[str, Any]:
    """The card from released (or exact) counts: every dimension, the score (the weakest
    dimension) and whether it passes. Details state counts as released, never values.

    Released counts carry noise: an institution fails only if even the best the data could be
    (`benefit` standard deviations of the noise in its favour) scores below the minimum, so that
    DP noise alone does not exclude a small institution with good data."""
    dims = _dimensions(counts, positive_rate, as_of, max_age_days)
    best = _dimensions(counts, positive_rate, as_of, max_age_days, benefit(counts))
    weakest = min(DIMENSIONS, key=lambda d: dims[d]["score"])
    score = float(dims[weakest]["score"])
    passed = min(float(best[d]["score"]) for d in DIMENSIONS) >= min_score
    return {"score": round(score, 2), "passed": passed, "min_score": min_score, "weakest": weakest,
            "noise": float(counts.get("noise", 0.0)),
            "dimensions": {d: {**v, "score": round(float(v["score"]), 2)} for d, v in dims.items()}}


def _freshness(counts: dict[str, Any], as_of: date, max_age_days: int, noise: float) -> dict[str, Any]:
    if counts["fresh"] is not None:  # dated rows: are there any within the age allowed?
        fresh = counts["fresh"] > FRESH_SIGMAS * noise
        return {"score": 100.0 if fresh else 0.0,
                "detail": f"{'some' if fresh else 'no'} rows ({counts['basis']}) at most {max_age_days} days before "
                          f"{as_of.isoformat()}"}
    if counts["newest"] is None:
        return {"score": 100.0, "detail": f"{counts['basis']}: current"}
    age = (as_of - date.fromisoformat(counts["newest"])).days
    # a file dated after as_of is a wrong clock: scored like a stale one
    distance = abs(age) if age < -1 else max(age, 0)
    score = 100.0 if distance <= max_age_days else 100.0 * max_age_days / distance
    when = f"{age} days before" if age >= 0 else f"{-age} days AFTER"
    return {"score": score, "detail": f"{counts['basis']} {counts['newest']}, {when} {as_of.isoformat()}; at most "
                                      f"{max_age_days} days old expected"}


def exclusion_reason(name: str, source: str, card: dict[str, Any]) -> str:
    weakest = card["dimensions"][card["weakest"]]
    hint = ("; if the data are meant to be this old, set data.quality.as_of to their date or raise "
            "data.quality.max_age_days" if card["weakest"] == "freshness" else "")
    return (f"institution {name}, file {source}: data quality {card['score']:.2f} below {card['min_score']:g} "
            f"({card['weakest'].replace('_', ' ')}: {weakest['detail']}{hint})")
