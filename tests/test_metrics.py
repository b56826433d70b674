"""Federated metrics from summed histograms equal pooled scikit-learn values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from fedrisk import run_schema
from fedrisk.metrics import (
    EvalStats,
    auc_from_histograms,
    average_precision_from_histograms,
    bin_index,
    brier_from_sums,
    calibration_bands,
    classification_at_threshold,
    evaluation_summary,
    gini_from_histograms,
    ks_from_histograms,
    recall_at_fpr,
    score_histograms,
)


def _institutions(k=4, seed=0):
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(k):
        n = int(rng.integers(500, 5000))
        y = (rng.random(n) < 0.1 + 0.05 * i).astype(int)
        score = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.3 * y - 1.5 + 0.2 * i)))
        parts.append((y, score))
    return parts


def test_auc_exact_when_scores_sit_on_distinct_bins():
    bins = 100
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1])
    s = (np.array([3, 10, 12, 40, 55, 56, 70, 90]) + 0.5) / bins
    pos, neg = score_histograms(y, s, bins)
    assert auc_from_histograms(pos, neg) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_ties_count_half_like_sklearn():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.2, 0.2, 0.7, 0.7])
    pos, neg = score_histograms(y, s, 10)
    assert auc_from_histograms(pos, neg) == pytest.approx(roc_auc_score(y, s))


@pytest.mark.parametrize("bins,tolerance", [(100, 0.01), (1000, 0.002), (10000, 0.0005)])
def test_federated_auc_equals_pooled(bins, tolerance):
    parts = _institutions()
    y = np.concatenate([p[0] for p in parts])
    s = np.concatenate([p[1] for p in parts])
    summed = {f"i{i}": EvalStats.from_scores(yy, ss, bins) for i, (yy, ss) in enumerate(parts)}
    out = run_schema.scores_metrics("val", evaluation_summary(summed, threshold=0.5, max_fpr=0.1), threshold=0.5,
                                   max_fpr=0.1)
    assert out["val_auc"] == pytest.approx(roc_auc_score(y, s), abs=tolerance)
    assert out["val_loss"] == pytest.approx(log_loss(y, s), rel=1e-9)
    for i, (yy, ss) in enumerate(parts):
        assert out[f"val_auc.i{i}"] == pytest.approx(roc_auc_score(yy, ss), abs=tolerance)
    assert out["val_auc_worst_institution"] == min(out[f"val_auc.i{i}"] for i in range(len(parts)))
    gap = max(out[f"val_auc.i{i}"] for i in range(len(parts))) - out["val_auc_worst_institution"]
    assert out["val_auc_gap"] == pytest.approx(gap)
    assert out["val_brier"] == pytest.approx(brier_score_loss(y, s), rel=1e-9)
    assert out["val_gini"] == pytest.approx(2 * roc_auc_score(y, s) - 1, abs=2 * tolerance)
    assert out["val_recall_at_0.5"] == pytest.approx(recall_score(y, s >= 0.5), abs=1e-12)
    assert out["val_default_rate"] == pytest.approx(y.mean())
    # pooled AUC is not the average of institutions' AUCs
    assert out["val_examples"] == len(y)


def test_single_class_gives_nan():
    pos, neg = score_histograms(np.zeros(5), np.linspace(0, 1, 5), 10)
    assert np.isnan(auc_from_histograms(pos, neg))


# ------------------------------------------------------------ the full suite from histograms


def _pooled_histograms(parts, bins):
    """Sum of institutions' histograms (what the server gets) and the pooled raw arrays."""
    pos = sum(score_histograms(y, s, bins)[0] for y, s in parts)
    neg = sum(score_histograms(y, s, bins)[1] for y, s in parts)
    y = np.concatenate([p[0] for p in parts])
    s = np.concatenate([p[1] for p in parts])
    return pos, neg, y, s


@pytest.mark.parametrize("bins,tol", [(1000, 0.005), (10000, 0.001)])
def test_ks_gini_ap_match_pooled_references(bins, tol):
    pos, neg, y, s = _pooled_histograms(_institutions(seed=3), bins)
    assert ks_from_histograms(pos, neg) == pytest.approx(ks_2samp(s[y == 1], s[y == 0]).statistic, abs=tol)
    assert gini_from_histograms(pos, neg) == pytest.approx(2 * roc_auc_score(y, s) - 1, abs=2 * tol)
    assert average_precision_from_histograms(pos, neg) == pytest.approx(
        average_precision_score(y, s), abs=tol
    )


def test_recall_at_fpr_matches_roc_curve():
    pos, neg, y, s = _pooled_histograms(_institutions(seed=4), 1000)
    fpr, tpr, _ = roc_curve(y, s)
    for target in (0.01, 0.05, 0.2):
        exact = tpr[fpr <= target].max()
        binned = recall_at_fpr(pos, neg, target)
        assert binned <= exact + 1e-12  # bin edges are a subset of thresholds: never optimistic
        assert binned == pytest.approx(exact, abs=0.01)


@pytest.mark.parametrize("threshold", [0.2, 0.35, 0.5])
def test_precision_recall_f1_exact_on_grid_thresholds(threshold):
    pos, neg, y, s = _pooled_histograms(_institutions(seed=5), 1000)
    flagged = (s >= threshold).astype(int)
    out = classification_at_threshold(pos, neg, threshold)
    assert out["precision"] == pytest.approx(precision_score(y, flagged), abs=1e-12)
    assert out["recall"] == pytest.approx(recall_score(y, flagged), abs=1e-12)
    assert out["f1"] == pytest.approx(f1_score(y, flagged), abs=1e-12)
    assert out["flag_rate"] == pytest.approx(flagged.mean(), abs=1e-12)


def test_threshold_off_grid_is_refused():
    with pytest.raises(ValueError, match="grid"):
        classification_at_threshold(np.ones(100), np.ones(100), 0.1234)


def test_brier_from_sums_is_exact():
    parts = _institutions(seed=6)
    sums = [(len(y), float(np.sum(s**2)), float(np.sum(s * y)), float(np.sum(y))) for y, s in parts]
    total = [sum(col) for col in zip(*sums)]
    y = np.concatenate([p[0] for p in parts])
    s = np.concatenate([p[1] for p in parts])
    assert brier_from_sums(*total) == pytest.approx(brier_score_loss(y, s), rel=1e-12)


def test_calibration_bands_and_jeffreys_test():
    from scipy.stats import beta

    rng = np.random.default_rng(7)
    p = rng.uniform(0.01, 0.6, 200_000)
    y_calibrated = (rng.random(p.size) < p).astype(int)
    y_too_risky = (rng.random(p.size) < np.minimum(1.0, 1.5 * p)).astype(int)
    for y, calibrated in ((y_calibrated, True), (y_too_risky, False)):
        pos, neg = score_histograms(y, p, 1000)
        sums = np.bincount(bin_index(p, 1000), weights=p, minlength=1000)
        bands = calibration_bands(pos, neg, sums, bands=10)
        for band in bands:
            inside = (p >= band["low"]) & (p < band["high"])
            assert band["n"] == inside.sum()
            assert band["observed"] == pytest.approx(y[inside].mean(), abs=1e-12)
            assert band["predicted"] == pytest.approx(p[inside].mean(), rel=1e-9)
            d = y[inside].sum()
            assert band["jeffreys_p"] == pytest.approx(beta.cdf(p[inside].mean(), d + 0.5, inside.sum() - d + 0.5))
        smallest = min(b["jeffreys_p"] for b in bands)
        assert (smallest > 0.001) if calibrated else (smallest < 1e-6)


def test_institution_statistics_add_up_to_the_pooled_ones():
    parts = _institutions(seed=8)
    summed = sum((EvalStats.from_scores(y, s, 500) for y, s in parts), start=EvalStats(0, 0.0, 0, 0, 0, 0, 0.0))
    pooled = EvalStats.from_scores(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), 500)
    assert summed.examples == pooled.examples
    assert np.array_equal(summed.hist_pos, pooled.hist_pos) and np.array_equal(summed.hist_neg, pooled.hist_neg)
    assert np.allclose(summed.score_sum_pos, pooled.score_sum_pos) and np.allclose(summed.score_sum_neg, pooled.score_sum_neg)
    assert summed.loss_sum == pytest.approx(pooled.loss_sum) and summed.sum_p2 == pytest.approx(pooled.sum_p2)


def test_importance_is_the_auc_lost_by_ablation():
    from fedrisk.metrics import importance_from_histograms

    rng = np.random.default_rng(9)
    y = (rng.random(20000) < 0.3).astype(int)
    useful = rng.normal(size=y.size) + 1.2 * y
    score = 1 / (1 + np.exp(-useful))
    full = score_histograms(y, score, 1000)
    ablated = {"useful": score_histograms(y, np.full(y.size, 0.5), 1000), "noise": full}
    importance = importance_from_histograms(full, ablated)
    assert importance["useful"] == pytest.approx(roc_auc_score(y, score) - 0.5, abs=0.002)
    assert importance["noise"] == 0.0
