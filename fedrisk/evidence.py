"""The validators' evidence pack of one campaign: a self-contained HTML page and its JSON.

Everything comes from the campaign's MLflow run, the registry and the audit log; every
figure is an aggregate the server already holds, so the pack can go to an auditor as is.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any

import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fedrisk import audit, run_schema
from fedrisk.errors import FedriskInputError
from fedrisk.fairness import group_edges
from fedrisk.monitor_config import MonitorConfig
from fedrisk.registry_check import unexplained_aliases
from fedrisk.report import (
    anchor,
    approval_chart,
    calibration_chart,
    calibration_rows,
    group_rows,
    html_table,
    per_institution_rows,
    roc_ks_chart,
    summary_block,
)
from fedrisk.strict_json import nan_to_null
from fedrisk.tracking import audit_event, read_artifact, run_metrics
from fedrisk.validation import audit_log_of, load_statistics

SECTIONS = ("identification", "intended_use", "data", "method", "privacy", "performance", "calibration",
            "fairness", "data_quality", "monitoring_plan", "gate", "approvals", "audit")

INTENDED_USE = {
    "credit": {
        "purpose": "Probability of default of applicants for credit, to support lending decisions.",
        "users": "Credit-risk teams of the consortium's institutions; decisions stay with their credit officers.",
        "risk_class": "High-risk AI system: evaluating the creditworthiness of natural persons or establishing "
                      "their credit score is listed in Annex III, point 5(b), of the EU AI Act (Regulation (EU) "
                      "2024/1689). Its requirements on risk management, data governance, technical "
                      "documentation, record-keeping, transparency, human oversight, accuracy and robustness "
                      "(Articles 9 to 15) apply.",
        "out_of_scope": "Decisions without human review; populations or products unlike the training data; "
                        "the protected attributes are measured for fairness, never used as inputs.",
    },
    "fraud": {
        "purpose": "Ranking card transactions by fraud risk, to choose which ones analysts review.",
        "users": "Fraud-operations teams of the consortium's card issuers, within a daily alert budget.",
        "risk_class": "Not high-risk on the credit ground: Annex III, point 5(b), of the EU AI Act excludes "
                      "AI systems used to detect financial fraud from the creditworthiness category.",
        "out_of_scope": "Blocking cards or customers without review; credit decisions.",
    },
}


def _artifact(client: MlflowClient, run_id: str, path: str) -> Any:
    text = read_artifact(client, run_id, path)
    if text is None:
        return None
    return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)


def _split_metrics(metrics: dict[str, float], split: str, institutions: list[str], words: tuple[str, ...] = ()) -> dict:
    return {k: v for k, v in run_schema.of_split(metrics, split, institutions).items()
            if not words or any(w in k for w in words)}


def _versions(client: MlflowClient, name: str, run_id: str) -> list[dict[str, Any]]:
    try:
        found = [mv for mv in client.search_model_versions(f"name='{name}'") if mv.tags.get(run_schema.RUN_ID) == run_id]
        aliases = client.get_registered_model(name).aliases if found else {}
    except MlflowException:
        return []
    out = []
    for mv in found:
        out.append({
            "model": name, "version": str(mv.version),
            "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
            "gate_verdict": mv.tags.get(run_schema.GATE_VERDICT),
            "approvals": [*json.loads(mv.tags.get(run_schema.APPROVED_BY, "[]")),  # used by a promotion
                          *json.loads(mv.tags.get(run_schema.APPROVALS, "[]"))],  # pending
            "override": mv.tags.get(run_schema.OVERRIDE) == "true",
            "override_justification": mv.tags.get(run_schema.OVERRIDE_JUSTIFICATION),
            "archived": mv.tags.get(run_schema.ARCHIVED) == "true",
            "champion_since": mv.tags.get(run_schema.CHAMPION_SINCE),
        })
    return out


def _earlier_campaigns(client: MlflowClient, run: Any, institutions: list[str]) -> list[dict[str, Any]]:
    """Campaigns of the same experiment that trained on some of the same institutions before."""
    earlier = client.search_runs([run.info.experiment_id], "tags.`fedrisk.privacy` = 'dp'", max_results=500)
    out = []
    for other in earlier:
        shared = sorted(set(run_schema.institutions_of(other.data.tags)) & set(institutions))
        if other.info.run_id != run.info.run_id and other.info.start_time < run.info.start_time and shared:
            out.append({"run": other.info.run_id, "institutions": ", ".join(shared),
                        "epsilon_max_after": other.data.metrics.get("epsilon_final_max")})
    return out


def _audit_section(tracking_uri: str, tags: dict[str, str], run_id: str) -> dict[str, Any]:
    section: dict[str, Any] = {"log": tags.get(run_schema.AUDIT_LOG), "head_on_run": tags.get(run_schema.AUDIT_HEAD),
                               "log_id": tags.get(run_schema.AUDIT_LOG_ID)}
    try:
        path = audit_log_of(tags)
        check = audit.verify(path)
    except FedriskInputError as err:
        return {**section, "verification": f"not verified here: {err.one_line()}"}
    head = tags.get(run_schema.AUDIT_HEAD)
    problem = check.problem or (audit.verify_anchors(path, {"this run": head}) if head else None)
    section["verification"] = (f"BROKEN: {problem}" if problem else "chain intact; the run's copy of the head matches"
                               if head else "chain intact; this run holds no copy of the head (made before fedrisk audited)")
    if check.intact:
        moved = unexplained_aliases(tracking_uri, path)
        section["registry"] = ("ALIASES MOVED OUTSIDE fedrisk: " + "; ".join(moved) if moved
                               else "champion and challenger aliases as the log's decisions left them")
    events = []
    for _, line, _ in list(audit.read_entries(path))[: check.entries]:  # only entries the chain vouches for
        entry = json.loads(line)
        if entry["details"].get("run_id") == run_id:
            events.append({"seq": entry["seq"], "time": entry["time"], "event": entry["event"],
                           "actor": entry["actor"], "hash": entry["hash"][:16]})
    section["events"] = events
    return section


def build_evidence(tracking_uri: str, run_id: str) -> dict[str, Any]:
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise FedriskInputError(f"MLflow run {run_id} not found at {tracking_uri}") from None
    tags, metrics = run.data.tags, run_metrics(client, run)
    if run_schema.CAMPAIGN not in tags:
        raise FedriskInputError(f"MLflow run {run_id} is not a fedrisk campaign")
    task = tags.get(run_schema.TASK, "credit")
    institutions = run_schema.institutions_of(tags)
    config = _artifact(client, run_id, run_schema.CONFIG_ARTIFACT) or {}
    summary = (_artifact(client, run_id, run_schema.DATA_SUMMARY_ARTIFACT) or {}).get("institutions", {})
    excluded = (_artifact(client, run_id, run_schema.EXCLUDED_ARTIFACT) or {}).get("excluded", {})
    quality = _artifact(client, run_id, run_schema.DATA_QUALITY_ARTIFACT) or {}
    ledger = _artifact(client, run_id, run_schema.LEDGER_ARTIFACT) or {}
    verdict = _artifact(client, run_id, run_schema.VERDICT_ARTIFACT)
    calibration = _artifact(client, run_id, run_schema.CALIBRATION_ARTIFACT)
    model_name = tags.get(run_schema.MODEL_NAME) or config.get("tracking", {}).get("model_name", f"fedrisk-{task}")
    versions = _versions(client, model_name, run_id)
    monitor = MonitorConfig()
    monitoring_runs = []
    experiment = client.get_experiment_by_name(monitor.tracking.experiment)
    if experiment is not None:
        for m in client.search_runs([experiment.experiment_id], f"tags.`fedrisk.training_run` = '{run_id}'"):
            monitoring_runs.append({"run": m.info.run_id, "worst_level": m.data.tags.get(run_schema.MONITOR_WORST_LEVEL),
                                    "retrain": m.data.tags.get(run_schema.MONITOR_RETRAIN)})
    evidence = {
        "identification": {
            "run": run_id, "campaign": tags.get(run_schema.CAMPAIGN), "task": task,
            "model_uri": tags.get(run_schema.MODEL_URI), "registered": [f"{v['model']}/{v['version']}" for v in versions],
            "trainer": tags.get(run_schema.TRAINER),
            "code_version": tags.get(run_schema.CODE_VERSION, tags.get(run_schema.VERSION)),
            "config_sha256": tags.get(run_schema.CONFIG_SHA256), "status": tags.get(run_schema.STATUS),
            "override": any(v["override"] for v in versions),
        },
        "intended_use": INTENDED_USE[task],
        "data": {"institutions": {name: {**summary.get(name, {}),
                                         "quality_score": quality.get("institutions", {}).get(name, {}).get("score")}
                                  for name in sorted(set(summary) | set(quality.get("institutions", {})))},
                 # an institution's validation and test rows are not released as counts; the
                 # pooled evaluation's (noised) examples say how many rows the figures rest on
                 "evaluated": {"validation rows (pooled, noised)": metrics.get(run_schema.split_metric(run_schema.VALIDATION,
                                                                                                       "examples")),
                               "test rows (pooled, noised)": metrics.get(run_schema.split_metric(run_schema.TEST,
                                                                                                 "examples"))},
                 "excluded": excluded},
        "method": {k: config.get(k) for k in ("model", "training", "privacy", "evaluation")},
        "privacy": {**{k: ledger.get(k) for k in ("accountant", "delta", "target_epsilon", "federation_epsilon")},
                    "per_institution": ledger.get("institutions", {}),
                    "meaning": "epsilon per institution is its lifetime spend on the same data, across campaigns "
                               "(its ledger); the federation's epsilon is the maximum, the data being disjoint",
                    "earlier_campaigns": _earlier_campaigns(client, run, institutions)},
        "performance": {"pooled": _split_metrics(metrics, run_schema.TEST, institutions),
                        "per_institution": per_institution_rows(metrics, task, institutions)},
        "calibration": calibration,
        "fairness": _split_metrics(metrics, run_schema.TEST, institutions, ("approval", "opportunity", "tpr")),
        "data_quality": quality,
        "monitoring_plan": {
            "reference": "monitoring/reference.json (score and input deciles, validation metrics)",
            "command": f"fedrisk monitor {model_name}/{versions[0]['version'] if versions else 'VERSION'}",
            "levels": monitor.levels.model_dump(), "window_days": monitor.windows.days,
            "retraining": f"when {monitor.levels.performance.metric} falls by more than "
                          f"{monitor.levels.performance.max_drop:g} ({monitor.levels.performance.mode}) "
                          "against its validation value",
            "runs": monitoring_runs,
        },
        "gate": {"verdict": tags.get(run_schema.GATE_VERDICT), "policy": tags.get(run_schema.GATE_POLICY),
                 "failed_rules": tags.get(run_schema.GATE_FAILED_RULES), "warnings": tags.get(run_schema.GATE_WARNINGS),
                 "rules": (verdict or {}).get("results", [])},
        "approvals": versions,
        "audit": _audit_section(tracking_uri, tags, run_id),
    }
    return evidence


def _section(title: str, body: str) -> str:
    return f"<h2 id='{anchor(title)}'>{html.escape(title)}</h2>{body}"


def _kv(mapping: dict[str, Any]) -> str:
    rows = [{"item": k, "value": v} for k, v in mapping.items()]  # `html_table` spells each value out
    return html_table(rows)


def render_evidence(evidence: dict[str, Any], client: MlflowClient, run_id: str) -> str:
    ident = evidence["identification"]
    parts = [f"<h1>Evidence pack: {html.escape(ident['task'])} model, run <code>{html.escape(run_id)}</code></h1>"]
    if ident["override"]:
        parts.append("<p style='color:#c62828;font-weight:bold'>OVERRIDE: this model serves although the "
                     "validation gate blocked it; see Approvals.</p>")
    parts.append(_section("1. Model identification", _kv(ident)))
    parts.append(_section("2. Intended use", _kv(evidence["intended_use"])))
    data = evidence["data"]
    rows = [{"institution": n, "train rows (released)": d.get("rows", {}).get("train"),
             "imputed values": sum((d.get("imputed") or {}).values()),
             "data fingerprint": (d.get("fingerprint") or "-")[:16], "quality score": d.get("quality_score")}
            for n, d in data["institutions"].items()]
    excluded = [{"institution": n, "kind": e.get("kind", "-") if isinstance(e, dict) else "-",
                 "reason": e.get("reason") if isinstance(e, dict) else e} for n, e in data["excluded"].items()]
    parts.append(_section("3. Data (aggregates per institution)", html_table(rows) + _kv(data.get("evaluated") or {})
                          + "<h3>Excluded</h3>" + html_table(excluded)))
    parts.append(_section("4. Method and hyper-parameters",
                          "".join(f"<h3>{k}</h3>{_kv(v or {})}" for k, v in evidence["method"].items())))
    privacy = evidence["privacy"]
    parts.append(_section("5. Privacy", _kv({k: v for k, v in privacy.items()
                                             if k not in ("per_institution", "earlier_campaigns")})
                          + html_table([{"institution": n, **v} for n, v in privacy["per_institution"].items()])
                          + "<h3>Earlier campaigns on the same institutions</h3>" + html_table(privacy["earlier_campaigns"])))
    perf = evidence["performance"]
    parts.append(_section("6. Performance (test)", _kv(perf["pooled"]) + html_table(perf["per_institution"])))
    stored = load_statistics(client, run_id)
    calibration = ""
    if stored is not None and stored.stats.examples:
        png, _ = calibration_chart(stored.stats)
        calibration = (f"<img src='data:image/png;base64,{roc_ks_chart(stored.stats, ident['task'])}'>"
                       f"<img src='data:image/png;base64,{png}'>")
    parts.append(_section("7. Calibration (test, by score band)",
                          calibration + calibration_rows((evidence["calibration"] or {}).get("bands", []))))
    fairness = _kv(evidence["fairness"]) if evidence["fairness"] else "<p>no protected attribute measured</p>"
    if stored is not None and stored.groups:
        edges = group_edges(stored.stats.edges, stored.threshold)
        chart = approval_chart(stored.groups, stored.threshold, edges, stored.noise)
        fairness += (f"<img src='data:image/png;base64,{chart}'>"
                     + html_table(group_rows(stored.groups, stored.threshold, edges, stored.noise)))
    parts.append(_section("8. Fairness (test)", fairness))
    cards = evidence["data_quality"].get("institutions", {})
    dq_rows = [{"institution": n, "score": c["score"], "passed": c["passed"],
                **{d: v["score"] for d, v in c["dimensions"].items()}, "weakest": c["weakest"],
                "why": c["dimensions"][c["weakest"]]["detail"]} for n, c in cards.items()]
    parts.append(_section(f"9. Data-quality scorecards (minimum {evidence['data_quality'].get('min_score', '-')}; "
                          "score = weakest dimension)", html_table(dq_rows)))
    plan = evidence["monitoring_plan"]
    parts.append(_section("10. Monitoring plan", _kv({k: v for k, v in plan.items() if k != "runs"})
                          + "<h3>Monitoring runs so far</h3>" + html_table(plan["runs"])))
    gate = evidence["gate"]
    rules = [{**{k: r.get(k) for k in ("outcome", "metric", "scope", "comparator", "threshold", "value")},
              "95 % interval": "-" if not r.get("interval") else f"{r['interval'][0]:.4f} to {r['interval'][1]:.4f}",
              "where": r.get("where"), "note": r.get("note") or "-"} for r in gate["rules"]]
    parts.append(_section("11. Gate verdict", _kv({k: v for k, v in gate.items() if k != "rules"}) + html_table(rules)))
    approvals = [{"version": f"{v['model']}/{v['version']}", "aliases": ", ".join(v["aliases"]) or "-",
                  "archived": v["archived"], "override": v["override"], "approver": a["approver"], "time": a["time"],
                  "justification": a.get("justification", "-")}
                 for v in evidence["approvals"] for a in (v["approvals"] or [{"approver": "-", "time": "-"}])]
    parts.append(_section("12. Approvals", html_table(approvals)))
    trail = evidence["audit"]
    parts.append(_section("13. Audit", _kv({k: v for k, v in trail.items() if k != "events"})
                          + html_table(trail.get("events", []))))
    run = client.get_run(run_id)  # the answer first: the verdict and what decided it, above the 13 sections
    titles = re.findall(r"<h2 id='s-[^']+'>([^<]+)</h2>", "".join(parts))
    gate = evidence["gate"]
    summary = summary_block(gate["verdict"], gate["policy"], gate["rules"], run_metrics(client, run),
                            dict(run.data.tags), "test", [html.unescape(t) for t in titles])
    parts.insert(2 if evidence["identification"]["override"] else 1, summary)  # below an override's notice
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
             "font-size:13px;margin-bottom:8px}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>fedrisk evidence {html.escape(run_id)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def write_evidence(tracking_uri: str, run_id: str, out_dir: str | Path, actor: str,
                   audit_log: str | None = None) -> tuple[Path, Path, str]:
    """Write report.html and report.json, attach them to the run and log their hashes."""
    client = MlflowClient(tracking_uri)
    try:
        tags = client.get_run(run_id).data.tags
    except MlflowException:
        raise FedriskInputError(f"MLflow run {run_id} not found at {tracking_uri}") from None
    log = audit_log_of(tags, audit_log)  # first: a pack the log does not record is not attached
    evidence = build_evidence(tracking_uri, run_id)
    page = render_evidence(evidence, client, run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out / "report.html", out / "report.json"
    html_path.write_text(page)
    json_path.write_text(json.dumps(nan_to_null(evidence), indent=1, default=str, allow_nan=False))
    client.log_artifact(run_id, str(html_path), run_schema.EVIDENCE_FOLDER)
    client.log_artifact(run_id, str(json_path), run_schema.EVIDENCE_FOLDER)
    entry = audit_event(client, run_id, log, "evidence_pack", actor, {
        "html_sha256": hashlib.sha256(html_path.read_bytes()).hexdigest(),
        "json_sha256": hashlib.sha256(json_path.read_bytes()).hexdigest()})
    return html_path, json_path, audit.head_tag(entry)
