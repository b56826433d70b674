"""The environment fedrisk's entry points give Flower, Ray and MLflow: quiet, offline, no installs.

Set only by entry points (the CLI, the launcher, the federation commands), never on import.
"""

from __future__ import annotations

import os

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def quiet() -> None:
    """Apply `QUIET_ENV` to this process, keeping what the user set explicitly."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
