"""Test environment: Flower keeps its state in a temporary folder and never phones home."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="fedrisk-flwr-home-"))
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session")
def credit_institution():
    """One synthetic institution's split and its (single-institution) preprocessing."""
    from fedrisk.config import DataSpec
    from fedrisk.data import load_institution
    from fedrisk.preprocessing import (
        fit_preprocessor,
        local_statistics,
        merge_statistics,
    )
    from fedrisk.splits import split_institution

    spec = DataSpec.model_validate({"synthetic": {"institutions": 2, "rows": 8000}})
    data = load_institution(spec, "inst01", 42)
    split = split_institution(data, spec, 42)
    return fit_preprocessor(merge_statistics([local_statistics(split.train, data.columns)])), split
