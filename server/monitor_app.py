"""fedrisk monitoring ServerApp: one monitoring round per window, drift from summed counts.

For each window the server sends the model, its preprocessing and the reference bin edges;
each institution loads its own window, scores it and replies with counts per bin (and
score histograms when the window is labelled). The server adds them up, judges every scope
(pooled and per institution) and logs one MLflow step per window.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from mlflow.tracking import MlflowClient

import fedrisk
from fedrisk import protocol, run_schema
from fedrisk.drift import SCORE
from fedrisk.drift_report import write_report
from fedrisk.errors import FedriskInputError
from fedrisk.metrics import EvalStats
from fedrisk.monitor_config import MonitorConfig
from fedrisk.monitoring import MonitorPlan, plan_monitoring
from fedrisk.tracking import TrackedRun
from fedrisk.warning_levels import (
    LEVELS,
    POOLED,
    ScopeResult,
    assess_window,
    retrain_due,
    window_metrics,
)
from server.messaging import PromptGrid, query, wait_for_nodes

log = logging.getLogger("fedrisk.server")
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run config: `monitor-config` (a validated MonitorConfig as JSON), `model` (NAME@ALIAS or
    NAME/VERSION; empty: the config's) and `request` (tags the run, so the caller finds it)."""
    monitor = MonitorConfig.model_validate_json(str(context.run_config["monitor-config"]))
    model = str(context.run_config.get("model", "") or "") or None
    run_monitoring(PromptGrid(grid), plan_monitoring(monitor, model, str(context.run_config.get("request", "") or "") or None))


def _parts(replies: list[Message]) -> tuple[dict[str, tuple[dict[str, np.ndarray], EvalStats | None]], dict[str, str],
                                            dict[str, float]]:
    parts: dict[str, tuple[dict[str, np.ndarray], EvalStats | None]] = {}
    errors: dict[str, str] = {}
    noise: dict[str, float] = {}
    for msg in replies:
        if msg.has_error():
            errors[f"node-{msg.metadata.src_node_id}"] = str(msg.error.reason).strip().splitlines()[-1]
            continue
        name = protocol.institution_of(msg)
        if name in parts:  # two nodes claiming one institution: neither is trusted
            errors[f"node-{msg.metadata.src_node_id}"] = f"institution {name}: a second node claims this institution"
            continue
        window = protocol.read_evaluation(msg, "window").overall if protocol.has_evaluation(msg) else None
        parts[name] = (protocol.read_counts(msg), window)
        noise[name] = protocol.counts_noise(msg)
    return parts, errors, noise


def _window_table(grid: Grid, nodes: list[int], record: Any) -> tuple[np.ndarray | None, list[int], dict[str, str]]:
    """A window's terminal tables, summed (`fedrisk.consortium_features`): the nodes that sent theirs
    are the ones asked for the window's counts."""
    tables: dict[int, np.ndarray] = {}
    errors: dict[str, str] = {}
    for msg in query(grid, nodes, protocol.TERMINALS, record):
        node = msg.metadata.src_node_id
        if msg.has_error():
            errors[f"node-{node}"] = str(msg.error.reason).strip().splitlines()[-1]
            continue
        tables[node] = protocol.read_terminals(msg)[0].astype(float)
    shapes = {t.shape for t in tables.values()}
    if len(shapes) > 1:  # tables of other calendars or widths cannot be added
        raise FedriskInputError(f"the institutions' terminal tables differ in shape: {sorted(shapes)}")
    return (sum(tables.values()) if tables else None), sorted(tables), errors


def _scope_dict(result: ScopeResult) -> dict[str, Any]:
    return {"rows": result.rows, "psi": result.psi, "bound": result.bound, "performance": result.performance,
            "reference_performance": result.reference_performance, "drops": result.drops,
            "level": LEVELS[result.level], "reasons": result.reasons}


def run_monitoring(grid: Grid, plan: MonitorPlan) -> None:
    model = plan.model
    tags = {
        run_schema.MONITOR: plan.request,
        run_schema.TASK: plan.training.task,
        run_schema.VERSION: fedrisk.__version__,
        run_schema.MODEL_NAME: model.name,
        run_schema.MODEL_VERSION: model.version,
        run_schema.MODEL_URI: model.uri,
        run_schema.TRAINING_RUN: model.training_run,
        run_schema.RUN_NAME: f"monitor-{model.name}-v{model.version}",
    }
    run = TrackedRun(plan.monitor.tracking.uri, plan.monitor.tracking.experiment, tags)
    with run.closing():
        _monitoring_body(grid, plan, run)


def _monitoring_body(grid: Grid, plan: MonitorPlan, run: TrackedRun) -> None:
    levels = plan.monitor.levels
    run.log_dict(plan.monitor.model_dump(mode="json"), run_schema.MONITORING_CONFIG_ARTIFACT)
    nodes = wait_for_nodes(grid, len(plan.institutions))
    arrays = ArrayRecord(plan.state)
    edges = {c: spec["edges"] for c, spec in plan.reference["columns"].items() if spec["kind"] == "numeric"}
    history: dict[str, list[int]] = {}
    windows: list[dict[str, Any]] = []
    trigger: dict[str, Any] | None = None
    for index, (label, config_json, severity) in enumerate(plan.windows):
        record = protocol.request_config(config_json, run.run_id, preprocessor=plan.preprocessor_json, edges=edges,
                                         window_days=plan.monitor.windows.days, institutions=plan.institutions,
                                         grid=np.asarray(plan.reference["grid"]), window=index + 1,
                                         windows=len(plan.windows))
        started = time.perf_counter()
        asked, table_errors = nodes, {}
        if plan.training.consortium_features:  # the window's shared terminal table first, summed
            table, asked, table_errors = _window_table(grid, nodes, record)
            record = protocol.request_config(config_json, run.run_id, preprocessor=plan.preprocessor_json, edges=edges,
                                             window_days=plan.monitor.windows.days, institutions=plan.institutions,
                                             grid=np.asarray(plan.reference["grid"]), window=index + 1,
                                             windows=len(plan.windows), table=table)
        replies = query(grid, asked, protocol.MONITOR, record, arrays) if asked else []
        parts, errors, noise = _parts(replies)
        errors.update(table_errors)
        for node in sorted(set(nodes) - {msg.metadata.src_node_id for msg in replies}):
            errors[f"node-{node}"] = f"node {node}: no reply"
        for reason in errors.values():
            log.warning("%s: %s", label, reason)
        if not parts:
            raise FedriskInputError(f"{label}: no institution could measure its window: " + "; ".join(errors.values()))
        results = assess_window(plan.reference, parts, levels, history, noise)
        run.log_metrics({**window_metrics(results), run_schema.WINDOW_SECONDS: time.perf_counter() - started},
                        step=index + 1)
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
        log.info("monitor: %s: %s, score PSI %.3f%s%s", label, LEVELS[worst], pooled.psi[SCORE],
                 f", {levels.performance.metric} {perf:.4f}" if perf is not None else "",
                 " (retraining rule met)" if due else "")
    report = _report(plan, windows, trigger)
    with tempfile.TemporaryDirectory() as tmp:
        write_report(report, Path(tmp))
        run.log_artifacts(Path(tmp), run_schema.DRIFT_FOLDER)
    last, worst = windows[-1]["level"], max(windows, key=lambda w: LEVELS.index(w["level"]))["level"]
    run.set_tags({run_schema.MONITOR_LEVEL: last, run_schema.MONITOR_WORST_LEVEL: worst,
                  run_schema.MONITOR_WINDOWS: str(len(windows)),
                  run_schema.MONITOR_RETRAIN: report["retrain"]["summary"][:4000], run_schema.STATUS: "completed"})
    client = MlflowClient(plan.monitor.tracking.uri)
    for key, value in {run_schema.MONITOR_LEVEL: last, run_schema.MONITOR_RUN: run.run_id,
                       run_schema.MONITOR_RETRAIN: "due" if trigger else "no"}.items():
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
