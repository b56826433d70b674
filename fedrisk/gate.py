"""The validation gate: a policy applied to a run's metrics gives pass, warn or block.

A pure function of numbers, so it can be tested without MLflow; `fedrisk.registry` stores
the verdict with the run and decides the model's alias from it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import norm

from fedrisk import run_schema
from fedrisk.display import display
from fedrisk.policy import PRIVACY_AUC_LOSS, Policy, Rule

NO_REFERENCE = ("no reference run: train one with `fedrisk simulate --reference` or name one with "
                "`fedrisk validate --reference RUN` or the policy's reference_run")
COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class RuleResult:
    metric: str
    scope: str
    comparator: str
    threshold: float
    severity: str
    value: float | None
    outcome: str  # pass | warn | block | unresolved (its interval straddles: fails as warn) | missing (not in
    # the run: fails as its severity) | not evaluated (no reference run to judge it by: fails as warn)
    where: str  # the failing institutions; when it holds, "pooled" or the worst institution shown
    description: str
    interval: tuple[float, float] | None = None  # the metric's logged confidence interval (pooled rules)
    note: str = ""  # what would resolve an unresolved rule

    @property
    def failed_as(self) -> str | None:
        """block or warn when the rule failed (a missing metric fails as its severity)."""
        if self.outcome in ("unresolved", "not evaluated"):
            return "warn"
        return self.severity if self.outcome == "missing" else self.outcome if self.outcome in ("block", "warn") \
            else None


@dataclass(frozen=True)
class Verdict:
    verdict: str  # pass | warn | block
    policy: str
    results: list[RuleResult]

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.results if r.failed_as]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "policy": self.policy,
                "results": [asdict(r) for r in self.results]}

    def summary_lines(self) -> list[str]:
        return [
            f"{r.outcome.upper():5} {r.metric} {r.comparator} {r.threshold:g} ({r.scope}): "
            + (f"not in the run, fails as {r.severity}" if r.outcome == "missing"
               else display(r.value))
            + (f" [{r.interval[0]:.4f}, {r.interval[1]:.4f}]" if r.interval else "")
            + (f" at {r.where}" if r.where not in ("pooled", "") else "")
            + (f"; {r.note}" if r.note else "")
            for r in self.results
        ]


def _check(rule: Rule, value: float | None) -> bool | None:
    """True when the rule holds; None when the value is missing or not a number."""
    if value is None or not math.isfinite(value):
        return None
    return bool(COMPARE[rule.comparator](value, rule.threshold))


def at_level(value: float, interval: tuple[float, float], level: float) -> tuple[float, float]:
    """The logged 95 % interval (value plus or minus z standard errors, clipped to [0, 1]) at
    another confidence level: the unclipped side gives the half-width, rescaled by the ratio of
    normal quantiles and clipped again."""
    if level == run_schema.INTERVAL_LEVEL:
        return interval
    ratio = norm.ppf(0.5 + level / 2) / norm.ppf(0.5 + run_schema.INTERVAL_LEVEL / 2)
    half = max(value - interval[0], interval[1] - value) * ratio
    return float(max(value - half, 0.0)), float(min(value + half, 1.0))


def _on_interval(rule: Rule, value: float, interval: tuple[float, float], rows: float | None) -> tuple[str, str]:
    """Met (pass) when the whole interval keeps the rule, broken (its severity) when none of it
    does, unresolved when it straddles the threshold: then, from the interval's width, about how
    many test rows would put it on one side (the width shrinks with the square root of rows)."""
    holds = {_check(rule, bound) for bound in interval}
    if holds == {True}:
        return "pass", ""
    if holds == {False}:
        return rule.severity, ""
    half, distance = (interval[1] - interval[0]) / 2, abs(value - rule.threshold)
    if not rows or distance == 0:
        return "unresolved", "the interval straddles the threshold"
    needed = rows * (half / distance) ** 2
    return "unresolved", f"the interval straddles the threshold; about {needed:,.0f} test rows would resolve it"


def apply_policy(
    policy: Policy,
    metrics: dict[str, float],
    institutions: list[str],
    reference_auc: float | None = None,
    completed: bool = True,
) -> Verdict:
    """Judge a run's metrics (as logged, with split prefix) against every rule.

    A pooled rule whose metric has a logged interval is judged on it (the policy's `evidence`):
    met, broken, or unresolved, which warns. A metric that is missing fails its rule as its
    severity (the gate fails closed) and is reported `missing`, not as a value beyond its
    threshold; the privacy rule with no non-private reference named is `not evaluated`, which
    warns: a rule is never skipped in silence.
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
                                          rule.severity, None, "not evaluated", "", rule.description,
                                          note=NO_REFERENCE))
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
        shown = {where: v for where, v in values.items() if v is not None}
        held = "pooled"  # where the value shown was measured: never "pooled" for one institution's value
        if rule.scope == "every_institution" and shown:
            # the worst institution's value is the one that matters; NaN shows as NaN
            worst = min if rule.comparator in (">=", ">") else max
            held = worst(shown, key=lambda w: shown[w])
            value = shown[held] if all(math.isfinite(v) for v in shown.values()) else float("nan")
        else:
            value = next(iter(shown.values()), None)
        absent = bool(values) and all(v is None for v in values.values())
        interval = run_schema.interval_of(metrics, prefix, rule.metric) if rule.scope == "pooled" else None
        outcome = "missing" if absent else failing_outcome if failing else "pass"
        note = ""
        if interval is not None and not absent and value is not None:
            interval = at_level(value, interval, policy.confidence)
        if interval is not None and not absent and (rule.evidence or policy.evidence) == "interval":
            outcome, note = _on_interval(rule, value, interval, metrics.get(run_schema.split_metric(prefix, "examples")))
            failing = [] if outcome == "pass" else ["pooled"]
        results.append(RuleResult(
            rule.metric, rule.scope, rule.comparator, rule.threshold, rule.severity, value, outcome,
            ",".join(failing) if failing else held, rule.description, interval, note,
        ))
    failed = {r.failed_as for r in results}
    verdict = "block" if "block" in failed else "warn" if "warn" in failed else "pass"
    return Verdict(verdict, policy.name, results)
