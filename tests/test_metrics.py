"""Federated metrics from summed histograms equal pooled scikit-learn values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from fedrisk.metrics import auc_from_histograms, evaluation_summary, log_loss_sum, score_histograms


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
    summed = {
        f"i{i}": (len(yy), log_loss_sum(yy, ss), *score_histograms(yy, ss, bins))
        for i, (yy, ss) in enumerate(parts)
    }
    out = evaluation_summary(summed)
    assert out["val_auc"] == pytest.approx(roc_auc_score(y, s), abs=tolerance)
    assert out["val_loss"] == pytest.approx(log_loss(y, s), rel=1e-9)
    for i, (yy, ss) in enumerate(parts):
        assert out[f"val_auc.i{i}"] == pytest.approx(roc_auc_score(yy, ss), abs=tolerance)
    assert out["val_auc_worst_institution"] == min(out[f"val_auc.i{i}"] for i in range(len(parts)))
    # pooled AUC is not the average of institutions' AUCs
    assert out["val_examples"] == len(y)


def test_single_class_gives_nan():
    pos, neg = score_histograms(np.zeros(5), np.linspace(0, 1, 5), 10)
    assert np.isnan(auc_from_histograms(pos, neg))
