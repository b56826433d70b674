"""Four-eyes promotion to `champion`, overrides of a blocked gate, and rollback.

The audit log is the record of approvals: an approval counts only as an `approval` entry of
an intact log, given on the version's current verdict from its campaign's own policy, and
each promotion uses the approvals up. The registry mirrors the state where validators look
(tags on versions, the order of champions on the registered model). One lock per log keeps
two validators acting at once from losing an approval.

An approver is a key, not a spelling: the approval entry is signed with the approver's own
key (`fedrisk keys create`), and counts only when the consortium's roster, signed by its CA,
lists that key as an approver's under that name. Distinct approvers are distinct keys; the key
that signed the campaign, and any key of the trainer, never approves it. Names are compared
by their confusable skeleton (`fedrisk.identity.skeleton`): `rооt` with Cyrillic o is `root`.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fedrisk import audit, identity, run_schema
from fedrisk.errors import FedriskInputError, FourEyesRefused
from fedrisk.policy import load_policy, policy_sha256
from fedrisk.registry_check import recorded_digests
from fedrisk.serving import model_digest
from fedrisk.tracking import audit_event
from fedrisk.validation import CHAMPION, audit_log_of, campaign_policy_path

APPROVERS_NEEDED = 2
MIN_JUSTIFICATION = 20  # characters: a sentence, not "ok"


@dataclass(frozen=True)
class Decision:
    model: str
    version: str
    approvers: list[str]
    promoted: bool
    previous: str | None = None
    override: bool = False
    audit_head: str = ""


def normalise_name(name: str) -> str:
    """One person, one name: the confusable skeleton ('Alice', 'ａｌｉｃｅ', 'alice\u200b', 'а l i c e'
    with a Cyrillic a are the same approver)."""
    return identity.skeleton(name)


def consortium_roster() -> identity.Roster:
    """The roster four eyes are checked against; without one there are no four eyes to check."""
    try:
        return identity.load_roster()
    except FedriskInputError as err:
        raise FourEyesRefused(f"approvals need the consortium's roster: {err.one_line()}") from None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _version(client: MlflowClient, name: str, version: str) -> Any:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise FedriskInputError(f"model {name}/{version} not found in the registry") from None


def registered_version(tracking_uri: str, named: Any) -> str:
    """The version an alias (`model_names.ModelName`) points at now: what an approval then names."""
    try:
        return str(MlflowClient(tracking_uri).get_model_version_by_alias(named.name, named.alias).version)
    except MlflowException:
        raise FedriskInputError(f"model {named} not found in the registry") from None


def champion_version(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def _set_version_tags(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _approver_key(entry: dict[str, Any], roster: identity.Roster | None) -> str | None:
    """The key of a signed approval whose signer the roster lists as an approver under that name."""
    if roster is None:
        return entry.get("key") or entry["actor"]
    if "sig" not in entry or not identity.signature_holds(entry["key"], entry["hash"].encode(), entry["sig"]):
        return None
    holder = roster.roles_of(entry["key"]).get("approver")
    return entry["key"] if holder and identity.skeleton(holder) == identity.skeleton(entry["actor"]) else None


def logged_approvals(log: str, name: str, version: str, run_id: str,
                     roster: identity.Roster | None = None) -> list[dict[str, Any]]:
    """Approvals of a version in the log since its last promotion; the log must be intact.
    The training run binds them: a version number is reused by a re-created model or
    another store writing to the same log. With a roster, only approvals signed by a listed
    approver's key count (a line written into the log by hand does not)."""
    check = audit.verify(log)
    if not check.intact:
        raise FourEyesRefused(f"the audit log is broken ({check.problem}): no promotion until it is repaired")
    found: list[dict[str, Any]] = []
    for _, line, _ in audit.read_entries(log):
        entry = json.loads(line)
        details = entry["details"]
        if details.get("model") != name or str(details.get("version")) != version or details.get("run_id") != run_id:
            continue
        if entry["event"] == "approval":
            key = _approver_key(entry, roster)
            if key is None:
                continue
            found.append({"approver": entry["actor"], "time": entry["time"], "key": key, **{k: details.get(k) for k in (
                "verdict", "policy_sha256", "override", "justification", "model_sha256", "os_user")}})
        elif entry["event"] in ("promotion", "override_promotion") and (
                roster is None or audit.verify_signatures_of(entry, roster) is None):
            found = []  # used up
    return found


def _signed_campaign(log: str, run_id: str, name: str, version: str, roster: identity.Roster) -> dict[str, Any]:
    """What the log says of a run, in one pass: its trainer, from the campaign_started entry a
    roster trainer signed; the verdict of the last gate_verdict a roster key signed; and every
    key that signed the campaign's own start or end (none of them may approve it)."""
    found: dict[str, Any] = {"trainer": None, "verdict": None, "campaign_keys": set()}
    for _, line, _ in audit.read_entries(log):
        entry = json.loads(line)
        details = entry["details"]
        if details.get("run_id") != run_id:
            continue
        if entry["event"] in ("campaign_started", "campaign_ended") and entry.get("key"):
            found["campaign_keys"].add(entry["key"])
        if audit.verify_signatures_of(entry, roster) is not None:
            continue
        if entry["event"] == "campaign_started" and found["trainer"] is None:
            found["trainer"] = entry["actor"]
        elif entry["event"] == "gate_verdict" and details.get("model_version") in (None, f"{name}/{version}"):
            found["verdict"] = details.get("verdict")
    return found


def approve(tracking_uri: str, name: str, version: str, approver: str, *, override: bool = False,
            justification: str | None = None, audit_log: str | None = None) -> Decision:
    """Record one approval; the second distinct approver's moves `champion` to this version."""
    client = MlflowClient(tracking_uri)
    mv = _version(client, name, version)
    version = str(mv.version)
    run_id = mv.run_id or mv.tags.get(run_schema.RUN_ID)
    if mv.run_id and mv.tags.get(run_schema.RUN_ID, mv.run_id) != mv.run_id:
        raise FourEyesRefused(f"{name}/{version}: its tag {run_schema.RUN_ID} names run "
                               f"{mv.tags[run_schema.RUN_ID]}, the registry run {mv.run_id}: tags were edited")
    run = client.get_run(run_id)
    log = audit_log_of(run.data.tags, audit_log)
    with audit.locked(Path(log), "promotion"):
        mv = _version(client, name, version)  # fresh, under the lock
        return _approve(client, mv, run, log, approver, override, justification, tracking_uri)


def _approve(client: MlflowClient, mv: Any, run: Any, log: str, approver: str, override: bool,
             justification: str | None, tracking_uri: str) -> Decision:
    name, version, run_id = mv.name, str(mv.version), run.info.run_id
    approver = " ".join(approver.split())
    justification = " ".join((justification or "").split())
    trainer = run.data.tags.get(run_schema.TRAINER)
    verdict = mv.tags.get(run_schema.GATE_VERDICT)
    where = f"{name}/{version}"
    if not normalise_name(approver):
        raise FedriskInputError("--approver needs a name")
    if verdict is None:
        raise FourEyesRefused(f"{where} has no gate verdict: run `fedrisk validate {run_id}` first")
    policy = load_policy(campaign_policy_path(run), run.data.tags.get(run_schema.TASK, "credit"))
    if mv.tags.get(run_schema.GATE_POLICY_SHA256) != policy_sha256(policy):
        raise FourEyesRefused(f"{where}: its verdict comes from policy '{mv.tags.get(run_schema.GATE_POLICY)}', not "
                               f"from its campaign's policy '{policy.name}' as it stands; run `fedrisk validate "
                               f"{run_id}` with that policy")
    if not trainer:
        raise FourEyesRefused(f"{where}: its campaign run does not name a trainer, so four eyes cannot be checked")
    if normalise_name(approver) == normalise_name(trainer):
        raise FourEyesRefused(f"{where}: {approver} trained this model; the trainer cannot approve it")
    roster = consortium_roster()
    signed = _signed_campaign(log, run_id, name, version, roster)
    if signed["trainer"] is None:
        raise FourEyesRefused(f"{where}: the audit log holds no campaign_started entry of run {run_id} signed by a "
                               "trainer in the roster, so its trainer cannot be known")
    if normalise_name(approver) == normalise_name(signed["trainer"]):
        raise FourEyesRefused(f"{where}: {approver} trained this model; the trainer cannot approve it")
    if signed["verdict"] != verdict:
        raise FourEyesRefused(f"{where}: the registry says {verdict}, the last gate verdict signed in the audit log "
                               f"says {signed['verdict'] or 'nothing'}: tags were edited; run `fedrisk validate "
                               f"{run_id}`")
    signer = identity.private_key(approver)
    if signer is None:
        raise FourEyesRefused(f"{where}: this machine holds no key of {approver} (in {identity.keys_dir()}); an "
                               "approval is signed by its approver")
    key = identity.public_text(signer.public_key())
    holder = roster.roles_of(key).get("approver")
    if holder is None or normalise_name(holder) != normalise_name(approver):
        raise FourEyesRefused(f"{where}: {approver}'s key is not an approver's in the roster {roster.path}")
    approver = holder  # recorded as the roster spells it
    trainer_keys = {m.public_key for m in roster.members if normalise_name(m.name) == normalise_name(trainer)}
    if key in trainer_keys | signed["campaign_keys"]:
        raise FourEyesRefused(f"{where}: {approver}'s key trained this model; the trainer cannot approve it")
    blocked = verdict == "block"
    if blocked and not override:
        raise FourEyesRefused(
            f"{where} was blocked by the gate ({mv.tags.get(run_schema.GATE_FAILED_RULES, '?')}); promoting it "
            "needs --override with a --justification, from two approvers")
    if override and not blocked:
        raise FedriskInputError(f"--override is for a version the gate blocked; {where}'s verdict is {verdict}")
    if override and len(justification) < MIN_JUSTIFICATION:
        raise FourEyesRefused(f"{where}: an override needs a written --justification of at least "
                               f"{MIN_JUSTIFICATION} characters")
    if champion_version(client, name) == version:
        raise FourEyesRefused(f"{where} is already the champion")

    def counts(a: dict[str, Any]) -> bool:  # given on this verdict, from this policy, as an override if blocked
        return (a["verdict"] == verdict and a["policy_sha256"] == policy_sha256(policy)
                and (bool(a["override"]) or not blocked))

    counted = [a for a in logged_approvals(log, name, version, run_id, roster) if counts(a)]
    if any(a["key"] == key or normalise_name(a["approver"]) == normalise_name(approver) for a in counted):
        raise FourEyesRefused(f"{where}: {approver} has already approved; a second, different approver is needed")
    digest = model_digest(f"models:/{name}/{version}", tracking_uri)  # the files this approval vouches for
    for earlier in counted:
        if earlier.get("model_sha256") is None:
            raise FourEyesRefused(f"{where}: {earlier['approver']}'s approval does not name the model's files (made "
                                   "before approvals recorded them); it must be given again")
        if earlier["model_sha256"] != digest:
            raise FourEyesRefused(f"{where}: its files changed since {earlier['approver']} approved them (SHA-256 "
                                   f"{earlier['model_sha256'][:12]} then, {digest[:12]} now)")
    entry = audit_event(client, run_id, log, "approval", approver, {
        "model": name, "version": version, "verdict": verdict, "policy_sha256": policy_sha256(policy),
        "override": override, "justification": justification or None, "model_sha256": digest,
        "os_user": getpass.getuser()})
    counted.append({"approver": approver, "time": entry["time"], "key": key, "verdict": verdict, "override": override,
                    "justification": justification or None, "model_sha256": digest, "os_user": getpass.getuser()})
    _set_version_tags(client, name, version, {run_schema.APPROVALS: json.dumps(counted), **audit.anchor_tags(log, entry)})
    if len(counted) < APPROVERS_NEEDED:
        return Decision(name, version, [a["approver"] for a in counted], False, override=override,
                        audit_head=audit.head_tag(entry))

    previous = champion_version(client, name)
    approvers = [a["approver"] for a in counted]
    entry = audit_event(client, run_id, log, "override_promotion" if blocked else "promotion", approver, {
        "model": name, "version": version, "previous_champion": previous, "approvers": approvers,
        "verdict": verdict, "model_sha256": digest, "os_user": getpass.getuser()})
    client.set_registered_model_alias(name, CHAMPION, version)
    history = json.loads(client.get_registered_model(name).tags.get(run_schema.CHAMPION_HISTORY, "[]"))
    client.set_registered_model_tag(name, run_schema.CHAMPION_HISTORY, json.dumps([*history, version]))
    _set_version_tags(client, name, version, {run_schema.CHAMPION_SINCE: _now(), run_schema.ARCHIVED: "false",
                                              run_schema.APPROVALS: "[]", run_schema.APPROVED_BY: json.dumps(counted),
                                              **audit.anchor_tags(log, entry)})
    if previous is not None:
        _set_version_tags(client, name, previous, {run_schema.ARCHIVED: "true", run_schema.ARCHIVED_AT: _now(),
                                                   run_schema.REPLACED_BY: version})
    if blocked:  # the override mark: on the version, its description, its run, and the log
        reasons = " | ".join(f"{a['approver']}: {a['justification']}" for a in counted)
        mark = {run_schema.OVERRIDE: "true", run_schema.OVERRIDE_RULES: mv.tags.get(run_schema.GATE_FAILED_RULES, "?"),
                run_schema.OVERRIDE_JUSTIFICATION: reasons[:4000], run_schema.OVERRIDE_APPROVERS: ", ".join(approvers)}
        _set_version_tags(client, name, version, mark)
        client.update_model_version(name, version, f"OVERRIDE: champion although the gate blocked it "
                                                   f"({mark[run_schema.OVERRIDE_RULES]}). Approved by "
                                                   f"{mark[run_schema.OVERRIDE_APPROVERS]}: {reasons}"[:5000])
        for key, value in mark.items():
            client.set_tag(run_id, key, value)
    return Decision(name, version, approvers, True, previous, blocked, audit.head_tag(entry))


def rollback(tracking_uri: str, name: str, actor: str, *, reason: str | None = None,
             audit_log: str | None = None) -> Decision:
    """Give `champion` back to the version that held it before the current one."""
    client = MlflowClient(tracking_uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise FedriskInputError(f"registered model {name} not found") from None
    current = champion_version(client, name)
    if current is None:
        raise FourEyesRefused(f"{name} has no champion to roll back")
    mv = _version(client, name, current)
    run_id = mv.tags.get(run_schema.RUN_ID) or mv.run_id
    log = audit_log_of(client.get_run(run_id).data.tags, audit_log)
    with audit.locked(Path(log), "promotion"):
        history = json.loads(client.get_registered_model(name).tags.get(run_schema.CHAMPION_HISTORY, "[]"))
        if champion_version(client, name) != current or not history or history[-1] != current:
            raise FourEyesRefused(f"{name}: the champion alias ({current}) was moved outside fedrisk (its history "
                                   f"ends with {history[-1] if history else 'nothing'}); set it by hand in MLflow")
        earlier = [v for v in history[:-1] if v != current]
        if not earlier:
            raise FourEyesRefused(f"{name}/{current} is the first champion: there is no earlier one to restore")
        restored = earlier[-1]
        target = _version(client, name, restored)
        if target.tags.get(run_schema.GATE_VERDICT) == "block" and target.tags.get(run_schema.OVERRIDE) != "true":
            raise FourEyesRefused(f"{name}/{restored}, the previous champion, has since been blocked by the gate; "
                                   "promote a version instead")
        digest = model_digest(f"models:/{name}/{restored}", tracking_uri)
        approved = recorded_digests(log).get((name, restored))
        if approved is not None and approved != digest:
            raise FourEyesRefused(f"{name}/{restored}'s files changed since it was approved (SHA-256 {approved[:12]} "
                                   f"then, {digest[:12]} now); promote a version instead")
        entry = audit_event(client, run_id, log, "rollback", actor, {
            "model": name, "from_version": current, "to_version": restored,
            "reason": " ".join((reason or "").split()) or None, "model_sha256": digest, "os_user": getpass.getuser()})
        client.set_registered_model_alias(name, CHAMPION, restored)
        client.set_registered_model_tag(name, run_schema.CHAMPION_HISTORY, json.dumps(history[:-1]))
        _set_version_tags(client, name, current, {run_schema.ARCHIVED: "true", run_schema.ARCHIVED_AT: _now(),
                                                  run_schema.ROLLED_BACK: "true", run_schema.REPLACED_BY: restored})
        _set_version_tags(client, name, restored, {run_schema.ARCHIVED: "false", run_schema.RESTORED_AT: _now(),
                                                   **audit.anchor_tags(log, entry)})
    return Decision(name, restored, [], True, current, audit_head=audit.head_tag(entry))
