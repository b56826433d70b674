"""What the CLI's commands share: `--set` values and the closing summary of a campaign."""

from __future__ import annotations

from typing import Any

import yaml

from fedrisk import run_schema
from fedrisk.errors import FedriskInputError

BLOCKED_EXIT_CODE = 3


def set_values(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise FedriskInputError(f"--set expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise FedriskInputError(f"--set {key}: value '{value}' is not valid YAML") from None
    return out


def print_outcome(config: Any, outcome: Any) -> int:
    """The closing summary of a campaign; returns the command's exit code."""
    m, tags = outcome.metrics, outcome.tags
    val, test = run_schema.VALIDATION, run_schema.TEST

    def metric(split: str, name: str) -> float:
        return m.get(run_schema.split_metric(split, name), float("nan"))

    print(f"campaign     {outcome.campaign} ({outcome.status})")
    if run_schema.STOP_REASON in tags:
        print(f"stopped      {tags[run_schema.STOP_REASON]}")
    if run_schema.EXCLUDED in tags:
        print(f"excluded     {tags[run_schema.EXCLUDED]}")
    if run_schema.split_metric(val, "auc") in m:
        print(f"AUC          validation {metric(val, 'auc'):.4f}, test {metric(test, 'auc'):.4f}")
    if config.task == "fraud" and run_schema.split_metric(test, "average_precision") in m:
        ev = config.evaluation
        recall = metric(test, run_schema.recall_at_fpr(ev.max_fpr))
        print(f"AUPRC        validation {metric(val, 'average_precision'):.4f}, "
              f"test {metric(test, 'average_precision'):.4f}")
        print(f"test         recall at {ev.max_fpr:.0%} FPR {recall:.3f}; with {ev.alerts_per_day} alerts/day per "
              f"issuer: precision {metric(test, 'precision_at_budget'):.3f}, recall "
              f"{metric(test, 'recall_at_budget'):.3f}, fraud value caught {metric(test, 'amount_recall_at_budget'):.3f}")
    if run_schema.EPSILON_FINAL_MAX in m:
        print(f"epsilon      {tags.get(run_schema.EPSILON)}")
    print(f"MLflow run   {outcome.run_id} (experiment '{config.tracking.experiment}')")
    print(f"model        {tags.get(run_schema.MODEL_URI, '-')}")
    verdict = tags.get(run_schema.GATE_VERDICT)
    if verdict:
        print(f"gate         {verdict.upper()} (policy {tags.get(run_schema.GATE_POLICY)}); "
              f"model {tags.get(run_schema.GATE_MODEL_VERSION)}, alias {tags.get(run_schema.GATE_ALIAS)}")
        if verdict == "block":
            print(f"blocked by   {tags.get(run_schema.GATE_FAILED_RULES)}")
    uri = config.tracking.uri
    print(f"open the UI  {uri}" if uri.startswith(("http://", "https://")) else
          f"open the UI  mlflow ui --backend-store-uri {uri}")
    if verdict == "block":
        return BLOCKED_EXIT_CODE
    return 0 if outcome.status == "completed" else 1
