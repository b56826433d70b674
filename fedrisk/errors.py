"""Errors a user can fix: they print as one line and exit with code 2, never a traceback."""

from __future__ import annotations

INPUT_ERROR_EXIT_CODE = 2


class FedriskInputError(Exception):
    """Bad configuration or data, stated as one line naming institution, file and column."""

    def __init__(
        self,
        message: str,
        *,
        institution: str | None = None,
        file: str | None = None,
        column: str | None = None,
    ) -> None:
        self.institution = institution
        self.file = file
        self.column = column
        self.detail = message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = []
        if self.institution:
            parts.append(f"institution {self.institution}")
        if self.file:
            parts.append(f"file {self.file}")
        if self.column:
            parts.append(f"column '{self.column}'")
        where = ", ".join(parts)
        text = f"{where}: {self.detail}" if where else self.detail
        return " ".join(text.split())


class BudgetExhaustedError(FedriskInputError):
    """An institution's privacy budget cannot pay for the next round."""


class FourEyesRefused(FedriskInputError):
    """The four-eyes rules refuse a promotion, a rollback or a cap raise: exit code 3, like a blocked gate."""


class PolicyRefused(FedriskInputError):
    """An institution's own policy refuses what a campaign asks (DP off, too much epsilon, ...)."""
