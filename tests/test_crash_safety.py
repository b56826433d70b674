"""A campaign killed mid-way, and two campaigns at once on one store, as real processes: what the
trial found (a run RUNNING forever, a ledger charge nobody sees, a SQLite traceback, two budgets
spent for no model) must not happen again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fedrisk.campaign_lock import campaign_lock, lock_path
from fedrisk.config import load_config
from fedrisk.errors import FedriskInputError
from fedrisk.ledger import PrivacyLedger

SMALL = ["--institutions", "3", "--set", "data.synthetic.rows=9000", "--set", "training.batch_size=128"]


def _start(folder: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "FEDRISK_HOME": str(folder / "homes")}
    return subprocess.Popen([sys.executable, "-m", "fedrisk.cli", "simulate", *SMALL, *args], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _entries(folder: Path) -> list[dict]:
    log = folder / ".fedrisk" / "audit.jsonl"
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]


def test_a_second_campaign_on_the_same_store_is_refused_in_one_line(tmp_path):
    config = load_config(None, {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})
    with campaign_lock(config, "first"):
        assert "campaign first" in lock_path(config).read_text()
        with pytest.raises(FedriskInputError, match="another campaign is running on this MLflow store"):
            with campaign_lock(config, "second"):
                pass
    with campaign_lock(config, "third"):  # released when the first ended
        pass


@pytest.mark.slow  # two real campaigns: the full suite runs it
def test_two_campaigns_at_once_give_one_model_and_no_traceback(tmp_path):
    first = _start(tmp_path, "--rounds", "4")
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "mlflow.db.campaign.lock").is_file():
        time.sleep(0.05)
    while time.time() < deadline and not (tmp_path / "mlflow.db.campaign.lock").read_text():
        time.sleep(0.05)
    second = _start(tmp_path, "--rounds", "4")
    out2, err2 = second.communicate(timeout=300)
    out1, err1 = first.communicate(timeout=300)
    assert second.returncode == 2 and "Traceback" not in err2
    assert "another campaign is running on this MLflow store" in err2.strip().splitlines()[-1]
    assert first.returncode in (0, 3) and "(completed)" in out1, err1[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    # the refused campaign reserved nothing: every ledger knows one campaign (and its data's size release)
    campaign = runs[0].data.tags["fedrisk.campaign"]
    for ledger in (tmp_path / "homes" / "institutions").glob("*/ledger.json"):
        booked = PrivacyLedger.open(ledger, ledger.parent.name, float("inf"), 1.0).campaigns()
        assert [c for c in booked if not c.startswith("size:")] == [campaign]


@pytest.mark.slow  # a campaign killed with SIGKILL, then another: the full suite runs it
def test_a_killed_campaign_is_closed_with_its_rounds_and_spend_at_the_next_start(tmp_path):
    killed = _start(tmp_path, "--rounds", "30")
    deadline = time.time() + 180
    while time.time() < deadline and not any(e["event"] == "round_completed" and e["details"]["round"] >= 2
                                             for e in _entries(tmp_path)):
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)  # the whole process group: no handler, no cleanup
    killed.communicate(timeout=60)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (dead,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert dead.info.status == "RUNNING"  # what a kill leaves
    # MLflow logs a round's metrics just before its audit entry: a kill between them leaves the log one behind
    rounds = max(m.step for m in client.get_metric_history(dead.info.run_id, "round_seconds"))
    audited = max(e["details"]["round"] for e in _entries(tmp_path) if e["event"] == "round_completed")
    assert rounds >= 2 and audited in (rounds, rounds - 1)

    after = _start(tmp_path, "--rounds", "2", "--seed", "7")
    out, err = after.communicate(timeout=300)
    assert after.returncode in (0, 3), err[-2000:]
    assert f"was interrupted after round {rounds}: marked KILLED" in err
    dead = client.get_run(dead.info.run_id)
    assert dead.info.status == "KILLED" and dead.data.tags["fedrisk.status"] == "interrupted"
    (entry,) = [e for e in _entries(tmp_path) if e["event"] == "campaign_interrupted"]
    assert entry["details"]["run_id"] == dead.info.run_id and entry["details"]["rounds_completed"] == rounds
    campaign = dead.data.tags["fedrisk.campaign"]
    ledgers = {p.parent.name: PrivacyLedger.open(p, p.parent.name, float("inf"), 1.0)
               for p in (tmp_path / "homes" / "institutions").glob("*/ledger.json")}
    assert set(entry["details"]["epsilon_charged"]) == set(ledgers) and len(ledgers) == 3
    for name, ledger in ledgers.items():  # what the ledger charged, visible in the log
        assert entry["details"]["epsilon_charged"][name] == pytest.approx(ledger.spent(campaign=campaign), abs=1e-6)
        assert entry["details"]["epsilon_charged"][name] > 0
