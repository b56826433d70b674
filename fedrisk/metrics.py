"""Metrics computed from summed score histograms, so no score ever leaves an institution.

Histograms are counted on a score grid the server fixes for the campaign: its interior edges
(`edges`, increasing, in (0, 1)) cut [0, 1] into `len(edges) + 1` bins. Summing institutions'
histograms gives the pooled histogram, so ranking metrics from it differ from the pooled
rows' only by ties inside a bin; a threshold on the grid is exact. Released histograms carry
DP noise (`fedrisk.mechanisms`): counts may be fractional or negative, so every metric clips a
count at zero before using it, and averages inside a bin are kept inside the bin's edges.

Naming follows scikit-learn: `*_from_histograms` take (positives, negatives) per bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-7
LOGIT_RANGE = (-12.0, 8.0)  # the fine grid of scores: probabilities 6e-6 .. 0.9997


def uniform_edges(bins: int) -> np.ndarray:
    """`bins` equal-width bins on [0, 1]."""
    return np.linspace(0.0, 1.0, bins + 1)[1:-1]


def logit_edges(bins: int, low: float = LOGIT_RANGE[0], high: float = LOGIT_RANGE[1]) -> np.ndarray:
    """`bins` bins equally wide in log-odds: resolution where scores crowd (near 0 for fraud)."""
    return 1.0 / (1.0 + np.exp(-np.linspace(low, high, bins - 1)))


def with_threshold(edges: np.ndarray, threshold: float | None) -> np.ndarray:
    """The grid with an operating threshold among its edges (threshold metrics stay exact)."""
    values = np.asarray(edges, dtype=float)
    if threshold is not None:
        values = np.append(values, threshold)
    return np.unique(values[(values > 0.0) & (values < 1.0)])


def bin_index(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each score: bin k holds edges[k-1] <= score < edges[k]."""
    return np.searchsorted(np.asarray(edges, dtype=float), np.asarray(scores, dtype=float), side="right")


def bin_bounds(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) score of every bin."""
    edges = np.asarray(edges, dtype=float)
    return np.concatenate([[0.0], edges]), np.concatenate([edges, [1.0]])


def score_histograms(y_true: np.ndarray, scores: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positives per bin, negatives per bin) of the predicted probabilities."""
    index = bin_index(scores, edges)
    y = np.asarray(y_true).astype(bool)
    bins = len(edges) + 1
    return (np.bincount(index[y], minlength=bins).astype(float), np.bincount(index[~y], minlength=bins).astype(float))


def _counts(values: np.ndarray) -> np.ndarray:
    """Counts as metrics use them: DP noise can make a released count negative."""
    return np.clip(np.asarray(values, dtype=float), 0.0, None)


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney), counting a positive and a negative in one bin as a tie.

    Noised counts are used as released, negative ones included: the pair count and the
    totals are then unbiased, while clipping them at zero adds mass to every empty cell and
    pulls the AUC towards 0.5 (by 0.05 at a noise of 3 per cell on 50 bins), by an amount
    that depends on the noise and the size, so that a reference and a window would differ.
    """
    pos, neg = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos <= 0 or n_neg <= 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    # the estimate itself may leave [0, 1] under heavy noise; an AUC cannot
    return float(np.clip((pos @ neg_below + 0.5 * pos @ neg) / (n_pos * n_neg), 0.0, 1.0))


def operating_points(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true positives, false positives) when flagging scores >= each bin's lower edge.

    Index k of the result flags bins k..B-1; a last entry flags nothing.
    """
    tp = np.append(np.cumsum(_counts(pos)[::-1])[::-1], 0.0)
    fp = np.append(np.cumsum(_counts(neg)[::-1])[::-1], 0.0)
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
    """Average precision (area under the PR curve), from the highest bin down.

    Inside a bin the positives and negatives are taken as mixed evenly (the ROC curve is
    straight there), and precision is integrated along that segment in PR space (Davis &
    Goadrich 2006). Scikit-learn's step-wise sum, run on bin-rounded scores, would treat a bin
    as one tie and understate the curve by a few hundredths on a coarse grid.
    """
    pos, neg = _counts(pos)[::-1], _counts(neg)[::-1]
    total_pos = pos.sum()
    if total_pos == 0:
        return float("nan")
    tp_before = np.concatenate([[0.0], np.cumsum(pos)[:-1]])
    flagged_before = tp_before + np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    width = pos + neg
    area = 0.0
    for a, c, tp0, n0 in zip(pos, width, tp_before, flagged_before):
        if a <= 0:
            continue
        if n0 <= 0:  # the top bin: precision a / c all along
            mean_precision = a / c
        else:  # integral of (tp0 + a t) / (n0 + c t) over t in [0, 1]
            mean_precision = a / c + (tp0 - a * n0 / c) / c * np.log1p(c / n0)
        area += a / total_pos * mean_precision
    return float(area)


def recall_at_fpr(pos: np.ndarray, neg: np.ndarray, max_fpr: float) -> float:
    """Highest recall among bin-edge thresholds whose false-positive rate is <= `max_fpr`."""
    tp, fp = operating_points(pos, neg)
    if tp[0] == 0 or fp[0] == 0:
        return float("nan")
    allowed = fp / fp[0] <= max_fpr + 1e-12
    return float(np.max(tp[allowed] / tp[0]))


def threshold_index(edges: np.ndarray, threshold: float) -> int:
    """The first bin at or above `threshold`, which must be an edge of the grid."""
    edges = np.asarray(edges, dtype=float)
    k = int(np.searchsorted(edges, threshold))
    if k >= len(edges) or not np.isclose(edges[k], threshold, rtol=0, atol=1e-12):
        raise ValueError(f"threshold {threshold} is not an edge of the score grid")
    return k + 1


def threshold_counts(pos: np.ndarray, neg: np.ndarray, threshold: float,
                     edges: np.ndarray) -> tuple[float, float, float, float]:
    """(TP, FP, FN, TN) when flagging scores >= `threshold`, an edge of the grid (exact)."""
    k = threshold_index(edges, threshold)
    tp, fp = operating_points(pos, neg)
    return tp[k], fp[k], tp[0] - tp[k], fp[0] - fp[k]


def classification_at_threshold(pos: np.ndarray, neg: np.ndarray, threshold: float,
                                edges: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 and the flag rate at an operating threshold."""
    tp, fp, fn, tn = threshold_counts(pos, neg, threshold, edges)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    total = tp + fp + fn + tn
    return {"precision": precision, "recall": recall, "f1": f1, "flag_rate": (tp + fp) / total if total else 0.0}


def bin_means(pos: np.ndarray, neg: np.ndarray, score_sums: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean predicted probability in each bin, kept inside the bin (the sums are noised)."""
    low, high = bin_bounds(edges)
    n = _counts(pos) + _counts(neg)
    mean = np.divide(np.asarray(score_sums, float), n, out=(low + high) / 2, where=n > 0)
    return np.clip(mean, low, high)


def brier_from_bins(pos: np.ndarray, neg: np.ndarray, means: np.ndarray) -> float:
    """Brier score with each row's prediction replaced by its bin's mean: within the binning
    tolerance of the exact score (lower by the predictions' spread inside the bins)."""
    pos, neg = _counts(pos), _counts(neg)
    n = pos.sum() + neg.sum()
    return float((pos @ np.square(1 - means) + neg @ np.square(means)) / n) if n else float("nan")


def log_loss_from_bins(pos: np.ndarray, neg: np.ndarray, means: np.ndarray) -> float:
    """Log loss with each prediction replaced by its bin's mean (within the binning tolerance)."""
    pos, neg = _counts(pos), _counts(neg)
    n = pos.sum() + neg.sum()
    p = np.clip(means, EPS, 1 - EPS)
    return float(-(pos @ np.log(p) + neg @ np.log(1 - p)) / n) if n else float("nan")


def calibration_bands(pos: np.ndarray, neg: np.ndarray, score_sums: np.ndarray, edges: np.ndarray,
                      bands: int = 10) -> list[dict[str, float]]:
    """Predicted vs observed default rate in about `bands` score bands of similar size, with
    Jeffreys' test: the grid's bins, merged in order until a band holds its share of the rows.

    The p-value is the one-sided Jeffreys test of PD back-testing: P(true rate <= predicted |
    observed), small when the band's defaults exceed what the model predicts.
    """
    from scipy.stats import beta

    pos, neg = _counts(pos), _counts(neg)
    low, high = bin_bounds(edges)
    sums = np.clip(np.asarray(score_sums, float), low * (pos + neg), high * (pos + neg))
    total = float((pos + neg).sum())
    cumulative = np.cumsum(pos + neg)
    out, start, target = [], 0, 1
    for b in range(len(pos)):
        # a band ends where the running count passes the next tenth of all rows (not a tenth of
        # what is left: that left the last band short and gave nine bands for ten)
        if cumulative[b] >= total * target / bands - 1e-9 or b == len(pos) - 1:
            part = slice(start, b + 1)
            defaults, goods = float(pos[part].sum()), float(neg[part].sum())
            n = defaults + goods
            if n > 0:
                predicted = float(sums[part].sum()) / n
                out.append({"low": float(low[start]), "high": float(high[b]), "n": n, "observed": defaults / n,
                            "predicted": predicted,
                            "jeffreys_p": float(beta.cdf(predicted, defaults + 0.5, goods + 0.5))})
            start = b + 1
            while target < bands and cumulative[b] >= total * target / bands - 1e-9:
                target += 1
    return out


def calibration_p(bands: list[dict[str, float]]) -> float:
    """The worst band's Jeffreys p-value times the number of bands (Bonferroni, capped at 1): below
    0.01, some band defaults more often than predicted by more than chance explains, at 1 % for
    the whole table rather than 1 % per band."""
    if not bands:
        return float("nan")
    return float(min(1.0, min(b["jeffreys_p"] for b in bands) * len(bands)))


@dataclass(frozen=True)
class EvalStats:
    """What an institution sends about a model on a split: per bin of the campaign's grid, the
    number of positives and negatives and the sum of their predicted probabilities. They add up
    across institutions; from them come AUC, Gini, KS, average precision, threshold metrics,
    calibration and, within the binning tolerance, Brier and log loss. No per-row sums."""

    edges: np.ndarray
    hist_pos: np.ndarray
    hist_neg: np.ndarray
    score_sum_pos: np.ndarray
    score_sum_neg: np.ndarray

    @classmethod
    def from_scores(cls, y_true: np.ndarray, scores: np.ndarray, edges: np.ndarray) -> EvalStats:
        y = np.asarray(y_true).astype(bool)
        p = np.asarray(scores, dtype=float)
        edges = np.asarray(edges, dtype=float)
        index = bin_index(p, edges)
        bins = len(edges) + 1
        pos, neg = score_histograms(y, p, edges)
        return cls(edges, pos, neg, np.bincount(index[y], weights=p[y], minlength=bins),
                   np.bincount(index[~y], weights=p[~y], minlength=bins))

    @classmethod
    def empty(cls, edges: np.ndarray) -> EvalStats:
        zeros = np.zeros(len(edges) + 1)
        return cls(np.asarray(edges, dtype=float), zeros, zeros, zeros, zeros)

    @property
    def examples(self) -> float:
        return float(_counts(self.hist_pos).sum() + _counts(self.hist_neg).sum())

    @property
    def means(self) -> np.ndarray:
        return bin_means(self.hist_pos, self.hist_neg, self.score_sum_pos + self.score_sum_neg, self.edges)

    def __add__(self, other: EvalStats) -> EvalStats:
        """Institutions' statistics add bin by bin, on one grid: that is what makes them sufficient."""
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("statistics on different score grids do not add up")
        return EvalStats(self.edges, self.hist_pos + other.hist_pos, self.hist_neg + other.hist_neg,
                         self.score_sum_pos + other.score_sum_pos, self.score_sum_neg + other.score_sum_neg)


def performance(stats: EvalStats, threshold: float, max_fpr: float) -> dict[str, float]:
    """The credit metric suite of one institution or of the pooled sums."""
    pos, neg = stats.hist_pos, stats.hist_neg
    auc = auc_from_histograms(pos, neg)
    examples = stats.examples
    out = {
        "auc": auc,
        "gini": 2 * auc - 1,
        "ks": ks_from_histograms(pos, neg),
        "average_precision": average_precision_from_histograms(pos, neg),
        "brier": brier_from_bins(pos, neg, stats.means),
        "loss": log_loss_from_bins(pos, neg, stats.means),
        "recall_at_fpr": recall_at_fpr(pos, neg, max_fpr),
        "default_rate": float(_counts(pos).sum()) / examples if examples else float("nan"),
    }
    out.update({f"{k}_at_threshold": v
                for k, v in classification_at_threshold(pos, neg, threshold, stats.edges).items()})
    return out


@dataclass(frozen=True)
class Scores:
    """Metric values of the pooled consortium and of each institution, keyed by metric.

    Keys name what is measured (`auc`, `recall_at_fpr`, `precision_at_threshold`); the
    parameters (the FPR, the threshold) and the split are added by `fedrisk.run_schema`.
    """

    pooled: dict[str, float]
    institutions: dict[str, dict[str, float]]


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
    pooled = sum(parts.values(), start=EvalStats.empty(next(iter(parts.values())).edges))
    institutions = {name: performance(stats, threshold, max_fpr) for name, stats in sorted(parts.items())}
    overall = {**performance(pooled, threshold, max_fpr), "examples": pooled.examples}
    overall.update(spread({n: m["auc"] for n, m in institutions.items()}, "auc"))
    return Scores(overall, institutions)


def importance_from_histograms(
    full: tuple[np.ndarray, np.ndarray], ablated: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, float]:
    """AUC lost when each feature is ablated (summed histograms in, pooled AUC drops out)."""
    base = auc_from_histograms(*full)
    return {feature: base - auc_from_histograms(pos, neg) for feature, (pos, neg) in ablated.items()}


def evaluation_grid(fine_counts: np.ndarray | None, fine_edges: np.ndarray | list[float], bins: int,
                    threshold: float | None, noise: float = 0.0, keep: np.ndarray | list[float] = ()) -> np.ndarray:
    """The campaign's evaluation grid: edges of the fine grid at quantiles of the pooled (noised)
    score counts. Half the bins split the rows evenly; the other half are ever finer towards the
    top (the last 10 %, 1 %, ... 0.001 % of scores), where frauds and the riskiest applicants sit
    and precision is decided. The operating threshold and the edges in `keep` (the score's
    deciles) are always edges, and all of them together are at most `bins` edges, which is what
    the institutions' policies agreed to release. Without counts, or with too few edges, the
    log-odds grid. Post-processing of a DP release: it costs no privacy."""
    from fedrisk.mechanisms import quantiles_from_histogram, significant

    fine_edges = np.asarray(fine_edges, dtype=float)
    keep = np.asarray(keep, dtype=float)
    room = bins - len(keep)  # edges left once the kept ones are in (the threshold is one of them)

    def with_kept(edges: np.ndarray) -> np.ndarray:
        return np.unique(np.concatenate([with_threshold(edges, threshold), keep]))

    if room <= 1:
        return with_kept(np.empty(0))
    if fine_counts is not None:
        counts = significant(np.asarray(fine_counts, dtype=float)[: len(fine_edges) + 1], noise)

        def at_levels(n: int) -> np.ndarray:
            body = max(n // 2, 2)
            levels = sorted([*np.linspace(0.0, 1.0, body + 1)[1:-1], *(1.0 - np.logspace(-1, -5, n - body))])
            return with_kept(np.asarray([fine_edges[i] for i in quantiles_from_histogram(counts, levels)
                                         if i < len(fine_edges)]))

        grid = at_levels(room)  # room - 1 levels: fits whatever coincides
        for n in range(room + 1, 4 * room):  # quantiles that fall in one fine bin give one edge: ask for more
            wider = at_levels(n)
            if len(wider) > bins:
                break
            grid = wider
        if len(grid) >= min(bins, 10) // 2:
            return grid
    return with_kept(logit_edges(room))
