"""Checks of one institution's rows: column roles, target, leaks, identifiers, transactions.

Every failure is one line naming institution, file and column (`FedriskInputError`), and
says how a column is wrong, never which values it holds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedrisk.columns import CUSTOMER, DAY, TERMINAL, Columns
from fedrisk.config import DataSpec
from fedrisk.consortium_features import buckets
from fedrisk.errors import FedriskInputError
from fedrisk.identifiers import CARD_CUSTOMERS, id_like_number, numeric_identifier, text_identifier
from fedrisk.profile import is_date_column
from fedrisk.transaction_features import transaction_features

IDENTIFIER_SHARE = 0.5  # a text feature with more distinct values than this share of rows
LEAK_CHECK_ROWS = 200  # below this, a pure feature value can happen by chance
LEAK_CHECK_VALUES = 50
STRAY_SHARE = 0.05  # a text column whose values are numbers but for at most this share: numbers with typos
CARD_ID_MIN_VALUES = 5  # a category with fewer values cannot single out customers


def resolve_columns(frame: pd.DataFrame, spec: DataSpec, institution: str, file: str,
                    never_use: tuple[str, ...] = ()) -> Columns:
    """Which columns are inputs, and of which kind; personal identifiers never are."""
    never = {c.casefold() for c in never_use}  # the institution's own policy: never an input, whatever the campaign
    excluded = {spec.target, *spec.drop, *spec.protected, DAY, CUSTOMER, TERMINAL,
                *(c for c in frame.columns if c.casefold() in never)}
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
        for column in categorical:  # a stray word in a column of numbers is a typo, not a category
            present = frame[column].dropna()
            numbers = pd.to_numeric(present, errors="coerce")
            words = int(numbers.isna().sum())
            if len(present) and words and words <= STRAY_SHARE * len(present):
                raise FedriskInputError(
                    f"numeric column has {words} non-numeric values: correct them, or list the column in "
                    "data.categorical if its values are codes", institution=institution, file=file, column=column)
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
    _refuse_non_inputs(frame, categorical, numeric, spec.features is None, institution, file)
    return Columns(numeric, categorical, list(spec.protected), spec.target)


def _refuse_non_inputs(frame: pd.DataFrame, categorical: list[str], numeric: list[str], chosen_by_us: bool,
                       institution: str, file: str) -> None:
    """Dates and identifiers are not risk drivers. A text identifier is refused always (its values
    would travel in the shared vocabulary); a number or a date the user names in data.features
    is the user's choice, otherwise refused too."""
    def refuse(reason: str, column: str) -> None:
        raise FedriskInputError(reason, institution=institution, file=file, column=column)

    if chosen_by_us:
        for column in [*categorical, *numeric]:
            if is_date_column(frame[column]):
                refuse("holds dates, not a model input: name it in data.quality.date_column (the record's date, for "
                       "freshness) or add it to data.drop", column)
    for column in categorical:
        present = frame[column].dropna()
        reason = text_identifier(present)
        if reason is None and len(present) >= 20 and present.nunique() > IDENTIFIER_SHARE * len(present):
            reason = f"{present.nunique()} distinct values in {len(present)} rows: looks like an identifier"
        if reason:
            refuse(f"{reason}; add it to data.drop (or list the model's inputs in data.features)", column)
    for column in numeric if chosen_by_us else []:
        reason = numeric_identifier(frame[column], column)
        if reason:
            refuse(f"{reason}; add it to data.drop, or list it in data.features to use it", column)


def check_target(frame: pd.DataFrame, target: str, institution: str, file: str,
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


def local_timestamps(raw: pd.Series, name: str, source: str, column: str) -> pd.Series:
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


def check_leaks(frame: pd.DataFrame, columns: Columns, target: pd.Series, name: str, source: str) -> None:
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


def check_card_identifiers(frame: pd.DataFrame, columns: Columns, name: str, source: str,
                           raw_numbers: list[str] = ()) -> None:
    """A category whose values each belong to a few customers is a card or account number, or a name.

    Category values travel in the shared vocabulary, so such a column would send card
    numbers to the server. Transactions repeat per card, so the share-of-rows test of
    `resolve_columns` cannot see it; counting customers per value can, whatever the dtype. A
    file's own whole-number columns (`raw_numbers`: a numeric card or national id) are counted too.
    """
    whole = [c for c in raw_numbers if id_like_number(frame[c], c)]
    for column in [*columns.categorical, *whole]:
        per_value = frame.groupby(column)[CUSTOMER].nunique()
        few = float((per_value <= CARD_CUSTOMERS).mean()) if len(per_value) else 0.0
        if len(per_value) >= CARD_ID_MIN_VALUES and few >= IDENTIFIER_SHARE:
            raise FedriskInputError(
                f"{few:.0%} of its {len(per_value)} values belong to {CARD_CUSTOMERS} customers or fewer: looks like "
                "a card or account number or a name; add it to data.drop (or list the features in data.features)",
                institution=name, file=source, column=column,
            )


def engineer_transactions(frame: pd.DataFrame, spec: DataSpec, name: str, source: str,
                          both_classes: bool = True, sketch_key: bytes | None = None) -> pd.DataFrame:
    """Check an issuer's raw transactions and replace identifiers by engineered features.

    Returns the amount, the engineered features, every other raw column that is not an
    identifier, timestamp or dropped column, the target and the transaction day. Customer
    and terminal ids are used for the windows here and go no further; with `sketch_key`, a
    terminal's bucket in the consortium's shared table is kept (`fedrisk.consortium_features`).
    """
    tx = spec.transactions
    assert tx is not None
    for column, kind in [(tx.timestamp, "timestamp"), (tx.customer, "customer id"),
                         (tx.terminal, "terminal id"), (tx.amount, "amount"), (spec.target, "target")]:
        if column not in frame.columns:
            raise FedriskInputError(f"{kind} column missing", institution=name, file=source, column=column)
    when = local_timestamps(frame[tx.timestamp], name, source, tx.timestamp)
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
    target = check_target(frame, spec.target, name, source, both_classes)
    features = transaction_features(when, frame[tx.customer], frame[tx.terminal], amount, target,
                                    tx.windows_days, tx.delay_days)
    identifiers = {tx.timestamp, tx.customer, tx.terminal, tx.amount, spec.target}
    passthrough = [c for c in frame.columns
                   if c not in identifiers and c not in spec.drop and c not in features.columns]
    out = pd.concat([amount.rename(tx.amount), features, frame[passthrough]], axis=1)
    out[CUSTOMER] = pd.factorize(frame[tx.customer])[0]
    out[spec.target] = target.to_numpy()
    out[DAY] = when.to_numpy(dtype="datetime64[D]").astype(np.int64)
    if sketch_key is not None:
        out[TERMINAL] = buckets(frame[tx.terminal], sketch_key, tx.sketch_width)
    return out
