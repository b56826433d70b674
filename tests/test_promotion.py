"""Who counts as one approver: names the way people (and attackers) type them."""

from __future__ import annotations

from fedrisk.promotion import normalise_name


def test_lookalike_invisible_and_spacing_variants_are_one_person():
    same = ["Alice Smith", "alice  smith", " ALICE SMITH ", "ａｌｉｃｅ ｓｍｉｔｈ", "alice\u200b smith",
            "alice\u00a0smith", "Alice Smith\u200d", "alicesmith", "а l i c e smith"]  # the last: Cyrillic a
    assert {normalise_name(n) for n in same} == {"alicesrnith"}  # UTS #39 draws 'm' as 'rn'
    assert normalise_name("bob") == normalise_name("b o b") != normalise_name("rob")
    assert normalise_name("alice") != normalise_name("alicia")
    assert normalise_name("\u200b \u200d") == ""  # nothing but invisible characters: no name


def test_approvals_count_only_for_their_own_training_run(tmp_path):
    """A version number is reused by a re-created model, or by another store sharing the log."""
    from fedrisk import audit
    from fedrisk.promotion import logged_approvals

    log = tmp_path / "audit.jsonl"

    def approval(actor: str, run_id: str) -> None:
        audit.append(log, "approval", actor, {"run_id": run_id, "model": "m", "version": "1", "verdict": "pass",
                                              "policy_sha256": "p", "override": False})

    approval("alice", "run-a")
    approval("bob", "run-b")
    assert [a["approver"] for a in logged_approvals(str(log), "m", "1", "run-b")] == ["bob"]
    audit.append(log, "promotion", "bob", {"run_id": "run-a", "model": "m", "version": "1"})
    approval("carol", "run-b")
    assert [a["approver"] for a in logged_approvals(str(log), "m", "1", "run-b")] == ["bob", "carol"]
    assert logged_approvals(str(log), "m", "1", "run-a") == []  # used up by run-a's promotion


def test_a_refusal_keeps_its_reason_when_the_audit_log_cannot_be_written(tmp_path):
    import pytest

    from fedrisk.config import load_config
    from fedrisk.errors import FedriskInputError
    from fedrisk.launcher import simulate

    (tmp_path / "blocker").write_text("a file where the log's folder should be")
    config = load_config(None, {"data.source": "files", "data.files": {"a": "missing_a.csv", "b": "missing_b.csv"},
                                "audit.path": str(tmp_path / "blocker" / "audit.jsonl")}, work_dir=tmp_path)
    with pytest.raises(FedriskInputError, match="data file not found"):
        simulate(config)
