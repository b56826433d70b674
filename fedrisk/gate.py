"""The validation gate: a policy applied to a run's metrics gives pass, warn or block.

A pure function of numbers, so it can be tested without MLflow; `fedrisk.registry` stores
the verdict with the run and decides the model's alias from it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass
from typing import Any

from fedrisk import run_schema
from fedrisk.policy import PRIVACY_AUC_LOSS, Policy, Rule

COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class RuleResult:
    metric: str
    scope: str
    comparator: str
    threshold: float
    severity: str
    value: float | None
    outcome: str  # pass | warn | block | not applicable
    where: str  # "pooled" or the failing institutions
    description: str


@dataclass(frozen=True)
class Verdict:
    verdict: str  # pass | warn | block
    policy: str
    results: list[RuleResult]

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.results if r.outcome in ("block", "warn")]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "policy": self.policy,
                "results": [asdict(r) for r in self.results]}

    def summary_lines(self) -> list[str]:
        return [
            f"{r.outcome.upper():5} {r.metric} {r.comparator} {r.threshold:g} "
            f"({r.scope}): {'-' if r.value is None else f'{r.value:.4f}'}"
            + (f" at {r.where}" if r.where not in ("pooled", "") else "")
            for r in self.results
        ]


def _check(rule: Rule, value: float | None) -> bool | None:
    """True when the rule holds; None when the value is missing or not a number."""
    if value is None or not math.isfinite(value):
        return None
    return bool(COMPARE[rule.comparator](value, rule.threshold))


def apply_policy(
    policy: Policy,
    metrics: dict[str, float],
    institutions: list[str],
    reference_auc: float | None = None,
    completed: bool = True,
) -> Verdict:
    """Judge a run's metrics (as logged, with split prefix) against every rule.

    A metric that is missing fails its rule (the gate fails closed), except the privacy
    rule when no non-private reference was named.
    """
    prefix = policy.split
    results = []
    if not completed:  # a stopped campaign's model is never deployable, whatever its metrics
        results.append(RuleResult("campaign_completed", "pooled", "==", 1.0, "block", 0.0, "block",
                                  "campaign stopped", "the campaign must complete"))
    for rule in policy.rules:
        failing_outcome = rule.severity
        if rule.metric == PRIVACY_AUC_LOSS:
            if reference_auc is None:
                results.append(RuleResult(rule.metric, rule.scope, rule.comparator, rule.threshold,
                                          rule.severity, None, "not applicable",
                                          "no reference run named", rule.description))
                continue
            auc = metrics.get(run_schema.split_metric(prefix, "auc"))
            value = None if auc is None else (reference_auc - auc) / reference_auc
            values = {"pooled": value}
        elif rule.scope == "pooled":
            values = {"pooled": metrics.get(run_schema.split_metric(prefix, rule.metric))}
        else:
            values = {name: metrics.get(run_schema.split_metric(prefix, rule.metric, name)) for name in institutions}
        checks = {where: _check(rule, v) for where, v in values.items()}
        failing = sorted(where for where, ok in checks.items() if ok is not True)
        if not values:
            failing = ["no institution"]  # nothing to check is a failure, not a pass
        shown = [v for v in values.values() if v is not None]
        if rule.scope == "every_institution" and shown:
            # the worst institution's value is the one that matters; NaN shows as NaN
            worst = min if rule.comparator in (">=", ">") else max
            value = worst(shown) if all(math.isfinite(v) for v in shown) else float("nan")
        else:
            value = shown[0] if shown else None
        results.append(RuleResult(
            rule.metric, rule.scope, rule.comparator, rule.threshold, rule.severity, value,
            failing_outcome if failing else "pass", ",".join(failing) if failing else "pooled",
            rule.description,
        ))
    outcomes = {r.outcome for r in results}
    verdict = "block" if "block" in outcomes else "warn" if "warn" in outcomes else "pass"
    return Verdict(verdict, policy.name, results)
