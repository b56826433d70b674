"""Evaluation statistics of one split at one institution, and their sums over institutions.

What an institution sends about a model on a split: overall score histograms and sums
(`EvalStats`), the same by protected group, and for fraud the issuer's alert statistics.
All of them add up, so the server's pooled figures are those of the pooled rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrisk import run_schema
from fedrisk.config import CampaignConfig
from fedrisk.fairness import GroupHistograms, fairness_scores, merge_group_histograms
from fedrisk.fraud_metrics import EMPTY_FRAUD, FraudStats, fraud_summary
from fedrisk.metrics import EvalStats, evaluation_summary


@dataclass(frozen=True)
class SplitStatistics:
    overall: EvalStats
    groups: GroupHistograms
    fraud: FraudStats | None = None


EMPTY = EvalStats(0, 0.0, 0, 0, 0, 0, 0.0)  # the start of a sum  # type: ignore[arg-type]


def pooled(parts: dict[str, SplitStatistics]) -> SplitStatistics:
    """The consortium's statistics: every institution's, added up."""
    overall = sum((p.overall for p in parts.values()), start=EMPTY)
    groups = merge_group_histograms([p.groups for p in parts.values()])
    frauds = [p.fraud for p in parts.values() if p.fraud is not None]
    return SplitStatistics(overall, groups, sum(frauds, start=EMPTY_FRAUD) if frauds else None)


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
    if parts:
        metrics.update(run_schema.fairness_metrics(split, fairness_scores(pooled(parts).groups, ev.threshold)))
    for name, part in parts.items():
        metrics.update(run_schema.fairness_metrics(split, fairness_scores(part.groups, ev.threshold), name))
    return metrics
