"""Values as a person reads them, in every report and on the command line."""

from __future__ import annotations

from typing import Any

import numpy as np


def display(value: Any) -> str:
    """A value as a person reads it: whole numbers without decimals, small ones (a delta) in
    scientific notation, yes/no, lists and mappings spelled out; never a Python repr."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        if not np.isfinite(number):
            return "-" if np.isnan(number) else str(number)
        if number.is_integer() and abs(number) < 1e15 and (isinstance(value, int | np.integer) or abs(number) >= 2):
            return f"{number:,.0f}"
        if number != 0 and abs(number) < 1e-3:
            return f"{number:.2e}"
        return f"{number:.4f}"
    if isinstance(value, list | tuple):
        return ", ".join(display(v) for v in value) or "-"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {display(v)}" for k, v in value.items()) or "-"
    return str(value)
