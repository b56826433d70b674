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
UNIQUE_SHARE = 0.98  # whole numbers distinct on nearly every row ...
DENSE_SPAN = 10  # ... and numbered from a start: their values span at most this many times the rows
ID_DIGITS = 6  # whole numbers of one width, six digits or more: customer, account or national numbers ...
ID_SHARE = 0.2  # ... distinct on this share of rows (a customer's loans repeat it) ...
ROUND_SHARE = 0.5  # ... unless most are multiples of 100 (amounts in whole units are rounded)
PHONE_DIGITS = 10  # ten digits or more, of one width: phone, card or account numbers, whatever repeats
SEQUENCE_SHARE = 0.5  # a running sequence: ordered whole numbers, mostly distinct, mostly one step apart
CARD_CUSTOMERS = 3  # fraud: a value held by at most this many customers singles them out
NAMED_ID = re.compile(r"(^|[^a-z0-9])(id|ids|uuid|guid|no|nr|num|number|ref|key)$"
                      r"|^(cif|member|borrower|acct|account|customer|cust|client|custno|customerid|clientid)$"
                      r"|(^|[^a-z0-9])(phone|tel|telephone|mobile|msisdn|ssn|nin|iban)$")
SHAPE_SHARE = 0.9  # text: this share of values with an identifier's shape
SAMPLE = 2000  # text values looked at for shapes

EMAIL = re.compile(r"^[\w.+'-]+@[\w-]+(\.[\w-]+)+$")
NUMBER_LIKE = re.compile(r"^[+(]?[\dA-Za-z][\dA-Za-z\s().\-/]*$")  # phone, card, account or id numbers
NOT_AN_ID = re.compile(r"^(-?\d*[.,]\d+"  # a decimal number written as text
                       r"|\d{4}-\d{1,2}(-\d{1,2}([ T].*)?)?"  # an ISO date, month or timestamp
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


def _width(x: float) -> int:
    return len(str(int(abs(x))))


def numeric_identifier(values: pd.Series, name: str = "") -> str | None:
    """Why a numeric column looks like an identifier, or None.

    Amounts in whole units (a currency without cents, a bill rounded to the unit) are distinct
    on nearly every row too: they span orders of magnitude, go negative or are rounded, where
    a numbering is dense from its start and an id number has one width."""
    numbers = _whole_numbers(values)
    if numbers is None:
        return None
    count = len(np.unique(numbers))
    distinct = count / len(numbers)
    low, high = numbers.min(), numbers.max()
    one_width = low > 0 and _width(low) == _width(high)
    if distinct >= UNIQUE_SHARE and low >= 0 and high - low <= DENSE_SPAN * len(numbers):
        return f"whole numbers distinct on {distinct:.0%} of rows, numbered from a start: looks like a row number"
    if one_width and _width(low) >= PHONE_DIGITS and count >= MIN_ROWS:
        return f"{_width(low)}-digit whole numbers: looks like a phone, card or account number"
    if one_width and _width(low) >= ID_DIGITS and distinct >= ID_SHARE and np.mean(numbers % 100 == 0) < ROUND_SHARE:
        return f"{_width(low)}-digit whole numbers on {distinct:.0%} of rows: looks like a customer, account or id number"
    steps = np.diff(numbers)
    moves = steps[steps != 0]
    if distinct >= SEQUENCE_SHARE and len(moves) and (np.all(steps >= 0) or np.all(steps <= 0)):
        _, counts = np.unique(moves, return_counts=True)
        if counts.max() >= 0.5 * len(moves):
            return "whole numbers in a running sequence: looks like a row or application number"
    if count >= max(MIN_ROWS, ID_SHARE * len(numbers)) and NAMED_ID.search(name):
        return f"{count} distinct whole numbers under an identifier's name"
    return None


def id_like_number(values: pd.Series, name: str = "") -> bool:
    """A whole-number column that could be a card, account or customer number (fraud: then
    counted per customer): one width of six digits or more, or an identifier's name."""
    numbers = _whole_numbers(values)
    if numbers is None:
        return False
    low, high = numbers.min(), numbers.max()
    return bool((low > 0 and _width(low) == _width(high) and _width(low) >= ID_DIGITS) or NAMED_ID.search(name))


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
