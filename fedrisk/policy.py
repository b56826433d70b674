"""Gate policies: rules on metrics, validated on load like campaign configs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedrisk.errors import FedriskInputError
from fedrisk.strict_yaml import load_yaml, yaml_reason

DEFAULTS = Path(__file__).resolve().parent / "defaults"  # package data: installed with fedrisk
DEFAULT_POLICIES = {"credit": DEFAULTS / "gate_credit.yaml", "fraud": DEFAULTS / "gate_fraud.yaml"}
# On 0.1-1 % positives a model that flags nothing is 99 % accurate: never a fraud gate metric.
NOT_FOR_FRAUD = ("accuracy", "flag_rate", "loss")
PRIVACY_AUC_LOSS = "privacy_auc_loss"  # relative AUC lost against the named non-private run


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(description="metric name without split prefix, e.g. auc, approval_rate_difference.sex")
    comparator: Literal["<=", ">=", "<", ">"]
    threshold: float
    severity: Literal["block", "warn"]
    scope: Literal["pooled", "every_institution"] = "pooled"
    description: str = ""


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    task: Literal["credit", "fraud"] = "credit"
    split: Literal["test", "val"] = "test"
    reference_run: str | None = Field(None, description="MLflow run id of the non-private reference")
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _fraud_metrics(self) -> Policy:
        for rule in self.rules:
            if self.task == "fraud" and rule.metric.split(".")[0].startswith(NOT_FOR_FRAUD):
                raise ValueError(f"metric '{rule.metric}' means nothing on imbalanced fraud data; "
                                 "use average_precision, recall_at_fpr_..., precision_top...")
        return self


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

