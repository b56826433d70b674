"""Signed audit entries, played by an attacker with the coordinating machine's files but none of
the other people's keys: each forgery below passes the hash chain, and the signatures catch it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import consortium_keys

from fedrisk import audit
from fedrisk.identity import create_key, load_roster, private_key, sign

MEMBERS = {"tom": "trainer", "alice": "approver", "bob": "approver"}


@pytest.fixture()
def keyed(tmp_path, monkeypatch):
    env = consortium_keys(tmp_path, MEMBERS)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    log = tmp_path / "audit.jsonl"
    audit.append(log, "campaign_started", "tom", {"run_id": "r1"})
    audit.append(log, "approval", "alice", {"run_id": "r1", "model": "m", "version": "1"})
    return log, load_roster()


def _append_forged(log, event: str, actor: str, details: dict, signer=None, key_text: str | None = None) -> None:
    """What anyone who can write the file can do: a well-formed entry, its hash recomputed."""
    last = json.loads(log.read_bytes().splitlines()[-1])
    entry = {"seq": last["seq"] + 1, "time": last["time"], "event": event, "actor": actor, "details": details,
             "prev": last["hash"]}
    if key_text is not None:
        entry["key"] = key_text
    entry["hash"] = audit.entry_hash(entry)
    if signer is not None:
        entry["sig"] = sign(signer, entry["hash"].encode())
    with log.open("ab") as out:
        out.write(audit.canonical(entry) + b"\n")


def test_entries_are_signed_by_their_actor_and_verify(keyed):
    log, roster = keyed
    assert audit.verify(log).intact
    assert audit.verify_signatures(log, roster) is None
    entries = [json.loads(x) for x in log.read_bytes().splitlines()]
    assert all("sig" in e and "key" in e for e in entries)


def test_a_forged_unsigned_entry_keeps_the_chain_but_fails_the_signatures(keyed):
    log, roster = keyed
    _append_forged(log, "approval", "bob", {"run_id": "r1", "model": "m", "version": "1"})
    assert audit.verify(log).intact  # the chain alone cannot tell
    assert "entry 4" in audit.verify_signatures(log, roster) and "not signed" in audit.verify_signatures(log, roster)


def test_an_entry_signed_with_a_key_outside_the_roster_fails(keyed, tmp_path):
    log, roster = keyed
    create_key("mallory", tmp_path / "own")
    mallory = private_key("mallory", tmp_path / "own")
    from fedrisk.identity import public_text
    _append_forged(log, "approval", "bob", {"run_id": "r1"}, mallory, public_text(mallory.public_key()))
    assert audit.verify(log).intact
    assert "not in the roster" in audit.verify_signatures(log, roster)


def test_a_signature_copied_onto_changed_content_fails(keyed):
    log, roster = keyed
    lines = log.read_bytes().splitlines()
    entry = json.loads(lines[-1])
    entry["details"]["version"] = "2"  # alice approved version 1, not 2
    entry["hash"] = audit.entry_hash(entry)  # the chain's hash redone; the signature cannot be
    lines[-1] = audit.canonical(entry)
    log.write_bytes(b"\n".join(lines) + b"\n")
    assert audit.verify(log).intact
    assert "does not verify" in audit.verify_signatures(log, roster)


def test_an_actor_name_that_is_not_the_signers_fails(keyed):
    log, roster = keyed
    tom = private_key("tom")
    from fedrisk.identity import public_text
    _append_forged(log, "gate_verdict", "alice", {"run_id": "r1"}, tom, public_text(tom.public_key()))
    assert "signed by tom" in audit.verify_signatures(log, roster)


def test_the_trainer_cannot_sign_an_approval(keyed):
    log, roster = keyed
    audit.append(log, "approval", "tom", {"run_id": "r1", "model": "m", "version": "1"})
    problem = audit.verify_signatures(log, roster)
    assert "approval" in problem and "approver" in problem


def test_a_rewritten_history_needs_every_signers_key(keyed):
    """The attacker rewrites alice's approval into bob's and re-chains everything after it: he holds
    tom's key at most, so the rewritten approval cannot carry an approver's signature."""
    log, roster = keyed
    lines = [json.loads(x) for x in log.read_bytes().splitlines()]
    tom = private_key("tom")
    previous = None
    out = []
    for entry in lines:
        if entry["event"] == "approval":
            entry["actor"] = "bob"
        if previous is not None:
            entry["prev"] = previous["hash"]
        entry.pop("sig", None)
        entry["hash"] = audit.entry_hash(entry)
        entry["sig"] = sign(tom, entry["hash"].encode())
        out.append(audit.canonical(entry))
        previous = entry
    log.write_bytes(b"\n".join(out) + b"\n")
    assert audit.verify(log).intact
    assert audit.verify_signatures(log, roster) is not None


def _cli(*args, cwd, env=None):
    import os
    return subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow  # subprocesses: the full suite runs it
def test_verify_exits_non_zero_when_it_cannot_check_what_it_should(keyed, tmp_path):
    log, _ = keyed
    full = _cli("audit", "verify", str(log), cwd=tmp_path)  # roster from the environment; no MLflow store here
    assert full.returncode == 1 and "signatures   all 3 entries signed by their roster key" in full.stdout
    assert "anchors      NOT CHECKED: no MLflow store" in full.stdout
    bare = _cli("audit", "verify", str(log), cwd=tmp_path, env={"FEDRISK_ROSTER": "", "FEDRISK_ROSTER_CA": ""})
    assert bare.returncode == 1 and "signatures   NOT CHECKED: no consortium roster" in bare.stdout
    chain = _cli("audit", "verify", str(log), "--chain-only", cwd=tmp_path,
                 env={"FEDRISK_ROSTER": "", "FEDRISK_ROSTER_CA": ""})
    assert chain.returncode == 0 and "chain only" in chain.stdout
    from mlflow.tracking import MlflowClient
    MlflowClient(f"sqlite:///{tmp_path}/empty.db").search_experiments()  # a store none of whose runs know the log
    empty = _cli("audit", "verify", str(log), "--tracking-uri", f"sqlite:///{tmp_path}/empty.db", cwd=tmp_path)
    assert empty.returncode == 1 and "anchors      NOT CHECKED: no MLflow run" in empty.stdout
    _append_forged(log, "approval", "bob", {"run_id": "r1"})
    forged = _cli("audit", "verify", str(log), cwd=tmp_path)
    assert forged.returncode == 1 and "BROKEN" in forged.stdout and "not signed" in forged.stdout


@pytest.mark.parametrize("actor", [["x"], 7, {"a": 1}])
def test_a_hostile_actor_field_is_a_broken_entry_not_a_crash(keyed, actor):
    log, roster = keyed
    tom = private_key("tom")
    from fedrisk.identity import public_text
    _append_forged(log, "approval", actor, {"run_id": "r1"}, tom, public_text(tom.public_key()))
    assert "must be text" in audit.verify_signatures(log, roster)
