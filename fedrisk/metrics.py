"""Metrics computed from summed score histograms, so no score ever leaves an institution.

Histograms are counted on bin edges the server fixes (`bins` equal bins on [0, 1]); summing
institutions' histograms gives the pooled histogram exactly, and AUC from it differs from the
pooled AUC only by ties inside a bin.
"""

from __future__ import annotations

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


def log_loss_sum(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Sum (not mean) of binary cross-entropy, so institutions' sums add up."""
    p = np.clip(np.asarray(scores, dtype=float), EPS, 1 - EPS)
    y = np.asarray(y_true, dtype=float)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum())


def evaluation_summary(
    parts: dict[str, tuple[int, float, np.ndarray, np.ndarray]],
) -> dict[str, float]:
    """Pooled and per-institution loss and AUC from (examples, loss sum, pos, neg) parts.

    The pooled figures come from the summed parts, never from averaging institutions.
    """
    out: dict[str, float] = {}
    if not parts:
        return out
    total_n = sum(p[0] for p in parts.values())
    total_loss = sum(p[1] for p in parts.values())
    pos = np.sum([p[2] for p in parts.values()], axis=0)
    neg = np.sum([p[3] for p in parts.values()], axis=0)
    out["val_loss"] = total_loss / total_n
    out["val_auc"] = auc_from_histograms(pos, neg)
    out["val_examples"] = float(total_n)
    aucs = []
    for name, (n, loss, p, q) in sorted(parts.items()):
        auc = auc_from_histograms(p, q)
        out[f"val_loss.{name}"] = loss / n
        out[f"val_auc.{name}"] = auc
        aucs.append(auc)
    out["val_auc_worst_institution"] = float(np.nanmin(aucs))
    return out
