"""`fedrisk institution`: an institution's own policy and ledger, and the four-eyes cap raise."""

from __future__ import annotations

import json

import pytest

from fedrisk.cli import main
from fedrisk.guard import homes_root, ledger_path, load_policy
from fedrisk.ledger import PrivacyLedger, Release

WHY = "board decision of 2026-12-01: retraining programme"


SPEND = Release("train", "dp_sgd", 2.0, 0.05, 250)


def _spend(name: str) -> PrivacyLedger:
    home = homes_root() / name
    policy = load_policy(home, name)
    ledger = PrivacyLedger.open(ledger_path(home, policy, name), name, policy.privacy.lifetime_epsilon,
                                policy.privacy.delta)
    ledger.plan("c1", [SPEND], policy.privacy.lifetime_epsilon, {})
    ledger.charge("c1", SPEND)
    return ledger


def _cap(name: str) -> float:
    home = homes_root() / name
    return json.loads((home / "ledger.json").read_text())["cap"]


def test_show_reports_the_policy_and_what_each_mechanism_spent(capsys):
    ledger = _spend("inst01")
    assert main(["institution", "show", "inst01"]) == 0
    out = capsys.readouterr().out
    assert "lifetime cap 6" in out and "DP required: yes" in out
    assert f"spent {ledger.spent():.3f}" in out and "dp_sgd" in out


def test_a_policy_edit_is_validated_and_audited(capsys):
    assert main(["institution", "policy", "inst01", "inst02", "--set", "never_use=[email, phone]"]) == 0
    assert load_policy(homes_root() / "inst02", "inst02").never_use == ["email", "phone"]
    assert main(["institution", "policy", "inst01", "--set", "privacy.lifetime_eps=9"]) == 2
    assert "no key privacy.lifetime_eps" in capsys.readouterr().err
    assert main(["institution", "policy", "inst01", "--set", "privacy.max_campaign_epsilon=9"]) == 2
    assert "cannot exceed privacy.lifetime_epsilon" in capsys.readouterr().err
    events = [json.loads(line)["event"] for line in (homes_root() / "inst01" / "audit.jsonl").read_text().splitlines()]
    assert events.count("policy_changed") == 1


def test_an_edited_policy_alone_does_not_raise_the_cap():
    _spend("inst01")
    assert main(["institution", "policy", "inst01", "--set", "privacy.lifetime_epsilon=10"]) == 0
    ledger = PrivacyLedger.open(homes_root() / "inst01" / "ledger.json", "inst01", 10.0, 1e-6)
    assert ledger.effective_cap(10.0) == 6.0


def test_two_different_approvers_raise_the_cap(capsys):
    _spend("inst01")
    raise_to = ["institution", "raise-cap", "inst01", "--to", "8", "--justification", WHY]
    assert main([*raise_to, "--approver", "alice"]) == 2  # the policy must state the new cap first
    assert "state the new cap 8 there first" in capsys.readouterr().err
    main(["institution", "policy", "inst01", "--set", "privacy.lifetime_epsilon=8"])
    assert main([*raise_to, "--approver", "alice"]) == 0 and _cap("inst01") == 6.0
    assert main([*raise_to, "--approver", "ＡＬＩＣＥ\u200b"]) == 3  # the same person, spelled otherwise
    assert "a second, different approver is needed" in capsys.readouterr().err
    assert _cap("inst01") == 6.0
    assert main([*raise_to, "--approver", "bob"]) == 0 and _cap("inst01") == 8.0
    assert main(["audit", "verify", str(homes_root() / "inst01" / "audit.jsonl"), "--chain-only"]) == 0
    ledger = json.loads((homes_root() / "inst01" / "ledger.json").read_text())
    assert ledger["cap_changes"][0]["approvers"] == ["alice", "bob"]


def test_a_short_justification_or_a_cap_below_the_ledgers_is_refused(capsys):
    _spend("inst01")
    assert main(["institution", "raise-cap", "inst01", "--to", "8", "--approver", "a", "--justification", "ok"]) == 2
    assert main(["institution", "raise-cap", "inst01", "--to", "5", "--approver", "a", "--justification", WHY]) == 2
    assert "a raise must go above it" in capsys.readouterr().err


def test_a_forged_approval_in_the_log_is_not_counted(capsys):
    """Whoever can write the file adds an approval by hand: the chain breaks, nothing counts."""
    _spend("inst01")
    main(["institution", "policy", "inst01", "--set", "privacy.lifetime_epsilon=8"])
    log = homes_root() / "inst01" / "audit.jsonl"
    forged = {"seq": 99, "time": "2026-12-01T00:00:00+00:00", "event": "cap_approval", "actor": "mallory",
              "details": {"institution": "inst01", "to": 8.0, "approver": "carol", "justification": WHY},
              "prev": "0" * 64, "hash": "0" * 64}
    with open(log, "a") as handle:
        handle.write(json.dumps(forged) + "\n")
    assert main(["institution", "raise-cap", "inst01", "--to", "8", "--approver", "bob", "--justification", WHY]) == 2
    assert "audit log is broken" in capsys.readouterr().err
    assert _cap("inst01") == 6.0


def test_a_deployed_institution_names_its_home(tmp_path, capsys):
    home = tmp_path / "bank-home"
    assert main(["institution", "policy", "inst09", "--home", str(home), "--set", "release.min_count=50"]) == 0
    assert load_policy(home, "inst09").release.min_count == 50
    assert main(["institution", "show", "inst09", "--home", str(home)]) == 0
    assert f"home {home}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["institution", "policy", "inst01"], ["institution", "raise-cap", "inst01"]])
def test_missing_arguments_are_usage_errors(argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
