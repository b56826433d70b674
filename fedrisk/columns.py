"""The column roles of one institution's data: which are model inputs, and of which kind.

Shared by the data layer, preprocessing and drift; it knows nothing of where rows come from.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY = "_day"  # fraud: day of each transaction (days since 1970), kept for splits and top-k
CUSTOMER = "_customer"  # fraud: customer codes, only while loading (identifier checks)
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
ROW_ID = "__row__"  # a monitoring window's row identities (hashes of the raw row), never released
