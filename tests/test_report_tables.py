"""The gate report's tables a validator asked for (issue 21): each protected group's rates with
its size, feature importance, and the run beside the current champion. The group rates are
checked against fairlearn on rows where the answer is known (no noise)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, count, false_positive_rate, selection_rate, true_positive_rate
from sklearn.metrics import roc_auc_score

from fedrisk.fairness import group_histograms
from fedrisk.gate import Verdict
from fedrisk.report import champion_rows, group_rows, importance_rows, render_report


def test_group_rates_equal_fairlearn_on_known_rows():
    rng = np.random.default_rng(7)
    n = 6000
    sex = rng.choice(["F", "M"], n, p=[0.3, 0.7])
    y = rng.random(n) < np.where(sex == "F", 0.15, 0.1)
    scores = np.clip(0.1 + 0.25 * y + 0.05 * (sex == "F") + rng.normal(0, 0.12, n), 0.001, 0.999)
    edges = np.round(np.linspace(0.05, 0.95, 19), 2)
    threshold = 0.2  # an edge of the grid: rates there are exact
    rows = group_rows(group_histograms(y, scores, {"sex": sex}, edges), threshold, edges)
    approved, repaid = scores < threshold, ~y
    frame = MetricFrame(metrics={"rows": count, "approval": selection_rate, "tpr": true_positive_rate,
                                 "fpr": false_positive_rate},
                        y_true=repaid, y_pred=approved, sensitive_features=pd.Series(sex, name="sex")).by_group
    assert [r["group"] for r in rows] == ["F", "M"]
    for row in rows:
        expected = frame.loc[row["group"]]
        assert row["rows"] == expected["rows"]
        assert row["approval rate"] == pytest.approx(expected["approval"], abs=1e-12)
        assert row["TPR (approved | repaid)"] == pytest.approx(expected["tpr"], abs=1e-12)
        assert row["FPR (approved | defaulted)"] == pytest.approx(expected["fpr"], abs=1e-12)
        mine = sex == row["group"]
        assert row["AUC"] == pytest.approx(roc_auc_score(y[mine], scores[mine]), abs=0.01)  # 20 bins


def test_importance_is_ranked_and_the_champion_is_set_beside_the_run():
    metrics = {"importance.age": 0.002, "importance.income": 0.031, "importance.debt_to_income": 0.012,
               "test_auc": 0.79, "test_auc_ci_low": 0.77, "test_ks": 0.44, "test_auc.inst01": 0.8, "test_brier": 0.1}
    assert [r["input"] for r in importance_rows(metrics)] == ["income", "debt_to_income", "age"]
    champion = {"test_auc": 0.81, "test_ks": 0.47, "test_auc.inst01": 0.82, "test_auc_ci_low": 0.79}
    rows = champion_rows(metrics, ["inst01"], champion, ["inst01"], "test")
    assert [r["metric"] for r in rows] == ["auc", "ks"]  # both logged; no interval ends, no institution's
    assert rows[0]["change"] == pytest.approx(-0.02) and rows[1]["champion"] == 0.47
    page = render_report("r1", Verdict("pass", "p", []), metrics, {}, ["inst01"], None,
                         champion=("fedrisk-credit/1", champion, ["inst01"]))
    assert "Against the champion fedrisk-credit/1" in page and "Feature importance (validation)" in page
    assert page.index("income") < page.index("debt_to_income")
