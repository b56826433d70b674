"""The registry's `champion` and `challenger` aliases against the decisions in the audit log.

fedrisk moves an alias only next to a signed entry: the gate's verdict names the challenger
(a version that passed or warned; a blocked one loses it), a promotion or an override the
champion, a rollback the champion before it. Replaying those entries gives the aliases the
registry should show; anyone with MLflow's UI or REST API can set one by hand, and only this
comparison notices.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fedrisk import audit, run_schema
from fedrisk.validation import CHALLENGER, CHAMPION

ALIASES = (CHAMPION, CHALLENGER)


def expected_aliases(log: str | Path) -> dict[str, dict[str, str]]:
    """model -> {alias: version} as the log's decisions leave them (an intact log: `audit.verify`)."""
    models: dict[str, dict[str, str]] = {}
    for _, entry in audit.entries(log):
        details, event = entry["details"], entry["event"]
        if event == "gate_verdict" and isinstance(details.get("model_version"), str):
            name, _, version = details["model_version"].rpartition("/")
            aliases = models.setdefault(name, {})
            if details.get("verdict") != "block":
                aliases[CHALLENGER] = version
            elif aliases.get(CHALLENGER) == version:
                del aliases[CHALLENGER]
        elif event in ("promotion", "override_promotion"):
            models.setdefault(str(details["model"]), {})[CHAMPION] = str(details["version"])
        elif event == "rollback":
            models.setdefault(str(details["model"]), {})[CHAMPION] = str(details["to_version"])
    return models


def recorded_digests(log: str | Path) -> dict[tuple[str, str], str]:
    """(model, version) -> SHA-256 of its files when it last became champion (promotion or rollback)."""
    digests: dict[tuple[str, str], str] = {}
    for _, entry in audit.entries(log):
        details = entry["details"]
        if entry["event"] in ("promotion", "override_promotion", "rollback") and "model_sha256" in details:
            version = details["to_version"] if entry["event"] == "rollback" else details["version"]
            digests[(str(details["model"]), str(version))] = str(details["model_sha256"])
    return digests


def unexplained_aliases(tracking_uri: str, log: str | Path) -> list[str]:
    """Each champion or challenger alias that differs from the log's decisions (and a champion whose
    files differ from those its approvers signed), one line each, for
    the models the log decided about and those with a version that names this log (the store may
    hold other people's models: not ours to judge)."""
    from fedrisk.serving import model_digest

    client = MlflowClient(tracking_uri)
    expected, digests = expected_aliases(log), recorded_digests(log)
    mine = audit.log_id(log)
    problems = []
    for model in _registered(client):
        if model.name not in expected and not _names_log(client, model.name, mine):
            continue
        actual = {alias: str(version) for alias, version in (model.aliases or {}).items() if alias in ALIASES}
        decided = expected.get(model.name)
        for alias in ALIASES:
            have, want = actual.get(alias), (decided or {}).get(alias)
            if have == want:
                approved = digests.get((model.name, have)) if alias == CHAMPION and have else None
                if approved is not None and model_digest(f"models:/{model.name}/{have}", tracking_uri) != approved:
                    problems.append(f"{model.name}@{alias} (version {have}): its files changed since it was approved "
                                    "(the SHA-256 the approvers signed no longer matches)")
                continue
            if decided is None:
                problems.append(f"{model.name}@{alias} is version {have}, but the audit log holds no decision about "
                                f"{model.name}: set outside fedrisk")
            elif have is None:
                problems.append(f"{model.name} has no {alias}, but the audit log's last decision made version {want} "
                                f"{alias}: removed outside fedrisk")
            else:
                said = f"version {want}" if want else "no version"
                problems.append(f"{model.name}@{alias} is version {have}, but the audit log's decisions give it to "
                                f"{said}: moved outside fedrisk")
    return problems


def _names_log(client: MlflowClient, name: str, log_id: str) -> bool:
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return False
    return any(v.tags.get(run_schema.AUDIT_LOG_ID) == log_id for v in versions)


def _registered(client: MlflowClient) -> list:
    models, token = [], None
    while True:
        try:
            page = client.search_registered_models(max_results=1000, page_token=token)
        except MlflowException:
            return models
        models += list(page)
        token = page.token
        if not token:
            return models
