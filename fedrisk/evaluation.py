"""Evaluation statistics of one split at one institution, and their sums over institutions.

What an institution sends about a model on a split: overall score histograms and sums
(`EvalStats`), the same by protected group, and for fraud the issuer's alert statistics.
All of them add up, so the server's pooled figures are those of the pooled rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrisk import run_schema
from fedrisk.config import CampaignConfig
from fedrisk.fairness import GroupHistograms, fairness_scores, group_edges, merge_group_histograms
from fedrisk.fraud_metrics import EMPTY_FRAUD, FraudStats, fraud_summary
from fedrisk.metrics import EvalStats, evaluation_summary, performance


@dataclass(frozen=True)
class SplitStatistics:
    overall: EvalStats
    groups: GroupHistograms
    fraud: FraudStats | None = None
    noise: float = 0.0  # standard deviation of the DP noise in every cell (0: exact)


def pooled(parts: dict[str, SplitStatistics]) -> SplitStatistics:
    """The consortium's statistics: every institution's, added up (their noise too)."""
    first = next(iter(parts.values()))
    overall = sum((p.overall for p in parts.values()), start=EvalStats.empty(first.overall.edges))
    groups = merge_group_histograms([p.groups for p in parts.values()])
    frauds = [p.fraud for p in parts.values() if p.fraud is not None]
    noise = float(np.sqrt(sum(p.noise ** 2 for p in parts.values())))
    return SplitStatistics(overall, groups, sum(frauds, start=EMPTY_FRAUD) if frauds else None, noise)


def split_metrics(parts: dict[str, SplitStatistics], split: str, config: CampaignConfig,
                  validation: dict[str, SplitStatistics] | None = None) -> dict[str, float]:
    """Performance and fairness of a split, pooled and per institution, under MLflow names.

    Fraud: each issuer's alert threshold comes from its `validation` statistics (the split's
    own when none are given).
    """
    ev = config.evaluation
    params = {"threshold": ev.threshold, "max_fpr": ev.max_fpr, "k": ev.alerts_per_day}
    if config.task == "fraud":
        def fraud(ps: dict[str, SplitStatistics]) -> dict:
            return {n: (p.overall, p.fraud) for n, p in ps.items() if p.fraud is not None}

        scores = fraud_summary(fraud(validation if validation is not None else parts), fraud(parts), ev.max_fpr,
                               ev.alerts_per_day)
        return run_schema.scores_metrics(split, scores, **params)
    scores = evaluation_summary({n: p.overall for n, p in parts.items()}, ev.threshold, ev.max_fpr)
    metrics = run_schema.scores_metrics(split, scores, **params)
    scopes = ([(None, pooled(parts))] if parts else []) + list(parts.items())
    for name, part in scopes:
        edges = group_edges(part.overall.edges, ev.threshold)
        fairness = fairness_scores(part.groups, ev.threshold, edges, smallest_group(part.noise, len(edges) + 1))
        metrics.update(run_schema.fairness_metrics(split, fairness, name))
    return metrics


def smallest_group(noise: float, bins: int) -> float:
    """Noised group sizes below this are mostly noise (five standard deviations of a size's noise):
    such a group is left out of the fairness gaps rather than reported on noise."""
    return 5.0 * noise * float(np.sqrt(2 * bins))


NOISE_DRAWS = 200


def noise_error(consortium: SplitStatistics, config: CampaignConfig, draws: int = NOISE_DRAWS) -> dict[str, float]:
    """How far the DP noise the institutions added can move each pooled metric: its standard
    deviation over `draws` parametric-bootstrap copies of the released histograms (each cell
    re-noised with the pooled noise). Reported next to the metrics; 0 when nothing was noised."""
    if consortium.noise <= 0:
        return {}
    ev = config.evaluation
    rng = np.random.default_rng(0)  # the released values are public: re-noising them needs no secrecy
    stats, noise = consortium.overall, consortium.noise
    keys = ("auc", "ks", "average_precision", "brier")
    samples: dict[str, list[float]] = {}
    for _ in range(draws):
        shifted = EvalStats(stats.edges, *(getattr(stats, f) + rng.normal(0, noise, stats.hist_pos.shape)
                                           for f in ("hist_pos", "hist_neg", "score_sum_pos", "score_sum_neg")))
        values = {k: v for k, v in performance(shifted, ev.threshold, ev.max_fpr).items() if k in keys}
        if config.task == "credit":
            groups = {a: {g: (p + rng.normal(0, noise, p.shape), n + rng.normal(0, noise, n.shape))
                          for g, (p, n) in by.items()} for a, by in consortium.groups.items()}
            edges = group_edges(stats.edges, ev.threshold)
            fairness = fairness_scores(groups, ev.threshold, edges, smallest_group(noise, len(edges) + 1))
            values.update({run_schema.fairness_metric("approval_rate_difference", a): f["approval_rate_difference"]
                           for a, f in fairness.items()})
        for key, value in values.items():
            samples.setdefault(key, []).append(value)
    return {key: float(np.nanstd(v)) for key, v in samples.items()}
