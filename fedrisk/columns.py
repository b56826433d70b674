"""The column roles of one institution's data: which are model inputs, and of which kind, and
the one spelling of a column's name (`canonical_name`) that files, configs and policies share.

Shared by the data layer, preprocessing and drift; it knows nothing of where rows come from.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

DAY = "_day"  # fraud: day of each transaction (days since 1970), kept for splits and top-k
CUSTOMER = "_customer"  # fraud: customer codes, only while loading (identifier checks)
ROW_ID = "__row__"  # a monitoring window's row identities (hashes of the raw row), never released
TERMINAL = "_terminal_bucket"  # fraud: each transaction's bucket in the shared terminal table (a keyed hash)


@dataclass(frozen=True)
class Columns:
    """The model's inputs, split by kind, plus what is kept for measurement only."""

    numeric: list[str]
    categorical: list[str]
    protected: list[str]
    target: str
    amount: str | None = None  # fraud: the transaction amount (amount-weighted recall)
    shared: tuple[str, ...] = ()  # fraud: numeric inputs computed from the consortium's shared table

    @property
    def own_numeric(self) -> list[str]:
        """The numeric inputs an institution computes from its own rows alone."""
        return [c for c in self.numeric if c not in self.shared]

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical


def canonical_name(name: object) -> str:
    """One spelling of a column name, in files and configs alike: `SEX`, `Sex `, a spreadsheet's
    BOM-prefixed first header and `sex` are one column."""
    return str(name).replace("\ufeff", "").strip().casefold()


def _distinct(names: list[str]) -> list[str]:
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"'{name}' is listed twice (column names match in any case)")
        seen.add(name)
    return names


def canonical_metric(name: str) -> str:
    """A metric's name as runs log it: `Approval_Rate.SEX:F` is `approval_rate.sex:F` (a group
    keeps its spelling: groups are values of the data, not column names)."""
    head, colon, group = name.partition(":")
    return canonical_name(head) + colon + group.strip()


LOOK_ALIKE_SCRIPTS = {"LATIN", "CYRILLIC", "GREEK"}  # letters drawn alike: 'е' (Cyrillic) and 'e' (Latin)


def mixed_scripts(name: str) -> list[str]:
    """The alphabets of a name when it mixes look-alike ones (a Cyrillic 'е' in `sеx`), else [];
    Japanese or Chinese headers mixing their own scripts with Latin 'ID' are not look-alikes."""
    scripts = {unicodedata.name(ch, "UNKNOWN").split()[0] for ch in name if ch.isalpha()} & LOOK_ALIKE_SCRIPTS
    return sorted(scripts) if len(scripts) > 1 else []


ColumnName = Annotated[str, AfterValidator(canonical_name)]
ColumnNames = Annotated[list[ColumnName], AfterValidator(_distinct)]
