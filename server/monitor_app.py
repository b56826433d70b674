"""fedrisk monitoring ServerApp: one monitoring round per window, drift from summed counts.

For each window the server sends the model, its preprocessing and the reference bin edges;
each institution loads its own window, scores it and replies with counts per bin (and
score histograms when the window is labelled). The server adds them up, judges every scope
(pooled and per institution) and logs one MLflow step per window.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from mlflow.tracking import MlflowClient

import fedrisk
from fedrisk.drift import SCORE
from fedrisk.drift_report import write_report
from fedrisk.errors import FedriskInputError
from fedrisk.metrics import EvalStats
from fedrisk.monitoring import MonitorPlan
from fedrisk.tracking import TrackedRun
from fedrisk.warning_levels import LEVELS, POOLED, ScopeResult, assess_window, retrain_due, window_metrics
from server.server_app import NODE_WAIT_SECONDS, _query, wait_for_nodes
from server.strategy import evaluation_parts

MONITOR_TAG = "fedrisk.monitor"


def monitor_app_for(plan: MonitorPlan) -> ServerApp:
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_monitoring(grid, plan)

    return app


def _parts(replies: list[Message]) -> tuple[dict[str, tuple[dict[str, np.ndarray], EvalStats | None]], dict[str, str]]:
    parts: dict[str, tuple[dict[str, np.ndarray], EvalStats | None]] = {}
    errors: dict[str, str] = {}
    for msg in replies:
        if msg.has_error():
            errors[f"node-{msg.metadata.src_node_id}"] = str(msg.error.reason).strip().splitlines()[-1]
            continue
        name = str(msg.content["who"]["institution"])
        if name in parts:  # two nodes claiming one institution: neither is trusted
            errors[f"node-{msg.metadata.src_node_id}"] = f"institution {name}: a second node claims this institution"
            continue
        counts = {k: np.asarray(v) for k, v in json.loads(str(msg.content["counts"]["json"])).items()}
        stats = evaluation_parts([msg], "window")[name] if "evaluation" in msg.content else None
        parts[name] = (counts, stats)
    return parts, errors


def _scope_dict(result: ScopeResult) -> dict[str, Any]:
    return {"rows": result.rows, "psi": result.psi, "bound": result.bound, "performance": result.performance,
            "reference_performance": result.reference_performance, "drops": result.drops,
            "level": LEVELS[result.level], "reasons": result.reasons}


def run_monitoring(grid: Grid, plan: MonitorPlan) -> None:
    model = plan.model
    tags = {
        MONITOR_TAG: plan.request,
        "fedrisk.task": plan.training.task,
        "fedrisk.version": fedrisk.__version__,
        "fedrisk.model_name": model.name,
        "fedrisk.model_version": model.version,
        "fedrisk.model_uri": model.uri,
        "fedrisk.training_run": model.training_run,
        "mlflow.runName": f"monitor-{model.name}-v{model.version}",
    }
    run = TrackedRun(plan.monitor.tracking.uri, plan.monitor.tracking.experiment, tags)
    with run.closing():
        _monitoring_body(grid, plan, run)


def _monitoring_body(grid: Grid, plan: MonitorPlan, run: TrackedRun) -> None:
    levels = plan.monitor.levels
    run.log_dict(plan.monitor.model_dump(mode="json"), "monitoring_config.yaml")
    nodes = wait_for_nodes(grid, len(plan.institutions), NODE_WAIT_SECONDS)
    arrays = ArrayRecord(plan.state)
    edges = {c: spec["edges"] for c, spec in plan.reference["columns"].items() if spec["kind"] == "numeric"}
    history: dict[str, list[int]] = {}
    windows: list[dict[str, Any]] = []
    trigger: dict[str, Any] | None = None
    for index, (label, config_json, severity) in enumerate(plan.windows):
        record = ConfigRecord({
            "campaign-config": config_json, "campaign": run.run_id, "preprocessor": plan.preprocessor_json,
            "edges": json.dumps(edges), "window-days": plan.monitor.windows.days,
            "institutions": json.dumps(plan.institutions),
        })
        started = time.perf_counter()
        replies = _query(grid, nodes, "query.monitor", RecordDict({"arrays": arrays, "config": record}))
        parts, errors = _parts(replies)
        for node in sorted(set(nodes) - {msg.metadata.src_node_id for msg in replies}):
            errors[f"node-{node}"] = f"node {node}: no reply"
        for reason in errors.values():
            log(WARNING, "%s: %s", label, reason)
        if not parts:
            raise FedriskInputError(f"{label}: no institution could measure its window: " + "; ".join(errors.values()))
        results = assess_window(plan.reference, parts, levels, history)
        run.log_metrics({**window_metrics(results), "window_seconds": time.perf_counter() - started}, step=index + 1)
        pooled = results[POOLED]
        worst = max(r.level for r in results.values())
        reasons = [f"{scope}: {r.reasons[0]}" for scope, r in results.items() if r.level == worst and r.reasons]
        due = retrain_due(pooled, levels.performance)
        if due and trigger is None:
            metric = levels.performance.metric
            trigger = {"window": label, "index": index, "metric": metric,
                       "value": pooled.performance[metric], "drop": pooled.drops[metric],
                       "reference": pooled.reference_performance[metric]}
        windows.append({
            "label": label, "severity": severity, "level": LEVELS[worst], "reasons": reasons,
            "retrain": due, "missing": errors,
            "score_counts": pooled.score_counts, "reference_score_counts": pooled.reference_score_counts,
            "scopes": {scope: _scope_dict(r) for scope, r in results.items()},
        })
        perf = pooled.performance.get(levels.performance.metric)
        print(f"fedrisk monitor: {label}: {LEVELS[worst]}, score PSI {pooled.psi[SCORE]:.3f}"
              + (f", {levels.performance.metric} {perf:.4f}" if perf is not None else "")
              + (" (retraining rule met)" if due else ""), file=sys.stderr)
    report = _report(plan, windows, trigger)
    with tempfile.TemporaryDirectory() as tmp:
        write_report(report, Path(tmp))
        run.log_artifacts(Path(tmp), "drift")
    last, worst = windows[-1]["level"], max(windows, key=lambda w: LEVELS.index(w["level"]))["level"]
    run.set_tags({"fedrisk.monitor.level": last, "fedrisk.monitor.worst_level": worst,
                  "fedrisk.monitor.windows": str(len(windows)),
                  "fedrisk.monitor.retrain": report["retrain"]["summary"][:4000], "fedrisk.status": "completed"})
    client = MlflowClient(plan.monitor.tracking.uri)
    for key, value in {"fedrisk.monitor.level": last, "fedrisk.monitor.run": run.run_id,
                       "fedrisk.monitor.retrain": "due" if trigger else "no"}.items():
        client.set_model_version_tag(plan.model.name, plan.model.version, key, value)


def _report(plan: MonitorPlan, windows: list[dict[str, Any]], trigger: dict[str, Any] | None) -> dict[str, Any]:
    rule = plan.monitor.levels.performance
    if trigger:
        unit = f"{trigger['drop']:.1%} relative" if rule.mode == "relative" else f"{trigger['drop']:.4f}"
        summary = (f"retraining triggered at {trigger['window']}: pooled {trigger['metric']} {trigger['value']:.4f} "
                   f"is {unit} below validation {trigger['reference']:.4f} (rule: drop > {rule.max_drop:g} {rule.mode})")
    elif not any(w["scopes"][POOLED]["performance"] for w in windows):
        summary = "no retraining rule applied: no window had labels of both classes"
    else:
        summary = f"no retraining: the pooled {rule.metric} never fell by more than {rule.max_drop:g} ({rule.mode})"
    score = plan.reference["columns"][SCORE]
    return {
        "model": {"name": plan.model.name, "version": plan.model.version, "alias": plan.model.alias,
                  "uri": plan.model.uri, "training_run": plan.model.training_run},
        "task": plan.training.task,
        "levels": plan.monitor.levels.model_dump(mode="json"),
        "reference": {"rows": plan.reference["rows"], "performance": plan.reference["performance"],
                      "score_edges": score["edges"], "score_counts": score["counts"]},
        "windows": windows,
        "retrain": {"triggered": trigger is not None, **(trigger or {}), "summary": summary},
    }
