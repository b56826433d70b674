"""Finding 1 of issue 14, replayed: identifier-like columns the user did not drop.

Each customer applies one to five times, so an e-mail, a phone number and an account
reference each have fewer distinct values than half the rows and pass as ordinary columns.
After a whole campaign (every release, the registered model with its drift reference, the
audit log), not one of their values may be found in anything the coordinator keeps: every
file under the run's folder and the MLflow database, byte for byte.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from local_grid import LocalGrid

from clients.client_app import app as client_app
from fedrisk.config import load_config
from fedrisk.errors import FedriskInputError
from fedrisk.generators.credit import CATEGORICAL_FEATURES, NUMERIC_FEATURES, generate_consortium
from fedrisk.launcher import campaign_outcome
from server.campaign import run_campaign


def _with_identifiers(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One to five rows per customer, each carrying the customer's e-mail, phone and account."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, size=len(frame))
    owner = np.repeat(np.arange(len(frame)), sizes)[: len(frame)]
    out = frame.copy()
    out["email"] = [f"customer{seed}x{o}@example-bank.com" for o in owner]
    out["phone"] = 4915100000000 + seed * 10**7 + owner  # numeric, 13 digits
    out["account_ref"] = [f"ACC{seed:02d}{o:07d}" for o in owner]
    return out


@pytest.mark.slow  # seconds of end-to-end work: the full suite runs it
def test_identifier_values_never_leave_an_institution(tmp_path):
    folder = tmp_path / "coordinator"
    folder.mkdir()
    files, values = {}, set()
    for i, (name, frame) in enumerate(generate_consortium(3, 9000, seed=11).items()):
        frame = _with_identifiers(frame, i + 1)
        assert frame["email"].nunique() < len(frame) / 2  # passes the identifier check on distinct share
        files[name] = tmp_path / f"{name}.csv"
        frame.to_csv(files[name], index=False)
        values |= set(frame["email"]) | set(frame["account_ref"]) | {str(p) for p in frame["phone"]}
    settings = {"data.source": "files", "data.files": {n: str(p) for n, p in files.items()}, "rounds": 2,
                "training.batch_size": 128, "tracking_uri": f"sqlite:///{folder}/mlflow.db",
                "audit.path": str(folder / "audit.jsonl")}
    # Not dropped: no value is held by enough customers to pass partition selection anywhere,
    # so the campaign stops, naming the column (and nothing of it leaves).
    config = load_config(None, settings, work_dir=folder)
    with pytest.raises(FedriskInputError, match=r"column '(email|account_ref)': values shaped like"):
        run_campaign(LocalGrid.simulation(client_app, 3), config, "undropped")
    # Dropped text columns, and the numeric phone number named as an input (the user's choice,
    # refused as an identifier otherwise): a whole campaign.
    inputs = [*NUMERIC_FEATURES, *CATEGORICAL_FEATURES, "phone"]
    config = load_config(None, {**settings, "data.drop": ["customer_id", "email", "account_ref"],
                                "data.features": inputs}, work_dir=folder)
    run_campaign(LocalGrid.simulation(client_app, 3), config, "identifiers")
    outcome = campaign_outcome(config, "identifiers")
    assert outcome.status == "completed"
    preprocessors = [json.loads(p.read_text()) for p in folder.rglob("preprocessor.json")]
    assert preprocessors and all("phone" in p["numeric"] for p in preprocessors)  # the model is searched too
    stored = b"\n".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
    found = [v for v in values if v.encode() in stored]
    assert found == [], f"{len(found)} identifier values found, e.g. {found[:3]}"
    assert b"@example-bank.com" not in stored and b"ACC0" not in stored
