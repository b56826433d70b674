"""Federated metrics from summed histograms against pooled scikit-learn values, on any grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta, ks_2samp
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
    calibration_bands,
    classification_at_threshold,
    evaluation_grid,
    evaluation_summary,
    gini_from_histograms,
    importance_from_histograms,
    ks_from_histograms,
    logit_edges,
    recall_at_fpr,
    score_histograms,
    uniform_edges,
    with_threshold,
)


def _institutions(k=4, seed=0, base=-1.5):
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(k):
        n = int(rng.integers(500, 5000))
        y = (rng.random(n) < 0.1 + 0.05 * i).astype(int)
        score = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.3 * y + base + 0.2 * i)))
        parts.append((y, score))
    return parts


def _pooled(parts, edges):
    """Sum of institutions' histograms (what the server gets) and the pooled raw arrays."""
    pos = sum(score_histograms(y, s, edges)[0] for y, s in parts)
    neg = sum(score_histograms(y, s, edges)[1] for y, s in parts)
    return pos, neg, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_auc_exact_when_scores_sit_on_distinct_bins():
    edges = uniform_edges(100)
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1])
    s = (np.array([3, 10, 12, 40, 55, 56, 70, 90]) + 0.5) / 100
    pos, neg = score_histograms(y, s, edges)
    assert auc_from_histograms(pos, neg) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_ties_count_half_like_sklearn():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.2, 0.2, 0.7, 0.7])
    pos, neg = score_histograms(y, s, uniform_edges(10))
    assert auc_from_histograms(pos, neg) == pytest.approx(roc_auc_score(y, s))


def test_single_class_gives_nan():
    pos, neg = score_histograms(np.zeros(5), np.linspace(0, 1, 5), uniform_edges(10))
    assert np.isnan(auc_from_histograms(pos, neg))


@pytest.mark.parametrize("bins,tolerance", [(100, 0.01), (1000, 0.002), (10000, 0.0005)])
def test_federated_auc_equals_pooled(bins, tolerance):
    parts = _institutions()
    edges = with_threshold(uniform_edges(bins), 0.5)
    y = np.concatenate([p[0] for p in parts])
    s = np.concatenate([p[1] for p in parts])
    summed = {f"i{i}": EvalStats.from_scores(yy, ss, edges) for i, (yy, ss) in enumerate(parts)}
    out = run_schema.scores_metrics("val", evaluation_summary(summed, threshold=0.5, max_fpr=0.1), threshold=0.5,
                                    max_fpr=0.1)
    assert out["val_auc"] == pytest.approx(roc_auc_score(y, s), abs=tolerance)
    for i, (yy, ss) in enumerate(parts):
        assert out[f"val_auc.i{i}"] == pytest.approx(roc_auc_score(yy, ss), abs=tolerance)
    assert out["val_auc_worst_institution"] == min(out[f"val_auc.i{i}"] for i in range(len(parts)))
    gap = max(out[f"val_auc.i{i}"] for i in range(len(parts))) - out["val_auc_worst_institution"]
    assert out["val_auc_gap"] == pytest.approx(gap)
    # Brier and log loss from bin means: within the binning tolerance (exact as bins shrink)
    assert out["val_brier"] == pytest.approx(brier_score_loss(y, s), abs=tolerance)
    assert out["val_loss"] == pytest.approx(log_loss(y, s), abs=2 * tolerance)
    assert out["val_gini"] == pytest.approx(2 * roc_auc_score(y, s) - 1, abs=2 * tolerance)
    assert out["val_recall_at_0.5"] == pytest.approx(recall_score(y, s >= 0.5), abs=1e-12)
    assert out["val_default_rate"] == pytest.approx(y.mean())
    assert out["val_examples"] == len(y)


@pytest.mark.parametrize("bins,tol", [(1000, 0.005), (10000, 0.001)])
def test_ks_gini_ap_match_pooled_references(bins, tol):
    pos, neg, y, s = _pooled(_institutions(seed=3), uniform_edges(bins))
    assert ks_from_histograms(pos, neg) == pytest.approx(ks_2samp(s[y == 1], s[y == 0]).statistic, abs=tol)
    assert gini_from_histograms(pos, neg) == pytest.approx(2 * roc_auc_score(y, s) - 1, abs=2 * tol)
    assert average_precision_from_histograms(pos, neg) == pytest.approx(average_precision_score(y, s), abs=tol)


@pytest.mark.parametrize("rate,crowded", [(0.002, True), (0.01, True), (0.2, False)])
def test_the_adaptive_grid_keeps_ranking_metrics_within_the_binning_tolerance(rate, crowded):
    """50 bins at quantiles of the pooled scores (fine log-odds grid of 200): AUC within 0.002,
    average precision within 0.01 and KS within 0.01 (the fine grid's step, 0.1 in log-odds, is the
    limit where scores crowd) of scikit-learn, also at 0.2 % positives with scores crowded near 0.
    Equal-width bins fail where scores crowd."""
    rng = np.random.default_rng(int(rate * 1000))
    n = 200_000
    y = (rng.random(n) < rate).astype(int)
    logit = rng.normal(-7.0 if crowded else -1.5, 1.0, n) + 2.5 * y
    s = 1 / (1 + np.exp(-logit))
    fine = logit_edges(200)
    counts = np.bincount(np.searchsorted(fine, s, side="right"), minlength=201)
    grid = evaluation_grid(counts, fine, 50, 0.2)
    pos, neg = score_histograms(y, s, grid)
    assert auc_from_histograms(pos, neg) == pytest.approx(roc_auc_score(y, s), abs=0.002)
    assert ks_from_histograms(pos, neg) == pytest.approx(ks_2samp(s[y == 1], s[y == 0]).statistic, abs=0.01)
    assert average_precision_from_histograms(pos, neg) == pytest.approx(average_precision_score(y, s), abs=0.01)
    wider = evaluation_grid(counts, fine, 100, 0.2)  # the 0.005 for average precision needs 100 bins
    pos_w, neg_w = score_histograms(y, s, wider)
    assert average_precision_from_histograms(pos_w, neg_w) == pytest.approx(average_precision_score(y, s), abs=0.005)
    if crowded:  # the old equal-width grid puts nearly everyone in its lowest bin
        pos_u, neg_u = score_histograms(y, s, uniform_edges(30))
        assert abs(auc_from_histograms(pos_u, neg_u) - roc_auc_score(y, s)) > 0.01


def test_recall_at_fpr_matches_roc_curve():
    pos, neg, y, s = _pooled(_institutions(seed=4), uniform_edges(1000))
    fpr, tpr, _ = roc_curve(y, s)
    for target in (0.01, 0.05, 0.2):
        exact = tpr[fpr <= target].max()
        binned = recall_at_fpr(pos, neg, target)
        assert binned <= exact + 1e-12  # bin edges are a subset of thresholds: never optimistic
        assert binned == pytest.approx(exact, abs=0.01)


@pytest.mark.parametrize("threshold", [0.2, 0.35, 0.5])
def test_precision_recall_f1_exact_at_a_threshold_on_any_grid(threshold):
    edges = with_threshold(logit_edges(30), threshold)
    pos, neg, y, s = _pooled(_institutions(seed=5), edges)
    flagged = (s >= threshold).astype(int)
    out = classification_at_threshold(pos, neg, threshold, edges)
    assert out["precision"] == pytest.approx(precision_score(y, flagged), abs=1e-12)
    assert out["recall"] == pytest.approx(recall_score(y, flagged), abs=1e-12)
    assert out["f1"] == pytest.approx(f1_score(y, flagged), abs=1e-12)
    assert out["flag_rate"] == pytest.approx(flagged.mean(), abs=1e-12)


def test_threshold_off_grid_is_refused():
    with pytest.raises(ValueError, match="grid"):
        classification_at_threshold(np.ones(100), np.ones(100), 0.1234, uniform_edges(100))


def test_noised_counts_never_break_a_metric():
    """Released counts carry Gaussian noise: negative or fractional cells are clipped, not crashed on."""
    rng = np.random.default_rng(2)
    edges = with_threshold(logit_edges(30), 0.2)
    pos, neg, y, s = _pooled(_institutions(seed=6), edges)
    noisy = EvalStats(edges, pos + rng.normal(0, 5, pos.shape), neg + rng.normal(0, 5, neg.shape),
                      np.zeros_like(pos), np.zeros_like(neg))
    out = evaluation_summary({"a": noisy}, threshold=0.2, max_fpr=0.1).pooled
    assert 0.0 <= out["auc"] <= 1.0 and 0.0 <= out["ks"] <= 1.0 and 0.0 <= out["average_precision"] <= 1.0
    assert 0.0 <= out["precision_at_threshold"] <= 1.0 and np.isfinite(out["brier"]) and np.isfinite(out["loss"])
    assert out["auc"] == pytest.approx(roc_auc_score(y, s), abs=0.03)


def test_calibration_bands_and_jeffreys_test():
    rng = np.random.default_rng(7)
    p = rng.uniform(0.01, 0.6, 200_000)
    y_calibrated = (rng.random(p.size) < p).astype(int)
    y_too_risky = (rng.random(p.size) < np.minimum(1.0, 1.5 * p)).astype(int)
    edges = uniform_edges(100)
    for y, calibrated in ((y_calibrated, True), (y_too_risky, False)):
        stats = EvalStats.from_scores(y, p, edges)
        bands = calibration_bands(stats.hist_pos, stats.hist_neg, stats.score_sum_pos + stats.score_sum_neg, edges)
        assert 8 <= len(bands) <= 11  # about ten bands of similar size
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
    edges = uniform_edges(500)
    summed = sum((EvalStats.from_scores(y, s, edges) for y, s in parts), start=EvalStats.empty(edges))
    pooled = EvalStats.from_scores(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), edges)
    assert summed.examples == pooled.examples
    assert np.array_equal(summed.hist_pos, pooled.hist_pos) and np.array_equal(summed.hist_neg, pooled.hist_neg)
    assert np.allclose(summed.score_sum_pos, pooled.score_sum_pos)
    with pytest.raises(ValueError, match="different score grids"):
        _ = summed + EvalStats.empty(uniform_edges(10))


def test_importance_is_the_auc_lost_by_ablation():
    rng = np.random.default_rng(9)
    y = (rng.random(20000) < 0.3).astype(int)
    useful = rng.normal(size=y.size) + 1.2 * y
    score = 1 / (1 + np.exp(-useful))
    edges = uniform_edges(1000)
    full = score_histograms(y, score, edges)
    ablated = {"useful": score_histograms(y, np.full(y.size, 0.5), edges), "noise": full}
    importance = importance_from_histograms(full, ablated)
    assert importance["useful"] == pytest.approx(roc_auc_score(y, score) - 0.5, abs=0.002)
    assert importance["noise"] == 0.0


def test_auc_of_noised_histograms_is_unbiased():
    """Released histograms carry Gaussian noise; clipping negative counts would pull the AUC
    towards 0.5 (0.695 instead of 0.774 at noise 5 per cell on 50 bins, measured)."""
    rng = np.random.default_rng(0)
    edges = np.linspace(-4, 4, 51)
    pos = np.histogram(rng.normal(1.1, 1, 300), edges)[0].astype(float)
    neg = np.histogram(rng.normal(0, 1, 1200), edges)[0].astype(float)
    exact = auc_from_histograms(pos, neg)
    draws = [auc_from_histograms(pos + rng.normal(0, 5, 50), neg + rng.normal(0, 5, 50)) for _ in range(2000)]
    assert abs(np.mean(draws) - exact) < 4 * np.std(draws) / np.sqrt(len(draws)) + 0.003


@pytest.mark.parametrize("bins", [10, 50, 199])
@pytest.mark.parametrize("noise", [0.0, 3.0])
def test_the_evaluation_grid_with_the_deciles_kept_never_exceeds_the_bins_the_policies_allow(bins, noise):
    """The campaign's grid also holds the score's deciles (drift reference): together with the
    threshold at most `bins` edges, or institutions whose policy allows bins + 1 cells refuse the
    final evaluation (it happened at bins 199: 200 edges, 201 cells)."""
    rng = np.random.default_rng(bins)
    fine = logit_edges(200)
    scores = 1 / (1 + np.exp(-rng.normal(-1.5, 2.0, 50_000)))
    counts = np.bincount(np.searchsorted(fine, scores, side="right"), minlength=201) + rng.normal(0, noise, 201)
    deciles = np.quantile(scores, np.linspace(0.1, 0.9, 9))
    for fine_counts in (counts, None):
        grid = evaluation_grid(fine_counts, fine, bins, 0.2, noise, keep=deciles)
        assert len(grid) <= bins and 0.2 in grid and set(deciles) <= set(grid)

