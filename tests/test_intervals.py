"""Confidence intervals of the gate's metrics from summed histograms (issue 17, first part):
coverage by simulation from known models, with and without the DP noise of a release."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from fedrisk.config import CampaignConfig
from fedrisk.evaluation import SplitStatistics, intervals, split_metrics
from fedrisk.fairness import group_edges, group_histograms
from fedrisk.metrics import EvalStats, logit_edges, score_histograms, with_threshold

CONFIG = CampaignConfig()
EDGES = with_threshold(logit_edges(50), CONFIG.evaluation.threshold)
LOGIT_EDGES = np.log(EDGES / (1 - EDGES))
MU_POS, MU_NEG = 0.0, -1.5  # binormal logits, unit variance: positives score higher
SHIFT = {"F": 0.0, "M": 0.35}  # group M's logits are higher: fewer of them are approved


def _stats(rng: np.random.Generator, n_pos: int, n_neg: int, noise: float = 0.0,
           shift: float = SHIFT["M"]) -> SplitStatistics:
    z = np.r_[rng.normal(MU_POS, 1, n_pos), rng.normal(MU_NEG, 1, n_neg)]
    sex = rng.choice(["F", "M"], len(z))
    z = z + np.where(sex == "M", shift, SHIFT["F"])
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


def _approval_gap(n_pos: int, n_neg: int, shift: float = SHIFT["M"]) -> float:
    """|P(approved | F) - P(approved | M)|, approved meaning PD below the threshold."""
    cut = np.log(CONFIG.evaluation.threshold / (1 - CONFIG.evaluation.threshold))
    share = n_pos / (n_pos + n_neg)

    def approved(shift: float) -> float:
        return share * norm.cdf(cut - MU_POS - shift) + (1 - share) * norm.cdf(cut - MU_NEG - shift)
    return abs(approved(SHIFT["F"]) - approved(shift))


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


def _shift_for_gap(gap: float, n_pos: int, n_neg: int) -> float:
    from scipy.optimize import brentq
    return brentq(lambda s: _approval_gap(n_pos, n_neg, s) - gap, 0.0, 3.0)


def _sex_rules_verdict(stats: SplitStatistics):
    """The shipped credit policy's rules on the gap between sexes, on a run's logged metrics."""
    from fedrisk.gate import apply_policy
    from fedrisk.policy import Policy, load_policy
    from fedrisk.run_schema import interval_metrics
    shipped = load_policy(None, "credit")
    policy = Policy(name=shipped.name, rules=[r for r in shipped.rules if r.metric == "approval_rate_difference.sex"])
    metrics = {**split_metrics({"a": stats}, "test", CONFIG), **interval_metrics("test", intervals(stats, CONFIG))}
    return apply_policy(policy, metrics, ["a"])


@pytest.mark.parametrize("seed", range(5))
def test_a_true_gap_of_0_08_is_blocked_at_the_default_test_size(seed):
    """9,000 test rows (15 % of the default 60,000), 20 % defaults: the 0.05 block rule keeps its meaning."""
    n_pos, n_neg = 1800, 7200
    verdict = _sex_rules_verdict(_stats(np.random.default_rng(seed), n_pos, n_neg,
                                        shift=_shift_for_gap(0.08, n_pos, n_neg)))
    assert verdict.verdict == "block", verdict.summary_lines()
    assert verdict.results[0].outcome == "block" and verdict.results[0].interval[0] > 0.05


def test_a_fair_model_near_the_threshold_is_unresolved_and_warns():
    """A true gap of 0.05 on 3,600 test rows: the interval straddles 0.05; the verdict says so and how many
    rows would decide it, instead of flipping between pass and block on sampling noise."""
    n_pos, n_neg = 700, 2900
    verdict = _sex_rules_verdict(_stats(np.random.default_rng(1), n_pos, n_neg,
                                        shift=_shift_for_gap(0.05, n_pos, n_neg)))
    block_rule = verdict.results[0]
    assert block_rule.outcome == "unresolved" and block_rule.failed_as == "warn"
    assert "test rows would resolve it" in block_rule.note and verdict.verdict == "warn"
    assert "UNRESOLVED approval_rate_difference.sex <= 0.05" in verdict.summary_lines()[0]


def test_point_evidence_judges_the_value_alone():
    from fedrisk.gate import apply_policy
    from fedrisk.policy import Policy, Rule
    metrics = {"test_auc": 0.72, "test_auc_ci_low": 0.68, "test_auc_ci_high": 0.76, "test_examples": 3600}
    rule = Rule(metric="auc", comparator=">=", threshold=0.7, severity="block")
    assert apply_policy(Policy(name="i", rules=[rule]), metrics, ["a"]).results[0].outcome == "unresolved"
    assert apply_policy(Policy(name="p", evidence="point", rules=[rule]), metrics, ["a"]).verdict == "pass"
    by_rule = rule.model_copy(update={"evidence": "point"})
    assert apply_policy(Policy(name="r", rules=[by_rule]), metrics, ["a"]).verdict == "pass"
    broken = {**metrics, "test_auc": 0.6, "test_auc_ci_low": 0.57, "test_auc_ci_high": 0.63}
    assert apply_policy(Policy(name="b", rules=[rule]), broken, ["a"]).verdict == "block"


def test_the_policys_confidence_level_rescales_the_logged_interval_as_the_bootstrap_would():
    """The run logs 95 % intervals; a policy at 80 % is judged on what the bootstrap gives at 80 %,
    also where the 95 % interval was clipped at 0."""
    from fedrisk.gate import at_level
    stats = _stats(np.random.default_rng(3), 700, 2900, shift=_shift_for_gap(0.01, 700, 2900))
    values = split_metrics({"a": stats}, "test", CONFIG)
    at_95, at_80 = intervals(stats, CONFIG), intervals(stats, CONFIG, level=0.8)
    assert at_95["approval_rate_difference.sex"][0] == 0.0  # clipped: the unclipped side carries the width
    for key, interval in at_95.items():
        assert at_level(values[f"test_{key}"], interval, 0.8) == pytest.approx(at_80[key], abs=1e-9), key


def test_a_lower_confidence_resolves_what_95_percent_leaves_open():
    from fedrisk.gate import apply_policy
    from fedrisk.policy import Policy, Rule
    metrics = {"test_auc": 0.72, "test_auc_ci_low": 0.68, "test_auc_ci_high": 0.76, "test_examples": 3600}
    rule = Rule(metric="auc", comparator=">=", threshold=0.7, severity="block")
    assert apply_policy(Policy(name="i", rules=[rule]), metrics, ["a"]).results[0].outcome == "unresolved"
    lax = apply_policy(Policy(name="l", confidence=0.6, rules=[rule]), metrics, ["a"]).results[0]
    assert lax.outcome == "pass" and lax.interval[0] > 0.7
    with pytest.raises(ValueError):
        Policy(name="x", confidence=1.0, rules=[rule])


def test_a_near_random_model_is_blocked_on_auc_and_ks_with_its_intervals_shown():
    """Scores independent of the outcome on 9,000 test rows: AUC and KS intervals lie wholly below
    0.70 and 0.30, so both block rules are broken, whatever the sampling noise."""
    from fedrisk.gate import apply_policy
    from fedrisk.policy import load_policy
    from fedrisk.run_schema import interval_metrics
    rng = np.random.default_rng(7)
    y = (rng.random(9000) < 0.2).astype(float)
    scores = 1 / (1 + np.exp(-rng.normal(-1.5, 1, 9000)))
    sex = rng.choice(["F", "M"], 9000)
    stats = SplitStatistics(EvalStats.from_scores(y, scores, EDGES),
                            group_histograms(y, scores, {"sex": sex}, group_edges(EDGES, CONFIG.evaluation.threshold)))
    metrics = {**split_metrics({"a": stats}, "test", CONFIG), **interval_metrics("test", intervals(stats, CONFIG))}
    verdict = apply_policy(load_policy(None), metrics, ["a"])
    broken = {r.metric: r for r in verdict.results if r.outcome == "block"}
    assert {"auc", "ks"} <= set(broken) and verdict.verdict == "block"
    assert broken["auc"].interval[1] < 0.7 and broken["ks"].interval[1] < 0.3
    lines = [x for x in verdict.summary_lines() if x.startswith("BLOCK auc") or x.startswith("BLOCK ks")]
    assert len(lines) == 2 and all("[" in x for x in lines), lines
