"""The MLflow run schema: every tag, artifact path and metric name fedrisk writes or reads.

Writers (the campaign, the gate, promotion, monitoring) and readers (the gate, the CLI, the
evidence pack, reports) take names from here, so a name changes in one place. The metric
modules stay pure: they return values keyed by metric (`auc`, `approval_rate_difference`),
and the functions below turn them into MLflow names:

- `<split>_<metric>` pooled over institutions (`val_auc`, `test_ks`); split is `val` or `test`;
- `<name>.<institution>` for one institution (`val_auc.inst03`, `epsilon.inst03`);
- fairness: `<split>_<metric>.<attribute>` and, per group, `<split>_<metric>.<attribute>:<group>`.
"""

from __future__ import annotations

import re
from typing import Any

# --- tags of a campaign run -------------------------------------------------------------
CAMPAIGN = "fedrisk.campaign"
TASK = "fedrisk.task"
VERSION = "fedrisk.version"
CODE_VERSION = "fedrisk.code_version"
CONFIG_SHA256 = "fedrisk.config_sha256"
TRAINER = "fedrisk.trainer"
PRIVACY = "fedrisk.privacy"  # "dp" or "none"
ACCOUNTANT = "fedrisk.accountant"
DELTA = "fedrisk.delta"
EPSILON = "fedrisk.epsilon"
INSTITUTION_EPSILON = "fedrisk.institution_epsilon"
SECURE_AGGREGATION = "fedrisk.secure_aggregation"
WARM_START = "fedrisk.warm_start"
STATUS = "fedrisk.status"  # completed, stopped or failed
DESCRIPTION = "mlflow.note.content"  # the run's description in MLflow's UI: the verdict and why
MLFLOW_USER = "mlflow.user"  # "Created by" in MLflow's UI: the campaign's trainer
STOP_REASON = "fedrisk.stop_reason"
ERROR = "fedrisk.error"
INSTITUTIONS = "fedrisk.institutions"  # comma-separated; continued in fedrisk.institutions.2, .3, ... (`institution_tags`)
INSTITUTION_METRICS_ARTIFACT = "institution_metrics.json"  # beyond tracking.institution_metrics_limit
INSTITUTION_METRICS = "fedrisk.institution_metrics"  # "table": the run's per-institution metrics are in the artifact
TAG_LIMIT = 8000  # characters MLflow keeps of a tag's value (it truncates the rest)
EXCLUDED = "fedrisk.excluded"
MODEL_URI = "fedrisk.model_uri"
MODEL_NAME = "fedrisk.model_name"
ROUNDS_COMPLETED = "fedrisk.rounds_completed"
REFERENCE_ERROR = "fedrisk.reference_error"
RUN_NAME = "mlflow.runName"

# --- tags of the gate (on the run, and on the model version) -----------------------------
GATE_VERDICT = "fedrisk.gate.verdict"
GATE_POLICY = "fedrisk.gate.policy"
GATE_POLICY_SHA256 = "fedrisk.gate.policy_sha256"
GATE_FAILED_RULES = "fedrisk.gate.failed_rules"
GATE_WARNINGS = "fedrisk.gate.warnings"
GATE_MODEL_VERSION = "fedrisk.gate.model_version"
GATE_ALIAS = "fedrisk.gate.alias"
GATE_ERROR = "fedrisk.gate.error"
GATE_REFERENCE = "fedrisk.gate.reference"  # the non-private run privacy_auc_loss was judged against, or "-"
REFERENCE_FOR = "fedrisk.reference_for"  # on a non-private reference run: the private run it was trained for

# --- tags of a registered model version ---------------------------------------------------
RUN_ID = "fedrisk.run_id"
APPROVALS = "fedrisk.approvals"  # pending approvals, mirrored from the audit log
APPROVED_BY = "fedrisk.approved_by"  # the approvals a promotion used
CHAMPION_HISTORY = "fedrisk.champion_history"
CHAMPION_SINCE = "fedrisk.champion_since"
OVERRIDE = "fedrisk.override"
OVERRIDE_JUSTIFICATION = "fedrisk.override_justification"
OVERRIDE_RULES = "fedrisk.override_rules"
OVERRIDE_APPROVERS = "fedrisk.override_approvers"
ARCHIVED = "fedrisk.archived"
ARCHIVED_AT = "fedrisk.archived_at"
REPLACED_BY = "fedrisk.replaced_by"
ROLLED_BACK = "fedrisk.rolled_back"
RESTORED_AT = "fedrisk.restored_at"

# --- tags of the audit log's head, copied onto runs and model versions ----------------------
AUDIT_LOG = "fedrisk.audit.log"
AUDIT_LOG_ID = "fedrisk.audit.log_id"
AUDIT_HEAD = "fedrisk.audit.head"

# --- tags of a monitoring run (and of the monitored model version) -------------------------
MONITOR = "fedrisk.monitor"
MONITOR_LEVEL = "fedrisk.monitor.level"
MONITOR_WORST_LEVEL = "fedrisk.monitor.worst_level"
MONITOR_WINDOWS = "fedrisk.monitor.windows"
MONITOR_RETRAIN = "fedrisk.monitor.retrain"
MONITOR_RUN = "fedrisk.monitor.run"
MODEL_VERSION = "fedrisk.model_version"
TRAINING_RUN = "fedrisk.training_run"

# --- artifacts -----------------------------------------------------------------------------
CONFIG_ARTIFACT = "config.yaml"
DATA_QUALITY_ARTIFACT = "institutions/data_quality.json"
DATA_SUMMARY_ARTIFACT = "institutions/data_summary.json"
SHARED_TABLE_ARTIFACT = "institutions/shared_terminal_table.json"  # its calendar, size and noise, never its cells
EXCLUDED_ARTIFACT = "institutions/excluded.json"
CALIBRATION_ARTIFACT = "evaluation/calibration_test.json"
TEST_STATISTICS_ARTIFACT = "evaluation/test_statistics.json"
IMPORTANCE_ARTIFACT = "evaluation/feature_importance.json"
LEDGER_ARTIFACT = "privacy/ledger_snapshot.json"
NOISE_ARTIFACT = "evaluation/noise.json"
REFERENCE_ARTIFACT = "monitoring/reference.json"
VERDICT_ARTIFACT = "gate/verdict.json"
GATE_REPORT_ARTIFACT = "gate/report.html"
EVIDENCE_FOLDER = "evidence"
MONITORING_CONFIG_ARTIFACT = "monitoring_config.yaml"
DRIFT_FOLDER = "drift"
DRIFT_REPORT_ARTIFACT = "drift/report.json"

# --- metric names ----------------------------------------------------------------------------
VALIDATION, TEST = "val", "test"  # split prefixes of evaluation metrics
EPSILON_MAX = "epsilon_max"
EPSILON_FINAL_MAX = "epsilon_final_max"
ROUND_SECONDS = "round_seconds"
INSTITUTIONS_TRAINED = "institutions_trained"
INSTITUTIONS_EXCLUDED = "institutions_excluded"
INSTITUTIONS_DROPPED = "institutions_dropped"  # asked to train, no reply within training.round_timeout
UPDATE_NORM_RATIO = "update_norm_ratio"  # per institution: its update's norm / the round's median
UPDATE_COSINE = "update_cosine"  # per institution: cosine of its update with the median of the others'
UPDATES_FLAGGED, UPDATES_BOUNDED = "updates_flagged", "updates_bounded"
DRILL = "fedrisk.drill"  # the poisoning drill the campaign ran (simulation only)
ROBUST = "fedrisk.robust"  # the aggregation rule and the screening of updates
SECURE_AGGREGATION_SECONDS = "secure_aggregation_seconds"
INSTITUTION_EPSILON_METRIC = "institution_epsilon"
INSTITUTION_NOISE_STDDEV = "institution_noise_stddev"
WINDOW_SECONDS = "window_seconds"
SHARED_TABLE_NOISE = "shared_table_noise"  # noise sd per cell of the summed terminal table
SHARED_TABLE_MEGABYTES = "shared_table_megabytes"  # one issuer's traffic for the table: up and down
SHARED_TABLE_SECONDS = "shared_table_seconds"


def institution_tags(names: list[str]) -> dict[str, str]:
    """The institutions of a campaign as tags, split where MLflow would cut one (a thousand
    institutions' names are longer than a tag)."""
    chunks: list[list[str]] = [[]]
    for name in sorted(names):
        if chunks[-1] and len(",".join([*chunks[-1], name])) > TAG_LIMIT:
            chunks.append([])
        chunks[-1].append(name)
    return {INSTITUTIONS if i == 0 else f"{INSTITUTIONS}.{i + 1}": ",".join(c) for i, c in enumerate(chunks)}


def institution_tag_parts(tags: dict[str, str]) -> list[str]:
    """The keys of a run's institutions tag and its continuations, in order."""
    keys, part = [], 1
    while (key := INSTITUTIONS if part == 1 else f"{INSTITUTIONS}.{part}") in tags:
        keys.append(key)
        part += 1
    return keys


def institution_of_key(key: str, institutions: set[str] | frozenset[str]) -> str | None:
    """The institution a metric key names (`at`: `name.<institution>`; names may hold dots)."""
    parts = key.split(".")
    return next((".".join(parts[i:]) for i in range(1, len(parts)) if ".".join(parts[i:]) in institutions), None)


def institutions_of(tags: dict[str, str]) -> list[str]:
    """The institutions a run's tags name (`institution_tags`), sorted."""
    names, part = [], 1
    while (key := INSTITUTIONS if part == 1 else f"{INSTITUTIONS}.{part}") in tags:
        names += [n for n in tags[key].split(",") if n]
        part += 1
    return sorted(names)


def at(name: str, institution: str | None) -> str:
    """`name` for one institution (`epsilon.inst03`), or as is for the pooled consortium."""
    return name if institution is None else f"{name}.{institution}"


def split_metric(split: str, metric: str, institution: str | None = None) -> str:
    """`val_auc`, `test_ks.inst03`, `test_approval_rate_difference.sex`."""
    return at(f"{split}_{metric}", institution)


def group_safe(text: str) -> str:
    """A group value as MLflow allows in a metric name ('50+' -> '50plus')."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text.replace("+", "plus"))


def fairness_metric(metric: str, attribute: str, group: str | None = None) -> str:
    """`approval_rate_difference.sex` for an attribute, `approval_rate.sex:F` for a group."""
    return f"{metric}.{attribute}" if group is None else f"{metric}.{attribute}:{group_safe(group)}"


# The pooled metric keys a campaign of each task logs per split (fairness metrics, named by
# attribute, come on top for credit): what a gate rule may judge.
TASK_METRIC_KEYS = {
    "credit": ("auc", "gini", "ks", "average_precision", "brier", "loss", "recall_at_fpr", "default_rate",
               "precision_at_threshold", "recall_at_threshold", "f1_at_threshold", "flag_rate_at_threshold",
               "examples", "auc_gap", "auc_worst_institution", "calibration_p"),
    "fraud": ("auc", "average_precision", "recall_at_fpr", "precision_top_k", "fraud_rate", "loss",
              "precision_at_budget", "recall_at_budget", "amount_recall_at_budget", "alerts_per_day",
              "operating_threshold", "examples", "average_precision_gap", "average_precision_worst_institution"),
}


INTERVAL_LEVEL = 0.95  # the confidence level of the logged `_ci_low`, `_ci_high`
INTERVAL_KEYS = ("auc", "ks", "average_precision", "brier", "recall_at_fpr")  # logged with `_ci_low`, `_ci_high`
INTERVAL_SUFFIXES = ("_ci_low", "_ci_high")


def task_metrics(task: str, *, threshold: float, max_fpr: float, k: int) -> set[str]:
    """The names (no split prefix) of the pooled metrics a campaign of `task` logs, with the
    bounds of their confidence intervals (a rule may judge `auc_ci_low`)."""
    names = {metric_name(key, threshold=threshold, max_fpr=max_fpr, k=k) for key in TASK_METRIC_KEYS[task]}
    bounds = {f"{metric_name(key, max_fpr=max_fpr)}{end}" for key in INTERVAL_KEYS for end in INTERVAL_SUFFIXES}
    return names | bounds


def metric_name(key: str, *, threshold: float | None = None, max_fpr: float | None = None,
                k: int | None = None) -> str:
    """A metric module's key with its parameter: `recall_at_fpr` -> `recall_at_fpr_0.1`,
    `precision_at_threshold` -> `precision_at_0.2`, `precision_top_k` -> `precision_top30_per_day`."""
    if key == "recall_at_fpr" and max_fpr is not None:
        return recall_at_fpr(max_fpr)
    if key == "precision_top_k" and k is not None:
        return precision_top_k(k)
    if key.endswith("_at_threshold") and threshold is not None:
        return f"{key[: -len('_at_threshold')]}_at_{threshold:g}"
    return key


def split_metrics(split: str, values: dict[str, float], institution: str | None = None,
                  **params: Any) -> dict[str, float]:
    """Metric values of one scope (pooled or one institution) under their MLflow names;
    `params` are `metric_name`'s (threshold, max_fpr, k)."""
    return {split_metric(split, metric_name(key, **params), institution): value for key, value in values.items()}


def scores_metrics(split: str, scores: Any, **params: Any) -> dict[str, float]:
    """A `Scores` (pooled and per institution) under MLflow names."""
    out = split_metrics(split, scores.pooled, **params)
    for institution, values in scores.institutions.items():
        out.update(split_metrics(split, values, institution, **params))
    return out


FAIRNESS_GAPS = ("approval_rate_difference", "approval_rate_ratio", "equal_opportunity_difference",
                 "equalized_odds_difference")


def fairness_metrics(split: str, by_attribute: dict[str, dict[str, Any]],
                     institution: str | None = None) -> dict[str, float]:
    """Gaps per protected attribute, and approval rate and AUC per group, under MLflow names."""
    out: dict[str, float] = {}
    for attribute, result in sorted(by_attribute.items()):
        for key in FAIRNESS_GAPS:
            out[split_metric(split, fairness_metric(key, attribute), institution)] = result[key]
        for group, rate in result["approval_rate"].items():
            out[split_metric(split, fairness_metric("approval_rate", attribute, group), institution)] = rate
            out[split_metric(split, fairness_metric("auc", attribute, group), institution)] = result["auc"][group]
    return out


def per_institution(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """`{institution: value}` as `{name.institution: value}`."""
    return {at(name, institution): value for institution, value in values.items()}


def data_quality_metrics(institution: str, card: dict[str, Any]) -> dict[str, float]:
    return {at("dq_score", institution): card["score"],
            **{at(f"dq_{d}", institution): v["score"] for d, v in card["dimensions"].items()}}


def noise_metrics(split: str, errors: dict[str, float]) -> dict[str, float]:
    """`<split>_<metric>_noise_sd`: how much the DP noise in the released histograms moves a metric."""
    return {split_metric(split, f"{metric}_noise_sd"): value for metric, value in errors.items()}


def interval_metrics(split: str, found: dict[str, tuple[float, float]]) -> dict[str, float]:
    """`<split>_<metric>_ci_low` and `_ci_high`: the confidence interval logged next to a metric."""
    out = {}
    for metric, (low, high) in found.items():
        out[split_metric(split, f"{metric}_ci_low")] = low
        out[split_metric(split, f"{metric}_ci_high")] = high
    return out


def interval_of(metrics: dict[str, float], split: str, metric: str) -> tuple[float, float] | None:
    """The logged interval of a pooled metric, when the run has one."""
    low, high = metrics.get(split_metric(split, f"{metric}_ci_low")), metrics.get(split_metric(split, f"{metric}_ci_high"))
    return None if low is None or high is None else (low, high)


def importance_metric(feature: str) -> str:
    return f"importance.{feature}"


def recall_at_fpr(max_fpr: float) -> str:
    return f"recall_at_fpr_{max_fpr:g}"


def precision_top_k(k: int) -> str:
    return f"precision_top{k}_per_day"


def of_split(metrics: dict[str, float], split: str, institutions: list[str]) -> dict[str, float]:
    """The pooled metrics of a split, without prefix: what a policy's rules name."""
    prefix = f"{split}_"
    return {k[len(prefix):]: v for k, v in sorted(metrics.items())
            if k.startswith(prefix) and k.rsplit(".", 1)[-1] not in institutions}
