"""Each institution's own rows: load, check, split. Nothing here looks at another's data.

Institutions come from the built-in generator, one file each, a column naming the
institution, or (for simulation) a seeded IID or Dirichlet split of one file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedrisk import data_quality
from fedrisk.config import DataSpec, Drift
from fedrisk.errors import FedriskInputError
from fedrisk.generators import credit, fraud
from fedrisk.transaction_features import transaction_features


IDENTIFIER_SHARE = 0.5  # a text feature with more distinct values than this share of rows
LEAK_CHECK_ROWS = 200  # below this, a pure feature value can happen by chance
LEAK_CHECK_VALUES = 50
CARD_ID_MIN_VALUES = 5  # a category with fewer values cannot single out customers
DAY = "_day"  # fraud: day of each transaction (days since 1970), kept for splits and top-k
CUSTOMER = "_customer"  # fraud: customer codes, only while loading (identifier checks)


@dataclass(frozen=True)
class Columns:
    """The model's inputs, split by kind, plus what is kept for measurement only."""

    numeric: list[str]
    categorical: list[str]
    protected: list[str]
    target: str
    amount: str | None = None  # fraud: the transaction amount (amount-weighted recall)

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical


@dataclass(frozen=True)
class InstitutionData:
    name: str
    source: str  # file path, or a description of the generator call
    fingerprint: str  # identifies this institution's data for the privacy ledger
    frame: pd.DataFrame  # features + target + protected, identifiers already dropped
    columns: Columns
    quality: dict[str, Any]  # the data-quality scorecard (counts only), see fedrisk.data_quality


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_table(path: str | Path, institution: str | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file, failing with the institution and file named."""
    file = Path(path)
    if not file.exists():
        raise FedriskInputError("data file not found", institution=institution, file=str(file))
    if not file.is_file():
        raise FedriskInputError("not a file", institution=institution, file=str(file))
    suffix = file.suffix.lower()
    try:
        if suffix in {".csv", ".txt"}:
            return pd.read_csv(file)
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(file)
    except Exception as exc:  # pandas raises many types for unreadable files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FedriskInputError(
            f"cannot read file: {reason}", institution=institution, file=str(file)
        ) from None
    raise FedriskInputError(
        f"unsupported file type '{suffix}' (use .csv or .parquet)",
        institution=institution,
        file=str(file),
    )


def institution_names(spec: DataSpec) -> list[str]:
    """The consortium's members, in the order that maps them to simulation partitions."""
    if spec.source == "synthetic":
        return credit.institution_names(spec.synthetic.institutions)
    if spec.files is not None:
        return sorted(spec.files)
    if spec.partition is not None:
        return credit.institution_names(spec.partition.institutions)
    assert spec.path is not None and spec.institution_column is not None
    frame = read_table(spec.path)
    if spec.institution_column not in frame.columns:
        raise FedriskInputError(
            "institution column missing", file=spec.path, column=spec.institution_column
        )
    values = frame[spec.institution_column]
    if values.isna().any():
        raise FedriskInputError(
            f"{int(values.isna().sum())} rows name no institution",
            file=spec.path,
            column=spec.institution_column,
        )
    return sorted(values.astype(str).unique())


def _partition_rows(frame: pd.DataFrame, spec: DataSpec, seed: int) -> np.ndarray:
    """Partition index of each row; Dirichlet per class gives size and label skew."""
    assert spec.partition is not None
    k = spec.partition.institutions
    rng = np.random.default_rng([seed, 30_011])
    owner = np.empty(len(frame), dtype=int)
    if spec.transactions is not None:  # a customer's transactions stay with one issuer
        ids = spec.transactions.customer
        if ids not in frame.columns:
            raise FedriskInputError("customer column missing", file=spec.path, column=ids)
        codes, uniques = pd.factorize(frame[ids])
        if (codes < 0).any():
            raise FedriskInputError(f"{int((codes < 0).sum())} rows name no customer",
                                    file=spec.path, column=ids)
        shares = (np.full(k, 1.0 / k) if spec.partition.method == "iid"
                  else rng.dirichlet(np.full(k, spec.partition.alpha)))
        customer_owner = np.minimum(np.searchsorted(np.cumsum(shares), rng.random(len(uniques))), k - 1)
        return customer_owner[codes]
    if spec.partition.method == "iid":
        order = rng.permutation(len(frame))
        owner[order] = np.arange(len(frame)) % k
        return owner
    labels = frame[spec.target].to_numpy()
    for value in pd.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == value))
        shares = rng.dirichlet(np.full(k, spec.partition.alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
        for part, chunk in enumerate(np.split(rows, cuts)):
            owner[chunk] = part
    return owner


def _drift_params(spec: DataSpec) -> dict[str, Any]:
    """A later or shifted window is other data: it gets its own fingerprint (and ledger)."""
    drift = spec.synthetic.drift
    return {} if drift == Drift() else {"drift": drift.model_dump()}


def _raw_frame(spec: DataSpec, name: str, names: list[str], seed: int) -> tuple[pd.DataFrame, str, str]:
    """(rows, source description, fingerprint) of one institution, before checks."""
    if spec.source == "synthetic" and spec.transactions is not None:
        syn = spec.synthetic
        params = {"generator": "fraud", "index": names.index(name), "institutions": syn.institutions,
                  "customers": syn.customers, "terminals": syn.terminals, "days": syn.days, "seed": seed,
                  **_drift_params(spec)}
        frame = fraud.generate_issuer(names.index(name), syn.institutions, syn.customers,
                                      syn.terminals, syn.days, seed, syn.drift.scenario, syn.drift.severity,
                                      syn.drift.stream, syn.drift.start_day).drop(columns=fraud.LABEL_DERIVED)
        fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        return frame, "built-in generator", fingerprint
    if spec.source == "synthetic":
        syn = spec.synthetic
        index = names.index(name)
        params = {
            "generator": "credit",
            "index": index,
            "institutions": syn.institutions,
            "rows": syn.rows,
            "seed": seed,
            "group_bias": syn.group_bias,
            **_drift_params(spec),
        }
        frame = credit.generate_institution(index, syn.institutions, syn.rows, seed, syn.group_bias,
                                            syn.drift.scenario, syn.drift.severity, syn.drift.stream)
        fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        return frame, "built-in generator", fingerprint
    if spec.files is not None:
        path = spec.files[name]
        return read_table(path, name), path, _sha256_file(Path(path))
    assert spec.path is not None
    frame = read_table(spec.path, name)
    base = _sha256_file(Path(spec.path))
    if spec.institution_column is not None:
        if spec.institution_column not in frame.columns:
            raise FedriskInputError(
                "institution column missing", institution=name, file=spec.path,
                column=spec.institution_column,
            )
        mine = frame[frame[spec.institution_column].astype(str) == name]
        mine = mine.drop(columns=[spec.institution_column])
        fingerprint = hashlib.sha256(f"{base}:{name}".encode()).hexdigest()
        return mine.reset_index(drop=True), spec.path, fingerprint
    assert spec.partition is not None
    if spec.target not in frame.columns:
        raise FedriskInputError("target column missing", institution=name, file=spec.path,
                                column=spec.target)
    if frame[spec.target].isna().any():  # rows without a label cannot be dealt to anyone
        raise FedriskInputError(
            f"target has {int(frame[spec.target].isna().sum())} missing values",
            institution=name, file=spec.path, column=spec.target,
        )
    owner = _partition_rows(frame, spec, seed)
    mine = frame[owner == names.index(name)].reset_index(drop=True)
    part = spec.partition.model_dump_json()
    fingerprint = hashlib.sha256(f"{base}:{name}:{part}:{seed}".encode()).hexdigest()
    return mine, spec.path, fingerprint


def resolve_columns(frame: pd.DataFrame, spec: DataSpec, institution: str, file: str) -> Columns:
    """Which columns are inputs, and of which kind; personal identifiers never are."""
    excluded = {spec.target, *spec.drop, *spec.protected, DAY, CUSTOMER}
    if spec.quality.date_column:
        excluded.add(spec.quality.date_column)
    if spec.institution_column:
        excluded.add(spec.institution_column)
    if spec.features is not None:
        features = list(spec.features)
        for column in features:
            if column in spec.drop or column == spec.target:
                raise FedriskInputError(
                    "listed both as a feature and as target or dropped column",
                    institution=institution, file=file, column=column,
                )
    else:
        features = [c for c in frame.columns if c not in excluded]
    required = [spec.target, *features, *spec.protected]
    for column in required:
        if column not in frame.columns:
            kind = "target" if column == spec.target else (
                "protected attribute" if column in spec.protected else "feature"
            )
            raise FedriskInputError(f"{kind} column missing", institution=institution,
                                    file=file, column=column)
    if spec.categorical is not None:
        unknown = [c for c in spec.categorical if c not in features]
        if unknown:
            raise FedriskInputError("categorical column is not a feature",
                                    institution=institution, file=file, column=unknown[0])
        categorical = [c for c in features if c in spec.categorical]
    else:
        categorical = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    numeric = [c for c in features if c not in categorical]
    for column in numeric:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            bad = pd.to_numeric(frame[column], errors="coerce").isna() & frame[column].notna()
            raise FedriskInputError(
                f"numeric column has {int(bad.sum())} non-numeric values",
                institution=institution, file=file, column=column,
            )
        infinite = int(np.isinf(frame[column].to_numpy(dtype=float)).sum())
        if infinite:
            raise FedriskInputError(f"numeric column has {infinite} infinite values",
                                    institution=institution, file=file, column=column)
    for column in categorical:
        # A text column with mostly distinct values is an identifier, not a category: its
        # values would travel in the shared vocabulary.
        present = frame[column].dropna()
        if len(present) >= 20 and present.nunique() > IDENTIFIER_SHARE * len(present):
            raise FedriskInputError(
                f"{present.nunique()} distinct values in {len(present)} rows: looks like an "
                "identifier; add it to data.drop (or list the features in data.features)",
                institution=institution, file=file, column=column,
            )
    return Columns(numeric, categorical, list(spec.protected), spec.target)


def _check_target(frame: pd.DataFrame, target: str, institution: str, file: str,
                  both_classes: bool = True) -> pd.Series:
    values = frame[target]
    if values.isna().any():
        raise FedriskInputError(f"target has {int(values.isna().sum())} missing values",
                                institution=institution, file=file, column=target)
    if pd.api.types.is_bool_dtype(values):
        values = values.astype(int)
    allowed = {0, 1}
    seen = set(pd.unique(values).tolist())
    if not pd.api.types.is_numeric_dtype(values) or not seen <= allowed:
        # Say how, not what: a wrongly named target column may hold customer data.
        raise FedriskInputError(
            f"target is not binary 0/1 ({len(seen)} distinct values of type {values.dtype})",
            institution=institution, file=file, column=target,
        )
    if both_classes and len(seen) < 2:
        raise FedriskInputError(
            f"target has a single class ({seen.pop()}): cannot train or evaluate",
            institution=institution, file=file, column=target,
        )
    return values.astype(np.int64)


def load_institution(spec: DataSpec, name: str, seed: int) -> InstitutionData:
    """Load and check one institution's rows; the only data a client ever reads."""
    names = institution_names(spec)
    if name not in names:
        raise FedriskInputError(f"unknown institution (known: {', '.join(names)})",
                                institution=name)
    raw, source, fingerprint = _raw_frame(spec, name, names, seed)
    if len(raw) == 0:
        raise FedriskInputError("no rows", institution=name, file=source)
    frame = engineer_transactions(raw, spec, name, source) if spec.transactions is not None else raw
    columns = resolve_columns(frame, spec, name, source)
    target = _check_target(frame, columns.target, name, source)
    quality = quality_scorecard(raw, frame, spec, columns, target.to_numpy(), name, source)
    _check_leaks(frame, columns, target, name, source)
    if CUSTOMER in frame.columns:
        _check_card_identifiers(frame, columns, name, source)
    measured = [c for c in columns.protected if c not in columns.features]
    if spec.transactions is not None:
        amount = spec.transactions.amount
        measured += [DAY] + ([amount] if amount not in columns.features else [])
        columns = replace(columns, amount=amount)
    kept = frame[columns.features + measured].copy()
    kept[columns.target] = target.to_numpy()
    return InstitutionData(name, source, fingerprint, kept.reset_index(drop=True), columns, quality)


def quality_scorecard(raw: pd.DataFrame, frame: pd.DataFrame, spec: DataSpec, columns: Columns,
                      labels: np.ndarray, name: str, source: str) -> dict[str, Any]:
    """The institution's data-quality scorecard, on its rows as read (before features)."""
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
    as_of = q.as_of or date.today()
    if generated:
        newest, basis = None, "built-in data, generated at run time"
    elif DAY in frame.columns:
        newest, basis = date.fromordinal(date(1970, 1, 1).toordinal() + int(frame[DAY].max())), "timestamps"
    elif q.date_column:
        values = raw[q.date_column]
        if pd.api.types.is_numeric_dtype(values):  # epoch numbers would silently read as 1970
            raise FedriskInputError("numbers, not dates (write them as YYYY-MM-DD)", institution=name,
                                    file=source, column=q.date_column)
        when = pd.to_datetime(values, errors="coerce", format="mixed", utc=True)  # offsets may differ (DST)
        bad = int((when.isna() & values.notna()).sum())
        if bad or when.isna().all():
            raise FedriskInputError(f"{bad} values are not dates" if bad else "no dates", institution=name,
                                    file=source, column=q.date_column)
        newest, basis = when.max().date(), f"column {q.date_column}"
    else:
        newest = date.fromtimestamp(Path(source).stat().st_mtime)
        basis = "file modification date"
    return data_quality.scorecard({
        "completeness": data_quality.completeness(raw, checked),
        "validity": data_quality.validity(raw, ranges, categories),
        "duplicates": data_quality.duplicates(raw[checked]),  # identifiers dropped: a replay may renumber rows
        "label_sanity": data_quality.label_sanity(raw[checked], columns.target),
        "class_balance": data_quality.class_balance(labels, q.positive_rate),
        "freshness": data_quality.freshness(newest, basis, as_of, q.max_age_days),
    }, len(raw), q.min_score)


def load_window(spec: DataSpec, name: str, seed: int, numeric: list[str], categorical: list[str],
                window_days: int) -> tuple[pd.DataFrame, np.ndarray | None, str]:
    """One institution's rows of a monitoring window: the model's inputs and labels if present.

    The model's columns are fixed, so only they are checked. Labels come back as floats, NaN
    where the outcome is not known yet; without a target column the window is unlabelled
    (performance is not measured). For transactions the window is the last `window_days`
    days; earlier rows only feed the look-back features, whose terminal risk needs the
    labels older than the label delay: only the last `delay_days` days may lack them.
    """
    names = institution_names(spec)
    if name not in names:
        known = ", ".join(names)
        reason = f"no file for this window (files for: {known})" if spec.files is not None else f"unknown institution (known: {known})"
        raise FedriskInputError(reason, institution=name)
    frame, source, _ = _raw_frame(spec, name, names, seed)
    if len(frame) == 0:
        raise FedriskInputError("no rows", institution=name, file=source)
    unknown = None
    if spec.transactions is not None:  # a quiet week without frauds is still a window
        tx = spec.transactions
        if spec.target in frame.columns:  # the terminal-risk features never read the newest labels
            unknown = frame[spec.target].isna().to_numpy()
            frame = frame.assign(**{spec.target: frame[spec.target].fillna(0)})
        frame = engineer_transactions(frame, spec, name, source, both_classes=False)
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
        inside = (frame[DAY] >= first_day).to_numpy()
        frame = frame[inside].reset_index(drop=True)
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
    labels = None
    if spec.target in frame.columns:  # outcomes not known yet are missing: those rows count for PSI only
        known = frame[spec.target].notna()
        labels = np.full(len(frame), np.nan)
        if known.any():
            labels[known.to_numpy()] = _check_target(frame[known], spec.target, name, source,
                                                     both_classes=False).to_numpy()
    return frame, labels, source


def _local_timestamps(raw: pd.Series, name: str, source: str, column: str) -> pd.Series:
    """Timestamps as local wall-clock time: night and weekend are the cardholder's, not UTC's.

    A UTC offset on a text timestamp is dropped, keeping the local clock, so one zone with
    daylight-saving offsets (+01:00 in winter, +02:00 in summer) reads right.
    """
    if raw.isna().all():
        raise FedriskInputError("no timestamps", institution=name, file=source, column=column)
    if pd.api.types.is_numeric_dtype(raw):  # epoch numbers are ambiguous (s, ms, ns?)
        raise FedriskInputError("timestamps are numbers: give dates and times (ISO 8601)",
                                institution=name, file=source, column=column)
    if pd.api.types.is_datetime64_any_dtype(raw):
        when = raw
    else:
        text = raw.astype("string").str.strip().str.replace(r"(Z|[+-]\d{2}:?\d{2})$", "", regex=True)
        when = pd.to_datetime(text, errors="coerce")
    if getattr(when.dt, "tz", None) is not None:
        when = when.dt.tz_localize(None)  # keep the local time, drop the zone
    return when


def _check_leaks(frame: pd.DataFrame, columns: Columns, target: pd.Series, name: str, source: str) -> None:
    """A feature with a few values (missing counts as one), each of one class only, is the label in disguise."""
    if len(frame) < LEAK_CHECK_ROWS:
        return
    for column in columns.features:
        values = frame[column]
        if (values.nunique(dropna=False) <= LEAK_CHECK_VALUES
                and target.groupby(values.to_numpy(), dropna=False).nunique().max() == 1):
            raise FedriskInputError(
                "feature determines the target exactly (a label leak?): add it to data.drop",
                institution=name, file=source, column=column,
            )


def _check_card_identifiers(frame: pd.DataFrame, columns: Columns, name: str, source: str) -> None:
    """A category whose values each belong to one customer is a card or account number.

    Category values travel in the shared vocabulary, so such a column would send card
    numbers to the server. Transactions repeat per card, so the share-of-rows test of
    `resolve_columns` cannot see it; counting customers per value can, whatever the dtype.
    """
    for column in columns.categorical:
        per_value = frame.groupby(column)[CUSTOMER].nunique()
        single = float((per_value == 1).mean()) if len(per_value) else 0.0
        if len(per_value) >= CARD_ID_MIN_VALUES and single >= IDENTIFIER_SHARE:
            raise FedriskInputError(
                f"{single:.0%} of its {len(per_value)} values belong to a single customer: looks like a "
                "card or account number; add it to data.drop (or list the features in data.features)",
                institution=name, file=source, column=column,
            )


def engineer_transactions(frame: pd.DataFrame, spec: DataSpec, name: str, source: str,
                          both_classes: bool = True) -> pd.DataFrame:
    """Check an issuer's raw transactions and replace identifiers by engineered features.

    Returns the amount, the engineered features, every other raw column that is not an
    identifier, timestamp or dropped column, the target and the transaction day. Customer
    and terminal ids are used for the windows here and go no further.
    """
    tx = spec.transactions
    assert tx is not None
    for column, kind in [(tx.timestamp, "timestamp"), (tx.customer, "customer id"),
                         (tx.terminal, "terminal id"), (tx.amount, "amount"), (spec.target, "target")]:
        if column not in frame.columns:
            raise FedriskInputError(f"{kind} column missing", institution=name, file=source, column=column)
    when = _local_timestamps(frame[tx.timestamp], name, source, tx.timestamp)
    if when.isna().any():
        raise FedriskInputError(f"{int(when.isna().sum())} values are missing or not timestamps",
                                institution=name, file=source, column=tx.timestamp)
    for column in (tx.customer, tx.terminal):
        if frame[column].isna().any():
            raise FedriskInputError(f"{int(frame[column].isna().sum())} missing ids",
                                    institution=name, file=source, column=column)
    amount = frame[tx.amount]
    if not pd.api.types.is_numeric_dtype(amount):  # e.g. Parquet decimals arrive as objects
        numbers = pd.to_numeric(amount, errors="coerce")
        bad = numbers.isna() & amount.notna()
        if bad.any():
            raise FedriskInputError(f"amount has {int(bad.sum())} non-numeric values",
                                    institution=name, file=source, column=tx.amount)
        amount = numbers
    values = amount.to_numpy(dtype=float)
    for problem, count in [("missing", np.isnan(values).sum()), ("infinite", np.isinf(values).sum()),
                           ("negative (refunds?)", (values < 0).sum())]:
        if count:
            raise FedriskInputError(f"amount has {int(count)} {problem} values",
                                    institution=name, file=source, column=tx.amount)
    target = _check_target(frame, spec.target, name, source, both_classes)
    features = transaction_features(when, frame[tx.customer], frame[tx.terminal], amount, target,
                                    tx.windows_days, tx.delay_days)
    identifiers = {tx.timestamp, tx.customer, tx.terminal, tx.amount, spec.target}
    passthrough = [c for c in frame.columns
                   if c not in identifiers and c not in spec.drop and c not in features.columns]
    out = pd.concat([amount.rename(tx.amount), features, frame[passthrough]], axis=1)
    out[CUSTOMER] = pd.factorize(frame[tx.customer])[0]
    out[spec.target] = target.to_numpy()
    out[DAY] = when.to_numpy(dtype="datetime64[D]").astype(np.int64)
    return out


def split_institution(data: InstitutionData, spec: DataSpec, seed: int) -> Split:
    """Seeded, stratified train/validation/test split inside one institution (by time for fraud)."""
    if spec.time_split is not None:
        return split_by_time(data, spec)
    frame = data.frame
    y = frame[data.columns.target].to_numpy()
    rng = np.random.default_rng([seed, 40_009, int(data.fingerprint[:8], 16)])
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for value in (0, 1):
        rows = rng.permutation(np.flatnonzero(y == value))
        n_val = int(round(len(rows) * spec.validation_fraction))
        n_test = int(round(len(rows) * spec.test_fraction))
        parts["validation"].append(rows[:n_val])
        parts["test"].append(rows[n_val : n_val + n_test])
        parts["train"].append(rows[n_val + n_test :])
    out = {}
    for key, chunks in parts.items():
        index = np.sort(np.concatenate(chunks))
        if len(index) == 0 or len(np.unique(y[index])) < 2:
            raise FedriskInputError(
                f"too few rows ({len(frame)}) for a {key} split holding both classes",
                institution=data.name, file=data.source, column=data.columns.target,
            )
        out[key] = frame.iloc[index].reset_index(drop=True)
    return Split(**out)


def time_windows(spec: DataSpec, last_day: int) -> dict[str, tuple[int, int]]:
    """First and last day (inclusive, days since 1970) of train, validation and test.

    Test ends on `time_split.end` (or the issuer's last day). A label delay separates train
    from validation and validation from test: a model (and its alert threshold) can only
    use frauds already known when it goes live.
    """
    ts, tx = spec.time_split, spec.transactions
    assert ts is not None and tx is not None
    end = (int(np.datetime64(ts.end, "D").astype(np.int64)) if ts.end is not None else last_day)
    test = (end - ts.test_days + 1, end)
    validation = (test[0] - tx.delay_days - ts.validation_days, test[0] - tx.delay_days - 1)
    train_end = validation[0] - tx.delay_days - 1
    return {"train": (train_end - ts.train_days + 1, train_end), "validation": validation, "test": test}


def split_by_time(data: InstitutionData, spec: DataSpec) -> Split:
    """Train, (delay), validation, (delay), test windows: never a random split for fraud."""
    frame = data.frame
    days = frame[DAY].to_numpy()
    windows = time_windows(spec, int(days.max()))
    if days.min() > windows["train"][0]:
        first = np.datetime64(int(days.min()), "D")
        start = np.datetime64(windows["train"][0], "D")
        raise FedriskInputError(
            f"data start on {first}, but the train window starts on {start}: shorten "
            "data.time_split or give more history", institution=data.name, file=data.source,
            column=spec.transactions.timestamp if spec.transactions else None,
        )
    out = {}
    y = frame[data.columns.target].to_numpy()
    for key, (first, last) in windows.items():
        rows = (days >= first) & (days <= last)
        if not rows.any() or len(np.unique(y[rows])) < 2:
            raise FedriskInputError(
                f"the {key} window {np.datetime64(first, 'D')}..{np.datetime64(last, 'D')} holds "
                f"{int(rows.sum())} transactions and {int(y[rows].sum())} frauds: both classes needed",
                institution=data.name, file=data.source, column=data.columns.target,
            )
        out[key] = frame[rows].reset_index(drop=True)
    return Split(**out)
