"""Strict JSON for what fedrisk writes: a metric that could not be computed is null, never NaN."""

from __future__ import annotations

import math
from typing import Any


def nan_to_null(value: Any) -> Any:
    """NaN and infinities (which JSON cannot state) become None, in nested dicts and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): nan_to_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_null(v) for v in value]
    return value
