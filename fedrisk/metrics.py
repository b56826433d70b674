"""Metrics computed from summed score histograms, so no score ever leaves an institution.

Histograms are counted on bin edges the server fixes (`bins` equal bins on [0, 1]); summing
institutions' histograms gives the pooled histogram exactly, and AUC from it differs from the
pooled AUC only by ties inside a bin.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

EPS = 1e-7


def bin_index(scores: np.ndarray, bins: int) -> np.ndarray:
    return np.clip((np.asarray(scores, dtype=float) * bins).astype(np.int64), 0, bins - 1)


def score_histograms(y_true: np.ndarray, scores: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(positives per bin, negatives per bin) of the predicted probabilities."""
    index = bin_index(scores, bins)
    y = np.asarray(y_true).astype(bool)
    pos = np.bincount(index[y], minlength=bins)
    neg = np.bincount(index[~y], minlength=bins)
    return pos.astype(np.int64), neg.astype(np.int64)


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney), counting a positive and a negative in one bin as a tie."""
    pos = np.asarray(pos, dtype=float)
    neg = np.asarray(neg, dtype=float)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos @ neg_below + 0.5 * pos @ neg) / (n_pos * n_neg))


def operating_points(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true positives, false positives) when flagging scores >= each bin's lower edge.

    Index k of the result flags bins k..B-1; a last entry flags nothing.
    """
    tp = np.append(np.cumsum(np.asarray(pos, float)[::-1])[::-1], 0.0)
    fp = np.append(np.cumsum(np.asarray(neg, float)[::-1])[::-1], 0.0)
    return tp, fp


def gini_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """Gini (accuracy ratio) = 2 AUC - 1."""
    return 2.0 * auc_from_histograms(pos, neg) - 1.0


def ks_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score CDFs of the two classes."""
    tp, fp = operating_points(pos, neg)
    n_pos, n_neg = tp[0], fp[0]
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float(np.max(np.abs(tp / n_pos - fp / n_neg)))


def average_precision_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """Average precision (area under the PR curve, step-wise as scikit-learn sums it)."""
    tp, fp = operating_points(pos, neg)
    n_pos = tp[0]
    if n_pos == 0:
        return float("nan")
    tp, fp = tp[::-1], fp[::-1]  # from flagging nothing to flagging everything
    flagged = tp + fp
    precision = np.divide(tp, flagged, out=np.ones_like(tp), where=flagged > 0)
    recall = tp / n_pos
    return float(np.sum(np.diff(recall) * precision[1:]))


def recall_at_fpr(pos: np.ndarray, neg: np.ndarray, max_fpr: float) -> float:
    """Highest recall among bin-edge thresholds whose false-positive rate is <= `max_fpr`."""
    tp, fp = operating_points(pos, neg)
    if tp[0] == 0 or fp[0] == 0:
        return float("nan")
    allowed = fp / fp[0] <= max_fpr + 1e-12
    return float(np.max(tp[allowed] / tp[0]))


def threshold_counts(
    pos: np.ndarray, neg: np.ndarray, threshold: float
) -> tuple[float, float, float, float]:
    """(TP, FP, FN, TN) when flagging scores >= `threshold`, a multiple of 1/bins (exact)."""
    bins = len(pos)
    k = int(round(threshold * bins))
    if not np.isclose(k / bins, threshold):
        raise ValueError(f"threshold {threshold} is not on the {bins}-bin grid")
    tp, fp = operating_points(pos, neg)
    return tp[k], fp[k], tp[0] - tp[k], fp[0] - fp[k]


def classification_at_threshold(pos: np.ndarray, neg: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 and the flag rate at an operating threshold."""
    tp, fp, fn, tn = threshold_counts(pos, neg, threshold)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "flag_rate": (tp + fp) / (tp + fp + fn + tn)}


def brier_from_sums(examples: float, sum_p2: float, sum_py: float, sum_y: float) -> float:
    """Brier score from sums of p^2, p*y and y (y is 0/1, so y^2 = y): exact."""
    return (sum_p2 - 2.0 * sum_py + sum_y) / examples


def calibration_bands(
    pos: np.ndarray, neg: np.ndarray, score_sums: np.ndarray, bands: int = 10
) -> list[dict[str, float]]:
    """Predicted vs observed default rate per equal-width score band, with Jeffreys' test.

    `score_sums[b]` is the sum of predicted probabilities in bin b. The p-value is the
    one-sided Jeffreys test used in PD back-testing: P(true rate <= predicted | observed),
    small when the band's defaults exceed what the model predicts.
    """
    from scipy.stats import beta

    bins = len(pos)
    if bins % bands:
        raise ValueError(f"{bands} bands do not divide {bins} bins")
    width = bins // bands
    out = []
    for band in range(bands):
        part = slice(band * width, (band + 1) * width)
        defaults, goods = float(np.sum(pos[part])), float(np.sum(neg[part]))
        n = defaults + goods
        if n == 0:
            continue
        predicted = float(np.sum(score_sums[part])) / n
        out.append({
            "low": band / bands, "high": (band + 1) / bands, "n": n,
            "observed": defaults / n, "predicted": predicted,
            "jeffreys_p": float(beta.cdf(predicted, defaults + 0.5, goods + 0.5)),
        })
    return out


def log_loss_sum(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Sum (not mean) of binary cross-entropy, so institutions' sums add up."""
    p = np.clip(np.asarray(scores, dtype=float), EPS, 1 - EPS)
    y = np.asarray(y_true, dtype=float)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum())


@dataclass(frozen=True)
class EvalStats:
    """Sufficient statistics of one institution's evaluation: they add up across institutions.

    Per score bin: counts of defaults and non-defaults and the sum of predicted probabilities
    of each; plus the sums of log loss and of p^2. From these the server gets AUC, Gini, KS,
    average precision, Brier, log loss, calibration and threshold metrics of pooled data.
    """

    examples: int
    loss_sum: float
    hist_pos: np.ndarray
    hist_neg: np.ndarray
    score_sum_pos: np.ndarray
    score_sum_neg: np.ndarray
    sum_p2: float

    @classmethod
    def from_scores(cls, y_true: np.ndarray, scores: np.ndarray, bins: int) -> EvalStats:
        y = np.asarray(y_true).astype(bool)
        p = np.asarray(scores, dtype=float)
        index = bin_index(p, bins)
        pos, neg = score_histograms(y, p, bins)
        return cls(
            examples=len(p),
            loss_sum=log_loss_sum(y, p),
            hist_pos=pos,
            hist_neg=neg,
            score_sum_pos=np.bincount(index[y], weights=p[y], minlength=bins),
            score_sum_neg=np.bincount(index[~y], weights=p[~y], minlength=bins),
            sum_p2=float(np.sum(p * p)),
        )

    def __add__(self, other: EvalStats) -> EvalStats:
        """Institutions' statistics add field by field: that is what makes them sufficient."""
        return EvalStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class Scores:
    """Metric values of the pooled consortium and of each institution, keyed by metric.

    Keys name what is measured (`auc`, `recall_at_fpr`, `precision_at_threshold`); the
    parameters (the FPR, the threshold) and the split are added by `fedrisk.run_schema`.
    """

    pooled: dict[str, float]
    institutions: dict[str, dict[str, float]]


def performance(stats: EvalStats, threshold: float, max_fpr: float) -> dict[str, float]:
    """The credit metric suite of one institution or of the pooled sums."""
    pos, neg = stats.hist_pos, stats.hist_neg
    auc = auc_from_histograms(pos, neg)
    out = {
        "auc": auc,
        "gini": 2 * auc - 1,
        "ks": ks_from_histograms(pos, neg),
        "average_precision": average_precision_from_histograms(pos, neg),
        "brier": brier_from_sums(stats.examples, stats.sum_p2, float(stats.score_sum_pos.sum()), float(pos.sum())),
        "loss": stats.loss_sum / stats.examples,
        "recall_at_fpr": recall_at_fpr(pos, neg, max_fpr),
        "default_rate": float(pos.sum()) / stats.examples,
    }
    out.update({f"{k}_at_threshold": v for k, v in classification_at_threshold(pos, neg, threshold).items()})
    return out


def spread(values: dict[str, float], metric: str) -> dict[str, float]:
    """The worst institution's value of a metric and the gap between best and worst."""
    finite = [v for v in values.values() if np.isfinite(v)]
    if not finite:
        return {}
    return {f"{metric}_worst_institution": float(min(finite)), f"{metric}_gap": float(max(finite) - min(finite))}


def evaluation_summary(parts: dict[str, EvalStats], threshold: float = 0.2, max_fpr: float = 0.1) -> Scores:
    """Pooled and per-institution metrics from institutions' sums, plus their spread.

    The pooled figures come from the summed statistics, never from averaging institutions.
    """
    if not parts:
        return Scores({}, {})
    pooled = sum(parts.values(), start=EvalStats(0, 0.0, 0, 0, 0, 0, 0.0))
    institutions = {name: performance(stats, threshold, max_fpr) for name, stats in sorted(parts.items())}
    overall = {**performance(pooled, threshold, max_fpr), "examples": float(pooled.examples)}
    overall.update(spread({n: m["auc"] for n, m in institutions.items()}, "auc"))
    return Scores(overall, institutions)


def importance_from_histograms(
    full: tuple[np.ndarray, np.ndarray], ablated: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, float]:
    """AUC lost when each feature is ablated (summed histograms in, pooled AUC drops out)."""
    base = auc_from_histograms(*full)
    return {feature: base - auc_from_histograms(pos, neg) for feature, (pos, neg) in ablated.items()}
