"""Evaluation statistics of one split at one institution, and their sums over institutions.

What an institution sends about a model on a split: overall score histograms and sums
(`EvalStats`), the same by protected group, and for fraud the issuer's alert statistics.
All of them add up, so the server's pooled figures are those of the pooled rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from fedrisk import run_schema
from fedrisk.config import CampaignConfig
from fedrisk.fairness import GroupHistograms, fairness_scores, group_edges, merge_group_histograms
from fedrisk.fraud_metrics import EMPTY_FRAUD, FraudStats, fraud_summary
from fedrisk.metrics import EvalStats, calibration_bands, calibration_p, evaluation_summary, performance
from fedrisk.run_schema import INTERVAL_KEYS


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
    if parts:  # PD back-testing: does any score band default more often than predicted (Jeffreys, Bonferroni)
        whole = pooled(parts).overall
        metrics[run_schema.split_metric(split, "calibration_p")] = calibration_p(calibration_bands(
            whole.hist_pos, whole.hist_neg, whole.score_sum_pos + whole.score_sum_neg, whole.edges))
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
FAIRNESS_KEYS = ("approval_rate_difference", "equal_opportunity_difference")


def _pooled_values(stats: EvalStats, groups: GroupHistograms, noise: float, config: CampaignConfig,
                   keys: tuple[str, ...], fairness_keys: tuple[str, ...]) -> dict[str, float]:
    """The pooled metrics a gate judges, under their names without split prefix."""
    ev = config.evaluation
    values = {run_schema.metric_name(k, max_fpr=ev.max_fpr): v
              for k, v in performance(stats, ev.threshold, ev.max_fpr).items() if k in keys}
    if config.task == "credit" and fairness_keys:
        edges = group_edges(stats.edges, ev.threshold)
        fairness = fairness_scores(groups, ev.threshold, edges, smallest_group(noise, len(edges) + 1))
        values.update({run_schema.fairness_metric(key, a): f[key] for a, f in fairness.items() for key in fairness_keys})
    return values


def _redrawn(stats: EvalStats, groups: GroupHistograms, noise: float, rng: np.random.Generator,
             resample: bool) -> tuple[EvalStats, GroupHistograms]:
    """One parametric-bootstrap copy of released statistics: each cell re-noised with the
    release's noise and, with `resample`, first redrawn as a Poisson count (the rows' sampling),
    its score sums scaled with it."""
    def counts(values: np.ndarray, fixed: bool = False) -> np.ndarray:
        """A class's rows are fixed by the split (multinomial); a group's share of them is not (Poisson)."""
        kept = np.clip(values, 0, None)
        if not resample or kept.sum() <= 0:
            drawn = values
        elif fixed:
            drawn = values - kept + rng.multinomial(int(round(kept.sum())), kept / kept.sum()).astype(float)
        else:
            drawn = values - kept + rng.poisson(kept).astype(float)
        return drawn + (rng.normal(0, noise, values.shape) if noise > 0 else 0.0)

    def scaled(sums: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        mean = np.divide(sums, before, out=np.zeros_like(sums, dtype=float), where=before > 0)
        return (mean * np.clip(after, 0, None) if resample else sums) + (rng.normal(0, noise, sums.shape)
                                                                          if noise > 0 else 0.0)

    pos, neg = counts(stats.hist_pos, fixed=True), counts(stats.hist_neg, fixed=True)
    drawn = EvalStats(stats.edges, pos, neg, scaled(stats.score_sum_pos, stats.hist_pos, pos),
                      scaled(stats.score_sum_neg, stats.hist_neg, neg))
    by_group = {a: {g: (counts(p), counts(n)) for g, (p, n) in by.items()} for a, by in groups.items()}
    return drawn, by_group


def _spread(consortium: SplitStatistics, config: CampaignConfig, draws: int, resample: bool,
            keys: tuple[str, ...], fairness_keys: tuple[str, ...]) -> dict[str, float]:
    rng = np.random.default_rng(0)  # the released values are public: redrawing them needs no secrecy
    samples: dict[str, list[float]] = {}
    for _ in range(draws):
        stats, groups = _redrawn(consortium.overall, consortium.groups, consortium.noise, rng, resample)
        for key, value in _pooled_values(stats, groups, consortium.noise, config, keys, fairness_keys).items():
            samples.setdefault(key, []).append(value)
    return {key: float(np.nanstd(v)) for key, v in samples.items()}


def noise_error(consortium: SplitStatistics, config: CampaignConfig, draws: int = NOISE_DRAWS) -> dict[str, float]:
    """How far the DP noise the institutions added can move each pooled metric: its standard
    deviation over `draws` parametric-bootstrap copies of the released histograms (each cell
    re-noised with the pooled noise). Reported next to the metrics; 0 when nothing was noised."""
    if consortium.noise <= 0:
        return {}
    return _spread(consortium, config, draws, False, ("auc", "ks", "average_precision", "brier"),
                   ("approval_rate_difference",))


def intervals(consortium: SplitStatistics, config: CampaignConfig, level: float = run_schema.INTERVAL_LEVEL,
              draws: int = NOISE_DRAWS) -> dict[str, tuple[float, float]]:
    """A `level` confidence interval of each pooled metric a gate judges, from the same summed
    statistics: the point value plus or minus z standard deviations of a parametric bootstrap
    that redraws each histogram cell (Poisson: the rows' sampling) and re-noises it (the DP
    noise), so both sources of error are in it. Bounded to [0, 1], where every such metric lies."""
    values = _pooled_values(consortium.overall, consortium.groups, consortium.noise, config, INTERVAL_KEYS,
                            FAIRNESS_KEYS)
    spread = _spread(consortium, config, draws, True, INTERVAL_KEYS, FAIRNESS_KEYS)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return {key: (float(np.clip(value - z * spread[key], 0.0, 1.0)), float(np.clip(value + z * spread[key], 0.0, 1.0)))
            for key, value in values.items() if np.isfinite(value) and np.isfinite(spread.get(key, np.nan))}
