"""Four-eyes promotion to `champion`, overrides of a blocked gate, and rollback.

State lives in the MLflow registry, where validators look: each version's approvals in a
tag, the order of champions in a tag of the registered model. Every decision is appended
to the audit log and the log's head copied onto the version and its training run.

Approvers are names the validator states; fedrisk checks who they are not (the trainer,
each other), not who they are: in a bank, wrap the command in the identity check of the
machine it runs on (the audit entries also record the operating-system user).
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fedrisk import audit
from fedrisk.errors import FedriskInputError, PromotionRefused
from fedrisk.tracking import audit_event
from fedrisk.validation import audit_path_of

CHAMPION = "champion"
APPROVERS_NEEDED = 2
MIN_JUSTIFICATION = 20  # characters: a sentence, not "ok"
APPROVALS_TAG = "fedrisk.approvals"
HISTORY_TAG = "fedrisk.champion_history"
OVERRIDE_TAG = "fedrisk.override"
ARCHIVED_TAG = "fedrisk.archived"


@dataclass(frozen=True)
class Decision:
    model: str
    version: str
    approvers: list[str]
    promoted: bool
    previous: str | None = None
    override: bool = False
    audit_head: str = ""
    notes: list[str] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _version(client: MlflowClient, name: str, version: str) -> Any:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise FedriskInputError(f"model {name} version {version} not found in the registry") from None


def champion_version(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def approvals(mv: Any) -> list[dict[str, Any]]:
    return json.loads(mv.tags.get(APPROVALS_TAG, "[]"))


def _set_version_tags(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _record(client: MlflowClient, run_id: str, log: str, event: str, actor: str, details: dict[str, Any],
            name: str, version: str) -> str:
    entry = audit_event(client, run_id, log, event, actor, {"os_user": getpass.getuser(), **details})
    _set_version_tags(client, name, version, audit.anchor_tags(log, entry))
    return audit.head_tag(entry)


def approve(tracking_uri: str, name: str, version: str, approver: str, *, override: bool = False,
            justification: str | None = None, audit_log: str | None = None) -> Decision:
    """Record one approval; the second distinct approver's moves `champion` to this version."""
    client = MlflowClient(tracking_uri)
    mv = _version(client, name, version)
    version = str(mv.version)
    run_id = mv.tags.get("fedrisk.run_id") or mv.run_id
    run_tags = client.get_run(run_id).data.tags
    approver = " ".join(approver.split())
    justification = " ".join((justification or "").split())
    trainer = run_tags.get("fedrisk.trainer")
    verdict = mv.tags.get("fedrisk.gate.verdict")
    where = f"{name}/{version}"
    if not approver:
        raise FedriskInputError("--approver needs a name")
    if verdict is None:
        raise PromotionRefused(f"{where} has no gate verdict: run `fedrisk validate {run_id}` first")
    if not trainer:
        raise PromotionRefused(f"{where}: its campaign run does not name a trainer, so four eyes cannot be checked")
    if approver.casefold() == trainer.casefold():
        raise PromotionRefused(f"{where}: {approver} trained this model; the trainer cannot approve it")
    blocked = verdict == "block"
    if blocked and not override:
        raise PromotionRefused(
            f"{where} was blocked by the gate ({mv.tags.get('fedrisk.gate.failed_rules', '?')}); promoting it "
            "needs --override with a --justification, from two approvers")
    if override and not blocked:
        raise FedriskInputError(f"--override is for a version the gate blocked; {where}'s verdict is {verdict}")
    if override and len(justification) < MIN_JUSTIFICATION:
        raise PromotionRefused(f"{where}: an override needs a written --justification of at least "
                               f"{MIN_JUSTIFICATION} characters")
    if champion_version(client, name) == version:
        raise PromotionRefused(f"{where} is already the champion")
    given = approvals(mv)
    # approvals given before the gate blocked this version do not count for an override
    if any(a["approver"].casefold() == approver.casefold() and (a["override"] or not blocked) for a in given):
        raise PromotionRefused(f"{where}: {approver} has already approved; a second, different approver is needed")

    given.append({"approver": approver, "time": _now(), "verdict": verdict, "override": override,
                  **({"justification": justification} if justification else {})})
    client.set_model_version_tag(name, version, APPROVALS_TAG, json.dumps(given))
    log = audit_path_of(run_tags, audit_log)
    head = _record(client, run_id, log, "approval", approver, {
        "model": name, "version": version, "verdict": verdict, "override": override,
        "justification": justification or None, "approval": len(given)}, name, version)
    # A blocked version counts only override approvals: each approver signed the justification.
    counted = [a for a in given if a["override"] or not blocked]
    if len(counted) < APPROVERS_NEEDED:
        return Decision(name, version, [a["approver"] for a in counted], False, override=override, audit_head=head)

    previous = champion_version(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    history = json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, version]))
    _set_version_tags(client, name, version, {"fedrisk.champion_since": _now(), ARCHIVED_TAG: "false"})
    if previous is not None:
        _set_version_tags(client, name, previous, {ARCHIVED_TAG: "true", "fedrisk.archived_at": _now(),
                                                   "fedrisk.replaced_by": version})
    approvers = [a["approver"] for a in counted]
    if blocked:  # the override mark: on the version, its description, its run, and the log
        reasons = " | ".join(f"{a['approver']}: {a['justification']}" for a in counted)
        mark = {OVERRIDE_TAG: "true", "fedrisk.override_rules": mv.tags.get("fedrisk.gate.failed_rules", "?"),
                "fedrisk.override_justification": reasons[:4000], "fedrisk.override_approvers": ", ".join(approvers)}
        _set_version_tags(client, name, version, mark)
        client.update_model_version(name, version, f"OVERRIDE: champion although the gate blocked it "
                                                   f"({mark['fedrisk.override_rules']}). Approved by "
                                                   f"{mark['fedrisk.override_approvers']}: {reasons}"[:5000])
        for key, value in mark.items():
            client.set_tag(run_id, key, value)
    head = _record(client, run_id, log, "override_promotion" if blocked else "promotion", approver, {
        "model": name, "version": version, "previous_champion": previous, "approvers": approvers,
        "verdict": verdict}, name, version)
    return Decision(name, version, approvers, True, previous, blocked, head)


def rollback(tracking_uri: str, name: str, actor: str, *, reason: str | None = None,
             audit_log: str | None = None) -> Decision:
    """Give `champion` back to the version that held it before the current one."""
    client = MlflowClient(tracking_uri)
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise FedriskInputError(f"registered model {name} not found") from None
    current = champion_version(client, name)
    if current is None:
        raise PromotionRefused(f"{name} has no champion to roll back")
    history = json.loads(model.tags.get(HISTORY_TAG, "[]"))
    if not history or history[-1] != current:
        raise PromotionRefused(f"{name}: the champion alias ({current}) was moved outside fedrisk (its history "
                               f"ends with {history[-1] if history else 'nothing'}); set it by hand in MLflow")
    earlier = [v for v in history[:-1] if v != current]
    if not earlier:
        raise PromotionRefused(f"{name}/{current} is the first champion: there is no earlier one to restore")
    restored = earlier[-1]
    _version(client, name, restored)  # still registered
    client.set_registered_model_alias(name, CHAMPION, restored)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[:-1]))
    _set_version_tags(client, name, current, {ARCHIVED_TAG: "true", "fedrisk.archived_at": _now(),
                                              "fedrisk.rolled_back": "true", "fedrisk.replaced_by": restored})
    _set_version_tags(client, name, restored, {ARCHIVED_TAG: "false", "fedrisk.restored_at": _now()})
    mv = client.get_model_version(name, current)
    run_tags = client.get_run(mv.tags.get("fedrisk.run_id") or mv.run_id).data.tags
    head = _record(client, mv.tags.get("fedrisk.run_id") or mv.run_id, audit_path_of(run_tags, audit_log),
                   "rollback", actor, {"model": name, "from_version": current, "to_version": restored,
                                       "reason": " ".join((reason or "").split()) or None}, name, restored)
    return Decision(name, restored, [], True, current, audit_head=head)
