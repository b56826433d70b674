"""Fraud metrics from issuers' summed statistics equal scikit-learn / pandas on pooled data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    average_precision_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from fedrisk import run_schema
from fedrisk.fraud_metrics import FraudStats, alert_threshold, fraud_summary
from fedrisk.metrics import EvalStats, uniform_edges

BINS = 1000
EDGES = uniform_edges(BINS)
K = 20
# Binning error of ranking metrics at 1,000 bins, as for the credit metrics (docs/evaluation_cost.md)
RANKING_TOLERANCE = 0.005


def _issuers(seed: int = 0, k: int = 3) -> dict[str, pd.DataFrame]:
    """Imbalanced (about 1 % fraud), time-stamped, amount-carrying scores per issuer."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(k):
        n = int(rng.integers(8_000, 20_000))
        y = (rng.random(n) < 0.006 + 0.003 * i).astype(int)
        logit = rng.normal(size=n) + 3.0 * y - 4.0
        out[f"inst{i + 1:02d}"] = pd.DataFrame({
            "y": y, "score": 1 / (1 + np.exp(-logit)),
            "amount": rng.gamma(2.0, 30.0, n) * (1 + 2 * y),
            "day": np.sort(rng.integers(0, 14, n)),
        })
    return out


def _stats(frame: pd.DataFrame) -> tuple[EvalStats, FraudStats]:
    return (EvalStats.from_scores(frame.y, frame.score, EDGES),
            FraudStats.from_scores(frame.y, frame.score, frame.amount, frame.day, EDGES, K, frame.day.nunique(), 1e9))


def test_ranking_metrics_match_sklearn_on_pooled_data():
    issuers = _issuers(1)
    parts = {n: _stats(f) for n, f in issuers.items()}
    pooled = pd.concat(issuers.values())
    m = run_schema.scores_metrics("test", fraud_summary(parts, parts, 0.01, K), max_fpr=0.01, k=K)
    assert m["test_auc"] == pytest.approx(roc_auc_score(pooled.y, pooled.score), abs=RANKING_TOLERANCE)
    assert m["test_average_precision"] == pytest.approx(
        average_precision_score(pooled.y, pooled.score), abs=RANKING_TOLERANCE)
    fpr, tpr, _ = roc_curve(pooled.y, pooled.score)
    exact = tpr[fpr <= 0.01].max()
    assert m["test_recall_at_fpr_0.01"] <= exact + 1e-12  # bin edges never flatter the model
    assert m["test_recall_at_fpr_0.01"] == pytest.approx(exact, abs=0.02)
    for name, frame in issuers.items():
        assert m[f"test_average_precision.{name}"] == pytest.approx(
            average_precision_score(frame.y, frame.score), abs=RANKING_TOLERANCE)
    assert m["test_fraud_rate"] == pytest.approx(pooled.y.mean(), abs=1e-12)


def test_top_k_precision_per_day_matches_a_pandas_ranking():
    issuers = _issuers(2)
    parts = {n: _stats(f) for n, f in issuers.items()}
    m = run_schema.scores_metrics("val", fraud_summary(parts, parts, 0.01, K), max_fpr=0.01, k=K)
    hits = alerts = 0
    for name, frame in issuers.items():
        top = frame.sort_values(["day", "score"], ascending=[True, False], kind="stable").groupby("day").head(K)
        assert m[f"val_precision_top{K}_per_day.{name}"] == pytest.approx(top.y.mean(), abs=1e-12)
        hits, alerts = hits + top.y.sum(), alerts + len(top)
    assert m[f"val_precision_top{K}_per_day"] == pytest.approx(hits / alerts, abs=1e-12)


def test_alert_budget_threshold_is_the_lowest_edge_within_budget():
    frame = _issuers(3, k=1)["inst01"]
    stats, fraud = _stats(frame)
    days = frame.day.nunique()
    for budget in (5, 20, 80):
        k = alert_threshold(stats.hist_pos, stats.hist_neg, fraud.days, budget)
        flagged = (frame.score >= k / BINS).sum()
        assert flagged <= budget * days
        assert (frame.score >= (k - 1) / BINS).sum() > budget * days  # one edge lower: over budget


def test_budget_metrics_and_amount_recall_match_sklearn_at_each_issuers_threshold():
    issuers = _issuers(4)
    parts = {n: _stats(f) for n, f in issuers.items()}
    m = run_schema.scores_metrics("test", fraud_summary(parts, parts, 0.01, K), max_fpr=0.01, k=K)
    flags, ys, amounts = [], [], []
    for name, frame in issuers.items():
        threshold = m[f"test_operating_threshold.{name}"]
        flag = (frame.score >= threshold).to_numpy()
        assert m[f"test_precision_at_budget.{name}"] == pytest.approx(precision_score(frame.y, flag), abs=1e-12)
        assert m[f"test_recall_at_budget.{name}"] == pytest.approx(recall_score(frame.y, flag), abs=1e-12)
        # share of fraud value caught = recall weighted by amount
        assert m[f"test_amount_recall_at_budget.{name}"] == pytest.approx(
            recall_score(frame.y, flag, sample_weight=frame.amount), abs=1e-9)
        assert m[f"test_alerts_per_day.{name}"] == pytest.approx(flag.sum() / frame.day.nunique())
        assert m[f"test_alerts_per_day.{name}"] <= K
        flags.append(flag), ys.append(frame.y), amounts.append(frame.amount)
    flag, y, amount = np.concatenate(flags), np.concatenate(ys), np.concatenate(amounts)
    assert m["test_recall_at_budget"] == pytest.approx(recall_score(y, flag), abs=1e-12)
    assert m["test_amount_recall_at_budget"] == pytest.approx(recall_score(y, flag, sample_weight=amount), abs=1e-9)
    assert m["test_precision_at_budget"] == pytest.approx(precision_score(y, flag), abs=1e-12)


def test_thresholds_come_from_validation_not_from_the_judged_split():
    val = {n: _stats(f) for n, f in _issuers(5).items()}
    test_frames = _issuers(6)
    test = {n: _stats(f) for n, f in test_frames.items()}
    m = run_schema.scores_metrics("test", fraud_summary(val, test, 0.01, K), max_fpr=0.01, k=K)
    for name, (stats, fraud) in val.items():
        assert m[f"test_operating_threshold.{name}"] == pytest.approx(alert_threshold(
            stats.hist_pos, stats.hist_neg, fraud.days, K) / BINS, abs=1e-12)


def test_fraud_statistics_add_up_across_issuers():
    issuers = _issuers(7)
    total = sum((_stats(f)[1] for f in issuers.values()), start=FraudStats(0.0, 0.0, 0.0, 0))
    tops = [f.sort_values(["day", "score"], ascending=[True, False], kind="stable").groupby("day").head(K)
            for f in issuers.values()]
    assert total.topk_alerts == sum(len(t) for t in tops)
    assert total.topk_hits == sum(int(t.y.sum()) for t in tops)
    assert total.days == sum(f.day.nunique() for f in issuers.values())
    pooled = pd.concat(issuers.values())
    frauds = pooled[pooled.y == 1]
    per_bin = frauds.groupby(np.minimum((frauds.score * BINS).astype(int), BINS - 1)).amount.sum()
    np.testing.assert_allclose(total.amount_pos[per_bin.index], per_bin.to_numpy())
    assert total.amount_pos.sum() == pytest.approx(frauds.amount.sum())


def test_no_accuracy_in_the_fraud_suite():
    parts = {n: _stats(f) for n, f in _issuers(8).items()}
    names = run_schema.scores_metrics("test", fraud_summary(parts, parts, 0.01, K), max_fpr=0.01, k=K)
    assert not [k for k in names if "accuracy" in k or "flag_rate" in k]
