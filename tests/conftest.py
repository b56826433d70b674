"""Test environment: Flower keeps its state in a temporary folder and never phones home."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="fedrisk-flwr-home-"))
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
