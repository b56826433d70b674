"""What a column of one institution's file is, judged from its values alone: pure functions.

Used where the rows are: loading (a date column for freshness) and `fedrisk inspect`
(the proposed data spec). Nothing here leaves the institution.
"""

from __future__ import annotations

import re

import pandas as pd

DATE_SHAPE = re.compile(r"^(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{4})([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?"
                        r"(Z|[+-]\d{2}:?\d{2})?$")
DATE_SHARE = 0.95  # this share of a column's values shaped and parsed as dates: a date column
PERSONAL_DATE = re.compile(r"birth|dob|born")  # a date of birth dates a person, not the record
SAMPLE = 2000


def is_date_column(values: pd.Series) -> bool:
    """Text (or datetime) values that are, nearly all, calendar dates or timestamps."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return True
    present = values.dropna()
    if len(present) == 0 or pd.api.types.is_numeric_dtype(present) or pd.api.types.is_bool_dtype(present):
        return False
    text = present.astype(str).str.strip()
    text = text.sample(SAMPLE, random_state=0) if len(text) > SAMPLE else text
    shaped = text[text.str.match(DATE_SHAPE)]
    if len(shaped) < DATE_SHARE * len(text):
        return False
    parsed = pd.to_datetime(shaped.str.replace(r"(Z|[+-]\d{2}:?\d{2})$", "", regex=True), errors="coerce",
                            format="mixed", dayfirst=False)
    return bool(parsed.notna().sum() >= DATE_SHARE * len(text))


def date_columns(frame: pd.DataFrame, skip: set[str] = frozenset()) -> list[str]:
    """Every date column of the file, in file order."""
    return [c for c in frame.columns if c not in skip and is_date_column(frame[c])]


def record_date_column(frame: pd.DataFrame, skip: set[str] = frozenset()) -> str | None:
    """The one column dating each record (for freshness), when the file has exactly one that is
    not a date of birth; None when there is none, or several to choose from (the user names it)."""
    candidates = [c for c in date_columns(frame, skip) if not PERSONAL_DATE.search(c)]
    return candidates[0] if len(candidates) == 1 else None
