"""Gate policies: rules on metrics, validated on load like campaign configs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedrisk.columns import canonical_metric
from fedrisk.errors import FedriskInputError
from fedrisk.fairness import ATTRIBUTE_METRICS
from fedrisk.strict_yaml import load_yaml, yaml_reason

DEFAULTS = Path(__file__).resolve().parent / "defaults"  # package data: installed with fedrisk
DEFAULT_POLICIES = {"credit": DEFAULTS / "gate_credit.yaml", "fraud": DEFAULTS / "gate_fraud.yaml"}
# On 0.1-1 % positives a model that flags nothing is 99 % accurate: never a fraud gate metric.
NOT_FOR_FRAUD = ("accuracy", "flag_rate", "loss")
GROUP_METRICS = ("approval_rate", "auc")  # logged per group too: `approval_rate.sex:F`
PRIVACY_AUC_LOSS = "privacy_auc_loss"  # relative AUC lost against the named non-private run


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Annotated[str, AfterValidator(canonical_metric)] = Field(
        description="metric name without split prefix, e.g. auc, approval_rate_difference.sex, approval_rate.sex:F "
                    "(any case, but a group's spelling is kept)")
    comparator: Literal["<=", ">=", "<", ">"]
    threshold: float
    severity: Literal["block", "warn"]
    scope: Literal["pooled", "every_institution"] = "pooled"
    description: str = ""
    evidence: Literal["interval", "point"] | None = Field(
        None, description="interval: judged on the metric's 95 % interval where the run logs one; point: on the "
                          "value alone; None: the policy's")


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    task: Literal["credit", "fraud"] = "credit"
    split: Literal["test", "val"] = "test"
    reference_run: str | None = Field(None, description="MLflow run id of the non-private reference")
    evidence: Literal["interval", "point"] = Field(
        "interval", description="interval: a rule is met when the metric's interval lies wholly on its side of the "
                                "threshold, broken when wholly on the other, unresolved (a warning) when it straddles")
    confidence: float = Field(0.95, ge=0.5, le=0.999, description="confidence level of the intervals rules are "
                              "judged on (the run logs 95 % intervals; the gate rescales them)")
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _fraud_metrics(self) -> Policy:
        for rule in self.rules:
            if self.task == "fraud" and rule.metric.split(".")[0].startswith(NOT_FOR_FRAUD):
                raise ValueError(f"metric '{rule.metric}' means nothing on imbalanced fraud data; "
                                 "use average_precision, recall_at_fpr_..., precision_top...")
        return self


def check_policy_fits(policy: Policy, protected: list[str], logged: set[str], file: str | None = None) -> None:
    """A rule no campaign run could ever satisfy, because its metric is not among those the run
    logs (`logged`: `fedrisk.run_schema.task_metrics`) or judges an attribute the campaign does
    not protect: said before any budget is spent, naming the rule."""
    for number, rule in enumerate(policy.rules, start=1):
        base, _, attribute = rule.metric.partition(".")
        attribute = attribute.split(":")[0].removesuffix("_ci_low").removesuffix("_ci_high")
        named = f"gate policy '{policy.name}' rule {number} ({rule.metric} {rule.comparator} {rule.threshold:g}, " \
                f"{rule.severity})"
        if base in ATTRIBUTE_METRICS or (base == "auc" and ":" in rule.metric):
            if ":" in rule.metric and base not in GROUP_METRICS:
                raise FedriskInputError(f"{named}: {base} is one number per attribute, not per group (only "
                                        f"{' and '.join(GROUP_METRICS)} have groups)", file=file)
            if attribute not in protected:
                listed = ", ".join(protected) or "none"
                raise FedriskInputError(
                    f"{named} judges attribute '{attribute or '?'}', which data.protected does not list (listed: "
                    f"{listed}); add the column to data.protected or remove the rule", file=file)
        elif rule.metric != PRIVACY_AUC_LOSS and rule.metric not in logged:
            raise FedriskInputError(
                f"{named} names a metric this campaign does not log (it logs: {', '.join(sorted(logged))}, and "
                "fairness metrics by protected attribute); fix the name, or align evaluation.threshold, "
                "evaluation.max_fpr or evaluation.alerts_per_day", file=file)


def policy_sha256(policy: Policy) -> str:
    """Identifies the rules a verdict was reached under (the audit log and promotions check it)."""
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()


def load_policy(path: str | Path | None, task: str = "credit") -> Policy:
    """Load a policy file, or the task's shipped default when `path` is None."""
    file = Path(path) if path else DEFAULT_POLICIES[task]
    if not file.is_file():
        raise FedriskInputError("policy file not found", file=str(file))
    try:
        raw = load_yaml(file.read_text()) or {}
    except UnicodeDecodeError:
        raise FedriskInputError("policy is not valid YAML", file=str(file)) from None
    except yaml.YAMLError as exc:
        raise FedriskInputError(yaml_reason(exc, "policy is not valid YAML"), file=str(file)) from None
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "rules"
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise FedriskInputError(f"key '{key}': {msg}", file=str(file)) from None
    if policy.task != task:
        raise FedriskInputError(f"a {policy.task} policy cannot judge a {task} model", file=str(file))
    return policy

