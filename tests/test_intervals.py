"""Confidence intervals of the gate's metrics from summed histograms (issue 17, first part):
coverage by simulation from known models, with and without the DP noise of a release."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from fedrisk.config import CampaignConfig
from fedrisk.evaluation import SplitStatistics, intervals
from fedrisk.fairness import group_edges, group_histograms
from fedrisk.metrics import EvalStats, logit_edges, score_histograms, with_threshold

CONFIG = CampaignConfig()
EDGES = with_threshold(logit_edges(50), CONFIG.evaluation.threshold)
LOGIT_EDGES = np.log(EDGES / (1 - EDGES))
MU_POS, MU_NEG = 0.0, -1.5  # binormal logits, unit variance: positives score higher
SHIFT = {"F": 0.0, "M": 0.35}  # group M's logits are higher: fewer of them are approved


def _stats(rng: np.random.Generator, n_pos: int, n_neg: int, noise: float = 0.0) -> SplitStatistics:
    z = np.r_[rng.normal(MU_POS, 1, n_pos), rng.normal(MU_NEG, 1, n_neg)]
    sex = rng.choice(["F", "M"], len(z))
    z = z + np.where(sex == "M", SHIFT["M"], SHIFT["F"])
    scores, y = 1 / (1 + np.exp(-z)), np.r_[np.ones(n_pos), np.zeros(n_neg)]
    pos, neg = score_histograms(y, scores, EDGES)
    pos, neg = pos.astype(float), neg.astype(float)
    sums = [np.bincount(np.searchsorted(EDGES, scores[y == k], side="right"), weights=scores[y == k],
                        minlength=len(EDGES) + 1) for k in (1, 0)]
    groups = group_histograms(y, scores, {"sex": sex}, group_edges(EDGES, CONFIG.evaluation.threshold))
    if noise:
        pos, neg = pos + rng.normal(0, noise, pos.shape), neg + rng.normal(0, noise, neg.shape)
        sums = [s + rng.normal(0, noise, s.shape) for s in sums]
        groups = {a: {g: (p + rng.normal(0, noise, p.shape), n + rng.normal(0, noise, n.shape))
                      for g, (p, n) in by.items()} for a, by in groups.items()}
    return SplitStatistics(EvalStats(EDGES, pos, neg, *sums), groups, noise=noise)


def _binned_auc() -> float:
    """The AUC the histograms estimate: of the binned scores, ties counted half (a 50/50 sex mix)."""
    def cells(mu: float) -> np.ndarray:
        mix = sum(0.5 * np.diff(np.r_[0.0, norm.cdf(LOGIT_EDGES - mu - s), 1.0]) for s in SHIFT.values())
        return mix
    pos, neg = cells(MU_POS), cells(MU_NEG)
    below = np.r_[0.0, np.cumsum(neg)[:-1]]
    return float(np.sum(pos * (below + 0.5 * neg)))


def _approval_gap(n_pos: int, n_neg: int) -> float:
    """|P(approved | F) - P(approved | M)|, approved meaning PD below the threshold."""
    cut = np.log(CONFIG.evaluation.threshold / (1 - CONFIG.evaluation.threshold))
    share = n_pos / (n_pos + n_neg)

    def approved(shift: float) -> float:
        return share * norm.cdf(cut - MU_POS - shift) + (1 - share) * norm.cdf(cut - MU_NEG - shift)
    return abs(approved(SHIFT["F"]) - approved(SHIFT["M"]))


@pytest.mark.slow  # 1,000 simulated test sets, each with its bootstrap: about 20 s
@pytest.mark.parametrize("noise", [0.0, 4.0])
def test_a_95_percent_interval_covers_the_true_value_in_93_to_97_percent_of_draws(noise):
    """1,000 draws: the coverage estimate's standard error is 0.7 points, so 93-97 % is three of them."""
    rng = np.random.default_rng(17)
    n_pos, n_neg = 700, 2900  # a credit test split of 3,600 rows, ~20 % defaults
    truth = {"auc": _binned_auc(), "approval_rate_difference.sex": _approval_gap(n_pos, n_neg)}
    hits = {k: 0 for k in truth}
    for _ in range(1000):
        found = intervals(_stats(rng, n_pos, n_neg, noise), CONFIG, draws=100)
        for key, value in truth.items():
            low, high = found[key]
            hits[key] += low <= value <= high
    for key, count in hits.items():
        assert 930 <= count <= 970, (key, count)


def test_an_interval_holds_its_estimate_narrows_with_rows_and_widens_with_noise():
    rng = np.random.default_rng(3)
    small, large = intervals(_stats(rng, 200, 800), CONFIG), intervals(_stats(rng, 2000, 8000), CONFIG)
    noisy = intervals(_stats(np.random.default_rng(3), 200, 800, noise=5.0), CONFIG)
    for key in ("auc", "ks", "average_precision", "recall_at_fpr_0.1", "approval_rate_difference.sex",
                "equal_opportunity_difference.sex"):
        assert 0.0 <= small[key][0] <= small[key][1] <= 1.0
        width = {name: found[key][1] - found[key][0] for name, found in
                 (("small", small), ("large", large), ("noisy", noisy))}
        assert width["large"] < 0.6 * width["small"], (key, width)
        if key != "recall_at_fpr_0.1":  # a step on the grid: its bootstrap spread is itself coarse
            assert width["small"] < width["noisy"], (key, width)
    assert small["auc"][0] < _binned_auc() < small["auc"][1]  # this draw; coverage is the slow test's


def test_the_true_auc_of_the_known_model_is_its_binned_value():
    """The reference the coverage test uses, against a large sample scored by scikit-learn."""
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(5)
    stats = _stats(rng, 200_000, 200_000).overall
    index = np.repeat(np.arange(len(EDGES) + 1), (stats.hist_pos + stats.hist_neg).astype(int))
    y = np.concatenate([np.r_[np.ones(int(p)), np.zeros(int(n))] for p, n in zip(stats.hist_pos, stats.hist_neg)])
    assert roc_auc_score(y, index) == pytest.approx(_binned_auc(), abs=0.003)


def test_the_verdict_shows_each_pooled_rules_interval():
    from fedrisk.gate import apply_policy
    from fedrisk.policy import Policy, Rule
    policy = Policy(name="p", rules=[Rule(metric="auc", comparator=">=", threshold=0.7, severity="block"),
                                     Rule(metric="auc", comparator=">=", threshold=0.6, severity="warn",
                                          scope="every_institution")])
    metrics = {"test_auc": 0.78, "test_auc_ci_low": 0.75, "test_auc_ci_high": 0.81, "test_auc.a": 0.7}
    verdict = apply_policy(policy, metrics, ["a"])
    assert verdict.results[0].interval == (0.75, 0.81) and verdict.results[1].interval is None
    assert verdict.summary_lines()[0] == "PASS  auc >= 0.7 (pooled): 0.7800 [0.7500, 0.8100]"
    assert verdict.to_dict()["results"][0]["interval"] == (0.75, 0.81)
