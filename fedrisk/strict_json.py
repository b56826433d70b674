"""Strict JSON for what fedrisk writes: a metric that could not be computed is null, never NaN."""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

import numpy as np


def nan_to_null(value: Any) -> Any:
    """NaN and infinities (which JSON cannot state) become None, in nested dicts and lists too;
    numpy scalars become Python numbers and paths text."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): nan_to_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [nan_to_null(v) for v in value]
    return value
