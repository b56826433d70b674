"""Four eyes by key, against the attacks of a trainer who runs the coordinating machine: a look-alike
spelling of his own name, a name split by spaces, an approval line written into the log by hand,
a key the roster does not list. A real MLflow store and registry; the campaign's run is made by
hand (what promotion reads of it: trainer, task, verdict, policy)."""

from __future__ import annotations

import json

import pytest
from conftest import consortium_keys
from mlflow.tracking import MlflowClient

from fedrisk import audit, run_schema
from fedrisk.errors import FourEyesRefused
from fedrisk.identity import create_key
from fedrisk.policy import load_policy, policy_sha256
from fedrisk.promotion import approve
from fedrisk.tracking import audit_event

MODEL = "m"


@pytest.fixture()
def version(tmp_path, monkeypatch):
    """Version 1 of MODEL, gate verdict pass, trained by root; alice, bob and the trainer have keys."""
    for key, value in consortium_keys(tmp_path, {"root": "trainer", "alice": "approver", "bob": "approver"}).items():
        monkeypatch.setenv(key, value)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    log = tmp_path / "audit.jsonl"
    run = client.create_run(client.create_experiment("e"), tags={run_schema.TRAINER: "root", run_schema.TASK: "credit"})
    audit_event(client, run.info.run_id, log, "campaign_started", "root", {})
    client.create_registered_model(MODEL)
    for verdict in ("pass", "block"):  # version 1 passed its gate, version 2 was blocked
        mv = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
        for key, value in {run_schema.GATE_VERDICT: verdict, run_schema.RUN_ID: run.info.run_id,
                           run_schema.GATE_POLICY_SHA256: policy_sha256(load_policy(None, "credit"))}.items():
            client.set_model_version_tag(MODEL, mv.version, key, value)
        audit_event(client, run.info.run_id, log, "gate_verdict", "root",
                    {"verdict": verdict, "model_version": f"{MODEL}/{mv.version}"})
    return uri, str(log), run.info.run_id


def _champion(uri):
    try:
        return MlflowClient(uri).get_model_version_by_alias(MODEL, "champion").version
    except Exception:
        return None


@pytest.mark.parametrize("spelling", ["root", "rооt", "r o o t", "ＲＯＯＴ", "ro\u200bot"])
def test_the_trainer_cannot_approve_under_any_spelling(version, spelling):
    uri, log, _ = version
    with pytest.raises(FourEyesRefused, match="trained this model"):
        approve(uri, MODEL, "1", spelling, audit_log=log)


def test_a_look_alike_of_an_approver_has_no_key_and_is_refused(version):
    uri, log, _ = version
    approve(uri, MODEL, "1", "alice", audit_log=log)
    with pytest.raises(FourEyesRefused, match="holds no key of а l i c e"):
        approve(uri, MODEL, "1", "а l i c e", audit_log=log)  # Cyrillic a, spaces: a second alice has no key
    with pytest.raises(FourEyesRefused, match="already approved"):
        approve(uri, MODEL, "1", "ALICE", audit_log=log)  # her own key, typed otherwise
    assert _champion(uri) is None


def test_an_approver_without_a_key_or_outside_the_roster_is_refused(version, tmp_path, monkeypatch):
    uri, log, _ = version
    with pytest.raises(FourEyesRefused, match="holds no key of carol"):
        approve(uri, MODEL, "1", "carol", audit_log=log)
    create_key("carol")  # a key of her own, but the CA never listed her
    with pytest.raises(FourEyesRefused, match="not an approver's in the roster"):
        approve(uri, MODEL, "1", "carol", audit_log=log)


def test_a_hand_written_approval_does_not_count(version):
    uri, log, run_id = version
    approve(uri, MODEL, "1", "alice", audit_log=log)
    # the trainer appends bob's approval himself: chained and hashed like any entry, signed with his own key
    audit.append(log, "approval", "root", {"run_id": run_id, "model": MODEL, "version": "1", "verdict": "pass",
                                           "policy_sha256": policy_sha256(load_policy(None, "credit")),
                                           "override": False, "justification": None})
    lines = open(log, "rb").read().splitlines()
    forged = json.loads(lines[-1])
    forged["actor"] = "bob"
    forged["hash"] = audit.entry_hash(forged)
    lines[-1] = audit.canonical(forged)
    open(log, "wb").write(b"\n".join(lines) + b"\n")
    assert audit.verify(log).intact  # the chain cannot tell
    assert _champion(uri) is None
    decision = approve(uri, MODEL, "1", "bob", audit_log=log)  # bob's own approval is his first
    assert decision.promoted and decision.approvers == ["alice", "bob"]


def test_without_a_roster_nobody_approves(version, monkeypatch):
    uri, log, _ = version
    monkeypatch.delenv("FEDRISK_ROSTER")
    with pytest.raises(FourEyesRefused, match="need the consortium's roster"):
        approve(uri, MODEL, "1", "alice", audit_log=log)


def test_two_keyed_approvers_promote_and_the_log_verifies_against_the_roster(version):
    from fedrisk.identity import load_roster
    uri, log, _ = version
    assert not approve(uri, MODEL, "1", "alice", audit_log=log).promoted
    assert approve(uri, MODEL, "1", "bob", audit_log=log).promoted
    assert str(_champion(uri)) == "1"
    assert audit.verify_signatures(log, load_roster()) is None


def test_a_decoy_run_named_in_the_registry_tags_is_refused(version):
    """The trainer points the version's run tag at a run 'trained by bob', to pass as an approver."""
    uri, log, _ = version
    client = MlflowClient(uri)
    decoy = client.create_run(client.get_experiment_by_name("e").experiment_id, tags={run_schema.TRAINER: "bob"})
    client.set_model_version_tag(MODEL, "1", run_schema.RUN_ID, decoy.info.run_id)
    with pytest.raises(FourEyesRefused, match="tags were edited"):
        approve(uri, MODEL, "1", "alice", audit_log=log)


def test_a_blocked_verdict_turned_to_pass_in_the_registry_is_refused(version):
    """No override needed, the attacker hopes: the registry's verdict tag is edited from block to pass."""
    uri, log, _ = version
    MlflowClient(uri).set_model_version_tag(MODEL, "2", run_schema.GATE_VERDICT, "pass")
    with pytest.raises(FourEyesRefused, match="signed in the audit log says block"):
        approve(uri, MODEL, "2", "alice", audit_log=log)


def test_files_swapped_between_two_approvals_are_refused(version):
    """The trainer swaps the weights under version 1 after alice approved them: bob's approval
    would promote files nobody approved."""
    uri, log, run_id = version
    client = MlflowClient(uri)
    client.log_text(run_id, "weights as judged", "model/weights.pt")
    approve(uri, MODEL, "1", "alice", audit_log=log)
    client.log_text(run_id, "other weights", "model/weights.pt")
    with pytest.raises(FourEyesRefused, match="files changed since alice approved them"):
        approve(uri, MODEL, "1", "bob", audit_log=log)
    assert _champion(uri) is None
    client.log_text(run_id, "weights as judged", "model/weights.pt")  # put back: what alice approved
    assert approve(uri, MODEL, "1", "bob", audit_log=log).promoted


def test_promote_names_the_version_an_alias_points_at(version, capsys):
    """`fedrisk promote NAME@ALIAS`: the alias is read once and the approval names its version."""
    from fedrisk.cli import main

    uri, log, _ = version
    MlflowClient(uri).set_registered_model_alias(MODEL, "challenger", "1")
    assert main(["promote", f"{MODEL}@challenger", "--approver", "alice", "--tracking-uri", uri, "--audit-log", log]) == 0
    assert "approval 1 of 2 recorded for m/1 by alice" in capsys.readouterr().out
    assert main(["promote", f"{MODEL}@nobody", "--approver", "bob", "--tracking-uri", uri, "--audit-log", log]) == 2
    assert "model m@nobody not found in the registry" in capsys.readouterr().err
    assert main(["promote", f"{MODEL}/7", "--approver", "bob", "--tracking-uri", uri, "--audit-log", log]) == 2
    assert _champion(uri) is None
