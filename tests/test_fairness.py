"""Fairness from summed group histograms equals fairlearn on the pooled decisions."""

from __future__ import annotations

import numpy as np
import pytest
from fairlearn.metrics import (
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
)
from sklearn.metrics import roc_auc_score

from fedrisk import run_schema
from fedrisk.fairness import (
    fairness_by_attribute,
    fairness_scores,
    group_histograms,
    merge_group_histograms,
)
from fedrisk.metrics import uniform_edges, with_threshold


def _institution(seed: int, n: int, bias: float):
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    band = rng.choice(["18-29", "30-49", "50+"], n, p=[0.2, 0.5, 0.3])
    y = (rng.random(n) < 0.2).astype(int)
    pd_ = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * y - 1.6 + bias * (sex == "F"))))
    return y, pd_, {"sex": sex, "age_band": band}


@pytest.mark.parametrize("bias", [0.0, 0.6])
def test_federated_fairness_equals_fairlearn_on_pooled_data(bias):
    parts = [_institution(s, n, bias) for s, n in [(1, 4000), (2, 2500), (3, 900)]]
    threshold = 0.2
    edges = with_threshold(uniform_edges(1000), threshold)
    merged = merge_group_histograms([group_histograms(y, p, g, edges) for y, p, g in parts])
    y = np.concatenate([q[0] for q in parts])
    p = np.concatenate([q[1] for q in parts])
    for attribute in ("sex", "age_band"):
        groups = np.concatenate([q[2][attribute] for q in parts])
        approved = (p < threshold).astype(int)
        good = 1 - y
        f = fairness_by_attribute(merged[attribute], threshold, edges)
        assert f["approval_rate_difference"] == pytest.approx(
            demographic_parity_difference(good, approved, sensitive_features=groups), abs=1e-12)
        assert f["approval_rate_ratio"] == pytest.approx(
            demographic_parity_ratio(good, approved, sensitive_features=groups), abs=1e-12)
        assert f["equal_opportunity_difference"] == pytest.approx(
            equal_opportunity_difference(good, approved, sensitive_features=groups), abs=1e-12)
        assert f["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(good, approved, sensitive_features=groups), abs=1e-12)
        for group in np.unique(groups):
            mine = groups == group
            assert f["approval_rate"][group] == pytest.approx(approved[mine].mean(), abs=1e-12)
            assert f["auc"][group] == pytest.approx(roc_auc_score(y[mine], p[mine]), abs=0.002)
    if bias:
        assert fairness_by_attribute(merged["sex"], threshold, edges)["approval_rate_difference"] > 0.05


def test_flat_metric_names():
    y, p, g = _institution(4, 2000, 0.0)
    edges = uniform_edges(100)
    out = run_schema.fairness_metrics("test", fairness_scores(group_histograms(y, p, g, edges), 0.2, edges))
    assert "test_approval_rate_difference.sex" in out
    assert "test_approval_rate.sex:F" in out and "test_auc.age_band:50plus" in out


def test_group_present_at_one_institution_only():
    a = group_histograms(np.array([0, 1]), np.array([0.1, 0.9]), {"sex": np.array(["F", "F"])}, uniform_edges(10))
    b = group_histograms(np.array([0, 1]), np.array([0.1, 0.9]), {"sex": np.array(["M", "X"])}, uniform_edges(10))
    merged = merge_group_histograms([a, b])
    assert sorted(merged["sex"]) == ["F", "M", "X"]
    assert merged["sex"]["F"][0].sum() + merged["sex"]["F"][1].sum() == 2


def test_known_groups_are_always_sent_and_other_values_pooled_as_other():
    """Which groups an institution holds is not itself released: every known group is sent, empty
    or not, and a value the consortium did not release (too rare to share) counts as 'other'."""
    edges = uniform_edges(10)
    groups = {"sex": np.array(["F", "F", "X"])}
    out = group_histograms(np.array([0, 1, 0]), np.array([0.1, 0.9, 0.5]), groups, edges, {"sex": ["F", "M"]})
    assert list(out["sex"]) == ["F", "M", "other"]
    assert out["sex"]["M"][0].sum() + out["sex"]["M"][1].sum() == 0
    assert out["sex"]["other"][1].sum() == 1


def test_a_group_too_small_for_its_noise_is_left_out_of_the_gaps():
    edges = with_threshold(uniform_edges(10), 0.2)
    big = (np.full(10, 50.0), np.full(10, 200.0))
    tiny = (np.array([3.0] + [0.0] * 9), np.zeros(10))  # three rows: noise would decide their rate
    f = fairness_by_attribute({"a": big, "b": tiny}, 0.2, edges, min_size=10)
    assert set(f["approval_rate"]) == {"a"} and f["approval_rate_difference"] == 0.0
