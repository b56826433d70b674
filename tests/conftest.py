"""Test environment: Flower keeps its state in a temporary folder and never phones home."""

from __future__ import annotations

import contextlib
import os
import tempfile

import pytest

os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="fedrisk-flwr-home-"))
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Institutions' homes (policies, ledgers) never in the user's ~/.fedrisk; each test gets its own below.
os.environ["FEDRISK_HOME"] = tempfile.mkdtemp(prefix="fedrisk-homes-")
# Nobody's keys or roster from ~/.fedrisk: a test that needs identities makes them (consortium_keys).
os.environ["FEDRISK_KEYS"] = tempfile.mkdtemp(prefix="fedrisk-keys-")
for _name in ("FEDRISK_ROSTER", "FEDRISK_ROSTER_CA"):
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def institution_homes(tmp_path_factory, monkeypatch):
    """Fresh institution homes for every test: a campaign spends its institutions' budgets for life."""
    home = tmp_path_factory.mktemp("homes")
    monkeypatch.setenv("FEDRISK_HOME", str(home))
    return home


@contextlib.contextmanager
def own_homes(folder):
    """Institution homes for a module-scoped fixture (set before the per-test ones exist)."""
    previous = os.environ.get("FEDRISK_HOME")
    os.environ["FEDRISK_HOME"] = str(folder)
    try:
        yield folder
    finally:
        os.environ["FEDRISK_HOME"] = previous or ""


@pytest.fixture(scope="session")
def credit_institution():
    """One synthetic institution's split and its (single-institution) preprocessing."""
    from fedrisk.config import DataSpec
    from fedrisk.data import load_institution
    from fedrisk.preprocessing import exact_preprocessor
    from fedrisk.splits import split_institution

    spec = DataSpec.model_validate({"synthetic": {"institutions": 2, "rows": 8000}})
    data = load_institution(spec, "inst01", 42)
    split = split_institution(data, spec, 42)
    return exact_preprocessor([split.train], data.columns), split


def write_policies(names, **changes):
    """Each named institution's own policy: the shipped default with `changes` (dotted keys),
    written to its home under $FEDRISK_HOME before a campaign asks it anything."""
    from fedrisk.guard import DEFAULT_POLICY, POLICY_FILE, homes_root, update_policy

    for name in names:
        home = homes_root() / name
        home.mkdir(parents=True, exist_ok=True)
        (home / POLICY_FILE).write_text(DEFAULT_POLICY.read_text())
        update_policy(home, name, changes)


def consortium_keys(folder, members: dict[str, str]) -> dict[str, str]:
    """An Ed25519 key for each member (name -> role) and for the consortium CA, and the roster the
    CA signs; returns the environment that points fedrisk at them."""
    from pathlib import Path

    from fedrisk.identity import create_key, write_roster

    keys = Path(folder) / "keys"
    for name in ("consortium-ca", *members):
        create_key(name, keys)
    write_roster(list(members.items()), "consortium-ca", Path(folder) / "roster.json", keys)
    return {"FEDRISK_KEYS": str(keys), "FEDRISK_ROSTER": str(Path(folder) / "roster.json"),
            "FEDRISK_ROSTER_CA": str(keys / "consortium-ca.pub")}
