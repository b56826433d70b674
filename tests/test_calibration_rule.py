"""Calibration as a gate rule (issue 21): a model whose score bands default more often than it
predicts is flagged; a calibrated one is not, beyond the rate the test is built for."""

from __future__ import annotations

import numpy as np
from scipy.stats import beta

from fedrisk.gate import apply_policy
from fedrisk.metrics import EvalStats, calibration_bands, calibration_p
from fedrisk.policy import load_policy


def _bands(rows: int, rate: float, rng: np.random.Generator) -> list[dict[str, float]]:
    """Scores a model predicts, defaults drawn at `rate` times them, on a grid of 50 equal-count bins."""
    scores = rng.beta(2, 15, rows)
    defaults = (rng.random(rows) < np.clip(rate * scores, 0, 1)).astype(float)
    stats = EvalStats.from_scores(defaults, scores, np.quantile(scores, np.linspace(0, 1, 51)[1:-1]))
    return calibration_bands(stats.hist_pos, stats.hist_neg, stats.score_sum_pos + stats.score_sum_neg, stats.edges)


def test_ten_bands_of_a_tenth_each_on_a_fine_grid():
    """Found by a validator's review: nine bands where the README promises ten."""
    bands = _bands(30_000, 1.0, np.random.default_rng(0))
    assert len(bands) == 10 and {round(b["n"]) for b in bands} == {3000}
    for band in bands:  # each band's p-value is the Jeffreys posterior's mass below the prediction
        defaults, goods = band["observed"] * band["n"], (1 - band["observed"]) * band["n"]
        assert band["jeffreys_p"] == beta.cdf(band["predicted"], defaults + 0.5, goods + 0.5)


def test_a_calibrated_model_is_flagged_at_most_as_often_as_the_level_allows():
    """Bonferroni over the bands keeps the chance of flagging a calibrated model at or below 1 %:
    in 300 draws at most 9 (the 99.9 % point of Binomial(300, 0.01) is 9)."""
    rng = np.random.default_rng(1)
    flagged = sum(calibration_p(_bands(5_000, 1.0, rng)) < 0.01 for _ in range(300))
    assert flagged <= 9


def test_a_model_that_underpredicts_defaults_is_flagged():
    """Defaults at 1.5 times the predicted rate on 5,000 applicants: a band of 500 expects ~60
    defaults and sees ~90 (z ~ 3.5), so the worst band's p is far below 0.01 / 10."""
    rng = np.random.default_rng(2)
    assert all(calibration_p(_bands(5_000, 1.5, rng)) < 0.01 for _ in range(50))
    assert calibration_p([]) != calibration_p([])  # no bands: NaN, which no rule passes


def test_the_default_credit_policy_warns_on_calibration():
    policy = load_policy(None, "credit")
    (rule,) = [r for r in policy.rules if r.metric == "calibration_p"]
    assert rule.severity == "warn" and rule.comparator == ">=" and rule.threshold == 0.01
    metrics = {"test_auc": 0.80, "test_ks": 0.45, "test_approval_rate_difference.sex": 0.01,
               "test_approval_rate_difference.age_band": 0.01, "test_auc.a": 0.8, "test_calibration_p": 0.002}
    verdict = apply_policy(policy, metrics, ["a"], reference_auc=0.81)
    (result,) = [r for r in verdict.results if r.metric == "calibration_p"]
    assert verdict.verdict == "warn" and result.outcome == "warn" and result.value == 0.002
    assert apply_policy(policy, {**metrics, "test_calibration_p": 0.3}, ["a"], reference_auc=0.81).verdict == "pass"


def test_the_report_marks_the_bands_that_fail():
    from fedrisk.report import calibration_rows

    bands = _bands(5_000, 1.5, np.random.default_rng(3))
    page = calibration_rows(bands)
    failing = sum(b["jeffreys_p"] < 0.01 / len(bands) for b in bands)
    assert failing > 0 and page.count("more defaults than predicted") == failing
    assert page.count("background:#fde0dc") == failing
