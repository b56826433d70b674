"""Fairness of approval decisions by protected group, from summed per-group histograms.

An applicant is approved when the predicted PD is below the operating threshold. The
favourable outcome is approval and the "qualified" applicants are those who did not default,
so: demographic parity compares approval rates, equal opportunity compares approval rates
among non-defaulters, equalized odds takes the larger of that gap and the gap among
defaulters. These are fairlearn's definitions with y_true = 1 - default, y_pred = approved.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrisk.metrics import auc_from_histograms, bin_index, threshold_index, with_threshold

OTHER = "other"  # a protected value outside the consortium's known groups
GROUP_BINS = 10  # group histograms are coarser than the evaluation grid: a rate sums fewer noised cells
# attribute -> group value -> (defaults per bin, non-defaults per bin)
GroupHistograms = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]


# metrics named `<metric>.<attribute>` (a rule on one needs the attribute among data.protected)
ATTRIBUTE_METRICS = ("approval_rate", "approval_rate_difference", "approval_rate_ratio",
                     "equal_opportunity_difference", "equalized_odds_difference")


def group_edges(edges: np.ndarray, threshold: float | None, bins: int = GROUP_BINS) -> np.ndarray:
    """The grid of the group histograms: about `bins` bins picked from the evaluation grid's
    edges, the operating threshold kept. An approval rate is a sum of noised cells below the
    threshold, so fewer cells carry less noise (a gap's noise falls roughly with the square root
    of the cells summed); group AUCs are coarser, within the binning tolerance."""
    edges = np.asarray(edges, dtype=float)
    if len(edges) + 1 <= bins:
        return edges
    picks = edges[np.unique(np.linspace(0, len(edges) - 1, bins - 1).round().astype(int))]
    return with_threshold(picks, threshold)


def group_histograms(y_true: np.ndarray, scores: np.ndarray, groups: dict[str, np.ndarray], edges: np.ndarray,
                     known: dict[str, list[str]] | None = None) -> GroupHistograms:
    """Per protected attribute and group: score histograms by label (what a client sends).

    With `known` groups per attribute (the consortium's, fixed by the server), every one of them
    is sent, empty or not, and any other value counts as `OTHER`: which groups an institution
    has is then not itself a release.
    """
    y = np.asarray(y_true).astype(bool)
    index = bin_index(scores, edges)
    bins = len(edges) + 1
    out: GroupHistograms = {}
    for attribute, values in groups.items():
        labels = np.asarray(values).astype(str)
        names = sorted(set(labels.tolist())) if known is None else [*known.get(attribute, []), OTHER]
        if known is not None:
            labels = np.where(np.isin(labels, names), labels, OTHER)
        out[attribute] = {}
        for group in names:
            mine = labels == group
            out[attribute][str(group)] = (np.bincount(index[mine & y], minlength=bins).astype(float),
                                          np.bincount(index[mine & ~y], minlength=bins).astype(float))
    return out


def merge_group_histograms(parts: list[GroupHistograms]) -> GroupHistograms:
    """Sum institutions' group histograms; a group seen at one institution only still counts."""
    merged: GroupHistograms = {}
    for part in parts:
        for attribute, groups in part.items():
            into = merged.setdefault(attribute, {})
            for group, (pos, neg) in groups.items():
                if group in into:
                    into[group] = (into[group][0] + pos, into[group][1] + neg)
                else:
                    into[group] = (np.asarray(pos).copy(), np.asarray(neg).copy())
    return merged


def _approved(hist: np.ndarray, threshold: float, edges: np.ndarray) -> float:
    """Rows with PD below the threshold (an edge of the grid)."""
    return float(np.sum(np.clip(hist[:threshold_index(edges, threshold)], 0, None)))


def fairness_by_attribute(groups: dict[str, tuple[np.ndarray, np.ndarray]], threshold: float, edges: np.ndarray,
                          min_size: float = 0.0) -> dict[str, Any]:
    """Approval rates per group and the gaps between groups for one protected attribute.

    Groups of at most `min_size` rows are left out: with noised counts, a tiny group's rates
    are mostly noise (the server sets it from the noise it knows was added).
    """
    rates, good_rates, bad_rates, aucs, sizes = {}, {}, {}, {}, {}
    for group, (pos, neg) in sorted(groups.items()):
        if float(np.sum(pos) + np.sum(neg)) <= max(min_size, 0.0):  # unclipped: noise sums to zero on average
            continue
        n_bad, n_good = float(np.sum(np.clip(pos, 0, None))), float(np.sum(np.clip(neg, 0, None)))
        sizes[group] = n_bad + n_good
        rates[group] = (_approved(pos, threshold, edges) + _approved(neg, threshold, edges)) / sizes[group]
        good_rates[group] = _approved(neg, threshold, edges) / n_good if n_good else float("nan")
        bad_rates[group] = _approved(pos, threshold, edges) / n_bad if n_bad else float("nan")
        aucs[group] = auc_from_histograms(pos, neg)

    def gap(values: dict[str, float]) -> float:
        finite = [v for v in values.values() if np.isfinite(v)]
        return float(max(finite) - min(finite)) if len(finite) > 1 else 0.0

    top = max(rates.values()) if rates else 0.0
    return {
        "groups": sizes,
        "approval_rate": rates,
        "approval_rate_difference": gap(rates),
        "approval_rate_ratio": float(min(rates.values()) / top) if top > 0 else float("nan"),
        "equal_opportunity_difference": gap(good_rates),
        "equalized_odds_difference": max(gap(good_rates), gap(bad_rates)),
        "auc": aucs,
        "approved_repaid": good_rates,  # fairlearn's true-positive rate (y_true = 1 - default)
        "approved_defaulted": bad_rates,  # its false-positive rate
    }


def fairness_scores(groups: GroupHistograms, threshold: float, edges: np.ndarray,
                    min_size: float = 0.0) -> dict[str, dict[str, Any]]:
    """`fairness_by_attribute` for every protected attribute."""
    return {attribute: fairness_by_attribute(by_group, threshold, edges, min_size)
            for attribute, by_group in sorted(groups.items())}
