"""Gate rules on known metrics: pass, warn, block, missing values, privacy reference."""

from __future__ import annotations

import pytest

from fedrisk.errors import FedriskInputError
from fedrisk.gate import apply_policy
from fedrisk.policy import Policy, Rule, load_policy

GOOD = {"test_auc": 0.80, "test_ks": 0.45, "test_approval_rate_difference.sex": 0.01,
        "test_approval_rate_difference.age_band": 0.02, "test_auc.a": 0.79, "test_auc.b": 0.70,
        "test_calibration_p": 0.5}


def test_shipped_credit_policy_loads():
    policy = load_policy(None)
    assert policy.name == "credit-default"
    assert any(r.metric == "approval_rate_difference.sex" and r.severity == "block" and r.threshold == 0.05
               for r in policy.rules)


def test_good_metrics_pass():
    verdict = apply_policy(load_policy(None), GOOD, ["a", "b"], reference_auc=0.81)
    assert verdict.verdict == "pass"
    unjudged = apply_policy(load_policy(None), GOOD, ["a", "b"])  # the privacy rule is never skipped in silence
    assert [r.outcome for r in unjudged.results if r.metric == "privacy_auc_loss"] == ["not evaluated"]
    assert unjudged.verdict == "warn"


@pytest.mark.parametrize("gap,expected", [(0.02, "pass"), (0.04, "warn"), (0.06, "block")])
def test_approval_gap_thresholds(gap, expected):
    verdict = apply_policy(load_policy(None), {**GOOD, "test_approval_rate_difference.sex": gap}, ["a", "b"],
                           reference_auc=0.81)
    assert verdict.verdict == expected


def test_near_random_model_is_blocked():
    verdict = apply_policy(load_policy(None), {**GOOD, "test_auc": 0.52, "test_ks": 0.04}, ["a", "b"])
    assert verdict.verdict == "block"
    assert {r.metric for r in verdict.failed if r.outcome == "block"} == {"auc", "ks"}


def test_every_institution_scope_names_the_failing_one():
    verdict = apply_policy(load_policy(None), {**GOOD, "test_auc.b": 0.6}, ["a", "b"])
    rule = next(r for r in verdict.results if r.scope == "every_institution")
    assert rule.outcome == "warn" and rule.where == "b" and rule.value == 0.6
    assert verdict.verdict == "warn"


def test_missing_metric_fails_closed():
    metrics = {k: v for k, v in GOOD.items() if k != "test_ks"}
    verdict = apply_policy(load_policy(None), metrics, ["a", "b"])
    assert verdict.verdict == "block"


def test_privacy_loss_against_reference():
    policy = load_policy(None)
    assert apply_policy(policy, GOOD, ["a", "b"], reference_auc=0.82).verdict == "pass"  # 2.4 %
    blocked = apply_policy(policy, GOOD, ["a", "b"], reference_auc=0.86)  # 7 % lost
    assert blocked.verdict == "block"
    loss = next(r for r in blocked.results if r.metric == "privacy_auc_loss")
    assert loss.value == pytest.approx((0.86 - 0.80) / 0.86)


def test_policy_validation_names_the_key(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nrules:\n  - {metric: auc, comparator: '=>', threshold: 0.7, severity: block}\n")
    with pytest.raises(FedriskInputError, match="rules.0.comparator"):
        load_policy(bad)
    bad.write_text("name: x\nrulez: []\n")
    with pytest.raises(FedriskInputError, match="unknown key|rules"):
        load_policy(bad)
    with pytest.raises(FedriskInputError, match="not found"):
        load_policy(tmp_path / "missing.yaml")


def test_summary_lines_read_like_a_report():
    lines = apply_policy(Policy(name="p", rules=[{"metric": "auc", "comparator": ">=", "threshold": 0.9,
                                                  "severity": "block"}]), GOOD, []).summary_lines()
    assert lines == ["BLOCK auc >= 0.9 (pooled): 0.8000"]


def test_every_institution_rule_with_no_institution_fails():
    verdict = apply_policy(load_policy(None), GOOD, [])
    rule = next(r for r in verdict.results if r.scope == "every_institution")
    assert rule.outcome == "warn" and rule.where == "no institution"


def test_institution_without_metrics_fails_its_rule():
    verdict = apply_policy(load_policy(None), GOOD, ["a", "b", "c"])
    rule = next(r for r in verdict.results if r.scope == "every_institution")
    assert rule.outcome == "warn" and rule.where == "c"


def test_a_stopped_campaign_is_blocked_whatever_its_metrics():
    verdict = apply_policy(load_policy(None), GOOD, ["a", "b"], completed=False)
    assert verdict.verdict == "block" and verdict.results[0].metric == "campaign_completed"


FRAUD_GOOD = {"test_average_precision": 0.55, "test_recall_at_fpr_0.01": 0.62, "test_auc": 0.86,
              "test_average_precision.a": 0.5, "test_average_precision.b": 0.45}


def test_shipped_fraud_policy_blocks_on_auprc_and_recall_at_one_percent_fpr():
    policy = load_policy(None, "fraud")
    blocking = {r.metric for r in policy.rules if r.severity == "block"}
    assert {"average_precision", "recall_at_fpr_0.01"} <= blocking
    assert apply_policy(policy, FRAUD_GOOD, ["a", "b"], reference_auc=FRAUD_GOOD["test_auc"]).verdict == "pass"
    low_recall = apply_policy(policy, {**FRAUD_GOOD, "test_recall_at_fpr_0.01": 0.3}, ["a", "b"])
    assert low_recall.verdict == "block" and low_recall.failed[0].metric == "recall_at_fpr_0.01"
    low_ap = apply_policy(policy, {**FRAUD_GOOD, "test_average_precision": 0.2}, ["a", "b"])
    assert low_ap.verdict == "block"


@pytest.mark.parametrize("metric", ["accuracy", "flag_rate_at_0.2", "accuracy.inst01"])
def test_fraud_policy_refuses_accuracy_like_metrics(tmp_path, metric):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: x\ntask: fraud\nrules:\n  - {{metric: '{metric}', comparator: '>=', "
                    "threshold: 0.9, severity: block}\n")
    with pytest.raises(FedriskInputError, match="means nothing on imbalanced fraud data"):
        load_policy(path, "fraud")


def test_a_policy_judges_only_its_own_task():
    from fedrisk.policy import DEFAULT_POLICIES

    with pytest.raises(FedriskInputError, match="a credit policy cannot judge a fraud model"):
        load_policy(DEFAULT_POLICIES["credit"], "fraud")


def test_a_passing_every_institution_rule_names_the_institution_whose_value_it_shows():
    """A per-institution value is never labelled pooled (issue 17, item 5)."""
    policy = Policy(name="p", rules=[Rule(metric="auc", comparator=">=", threshold=0.65, severity="warn",
                                          scope="every_institution")])
    verdict = apply_policy(policy, {"test_auc.a": 0.80, "test_auc.b": 0.7888, "test_auc": 0.81}, ["a", "b"])
    assert verdict.results[0].outcome == "pass" and verdict.results[0].where == "b"
    assert verdict.results[0].value == 0.7888 and verdict.summary_lines()[0].endswith("0.7888 at b")
