"""One institution's rows, loaded and checked where they are: the only data a client reads.

`load_institution` reads the rows (`fedrisk.sources`), engineers transaction features and
checks every column (`fedrisk.checks`) and scores data quality (`fedrisk.data_quality`);
`load_window` does the same for a monitoring window. Splits are in `fedrisk.splits`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedrisk import data_quality, lineage
from fedrisk.checks import (
    check_card_identifiers,
    check_leaks,
    check_target,
    engineer_transactions,
    resolve_columns,
)
from fedrisk.columns import CUSTOMER, DAY, ROW_ID, TERMINAL, Columns
from fedrisk.config import DataSpec
from fedrisk.consortium_features import Calendar, check_table, consortium_features, feature_names
from fedrisk.errors import FedriskInputError
from fedrisk.generators import credit, fraud
from fedrisk.profile import PERSONAL_DATE, date_columns, record_date_column
from fedrisk.sources import institution_names, raw_frame


@dataclass(frozen=True)
class InstitutionData:
    name: str
    source: str  # file path, or a description of the generator call
    fingerprint: str  # identifies this institution's data for the privacy ledger
    frame: pd.DataFrame  # features + target + protected, identifiers already dropped
    columns: Columns
    quality: dict[str, Any]  # the exact counts of its data-quality scorecard (they leave noised), see fedrisk.data_quality
    population: list[int]  # a sketch of its rows as read, for lineage (`fedrisk.lineage`), whatever the campaign asks


def load_institution(spec: DataSpec, name: str, seed: int, never_use: list[str] | tuple[str, ...] = (),
                     sketch_key: bytes | None = None) -> InstitutionData:
    """Load and check one institution's rows; the only data a client ever reads. With the
    consortium's `sketch_key` (fraud, `consortium_features`), each transaction's terminal bucket
    is kept and the consortium's columns are inputs, empty until the shared table arrives
    (`fedrisk.session.NodeSession.attach_table`)."""
    names = institution_names(spec)
    if name not in names:
        raise FedriskInputError(f"unknown institution (known: {', '.join(names)})",
                                institution=name)
    raw, source, fingerprint = raw_frame(spec, name, names, seed)
    if len(raw) == 0:
        raise FedriskInputError("no rows", institution=name, file=source)
    given = spec.quality.date_column
    spec = _with_record_date(spec, raw, name, source)
    frame = engineer_transactions(raw, spec, name, source, sketch_key=sketch_key) if spec.transactions is not None \
        else raw
    columns = resolve_columns(frame, spec, name, source, tuple(never_use))
    target = check_target(frame, columns.target, name, source)
    quality = quality_counts(raw, frame, spec, columns, target.to_numpy(), name, source,
                             detected_date=given is None and spec.quality.date_column is not None)
    check_leaks(frame, columns, target, name, source)
    if CUSTOMER in frame.columns:
        own = [] if spec.features is not None else [  # a number named in data.features is the user's choice
            c for c in columns.numeric if c in raw.columns and c != spec.transactions.amount]
        check_card_identifiers(frame, columns, name, source, own)
    measured = [c for c in columns.protected if c not in columns.features]
    if spec.transactions is not None:
        amount = spec.transactions.amount
        measured += [DAY] + ([amount] if amount not in columns.features else [])
        columns = replace(columns, amount=amount)
    if sketch_key is not None and spec.transactions is not None:
        measured.append(TERMINAL)
    kept = frame[columns.features + measured].copy()
    kept[columns.target] = target.to_numpy()
    if sketch_key is not None and spec.transactions is not None:
        shared = feature_names(spec.transactions.windows_days)
        columns = replace(columns, numeric=columns.numeric + shared, shared=tuple(shared))
        kept[shared] = np.nan
    population = lineage.sketch(raw, lineage.population_columns(raw, spec.institution_column))
    return InstitutionData(name, source, fingerprint, kept.reset_index(drop=True), columns, quality, population)


def _with_record_date(spec: DataSpec, raw: pd.DataFrame, name: str, source: str) -> DataSpec:
    """A credit file's own record date for freshness, when it has exactly one date column and the
    campaign names none (the file's modification date is the last resort); several: say which to name."""
    if spec.source == "synthetic" or spec.transactions is not None or spec.quality.date_column:
        return spec
    skip = {spec.target, *spec.drop, *spec.protected, *([spec.institution_column] if spec.institution_column else [])}
    skip |= {c for c in raw.columns if pd.api.types.is_numeric_dtype(raw[c])}  # 20180315: a number, never read as a date
    found = record_date_column(raw, skip)
    if found is None:
        dated = [c for c in date_columns(raw, skip) if not PERSONAL_DATE.search(c)]
        if len(dated) > 1:
            raise FedriskInputError(f"{len(dated)} date columns ({', '.join(dated)}): name the record's date in "
                                    "data.quality.date_column and add the others to data.drop",
                                    institution=name, file=source, column=dated[0])
        return spec
    return spec.model_copy(update={"quality": spec.quality.model_copy(update={"date_column": found})})


def quality_counts(raw: pd.DataFrame, frame: pd.DataFrame, spec: DataSpec, columns: Columns,
                   labels: np.ndarray, name: str, source: str, detected_date: bool = False) -> dict[str, Any]:
    """The counts of the institution's data-quality scorecard, on its rows as read (before
    features); they leave only noised (`fedrisk.data_quality.release`)."""
    q = spec.quality
    generated = spec.source == "synthetic"
    ranges = dict(q.ranges)
    categories = dict(q.categories)
    if generated:  # the built-in generators state the spec of their own columns
        own = fraud if spec.transactions is not None else credit
        ranges = {**own.RANGES, **ranges}
        categories = {**getattr(own, "CATEGORIES", {}), **categories}
    for column in [*ranges, *categories, *([q.date_column] if q.date_column else [])]:
        if column not in raw.columns:
            raise FedriskInputError("data.quality names a column the data do not have", institution=name,
                                    file=source, column=column)
    used = {*columns.features, *columns.protected, columns.target}
    if spec.transactions is not None:
        tx = spec.transactions
        used |= {tx.timestamp, tx.customer, tx.terminal, tx.amount}
    checked = [c for c in raw.columns if c in used]
    dates, newest = None, None
    if generated:
        basis = "built-in data, generated at run time"
    elif DAY in frame.columns:
        dates, basis = pd.Series(np.datetime64("1970-01-01") + frame[DAY].to_numpy().astype("timedelta64[D]")), \
            "timestamps"
    elif q.date_column:
        values = raw[q.date_column]
        if pd.api.types.is_numeric_dtype(values):  # epoch numbers would silently read as 1970
            raise FedriskInputError("numbers, not dates (write them as YYYY-MM-DD)", institution=name,
                                    file=source, column=q.date_column)
        when = pd.to_datetime(values, errors="coerce", format="mixed", utc=True)  # offsets may differ (DST)
        if (when.isna() & values.notna()).any() or when.isna().all():
            raise FedriskInputError("values that are not dates" if values.notna().any() else "no dates",
                                    institution=name, file=source, column=q.date_column)
        # the local calendar day of each record (its own offset), not UTC's
        local = pd.to_datetime(values.astype("string").str.strip().str.replace(r"(Z|[+-]\d{2}:?\d{2})$", "",
                                                                                 regex=True), errors="coerce",
                               format="mixed")
        dates, basis = local, f"column {q.date_column}" + (" (detected)" if detected_date else "")
    else:
        newest = date.fromtimestamp(Path(source).stat().st_mtime)
        basis = "file modification date (no date column: name one in data.quality.date_column)"
    return data_quality.measure(raw, checked, columns.target, labels, ranges, categories, dates,
                                q.as_of or date.today(), q.max_age_days, newest, basis)


def quality_card(spec: DataSpec, counts: dict[str, Any]) -> dict[str, Any]:
    """The scorecard of (released or exact) counts under the campaign's quality settings."""
    q = spec.quality
    return data_quality.scorecard(counts, q.min_score, q.positive_rate, q.as_of or date.today(), q.max_age_days)


def load_window(spec: DataSpec, name: str, seed: int, numeric: list[str], categorical: list[str],
                window_days: int, sketch_key: bytes | None = None, look_back: bool = False,
                consortium: tuple[bytes, np.ndarray, Calendar] | None = None,
                ) -> tuple[pd.DataFrame, np.ndarray | None, str]:
    """One institution's rows of a monitoring window: the model's inputs and labels if present.

    The model's columns are fixed, so only they are checked. Labels come back as floats, NaN
    where the outcome is not known yet; without a target column the window is unlabelled
    (performance is not measured). For transactions the window is the last `window_days`
    days; earlier rows only feed the look-back features, whose terminal risk needs the
    labels older than the label delay: only the last `delay_days` days may lack them. With the
    consortium's (sketch key, summed table, calendar), the consortium's columns are computed for
    the window's rows; `look_back` returns every row with its terminal bucket (for the window's
    own table, with `sketch_key`) before the window is cut out.
    """
    names = institution_names(spec)
    if name not in names:
        known = ", ".join(names)
        reason = (f"no file for this window (files for: {known})" if spec.files is not None
                  else f"unknown institution (known: {known})")
        raise FedriskInputError(reason, institution=name)
    frame, source, _ = raw_frame(spec, name, names, seed)
    if len(frame) == 0:
        raise FedriskInputError("no rows", institution=name, file=source)
    # which rows these are, whatever a campaign derives from them or learns of them later:
    # the raw transaction, or the model's inputs as read (never the label, never engineered columns)
    tx = spec.transactions
    identity = [tx.timestamp, tx.customer, tx.terminal, tx.amount] if tx is not None else numeric + categorical
    present = [c for c in identity if c in frame.columns]
    row_ids = lineage.row_hashes(frame, present) if present else np.zeros(len(frame), dtype=np.uint64)
    unknown = None
    if spec.transactions is not None:  # a quiet week without frauds is still a window
        tx = spec.transactions
        if spec.target in frame.columns:  # the terminal-risk features never read the newest labels
            unknown = frame[spec.target].isna().to_numpy()
            frame = frame.assign(**{spec.target: frame[spec.target].fillna(0)})
        key = consortium[0] if consortium is not None else sketch_key
        frame = engineer_transactions(frame, spec, name, source, both_classes=False, sketch_key=key)
        if unknown is not None and unknown.any():
            days = frame[DAY].to_numpy()
            early = int((unknown & (days <= days.max() - tx.delay_days)).sum())
            if early:
                raise FedriskInputError(
                    f"target has {early} missing values older than the {tx.delay_days}-day label delay: the "
                    "terminal-risk features need them", institution=name, file=source, column=spec.target)
        first_day = int(frame[DAY].max()) - window_days + 1
        history = max(spec.transactions.windows_days) + spec.transactions.delay_days
        if first_day - int(frame[DAY].min()) < history:
            raise FedriskInputError(
                f"{first_day - int(frame[DAY].min())} days of history before the {window_days}-day window; "
                f"the look-back features need {history}", institution=name, file=source,
                column=spec.transactions.timestamp)
        if look_back:
            frame[ROW_ID] = row_ids
            return frame, None, source
        if consortium is not None:
            _, table, cal = consortium
            try:
                table = check_table(table, cal, spec.transactions.sketch_width)
            except FedriskInputError as err:
                err.institution = name
                raise
            features = consortium_features(table, cal, frame[DAY].to_numpy(), frame[TERMINAL].to_numpy(),
                                           spec.transactions.windows_days, spec.transactions.delay_days)
            frame[list(features.columns)] = features.to_numpy()
        inside = (frame[DAY] >= first_day).to_numpy()
        frame = frame[inside].reset_index(drop=True)
        row_ids = row_ids[inside]
        if unknown is not None:
            frame.loc[unknown[inside], spec.target] = np.nan
    for column in numeric + categorical:
        if column not in frame.columns:
            raise FedriskInputError("model input column missing", institution=name, file=source, column=column)
    for column in numeric:
        if pd.api.types.is_datetime64_any_dtype(frame[column]) or pd.api.types.is_timedelta64_dtype(frame[column]):
            raise FedriskInputError(f"numeric column holds {frame[column].dtype} values", institution=name,
                                    file=source, column=column)
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = int((values.isna() & frame[column].notna()).sum())
        if bad:
            raise FedriskInputError(f"numeric column has {bad} non-numeric values", institution=name,
                                    file=source, column=column)
        if np.isinf(values.to_numpy(dtype=float)).any():
            raise FedriskInputError("numeric column has infinite values", institution=name,
                                    file=source, column=column)
        frame[column] = values
    frame[ROW_ID] = row_ids
    labels = None
    if spec.target in frame.columns:  # outcomes not known yet are missing: those rows count for PSI only
        known = frame[spec.target].notna()
        labels = np.full(len(frame), np.nan)
        if known.any():
            labels[known.to_numpy()] = check_target(frame[known], spec.target, name, source,
                                                     both_classes=False).to_numpy()
    return frame, labels, source
