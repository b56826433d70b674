"""Fraud metrics from summed statistics: AUPRC, recall at a low FPR, alert budgets, top-k.

Fraud teams work a fixed number of alerts a day, so besides the ranking metrics (AUC,
average precision, recall at 1 % false positives) each issuer gets an operating threshold
from its alert budget: the lowest score edge whose alerts per day on validation rows stay
within it. Precision among each day's top-k alerts is counted by the issuer itself (it
ranks its own transactions) and only the counts leave. Amount-weighted recall (the share of
fraud value caught) comes from per-bin sums of fraud amounts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from fedrisk.metrics import (
    EvalStats,
    Scores,
    auc_from_histograms,
    average_precision_from_histograms,
    bin_index,
    operating_points,
    recall_at_fpr,
    spread,
)


@dataclass(frozen=True)
class FraudStats:
    """What fraud metrics need beyond `EvalStats`; adds up across issuers."""

    amount_pos: np.ndarray  # sum of fraud amounts per score bin
    topk_hits: int  # frauds among each day's top-k scores, summed over days
    topk_alerts: int  # alerts in each day's top-k (k, or fewer on a quiet day), summed
    days: int  # days with transactions

    @classmethod
    def from_scores(cls, y_true: np.ndarray, scores: np.ndarray, amounts: np.ndarray,
                    days: np.ndarray, bins: int, k: int) -> FraudStats:
        y = np.asarray(y_true).astype(bool)
        p = np.asarray(scores, dtype=float)
        days = np.asarray(days)
        amount_pos = np.bincount(bin_index(p[y], bins), weights=np.asarray(amounts, float)[y], minlength=bins)
        order = np.lexsort((-p, days))  # by day, then highest score first (ties: row order)
        sorted_days = days[order]
        rank = np.arange(len(order)) - np.searchsorted(sorted_days, sorted_days, side="left")
        top = order[rank < k]
        return cls(amount_pos, int(y[top].sum()), int(len(top)), int(len(np.unique(days))))

    def __add__(self, other: FraudStats) -> FraudStats:
        return FraudStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


EMPTY_FRAUD = FraudStats(0.0, 0, 0, 0)  # type: ignore[arg-type]  # the start of a sum


def alert_threshold(pos: np.ndarray, neg: np.ndarray, days: int, alerts_per_day: float) -> int:
    """Lowest bin index k such that flagging bins k.. raises at most the budget per day."""
    tp, fp = operating_points(pos, neg)
    within = np.flatnonzero((tp + fp) <= alerts_per_day * max(days, 1))
    return int(within[0])  # the last index (flag nothing) is always within


def budget_counts(stats: EvalStats, fraud: FraudStats, k: int) -> np.ndarray:
    """(caught, alerts, frauds, fraud amount caught, fraud amount, days) at bin index k."""
    tp, fp = operating_points(stats.hist_pos, stats.hist_neg)
    return np.array([tp[k], tp[k] + fp[k], tp[0], fraud.amount_pos[k:].sum(), fraud.amount_pos.sum(),
                     fraud.days], dtype=float)


def budget_metrics(counts: np.ndarray) -> dict[str, float]:
    caught, alerts, frauds, amount_caught, amount, days = counts
    return {
        "precision_at_budget": caught / alerts if alerts else 0.0,
        "recall_at_budget": caught / frauds if frauds else float("nan"),
        "amount_recall_at_budget": amount_caught / amount if amount else float("nan"),
        "alerts_per_day": alerts / days if days else 0.0,
    }


def ranking_metrics(stats: EvalStats, fraud: FraudStats, max_fpr: float, k: int) -> dict[str, float]:
    pos, neg = stats.hist_pos, stats.hist_neg
    return {
        "auc": auc_from_histograms(pos, neg),
        "average_precision": average_precision_from_histograms(pos, neg),
        "recall_at_fpr": recall_at_fpr(pos, neg, max_fpr),
        "precision_top_k": fraud.topk_hits / fraud.topk_alerts if fraud.topk_alerts else float("nan"),
        "fraud_rate": float(pos.sum()) / stats.examples,
        "loss": stats.loss_sum / stats.examples,
    }


def fraud_summary(
    validation: dict[str, tuple[EvalStats, FraudStats]],
    parts: dict[str, tuple[EvalStats, FraudStats]],
    max_fpr: float,
    alerts_per_day: int,
) -> Scores:
    """Pooled and per-issuer fraud metrics of `parts`, each issuer at its own alert budget.

    Thresholds come from the issuers' `validation` statistics; the pooled budget figures add
    up what every issuer catches at its own threshold.
    """
    if not parts:
        return Scores({}, {})
    thresholds = {
        name: alert_threshold(s.hist_pos, s.hist_neg, f.days, alerts_per_day)
        for name, (s, f) in validation.items()
    }
    pooled_counts = np.zeros(6)
    institutions = {}
    for name, (stats, fraud) in sorted(parts.items()):
        if name not in thresholds:
            continue
        counts = budget_counts(stats, fraud, thresholds[name])
        pooled_counts += counts
        institutions[name] = {**ranking_metrics(stats, fraud, max_fpr, alerts_per_day), **budget_metrics(counts),
                              "operating_threshold": thresholds[name] / len(stats.hist_pos)}
    stats = sum((s for s, _ in parts.values()), start=EvalStats(0, 0.0, 0, 0, 0, 0, 0.0))
    fraud = sum((f for _, f in parts.values()), start=EMPTY_FRAUD)
    pooled = {**ranking_metrics(stats, fraud, max_fpr, alerts_per_day), **budget_metrics(pooled_counts),
              "examples": float(stats.examples)}
    pooled.update(spread({n: m["average_precision"] for n, m in institutions.items()}, "average_precision"))
    return Scores(pooled, institutions)
