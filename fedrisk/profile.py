"""What a column of one institution's file is, judged from its values alone: pure functions.

Used where the rows are: loading (a date column for freshness) and `fedrisk inspect`
(the proposed data spec). Nothing here leaves the institution.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

MONTHS = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*"
TIME = r"([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?"
DATE_SHAPE = re.compile(
    r"^(\d{4}-\d{1,2}-\d{1,2}"  # 2018-03-15
    r"|\d{1,2}[./-]\d{1,2}[./-]\d{2}(\d{2})?"  # 15/03/2018, 3/15/18
    r"|\d{1,2}[ -]" + MONTHS + r"[ -]\d{2}(\d{2})?"  # 15 March 2018, 15-Mar-18
    r"|" + MONTHS + r"[ -]\d{1,2},? \d{4}"  # March 15, 2018
    r"|" + MONTHS + r"[ -]\d{2}(\d{2})?"  # Jan-2018 (a month)
    r"|\d{4}-\d{2})" + TIME + "$", re.IGNORECASE)  # 2018-03 (a month)
DATE_SHARE = 0.95  # this share of a column's values shaped and parsed as dates: a date column
PERSONAL_DATE = re.compile(r"birth|dob|born")  # a date of birth dates a person, not the record
SAMPLE = 2000


def is_date_column(values: pd.Series) -> bool:
    """Text (or datetime) values that are, nearly all, calendar dates or timestamps."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return True
    present = values.dropna()
    if len(present) == 0 or pd.api.types.is_bool_dtype(present):
        return False
    if pd.api.types.is_numeric_dtype(present):
        return _yyyymmdd(present)
    text = present.astype(str).str.strip()
    text = text.sample(SAMPLE, random_state=0) if len(text) > SAMPLE else text
    shaped = text[text.str.match(DATE_SHAPE)]
    if len(shaped) < DATE_SHARE * len(text):
        return False
    parsed = pd.to_datetime(shaped.str.replace(r"(Z|[+-]\d{2}:?\d{2})$", "", regex=True), errors="coerce",
                            format="mixed", dayfirst=False)
    if parsed.notna().sum() < DATE_SHARE * len(text):  # 15/03/2018 is not month-first: try day-first
        parsed = pd.to_datetime(shaped, errors="coerce", format="mixed", dayfirst=True)
    return bool(parsed.notna().sum() >= DATE_SHARE * len(text))


def _yyyymmdd(numbers: pd.Series) -> bool:
    """Whole numbers written as dates: 20180315 (a date of birth or an application day)."""
    values = numbers.to_numpy(dtype=float)
    if len(values) < 20 or not ((values >= 1900_01_01) & (values <= 2100_12_31) & (values == values.round())).all():
        return False
    whole = values.astype(np.int64)
    month, day = whole // 100 % 100, whole % 100
    return bool(((month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)).all())


def date_columns(frame: pd.DataFrame, skip: set[str] = frozenset()) -> list[str]:
    """Every date column of the file, in file order."""
    return [c for c in frame.columns if c not in skip and is_date_column(frame[c])]


def record_date_column(frame: pd.DataFrame, skip: set[str] = frozenset()) -> str | None:
    """The one column dating each record (for freshness), when the file has exactly one that is
    not a date of birth; None when there is none, or several to choose from (the user names it)."""
    candidates = [c for c in date_columns(frame, skip) if not PERSONAL_DATE.search(c)]
    return candidates[0] if len(candidates) == 1 else None
