"""Screening the institutions' updates before they are aggregated (docs/robustness.md).

A hostile or broken institution can send any weights. Before anything else the strategy
refuses a reply that is not what it asked for (`CampaignMixin.malformed`: another
institution's name, another model's layout, non-finite weights or metrics, a weight that is
not positive). Then, while the server sees each update (SecAgg+ hides them), each round:
- caps the weight an update claims at the training rows the institution's admission released
  (a claimed example count cannot buy more say than the admitted statistics showed);
- measures each update (new weights minus the round's model): its norm against the median norm
  of the other updates and its cosine with their coordinate-wise median, and with `norm_bound`
  scales an update longer than `norm_bound` times that median down to that length;
- flags an update longer than `flag_norm` times that median or pointing away from the others
  (cosine below `flag_cosine` and an outlier of the round, judged from 3 updates); an
  institution flagged `flag_rounds` rounds in a row is excluded by the strategy, recorded in
  the audit log and named in the gate report.

Aggregation itself is Flower's (FedAvg, or a robust rule of `flwr.serverapp.strategy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord

from fedrisk.config import CampaignConfig, Drill, Robust


def flat(arrays: ArrayRecord) -> np.ndarray:
    """All weights of a model as one float64 vector, in the record's key order."""
    parts = arrays.to_numpy_ndarrays(keep_input=True)
    return np.concatenate([p.astype(np.float64).ravel() for p in parts]) if parts else np.zeros(0)


def unflat(vector: np.ndarray, like: ArrayRecord) -> ArrayRecord:
    """`vector` in the shapes, dtypes and key order of `like`."""
    out, start = {}, 0
    for key, part in zip(like.keys(), like.to_numpy_ndarrays(keep_input=True), strict=True):
        out[key] = Array(vector[start:start + part.size].reshape(part.shape).astype(part.dtype))
        start += part.size
    return ArrayRecord(out)


def layout(arrays: ArrayRecord) -> list[tuple[str, tuple[int, ...], str]]:
    """Names, order, shapes and types of a model's arrays: a reply must match what it was sent
    (Flower aggregates by name, the screening reads in order: a reordered reply would pass
    the one as something else than the other sees)."""
    return [(key, tuple(a.shape), str(a.dtype)) for key, a in arrays.items()]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two vectors; 0 when either is zero (an empty update points nowhere)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0


@dataclass
class Screening:
    """One round's measurements of the updates the server saw."""

    norm_ratio: dict[str, float] = field(default_factory=dict)  # update norm / the round's median norm
    bounded: dict[str, float] = field(default_factory=dict)  # institution -> scale applied (< 1)
    cosine: dict[str, float] = field(default_factory=dict)  # with the median of the round's other updates
    flags: dict[str, str] = field(default_factory=dict)  # institution -> why flagged this round


def measure(sent: np.ndarray, updates: dict[str, np.ndarray], settings: Robust) -> tuple[Screening, dict[str, np.ndarray]]:
    """Norm ratios and flags of each update (new weights - `sent`), each against the median norm
    of the *other* updates (with two institutions, the other's: a median including the attacker
    would halve its own ratio); the updates bounded by `norm_bound` times that median when set."""
    screening = Screening()
    deltas = {name: w - sent for name, w in updates.items()}
    norms = {name: float(np.linalg.norm(d)) for name, d in deltas.items()}
    for name, norm in norms.items():
        others = [v for other, v in norms.items() if other != name]
        median = float(np.median(others)) if others else norm
        ratio = norm / median if median > 0 else (1.0 if norm == 0 else float("inf"))
        screening.norm_ratio[name] = ratio
        if ratio > settings.flag_norm:
            screening.flags[name] = f"update {ratio:.1f}x the others' median norm (flag above {settings.flag_norm:g}x)"
        if settings.norm_bound is not None and ratio > settings.norm_bound:
            scale = settings.norm_bound / ratio
            deltas[name] = deltas[name] * scale
            screening.bounded[name] = scale
    return screening, deltas


def others_median(stack: np.ndarray) -> np.ndarray:
    """Row i: the coordinate-wise median of every row but i, from one sort (not n medians)."""
    n = len(stack)
    order = np.argsort(stack, axis=0, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(n)[:, None], stack.shape), axis=0)
    ordered = np.take_along_axis(stack, order, axis=0)

    def kth(k: int) -> np.ndarray:  # the k-th smallest (from 1) of the other rows, for every row
        return np.where(ranks >= k, ordered[k - 1][None, :], ordered[k][None, :])

    m = n - 1
    return kth((m + 1) // 2) if m % 2 else (kth(m // 2) + kth(m // 2 + 1)) / 2


MIN_FOR_DIRECTION = 3  # updates a round needs before directions are judged
OUTLIER_MADS = 3.0  # a direction flag also needs the cosine this many robust deviations below the round's median


def judge_direction(screening: Screening, deltas: dict[str, np.ndarray], settings: Robust) -> None:
    """Each update's cosine with the coordinate-wise median of the *other* updates of the round
    (an institution that dominates a mean would agree with itself; one among few noisy updates
    sways a median that includes it). Flagged when it points
    away (below `flag_cosine`) and is an outlier among the round's cosines (more than
    OUTLIER_MADS scaled median absolute deviations below their median): late in a campaign DP
    noise dominates every update and honest cosines scatter around 0, so the sign alone would
    accuse honest institutions at random."""
    if len(deltas) < MIN_FOR_DIRECTION:  # two updates disagreeing: nothing says which one is hostile
        return
    stack = np.stack(list(deltas.values()))
    for (name, delta), reference in zip(deltas.items(), others_median(stack), strict=True):
        screening.cosine[name] = cosine(delta, reference)
    values = np.array(list(screening.cosine.values()))
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    limit = min(settings.flag_cosine, median - OUTLIER_MADS * spread)
    for name, c in screening.cosine.items():
        if c < limit and name not in screening.flags:
            screening.flags[name] = (f"update points away from the others' (cosine {c:.2f}; flagged below "
                                     f"{limit:.2f}: under {settings.flag_cosine:g} and {OUTLIER_MADS:g} deviations "
                                     "below the round's median)")


def flagged_in_a_row(streaks: dict[str, int], screening: Screening, names: list[str]) -> dict[str, int]:
    """Consecutive flagged rounds per institution: a clean round resets, a round sat out keeps."""
    return {**streaks, **{name: (streaks.get(name, 0) + 1 if name in screening.flags else 0) for name in names}}


def describe(config: CampaignConfig) -> str:
    """The run's `fedrisk.robust` tag: the rule and how updates were screened."""
    tr, settings = config.training, config.training.robust
    if config.secure_aggregation.enabled:
        return f"{tr.strategy}; updates not screened: secure aggregation hides them"
    bound = f"{settings.norm_bound:g}x the median norm" if settings.norm_bound is not None else "off"
    rule = {"fedtrimmedavg": f" (trim {settings.trim:g})", "krum": f" (byzantine {settings.byzantine})",
            "multikrum": f" (byzantine {settings.byzantine})", "bulyan": f" (byzantine {settings.byzantine})"}
    excluded = f"after {settings.flag_rounds} in a row" if settings.flag_rounds else "never"
    capped = "capped at admitted rows" if settings.cap_weights else "as claimed"
    return (f"{tr.strategy}{rule.get(tr.strategy, '')}; weights {capped}; norm bound {bound}; "
            f"flagged above {settings.flag_norm:g}x the others' median norm or below cosine {settings.flag_cosine:g} "
            f"(directions judged from {MIN_FOR_DIRECTION} updates); "
            f"excluded {excluded}")


def describe_drill(drill: Drill) -> str:
    """The run's `fedrisk.drill` tag."""
    detail = {"scale": f" x{drill.factor:g}", "inflate_count": f" x{drill.factor:g}",
              "group_relabel": f" ({drill.group} labelled positive)",
              "dropout": f" ({drill.rate:g} of the rounds each)"}.get(drill.attack, "")
    return f"{', '.join(drill.institutions)}: {drill.attack}{detail}"
