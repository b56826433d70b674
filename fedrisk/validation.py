"""Run the gate on an MLflow run: verdict, report, and the model's alias (or none).

Everything comes from MLflow: the run's metrics, its summed evaluation statistics and the
model it logged. The verdict is stored with the run (tags, JSON, HTML report); a model that
passes or warns is registered and becomes `challenger`; a blocked one is registered without
an alias and tagged with the rules it broke. Promotion to production is a human decision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fedrisk import audit, run_schema
from fedrisk.display import display
from fedrisk.errors import FedriskInputError
from fedrisk.fairness import GroupHistograms
from fedrisk.gate import Verdict, apply_policy
from fedrisk.metrics import EvalStats
from fedrisk.policy import load_policy, policy_sha256
from fedrisk.report import render_report
from fedrisk.tracking import audit_event, read_artifact, run_metrics

CHALLENGER = "challenger"
CHAMPION = "champion"  # moved only by `fedrisk promote` and `fedrisk rollback`


def statistics_to_dict(stats: EvalStats, groups: GroupHistograms, threshold: float,
                       noise: float = 0.0) -> dict[str, Any]:
    """Summed (consortium-level) statistics, kept with the run so the gate can be re-run: the
    institutions' noised releases added up, and the noise per cell they carry."""
    return {
        "threshold": threshold,
        "noise_per_cell": noise,
        "pooled": {f.name: np.asarray(getattr(stats, f.name)).tolist() for f in fields(EvalStats)},
        "groups": {a: {g: [p.tolist(), n.tolist()] for g, (p, n) in by.items()} for a, by in groups.items()},
    }


@dataclass(frozen=True)
class StoredStatistics:
    """A run's summed test statistics as stored: what reports plot."""

    stats: EvalStats
    groups: GroupHistograms
    threshold: float
    noise: float  # DP noise per cell of the sums


def statistics_from_dict(raw: dict[str, Any]) -> StoredStatistics:
    pooled = {k: np.asarray(v, dtype=float) for k, v in raw["pooled"].items()}
    groups = {a: {g: (np.asarray(p), np.asarray(n)) for g, (p, n) in by.items()} for a, by in raw["groups"].items()}
    return StoredStatistics(EvalStats(**pooled), groups, float(raw["threshold"]), float(raw.get("noise_per_cell", 0.0)))


def load_statistics(client: MlflowClient, run_id: str) -> StoredStatistics | None:
    text = read_artifact(client, run_id, run_schema.TEST_STATISTICS_ARTIFACT)
    return None if text is None else statistics_from_dict(json.loads(text))


def _version_of_run(client: MlflowClient, uri: str, name: str, model_uri: str, run_id: str) -> str:
    """The registered version of this run's model, registering it the first time only."""
    try:
        for mv in client.search_model_versions(f"name='{name}'"):
            if mv.tags.get(run_schema.RUN_ID) == run_id:
                return mv.version
    except MlflowException:
        pass  # the registered model does not exist yet
    mlflow.set_tracking_uri(uri)
    try:
        version = mlflow.register_model(model_uri, name).version
    except MlflowException as exc:
        raise FedriskInputError(f"cannot register {model_uri}: {str(exc).splitlines()[0]}") from None
    if not client.get_registered_model(name).description:  # what a validator reads first in MLflow's UI
        client.update_registered_model(name, REGISTRY_DESCRIPTION)
    return version


def run_description(verdict: Verdict, metrics: dict[str, float], gate_tags: dict[str, str]) -> str:
    """The run's description in MLflow's UI (markdown): the verdict and why, the headline
    figures, where the reports are."""
    broken = [r for r in verdict.results if r.failed_as in ("block", "warn")]
    lines = [f"**Gate verdict: {verdict.verdict.upper()}** (policy {verdict.policy}; "
             f"model {gate_tags.get(run_schema.GATE_MODEL_VERSION, 'not registered')})", ""]
    lines += [f"- {r.outcome.upper()} {r.metric} {r.comparator} {r.threshold:g}: {display(r.value)}" for r in broken]
    figures = {"AUC": "test_auc", "KS": "test_ks", "AUPRC": "test_average_precision",
               "epsilon (max over institutions)": run_schema.EPSILON_FINAL_MAX}
    shown = [f"{label} {display(metrics[key])}" for label, key in figures.items() if key in metrics]
    lines += ["", " · ".join(shown), "",
              f"Reports: `{run_schema.GATE_REPORT_ARTIFACT}` (gate), `evidence/report.html` after `fedrisk report` "
              "(evidence pack); the round-by-round chart: the Model metrics tab, `round_seconds`, `epsilon_max`."]
    return "\n".join(lines)


REGISTRY_DESCRIPTION = (
    "Trained by fedrisk campaigns. A version that passes or warns at the validation gate becomes `challenger`; "
    "`champion` moves only through `fedrisk promote` (two approvers whose signed approvals are in the audit log) "
    "and `fedrisk rollback`. An alias set here by hand is flagged by `fedrisk audit verify`.")


def _champion(client: MlflowClient, name: str, run_id: str) -> tuple[str, dict[str, float], list[str]] | None:
    """The current champion's figures, to set beside the run's (none when it is this run's version)."""
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
        if not mv.run_id or mv.run_id == run_id:
            return None
        run = client.get_run(mv.run_id)
    except MlflowException:
        return None
    return f"{name}/{mv.version}", run_metrics(client, run), run_schema.institutions_of(run.data.tags)


def _withdraw_alias(client: MlflowClient, name: str, version: str) -> None:
    """A version judged blocked loses the challenger alias if it held it."""
    try:
        holder = client.get_model_version_by_alias(name, CHALLENGER)
    except MlflowException:
        return
    if holder.version == version:
        client.delete_registered_model_alias(name, CHALLENGER)


def audit_log_of(tags: dict[str, str], override: str | None = None) -> str:
    """The audit log holding a run's events (the one named, else the run's own, else the default),
    checked to be that log: an event written elsewhere would fork the chain."""
    path = str(Path(override or tags.get(run_schema.AUDIT_LOG) or audit.DEFAULT_PATH).resolve())
    known = tags.get(run_schema.AUDIT_LOG_ID)
    if known:
        if not Path(path).is_file():
            raise FedriskInputError(f"the run's audit log (id {known}) is not here; run this where the log "
                                    "lives, or name it with --audit-log", file=path)
        try:
            found = audit.log_id(path)
        except (ValueError, KeyError, TypeError):
            found = None
        if found != known:
            raise FedriskInputError(f"not the run's audit log (id {known}); run `fedrisk audit verify`", file=path)
    return path


def campaign_policy_path(run: Any) -> str | None:
    """The gate policy the campaign named (None: its task's shipped default)."""
    named = run.data.params.get("gate.policy")
    return None if named in (None, "", "None") else named


def _reference_name(reference_run: str | None, reference_uri: str | None, tracking_uri: str) -> str:
    if reference_run is None:
        return "-"
    return reference_run if not reference_uri or reference_uri == tracking_uri else f"{reference_run} at {reference_uri}"


def _reference_auc(client: MlflowClient, reference_id: str, run: Any, institutions: list[str], split: str) -> float:
    """The AUC of a non-private reference of the same campaign set-up: same task, same
    institutions, completed. Anything else would make 'AUC lost to privacy' a different question."""
    where = f"reference run {reference_id}"
    try:
        reference = client.get_run(reference_id)
    except MlflowException:
        raise FedriskInputError(f"{where} not found at {client.tracking_uri}") from None
    tags = reference.data.tags
    if reference.info.lifecycle_stage == "deleted":
        raise FedriskInputError(f"{where} is deleted")
    if tags.get(run_schema.PRIVACY) != "none":
        raise FedriskInputError(f"{where} is not a non-private run ({run_schema.PRIVACY} is "
                                f"{tags.get(run_schema.PRIVACY, 'not set')})")
    if tags.get(run_schema.TASK, "credit") != run.data.tags.get(run_schema.TASK, "credit"):
        raise FedriskInputError(f"{where} is a {tags.get(run_schema.TASK, 'credit')} run, not "
                                f"{run.data.tags.get(run_schema.TASK, 'credit')}")
    theirs = run_schema.institutions_of(tags)
    if theirs != institutions:
        raise FedriskInputError(f"{where} trained on institutions {','.join(theirs) or 'none'}, not "
                                f"{','.join(institutions)}")
    if tags.get(run_schema.STATUS) != "completed":
        raise FedriskInputError(f"{where} did not complete ({tags.get(run_schema.STATUS, 'no status')})")
    auc = reference.data.metrics.get(run_schema.split_metric(split, "auc"))
    if auc is None or not np.isfinite(auc):
        raise FedriskInputError(f"{where} has no {run_schema.split_metric(split, 'auc')}")
    return float(auc)


def validate_run(
    tracking_uri: str, run_id: str, policy_path: str | None = None, model_name: str | None = None,
    audit_log: str | None = None, actor: str | None = None, reference_run: str | None = None,
    reference_uri: str | None = None,
) -> Verdict:
    """Apply a policy to a finished campaign run and record the outcome in MLflow and the audit log.
    `reference_run` (in `reference_uri`, default the run's own store) overrides the policy's."""
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise FedriskInputError(f"MLflow run {run_id} not found at {tracking_uri}") from None
    if run.info.lifecycle_stage == "deleted":
        raise FedriskInputError(f"MLflow run {run_id} is deleted")
    tags, metrics = run.data.tags, run_metrics(client, run)
    log = audit_log_of(tags, audit_log)  # before any change: a verdict the log lacks must not stand
    policy = load_policy(policy_path or campaign_policy_path(run), tags.get(run_schema.TASK, "credit"))
    # Every institution that took part must be judged; one without metrics fails its rules.
    institutions = run_schema.institutions_of(tags)
    reference_run = reference_run or policy.reference_run
    reference_auc = None if reference_run is None else _reference_auc(
        MlflowClient(reference_uri) if reference_uri else client, reference_run, run, institutions, policy.split)
    completed = tags.get(run_schema.STATUS) == "completed"
    verdict = apply_policy(policy, metrics, institutions, reference_auc, completed)

    client.log_dict(run_id, verdict.to_dict(), run_schema.VERDICT_ARTIFACT)
    named = {r: f"{r.metric} ({r.outcome if r.outcome in ('missing', 'unresolved', 'not evaluated') else r.where})"
             for r in verdict.results}
    failed = [named[r] for r in verdict.results if r.failed_as == "block"]
    warned = [named[r] for r in verdict.results if r.failed_as == "warn"]
    gate_tags = {
        run_schema.GATE_VERDICT: verdict.verdict,
        run_schema.GATE_POLICY: policy.name,
        run_schema.GATE_FAILED_RULES: "; ".join(failed) or "-",
        run_schema.GATE_WARNINGS: "; ".join(warned) or "-",
        run_schema.GATE_POLICY_SHA256: policy_sha256(policy),
        run_schema.GATE_REFERENCE: _reference_name(reference_run, reference_uri, tracking_uri),
    }
    model_uri = tags.get(run_schema.MODEL_URI)
    if model_uri:
        name = model_name or tags.get(run_schema.MODEL_NAME) or f"fedrisk-{tags.get(run_schema.TASK, 'credit')}"
        version = _version_of_run(client, tracking_uri, name, model_uri, run_id)
        for key, value in {**gate_tags, run_schema.RUN_ID: run_id}.items():
            client.set_model_version_tag(name, version, key, value)
        if verdict.verdict != "block":
            client.set_registered_model_alias(name, CHALLENGER, version)
        else:
            _withdraw_alias(client, name, version)
        gate_tags[run_schema.GATE_MODEL_VERSION] = f"{name}/{version}"
        gate_tags[run_schema.GATE_ALIAS] = CHALLENGER if verdict.verdict != "block" else "none"
    for key, value in gate_tags.items():
        client.set_tag(run_id, key, value)
    client.set_tag(run_id, run_schema.DESCRIPTION, run_description(verdict, metrics, gate_tags))
    excluded = json.loads(read_artifact(client, run_id, run_schema.EXCLUDED_ARTIFACT) or "{}").get("excluded", {})
    report = render_report(run_id, verdict, metrics, {**tags, **gate_tags}, institutions,
                           load_statistics(client, run_id), policy.split, excluded,  # with the version it registered
                           _champion(client, name, run_id) if model_uri else None)
    client.log_text(run_id, report, run_schema.GATE_REPORT_ARTIFACT)
    judged = {}
    if model_uri:  # the files the verdict is about: a challenger's swapped later is flagged by `audit verify`
        from fedrisk.serving import model_digest

        judged = {"model_sha256": model_digest(f"models:/{name}/{version}", tracking_uri)}
    entry = audit_event(client, run_id, log, "gate_verdict", actor or audit.default_actor(), {
        "policy": policy.name, "policy_sha256": policy_sha256(policy), "verdict": verdict.verdict,
        "failed_rules": failed, "warnings": warned, "model_version": gate_tags.get(run_schema.GATE_MODEL_VERSION),
        "reference": gate_tags[run_schema.GATE_REFERENCE], **judged,
    })
    if model_uri:
        for key, value in audit.anchor_tags(log, entry).items():
            client.set_model_version_tag(name, version, key, value)
    return verdict
