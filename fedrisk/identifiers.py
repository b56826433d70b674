"""Which columns identify a person or a row rather than describe a risk: pure functions of values.

A customer number, a national id or an e-mail address is never a model input: as a number it
lets the model memorise rows; as a category its values would travel in the shared vocabulary.
`fedrisk.checks` refuses such columns and `fedrisk inspect` proposes to drop them.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

MIN_ROWS = 20  # below this, distinct values happen by chance
UNIQUE_SHARE = 0.98  # whole numbers distinct on nearly every row: a row or person number
DENSE_SPAN = 10  # a numbering: its values span at most this many times the rows
LONG_ID = 10**5  # or every value has six digits or more (national, customer or account numbers)
SEQUENCE_SHARE = 0.5  # a running sequence: ordered whole numbers, mostly distinct
LONG_NUMBER = 10**9  # every value with ten or more digits: phone, card or account numbers
NAMED_ID = re.compile(r"(^|_)(id|ids|uuid|guid|phone|tel|mobile|msisdn|ssn|nin|iban)(_|$)"
                      r"|(account|acct|card|customer|client|application|contract|national|passport|tax|social)"
                      r"_?(no|nr|num|number|id|ref)(_|$)")
SHAPE_SHARE = 0.9  # text: this share of values with an identifier's shape
SAMPLE = 2000  # text values looked at for shapes

EMAIL = re.compile(r"^[\w.+'-]+@[\w-]+(\.[\w-]+)+$")
NUMBER_LIKE = re.compile(r"^[+(]?[\dA-Za-z][\dA-Za-z\s().\-/]*$")  # phone, card, account or id numbers
NOT_AN_ID = re.compile(r"^(-?\d*[.,]\d+"  # a decimal number written as text
                       r"|\d{4}-\d{1,2}-\d{1,2}([ T].*)?"  # an ISO date or timestamp
                       r"|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}([ T].*)?)$")  # a day/month/year date


def _whole_numbers(values: pd.Series) -> np.ndarray | None:
    """The finite values if every one is a whole number, else None."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return None
    numbers = values.to_numpy(dtype=float)
    numbers = numbers[np.isfinite(numbers)]
    if len(numbers) < MIN_ROWS or not np.all(numbers == np.round(numbers)):
        return None
    return numbers


def whole_numbers(values: pd.Series) -> bool:
    """A numeric column of whole numbers only (ids, codes, counts), at least `MIN_ROWS` of them."""
    return _whole_numbers(values) is not None


def numeric_identifier(values: pd.Series, name: str = "") -> str | None:
    """Why a numeric column looks like an identifier, or None."""
    numbers = _whole_numbers(values)
    if numbers is None:
        return None
    count = len(np.unique(numbers))
    distinct = count / len(numbers)
    low, span = numbers.min(), numbers.max() - numbers.min()
    # distinct on nearly every row, and numbered (dense from a start) or long: amounts in whole units are neither
    if distinct >= UNIQUE_SHARE and low >= 0 and (span <= DENSE_SPAN * len(numbers) or low >= LONG_ID):
        return f"whole numbers distinct on {distinct:.0%} of rows: looks like a row, customer or id number"
    steps = np.diff(numbers)
    if distinct >= SEQUENCE_SHARE and (np.all(steps >= 0) or np.all(steps <= 0)):
        return "whole numbers in a running sequence: looks like a row or application number"
    if count >= MIN_ROWS and np.abs(numbers).min() >= LONG_NUMBER:
        return "whole numbers of ten or more digits: looks like a phone, card or account number"
    if count >= MIN_ROWS and NAMED_ID.search(name):
        return f"{count} distinct whole numbers under an identifier's name"
    return None


def _shape(text: str) -> str | None:
    if EMAIL.match(text):
        return "e-mail addresses"
    digits = sum(ch.isdigit() for ch in text)
    alnum = sum(ch.isalnum() for ch in text)
    if NUMBER_LIKE.match(text) and not NOT_AN_ID.match(text) and digits >= 6 and digits >= 0.6 * alnum:
        return "phone, card, account or id numbers"
    return None


def text_identifier(values: pd.Series) -> str | None:
    """Why a text column looks like an identifier (whatever repeats), or None."""
    present = values.dropna()
    if len(present) < MIN_ROWS or pd.api.types.is_numeric_dtype(present):
        return None
    distinct = present.astype(str).str.strip().drop_duplicates()
    sample = distinct.sample(min(len(distinct), SAMPLE), random_state=0) if len(distinct) > SAMPLE else distinct
    if len(sample) < 5:  # a handful of values is a category, whatever it looks like
        return None
    shapes = sample.map(_shape)
    top = shapes.value_counts()
    if len(top) and top.iloc[0] >= SHAPE_SHARE * len(sample):
        return f"values shaped like {top.index[0]}"
    return None
