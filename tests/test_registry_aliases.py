"""The registry's aliases against the audit log's decisions, played by someone with the MLflow UI
(or its REST API) who sets `champion` by hand around `fedrisk promote` and its two approvers."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from fedrisk import audit, run_schema
from fedrisk.registry_check import expected_aliases, unexplained_aliases
from fedrisk.serving import model_digest

MODEL = "fedrisk-credit"


@pytest.fixture()
def store(tmp_path):
    """A real MLflow registry with three versions and the log of what fedrisk decided about them:
    versions 1 and 2 passed the gate (2 is challenger), 3 was blocked, 1 was promoted."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.create_registered_model(MODEL)
    for version in ("1", "2", "3"):
        files = tmp_path / f"model{version}"
        files.mkdir()
        (files / "weights.pt").write_bytes(bytes([int(version)]) * 64)
        client.create_model_version(MODEL, source=str(files))
    log = tmp_path / "audit.jsonl"
    for version, verdict in (("1", "pass"), ("2", "warn"), ("3", "block")):
        audit.append(log, "gate_verdict", "tom", {"run_id": f"r{version}", "verdict": verdict,
                                                  "model_version": f"{MODEL}/{version}",
                                                  "model_sha256": model_digest(f"models:/{MODEL}/{version}", uri)})
    audit.append(log, "promotion", "bob", {"run_id": "r1", "model": MODEL, "version": "1", "previous_champion": None,
                                           "model_sha256": model_digest(f"models:/{MODEL}/1", uri)})
    client.set_registered_model_alias(MODEL, "challenger", "2")
    client.set_registered_model_alias(MODEL, "champion", "1")
    return uri, client, log


def test_aliases_as_the_log_decided_are_explained(store):
    uri, client, log = store
    assert expected_aliases(log) == {MODEL: {"champion": "1", "challenger": "2"}}
    assert unexplained_aliases(uri, log) == []


def test_a_champion_set_by_hand_is_flagged(store):
    uri, client, log = store
    client.set_registered_model_alias(MODEL, "champion", "2")  # MLflow's own "Promote model" button
    problems = unexplained_aliases(uri, log)
    assert len(problems) == 1 and f"{MODEL}@champion is version 2" in problems[0] and "version 1" in problems[0]


def test_a_blocked_version_made_challenger_by_hand_is_flagged(store):
    uri, client, log = store
    client.set_registered_model_alias(MODEL, "challenger", "3")
    assert "challenger is version 3" in " ".join(unexplained_aliases(uri, log))


def test_an_alias_removed_by_hand_is_flagged(store):
    uri, client, log = store
    client.delete_registered_model_alias(MODEL, "champion")
    assert "has no champion" in " ".join(unexplained_aliases(uri, log))


def test_an_alias_on_a_model_the_log_never_decided_about_is_flagged(store):
    """A version fedrisk registered under this log (its tags name the log), made champion by hand
    before any decision; another team's model in the same store is not ours to judge."""
    uri, client, log = store
    for name, tags in (("fedrisk-fraud", {run_schema.AUDIT_LOG_ID: audit.log_id(log)}), ("their-model", {})):
        client.create_registered_model(name)
        client.create_model_version(name, source="/tmp/x", tags=tags)
        client.set_registered_model_alias(name, "champion", "1")
    problems = unexplained_aliases(uri, log)
    assert len(problems) == 1 and "fedrisk-fraud@champion" in problems[0] and "no decision" in problems[0]


def test_rollback_and_a_later_block_are_replayed(store):
    uri, client, log = store
    audit.append(log, "promotion", "bob", {"run_id": "r2", "model": MODEL, "version": "2", "previous_champion": "1"})
    audit.append(log, "rollback", "bob", {"run_id": "r2", "model": MODEL, "from_version": "2", "to_version": "1"})
    audit.append(log, "gate_verdict", "tom", {"run_id": "r2", "verdict": "block", "model_version": f"{MODEL}/2"})
    assert expected_aliases(log) == {MODEL: {"champion": "1"}}  # version 2, re-judged blocked, lost challenger
    assert "challenger is version 2" in " ".join(unexplained_aliases(uri, log))
    client.delete_registered_model_alias(MODEL, "challenger")
    assert unexplained_aliases(uri, log) == []


def test_champion_files_changed_after_approval_are_flagged(store, tmp_path):
    """The alias stays, the files under it change: the weights swapped in the artifact store."""
    uri, client, log = store
    assert unexplained_aliases(uri, log) == []
    (tmp_path / "model1" / "weights.pt").write_bytes(b"\x00" * 64)
    problems = unexplained_aliases(uri, log)
    assert len(problems) == 1 and "files changed since it was approved" in problems[0]
    (tmp_path / "model1" / "weights.pt").write_bytes(b"\x01" * 64)
    (tmp_path / "model1" / "extra.py").write_text("import os")  # a file added next to them
    assert "files changed" in " ".join(unexplained_aliases(uri, log))


def test_challenger_files_changed_after_the_gate_are_flagged(store, tmp_path):
    """Found by adversarial review: only the champion's files were compared."""
    uri, client, log = store
    (tmp_path / "model2" / "weights.pt").write_bytes(b"\x07" * 64)
    problems = unexplained_aliases(uri, log)
    assert len(problems) == 1 and "challenger (version 2): its files changed since the gate judged them" in problems[0]


@pytest.mark.parametrize("look_alike", ["Fedrisk-credit", "fedrisk\u2010credit", "fedrisk-credit\u200b"])
def test_a_look_alike_model_holding_an_alias_is_flagged(store, look_alike):
    """Found by adversarial review: a model whose name only looks like the consortium's was skipped."""
    uri, client, log = store
    client.create_registered_model(look_alike)
    client.create_model_version(look_alike, source="/tmp/x")
    client.set_registered_model_alias(look_alike, "champion", "1")
    problems = unexplained_aliases(uri, log)
    assert len(problems) == 1 and "looks like fedrisk-credit" in problems[0]
