"""Institutions witness the coordinator's audit log, played by an attacker who holds the
coordinating machine and its keys: he can rewrite the campaign's own entries, re-sign them with
the trainer's key and move the MLflow copies of the head, and `audit verify` without witnesses
passes. The heads each institution saw and counter-signed in its own home catch him."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import consortium_keys
from mlflow.tracking import MlflowClient

from fedrisk import audit, run_schema, witness
from fedrisk.errors import FedriskInputError
from fedrisk.identity import load_roster, private_key, public_text, sign

INSTITUTIONS = ("inst01", "inst02", "inst03")
MEMBERS = {"tom": "trainer", **{name: "institution" for name in INSTITUTIONS}}


@pytest.fixture()
def keyed(tmp_path, monkeypatch):
    for key, value in consortium_keys(tmp_path, MEMBERS).items():
        monkeypatch.setenv(key, value)
    return tmp_path


def _campaign_log(folder: Path, rounds: int = 2) -> Path:
    """A coordinator's log whose heads the three institutions witnessed as a campaign would send them."""
    log = folder / "audit.jsonl"
    audit.append(log, "campaign_started", "tom", {"run_id": "r1"})
    for server_round in range(1, rounds + 1):
        head = witness.head_of(log)
        for name in INSTITUTIONS:
            witness.record(folder / name, name, head, "c1", server_round)
        audit.append(log, "round_completed", "tom", {"run_id": "r1", "round": server_round, "epsilon_max": 1.0})
    head = witness.head_of(log)
    for name in INSTITUTIONS:
        witness.record(folder / name, name, head, "c1", rounds + 1)
    audit.append(log, "campaign_ended", "tom", {"run_id": "r1"})
    return log


def _rewrite(log: Path, change, signer: str = "tom") -> None:
    """The coordinator's rewrite: change entries, re-chain and re-sign them all with a key he holds."""
    tom = private_key(signer)
    previous = None
    out = []
    for line in log.read_bytes().splitlines():
        entry = json.loads(line)
        change(entry)
        if previous is not None:
            entry["prev"] = previous["hash"]
        entry.pop("sig", None)
        entry["key"] = public_text(tom.public_key())
        entry["hash"] = audit.entry_hash(entry)
        entry["sig"] = sign(tom, entry["hash"].encode())
        out.append(audit.canonical(entry))
        previous = entry
    log.write_bytes(b"\n".join(out) + b"\n")


def _lower_epsilon(entry: dict) -> None:
    if entry["event"] == "round_completed" and entry["details"]["round"] == 1:
        entry["details"]["epsilon_max"] = 0.5


def test_witnesses_agree_with_an_honest_log(keyed):
    log = _campaign_log(keyed)
    roster = load_roster()
    for name in INSTITUTIONS:
        check = witness.check(log, keyed / name, roster)
        assert check.problem is None and check.heads == 3 and check.institution == name
        assert check.last_seq == audit.verify(log).entries - 1  # all but campaign_ended, written after the last message


def test_a_history_rewritten_and_resigned_by_the_coordinator_is_caught(keyed):
    log = _campaign_log(keyed)
    _rewrite(log, _lower_epsilon)
    roster = load_roster()
    assert audit.verify(log).intact and audit.verify_signatures(log, roster) is None  # the hole witnesses close
    for name in INSTITUTIONS:
        problem = witness.check(log, keyed / name, roster).problem
        assert problem is not None and "rewritten" in problem and name in problem


def test_a_log_cut_short_is_caught(keyed):
    log = _campaign_log(keyed)
    lines = log.read_bytes().splitlines()
    log.write_bytes(b"\n".join(lines[:3]) + b"\n")  # gone: the last rounds
    problem = witness.check(log, keyed / "inst01", load_roster()).problem
    assert problem is not None and "cut short" in problem


def test_a_witness_forged_by_the_coordinator_fails_its_signatures(keyed):
    """He rewrites the log, then the witnesses to match, signing them with the only keys he holds."""
    log = _campaign_log(keyed)
    _rewrite(log, _lower_epsilon)
    new = {json.loads(x)["seq"]: json.loads(x)["hash"] for x in log.read_bytes().splitlines()}
    forged = keyed / "inst01" / witness.WITNESS_FILE

    def follow(entry: dict) -> None:
        if entry["event"] == "witnessed":
            entry["details"]["hash"] = new[entry["details"]["seq"]]

    _rewrite(forged, follow)
    problem = witness.check(log, keyed / "inst01", load_roster()).problem
    assert problem is not None and "tom" in problem and "inst01" in problem


def test_a_witness_of_another_log_or_none_cannot_vouch(keyed):
    log = _campaign_log(keyed)
    other = keyed / "other"
    witness.record(other / "inst01", "inst01", witness.head_of(_campaign_log(other)), "c2", 1)
    stranger = witness.check(log, other / "inst01", load_roster())
    assert stranger.heads == 0 and "never saw this log" in stranger.problem
    with pytest.raises(FedriskInputError, match="no witness log"):
        witness.check(log, keyed / "nobody", load_roster())


def test_a_witness_signed_by_another_institution_fails(keyed):
    """inst02 signing a witness log that claims to be inst01's: one member speaking for another."""
    log = _campaign_log(keyed)
    spoof = keyed / "spoof" / witness.WITNESS_FILE
    spoof.parent.mkdir()
    spoof.write_bytes((keyed / "inst02" / witness.WITNESS_FILE).read_bytes())
    _rewrite(spoof, lambda entry: entry.update(actor="inst01"), signer="inst02")
    problem = witness.check(log, spoof, load_roster()).problem
    assert problem is not None and "signed by inst02, not by inst01" in problem


@pytest.mark.parametrize("head", ["", "x", "abc:1", "a:b:c", "a:-1:" + "0" * 64, "a:1:" + "z" * 64, "a:1:00"])
def test_a_malformed_head_from_the_server_is_refused_in_one_line(keyed, head):
    with pytest.raises(FedriskInputError, match="audit head"):
        witness.record(keyed / "inst01", "inst01", head, "c1", 1)


@pytest.mark.slow  # a real campaign on the Flower simulation engine, then the CLI
def test_a_campaign_is_witnessed_and_a_rewrite_is_caught_from_the_command_line(keyed, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
           "FEDRISK_ACTOR": "tom", "FEDRISK_HOME": str(tmp_path / "homes")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)

    ran = cli("simulate", "--institutions", "3", "--rounds", "2", "--set", "data.synthetic.rows=6000")
    assert ran.returncode in (0, 3), ran.stderr[-2000:]
    homes = [str(tmp_path / "homes" / "institutions" / name) for name in INSTITUTIONS]
    log = tmp_path / ".fedrisk" / "audit.jsonl"
    ok = cli("audit", "verify", str(log), "--witness", *homes)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "witnesses    3 institutions" in ok.stdout and "all match" in ok.stdout
    for name in INSTITUTIONS:  # admission, two rounds, the final evaluation
        assert witness.check(log, Path(homes[0]).parent / name, load_roster()).heads >= 4

    # the coordinator lowers round 1's epsilon, re-signs with tom's key, moves the MLflow copies
    _rewrite(log, _lower_epsilon)
    heads = {json.loads(x)["seq"]: json.loads(x)["hash"] for x in log.read_bytes().splitlines()}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            seq = int(run.data.tags[run_schema.AUDIT_HEAD].split(":")[0])
            client.set_tag(run.info.run_id, run_schema.AUDIT_HEAD, f"{seq}:{heads[seq]}")
    fooled = cli("audit", "verify", str(log))
    assert fooled.returncode == 0, fooled.stdout  # chain, anchors and signatures all hold
    caught = cli("audit", "verify", str(log), "--witness", *homes)
    assert caught.returncode == 1 and "rewritten" in caught.stdout and "inst01" in caught.stdout
    missing = cli("audit", "verify", str(log), "--witness", str(tmp_path / "homes" / "institutions" / "inst09"))
    assert missing.returncode == 1 and "no witness log" in missing.stdout + missing.stderr
