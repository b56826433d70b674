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

from fedrisk import audit, identity, run_schema
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


def recorded_digests(log: str | Path, alias: str = CHAMPION) -> dict[tuple[str, str], str]:
    """(model, version) -> SHA-256 of its files when it last got `alias`: champion by a promotion or
    rollback (signed by approvers), challenger by the gate's verdict."""
    digests: dict[tuple[str, str], str] = {}
    for _, entry in audit.entries(log):
        details, event = entry["details"], entry["event"]
        if "model_sha256" not in details:
            continue
        if alias == CHAMPION and event in ("promotion", "override_promotion", "rollback"):
            version = details["to_version"] if event == "rollback" else details["version"]
            digests[(str(details["model"]), str(version))] = str(details["model_sha256"])
        elif alias == CHALLENGER and event == "gate_verdict" and isinstance(details.get("model_version"), str):
            name, _, version = details["model_version"].rpartition("/")
            digests[(name, version)] = str(details["model_sha256"])
    return digests


def unexplained_aliases(tracking_uri: str, log: str | Path) -> list[str]:
    """Each champion or challenger alias that differs from the log's decisions (and a champion whose
    files differ from those its approvers signed), one line each, for
    the models the log decided about and those with a version that names this log (the store may
    hold other people's models: not ours to judge)."""
    from fedrisk.serving import model_digest

    client = MlflowClient(tracking_uri)
    expected = expected_aliases(log)
    digests = {alias: recorded_digests(log, alias) for alias in ALIASES}
    mine = audit.log_id(log)
    looks = {identity.skeleton(name): name for name in expected}
    problems = []
    for model in _registered(client):
        held = sorted(alias for alias in (model.aliases or {}) if alias in ALIASES)
        if model.name not in expected and identity.skeleton(model.name) in looks and held:
            problems.append(f"registered model '{model.name}' looks like {looks[identity.skeleton(model.name)]} "
                            f"and holds {', '.join(held)}: a look-alike fedrisk never registered")
            continue
        if model.name not in expected and not _names_log(client, model.name, mine):
            continue
        actual = {alias: str(version) for alias, version in (model.aliases or {}).items() if alias in ALIASES}
        decided = expected.get(model.name)
        for alias in ALIASES:
            have, want = actual.get(alias), (decided or {}).get(alias)
            if have == want:
                recorded = digests[alias].get((model.name, have)) if have else None
                if recorded is not None and model_digest(f"models:/{model.name}/{have}", tracking_uri) != recorded:
                    signed = "the approvers signed" if alias == CHAMPION else "the gate judged"
                    problems.append(f"{model.name}@{alias} (version {have}): its files changed since "
                                    f"{'it was approved' if alias == CHAMPION else 'the gate judged them'} "
                                    f"(the SHA-256 {signed} no longer matches)")
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
