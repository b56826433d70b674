"""Fraud metrics from summed statistics: AUPRC, recall at a low FPR, alert budgets, top-k.

Fraud teams work a fixed number of alerts a day, so besides the ranking metrics (AUC,
average precision, recall at 1 % false positives) each issuer gets an operating threshold
from its alert budget: the lowest score edge whose alerts per day on validation rows stay
within it. Precision among each day's top-k alerts is counted by the issuer itself (it
ranks its own transactions) and only the counts leave. Amount-weighted recall (the share of
fraud value caught) comes from per-bin sums of fraud amounts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrisk.metrics import (
    EvalStats,
    Scores,
    auc_from_histograms,
    average_precision_from_histograms,
    bin_bounds,
    bin_index,
    log_loss_from_bins,
    operating_points,
    recall_at_fpr,
    spread,
)


@dataclass(frozen=True)
class FraudStats:
    """What fraud metrics need beyond `EvalStats`; adds up across issuers."""

    amount_pos: np.ndarray  # sum of fraud amounts per score bin (each amount clipped at the campaign's cap)
    topk_hits: float  # frauds among each day's top-k scores, summed over days
    topk_alerts: float  # alerts in each day's top-k (k, or fewer on a quiet day), summed
    days: int  # days of the window (the campaign's calendar: not data)

    @classmethod
    def from_scores(cls, y_true: np.ndarray, scores: np.ndarray, amounts: np.ndarray, day_of_row: np.ndarray,
                    edges: np.ndarray, k: int, days: int, amount_cap: float) -> FraudStats:
        y = np.asarray(y_true).astype(bool)
        p = np.asarray(scores, dtype=float)
        day_of_row = np.asarray(day_of_row)
        clipped = np.clip(np.asarray(amounts, float), 0.0, amount_cap)
        amount_pos = np.bincount(bin_index(p[y], edges), weights=clipped[y], minlength=len(edges) + 1)
        order = np.lexsort((-p, day_of_row))  # by day, then highest score first (ties: row order)
        sorted_days = day_of_row[order]
        rank = np.arange(len(order)) - np.searchsorted(sorted_days, sorted_days, side="left")
        top = order[rank < k]
        return cls(amount_pos, float(y[top].sum()), float(len(top)), int(days))

    def __add__(self, other: FraudStats) -> FraudStats:
        return FraudStats(self.amount_pos + other.amount_pos, self.topk_hits + other.topk_hits,
                          self.topk_alerts + other.topk_alerts, self.days + other.days)


EMPTY_FRAUD = FraudStats(0.0, 0.0, 0.0, 0)  # type: ignore[arg-type]  # the start of a sum


def alert_threshold(pos: np.ndarray, neg: np.ndarray, days: int, alerts_per_day: float) -> int:
    """Lowest bin index k such that flagging bins k.. raises at most the budget per day."""
    tp, fp = operating_points(pos, neg)
    within = np.flatnonzero((tp + fp) <= alerts_per_day * max(days, 1))
    return int(within[0])  # the last index (flag nothing) is always within


def budget_counts(stats: EvalStats, fraud: FraudStats, k: int) -> np.ndarray:
    """(caught, alerts, frauds, fraud amount caught, fraud amount, days) at bin index k."""
    tp, fp = operating_points(stats.hist_pos, stats.hist_neg)
    amounts = np.clip(fraud.amount_pos, 0.0, None)
    return np.array([tp[k], tp[k] + fp[k], tp[0], amounts[k:].sum(), amounts.sum(), fraud.days], dtype=float)


def budget_metrics(counts: np.ndarray) -> dict[str, float]:
    caught, alerts, frauds, amount_caught, amount, days = counts
    return {
        "precision_at_budget": min(caught / alerts, 1.0) if alerts > 0 else 0.0,
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
        "precision_top_k": (float(np.clip(fraud.topk_hits / fraud.topk_alerts, 0.0, 1.0))
                            if fraud.topk_alerts > 0 else float("nan")),
        "fraud_rate": float(np.clip(pos, 0, None).sum()) / stats.examples if stats.examples else float("nan"),
        "loss": log_loss_from_bins(pos, neg, stats.means),
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
                              "operating_threshold": float(np.append(bin_bounds(stats.edges)[0], 1.0)[thresholds[name]])}
    stats = sum((s for s, _ in parts.values()), start=EvalStats.empty(next(iter(parts.values()))[0].edges))
    fraud = sum((f for _, f in parts.values()), start=EMPTY_FRAUD)
    pooled = {**ranking_metrics(stats, fraud, max_fpr, alerts_per_day), **budget_metrics(pooled_counts),
              "examples": float(stats.examples)}
    pooled.update(spread({n: m["average_precision"] for n, m in institutions.items()}, "average_precision"))
    return Scores(pooled, institutions)
