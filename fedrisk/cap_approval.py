"""Raising an institution's lifetime privacy cap: a decision of two people, in its audit log.

A campaign flag cannot raise the cap, and neither can an edit of the policy alone: the ledger
keeps the cap it was created with. The institution first states the new cap in its policy,
then two approvers (four eyes, as for promotion: not the same person twice, whatever the
spelling of the name) each approve it with a justification. The first approval is recorded;
the second raises the ledger's cap. Both are entries of the hash-chained audit log in the
institution's home (`audit.jsonl`), which `fedrisk audit verify` checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedrisk import audit
from fedrisk.errors import FedriskInputError, FourEyesRefused
from fedrisk.guard import ledger_path, load_policy
from fedrisk.ledger import PrivacyLedger
from fedrisk.promotion import APPROVERS_NEEDED, MIN_JUSTIFICATION, normalise_name

AUDIT_FILE = "audit.jsonl"


@dataclass(frozen=True)
class CapDecision:
    institution: str
    cap: float  # the ledger's cap after this approval
    requested: float
    approvers: list[str]
    raised: bool


def _pending(log: Path, name: str, requested: float) -> list[dict]:
    """Approvals of this raise since the cap last changed."""
    pending: list[dict] = []
    if not log.exists():
        return pending
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        details = entry.get("details", {})
        if details.get("institution") != name:
            continue
        if entry["event"] == "cap_raised":
            pending = []
        elif entry["event"] == "cap_approval" and details.get("to") == requested:
            pending.append(entry)
    return pending


def approve_cap(home: Path, name: str, requested: float, approver: str, justification: str) -> CapDecision:
    """Record one approval of a higher lifetime cap; the second approver's raises it."""
    if len((justification or "").strip()) < MIN_JUSTIFICATION:
        raise FedriskInputError(f"a cap raise needs a justification of at least {MIN_JUSTIFICATION} characters",
                                institution=name)
    policy = load_policy(home, name)
    rules = policy.privacy
    if rules.lifetime_epsilon < requested:
        raise FedriskInputError(f"its policy states privacy.lifetime_epsilon {rules.lifetime_epsilon:g}: state the new "
                                f"cap {requested:g} there first", institution=name, file=str(home / "policy.yaml"))
    ledger = PrivacyLedger.open(ledger_path(home, policy, name), name, rules.lifetime_epsilon, rules.delta)
    if requested <= ledger.cap:
        raise FedriskInputError(f"the ledger's cap is {ledger.cap:g} already; a raise must go above it",
                                institution=name)
    log = home / AUDIT_FILE
    with audit.locked(log, "approval"):
        check = audit.verify(log) if log.exists() else None
        if check is not None and not check.intact:
            raise FedriskInputError(f"its audit log is broken at line {check.line} ({check.problem}): approvals "
                                    "cannot be counted", institution=name, file=str(log))
        pending = _pending(log, name, requested)
        given = {normalise_name(e["details"]["approver"]): e["details"]["approver"] for e in pending}
        if normalise_name(approver) in given:
            raise FourEyesRefused(f"{given[normalise_name(approver)]} already approved the cap of {requested:g}: a "
                                   "second, different approver is needed", institution=name)
        entry = audit.append(log, "cap_approval", audit.default_actor(),
                             {"institution": name, "to": requested, "from": ledger.cap, "approver": approver,
                              "justification": justification})
        approvers = [*given.values(), approver]
        if len(approvers) < APPROVERS_NEEDED:
            return CapDecision(name, ledger.cap, requested, approvers, False)
        ledger.raise_cap(requested, approvers, justification, entry["hash"])
        audit.append(log, "cap_raised", audit.default_actor(),
                     {"institution": name, "to": requested, "approvers": approvers, "ledger": str(ledger.path)})
    return CapDecision(name, requested, requested, approvers, True)
