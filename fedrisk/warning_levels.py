"""Judge a monitoring window: PSI, CSI and performance drift per scope, three warning levels.

A scope is the pooled consortium or one institution. Each measure gets a level:

- score PSI and each feature's CSI: yellow from `yellow`, orange from `orange`, red from
  `severe`, but only above the sampling-noise bound (a small window's PSI is noisy);
- performance: the drop of the rule's metric against the validation reference, relative or
  absolute: yellow from `near` x `max_drop`, orange above `max_drop` (the retraining
  rule), red from `severe_drop`; an AUC drop within sampling noise (Hanley-McNeil
  standard errors of both AUCs, one-sided at `noise_confidence`) stays green; the
  confidence is the window's, shared among its tests (`assess_window`).

A scope's level is its worst measure's; orange or worse over `sustained_windows` windows in
a row turns red. The retraining trigger is the consortium's rule on the pooled scope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from fedrisk import run_schema
from fedrisk.drift import SCORE, held_cells, noise_bound, psi
from fedrisk.metrics import (
    EvalStats,
    auc_from_histograms,
    average_precision_from_histograms,
    ks_from_histograms,
)
from fedrisk.monitor_config import Bands, Levels, Performance

LEVELS = ("green", "yellow", "orange", "red")
GREEN, YELLOW, ORANGE, RED = range(4)
POOLED = "pooled"
RANKING = {"auc": auc_from_histograms, "ks": ks_from_histograms, "average_precision": average_precision_from_histograms}


@dataclass
class ScopeResult:
    """Everything measured on one scope of one window, and the level it earns."""

    rows: int
    psi: dict[str, float]  # "score" and every feature
    bound: dict[str, float]  # sampling-noise bound of each
    performance: dict[str, float] = field(default_factory=dict)  # auc, ks, average_precision, positive_rate
    drops: dict[str, float] = field(default_factory=dict)
    level: int = GREEN
    reasons: list[str] = field(default_factory=list)
    significant: bool = False  # the performance drop exceeds sampling noise (AUC only; others always)
    reference_performance: dict[str, float] = field(default_factory=dict)  # what the drops are against
    score_counts: list[float] = field(default_factory=list)  # the window's score per reference bin
    reference_score_counts: list[float] = field(default_factory=list)


def band_level(value: float, bound: float, bands: Bands) -> int:
    if math.isnan(value) or (not math.isnan(bound) and value <= bound):
        return GREEN
    for level, threshold in ((RED, bands.severe), (ORANGE, bands.orange), (YELLOW, bands.yellow)):
        if value >= threshold:
            return level
    return GREEN


def drop(reference: float, current: float, mode: str) -> float:
    """How far `current` fell below `reference`: relative (a share of it) or absolute."""
    if math.isnan(reference) or math.isnan(current) or (mode == "relative" and reference == 0):
        return float("nan")
    return (reference - current) / reference if mode == "relative" else reference - current


def performance_level(value: float, rule: Performance) -> int:
    if math.isnan(value):
        return GREEN
    if value >= rule.severe_drop:
        return RED
    if value > rule.max_drop:
        return ORANGE
    return YELLOW if value >= rule.near * rule.max_drop else GREEN


def ranking_metrics(stats: EvalStats) -> dict[str, float]:
    out = {name: f(stats.hist_pos, stats.hist_neg) for name, f in RANKING.items()}
    out["positives"], out["negatives"] = float(np.sum(stats.hist_pos)), float(np.sum(stats.hist_neg))
    out["positive_rate"] = out["positives"] / stats.examples if stats.examples else float("nan")
    return out


def auc_standard_error(auc: float, positives: float, negatives: float) -> float:
    """Hanley & McNeil (1982), Radiology 143(1): the AUC's standard error from class counts."""
    if positives < 1 or negatives < 1 or math.isnan(auc):
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc)
                + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))


def auc_drop_is_noise(reference: dict[str, float], current: dict[str, float], confidence: float,
                      dp_spread: float = 0.0) -> bool:
    """True when the AUC fell by less than sampling noise, and the DP noise of the released
    histograms (`dp_spread`, the AUCs' standard deviation from it), explain (one-sided test)."""
    if "positives" not in reference:
        return False
    spread = math.hypot(auc_standard_error(reference["auc"], reference["positives"], reference["negatives"]),
                        auc_standard_error(current["auc"], current["positives"], current["negatives"]), dp_spread)
    return not math.isnan(spread) and reference["auc"] - current["auc"] <= norm.ppf(confidence) * spread


def auc_noise_sd(stats: EvalStats, noise: float, draws: int = 100) -> float:
    """Standard deviation of the AUC of noised histograms, from re-noising them (parametric bootstrap)."""
    if noise <= 0:
        return 0.0
    rng = np.random.default_rng(0)
    values = [auc_from_histograms(stats.hist_pos + rng.normal(0, noise, stats.hist_pos.shape),
                                  stats.hist_neg + rng.normal(0, noise, stats.hist_neg.shape)) for _ in range(draws)]
    return float(np.nanstd(values))


def measure_scope(reference_counts: dict[str, Any], counts: dict[str, np.ndarray], stats: EvalStats | None,
                  performance_reference: dict[str, float] | None, levels: Levels, noise: float = 0.0,
                  reference_noise: float = 0.0, score_reference_noise: float | np.ndarray | None = None,
                  auc_confidence: float | None = None) -> ScopeResult:
    """PSI, CSI and performance of one scope against its training reference, with its level.

    `noise` and `reference_noise` are the DP noise per cell of the window's counts and of the
    reference counts (`score_reference_noise` for the score's, per cell or for all, when it was
    released otherwise),
    and the reference performance carries its AUC's noise (`auc_noise_sd`):
    measures within what sampling and that noise explain stay green, PSIs at
    `levels.noise_confidence`, the AUC drop at `auc_confidence` (default: the same). Cells
    empty on both sides are left out (`held_cells`)."""
    result = ScopeResult(rows=int(np.sum(counts[SCORE])), psi={}, bound={},
                         reference_performance=dict(performance_reference or {}),
                         score_counts=np.asarray(counts[SCORE], dtype=float).tolist(),
                         reference_score_counts=np.asarray(reference_counts[SCORE], dtype=float).tolist())
    for column, mine in counts.items():
        base = np.asarray(reference_counts[column], dtype=float)
        mine = np.asarray(mine, dtype=float)
        base_noise = np.broadcast_to(np.asarray(score_reference_noise if column == SCORE and score_reference_noise
                                                is not None else reference_noise, dtype=float), base.shape)
        held = held_cells(base, mine, base_noise, noise)
        result.psi[column] = psi(base[held], mine[held], base_noise[held], noise)
        result.bound[column] = noise_bound(base[held], mine[held], levels.noise_confidence, base_noise[held], noise)
    rule = levels.performance
    if stats is not None and np.sum(stats.hist_pos) and np.sum(stats.hist_neg):
        result.performance = {**ranking_metrics(stats), "auc_noise_sd": auc_noise_sd(stats, noise)}
        if performance_reference:
            result.drops = {k: drop(performance_reference[k], result.performance[k], rule.mode)
                            for k in RANKING if k in performance_reference}
    judged = [(band_level(result.psi[SCORE], result.bound[SCORE], levels.psi), f"score PSI {result.psi[SCORE]:.3f}")]
    judged += [(band_level(v, result.bound[c], levels.csi), f"CSI {c} {v:.3f}")
               for c, v in result.psi.items() if c != SCORE]
    if rule.metric in result.drops:
        value = result.drops[rule.metric]
        unit = f"{value:.1%} relative" if rule.mode == "relative" else f"{value:.4f}"
        dp_spread = math.hypot(result.performance["auc_noise_sd"], performance_reference.get("auc_noise_sd", 0.0)
                               if performance_reference else 0.0) if stats is not None else 0.0
        within = rule.metric == "auc" and auc_drop_is_noise(performance_reference or {}, result.performance,
                                                            auc_confidence or levels.noise_confidence, dp_spread)
        result.significant = not within
        judged.append((GREEN if within else performance_level(value, rule), f"{rule.metric} drop {unit}"))
    result.level = max(level for level, _ in judged)
    result.reasons = [reason for level, reason in sorted(judged, key=lambda j: -j[0]) if level > GREEN]
    return result


def sustain(history: list[int], current: int, windows: int) -> int:
    """Red when this window and the `windows - 1` before it are all orange or worse."""
    recent = [*history[-(windows - 1):], current] if windows > 1 else [current]
    if current == ORANGE and len(recent) == windows and all(level >= ORANGE for level in recent):
        return RED
    return current


def retrain_due(pooled: ScopeResult, rule: Performance) -> bool:
    """The consortium's rule: the pooled metric fell by more than `max_drop`."""
    value = pooled.drops.get(rule.metric, float("nan"))
    return not math.isnan(value) and value > rule.max_drop and pooled.significant


def mixed_reference(own: dict[str, dict[str, list]], weights: dict[str, float], columns: list[str]) -> dict[str, np.ndarray]:
    """The institutions' references mixed in the proportions `weights`, keeping their total size.

    Under no drift, a pooled window is this mixture of its institutions' own distributions;
    the total stays the real reference size, which the noise bound needs.
    """
    total_weight = sum(weights.values())

    def mixed(c: str) -> np.ndarray:  # each column keeps its own size (the score's: validation rows)
        total_rows = sum(float(np.sum(own[n][c])) for n in weights)
        return sum(np.asarray(own[n][c], dtype=float) / max(float(np.sum(own[n][c])), 1.0)
                   * weights[n] / total_weight * total_rows for n in weights)

    return {c: mixed(c) for c in columns}


def _mixed_validation(validation: dict[str, dict[str, list]], parts: dict[str, tuple[dict, EvalStats | None]],
                      names: list[str], reference_grid: list[float], noise: float = 0.0) -> dict[str, float]:
    """Validation metrics of `names`, each institution's histograms rescaled class by class to
    its share of the window's labelled positives and negatives (a no-drift expectation)."""
    stats = {n: parts[n][1] for n in names}
    pos_total = sum(float(np.sum(s.hist_pos)) for s in stats.values())
    neg_total = sum(float(np.sum(s.hist_neg)) for s in stats.values())
    ref_pos = sum(float(np.sum(validation[n]["hist_pos"])) for n in names)
    ref_neg = sum(float(np.sum(validation[n]["hist_neg"])) for n in names)

    def mix(key: str, window_total: float, ref_total: float, field_name: str) -> np.ndarray:
        return sum(np.asarray(validation[n][key], dtype=float) / max(float(np.sum(validation[n][key])), 1.0)
                   * float(np.sum(getattr(stats[n], field_name))) / max(window_total, 1.0) * ref_total
                   for n in names)

    pos = mix("hist_pos", pos_total, ref_pos, "hist_pos")
    neg = mix("hist_neg", neg_total, ref_neg, "hist_neg")
    mixed = EvalStats(np.asarray(reference_grid, dtype=float), pos, neg, pos * 0.0, neg * 0.0)
    return {**ranking_metrics(mixed), "auc_noise_sd": auc_noise_sd(mixed, noise)}


def assess_window(reference: dict, parts: dict[str, tuple[dict[str, np.ndarray], EvalStats | None]],
                  levels: Levels, history: dict[str, list[int]],
                  noise: dict[str, float] | None = None) -> dict[str, ScopeResult]:
    """Every scope of one window; `history` (earlier windows' levels per scope) is updated
    for the sustained-orange rule.

    The pooled scope adds up the institutions that replied and have a reference of their
    own, and compares them with those institutions' references mixed in the window's
    proportions (rows for PSI; labelled positives and negatives for performance): neither a
    missing institution nor a different mix of sizes looks like drift. An institution
    without a reference of its own is judged against the consortium's and kept out of the
    pool; when none has one, the pool is every institution against the consortium.

    `noise_confidence` holds for the window as a whole, once for its distributions and once
    for its performance (Bonferroni): each of its m PSIs (every column, in every scope) is held
    to 1 - (1 - confidence) / m and each scope's AUC drop to 1 - (1 - confidence) / scopes, so
    a stable window stays green with probability at least 1 - 2 (1 - confidence), however many
    columns and institutions it has.
    """
    columns = list(reference["columns"])
    scopes = len(parts) + 1
    missed = 1.0 - levels.noise_confidence
    auc_confidence = 1.0 - missed / scopes
    levels = levels.model_copy(update={"noise_confidence": 1.0 - missed / (len(columns) * scopes)})
    consortium = {c: np.asarray(spec["counts"]) for c, spec in reference["columns"].items()}
    own = reference.get("institutions", {})
    validation = reference.get("validation", {})
    performance = reference.get("performance", {})
    members = sorted(n for n in parts if n in own)
    if members:
        weights = {n: float(np.sum(parts[n][0][SCORE])) for n in members}
        pooled_reference = mixed_reference(own, weights, columns)
    else:
        members, pooled_reference = sorted(parts), consortium
    pooled_counts = {c: sum(np.asarray(parts[n][0][c]) for n in members) for c in columns}
    labelled = [n for n in members if parts[n][1] is not None]
    pooled_stats = sum((parts[n][1] for n in labelled[1:]), start=parts[labelled[0]][1]) if labelled else None
    if labelled and all(n in validation for n in labelled):
        pooled_performance = _mixed_validation(validation, parts, labelled, reference["grid"],
                                               float(np.sqrt(sum(validation[n].get("noise", 0.0) ** 2 for n in labelled))))
    else:
        pooled_performance = performance.get(POOLED)
    noise = noise or {}
    reference_noise = reference.get("noise", {})

    def combined(values: dict[str, Any], names: list[str]) -> Any:  # a noise, or noises per cell
        together = np.sqrt(sum(np.asarray(values.get(n, 0.0), dtype=float) ** 2 for n in names))
        return float(together) if np.ndim(together) == 0 else together

    everyone = list(reference_noise)
    pooled_reference_noise = combined(reference_noise, members if members[0] in own else everyone)
    score_noise = reference.get("score_noise", {})
    pooled_score_noise = (combined(score_noise, members) if members[0] in own else score_noise.get(POOLED)) \
        if score_noise else None
    results = {POOLED: measure_scope(pooled_reference, pooled_counts, pooled_stats, pooled_performance, levels,
                                     combined(noise, members), pooled_reference_noise, pooled_score_noise,
                                     auc_confidence)}
    for name in sorted(parts):
        counts, stats = parts[name]
        mine = own.get(name)
        results[name] = measure_scope(mine if mine is not None else consortium, counts, stats,
                                      performance.get(name, performance.get(POOLED)), levels, noise.get(name, 0.0),
                                      reference_noise.get(name, 0.0) if mine is not None
                                      else combined(reference_noise, everyone),
                                      score_noise.get(name if mine is not None else POOLED) if score_noise else None,
                                      auc_confidence)
        if mine is None:
            results[name].reasons.append("no training reference of its own: judged against the consortium's, "
                                         "left out of the pool")
    for scope in history:
        if scope not in results:
            history[scope].append(-1)  # not measured: breaks a run of orange windows
    for scope, result in results.items():
        earlier = history.setdefault(scope, [])
        level = sustain(earlier, result.level, levels.sustained_windows)
        if level > result.level:
            result.reasons.insert(0, f"orange for {levels.sustained_windows} windows in a row")
            result.level = level
        earlier.append(result.level)
    return results


def window_metrics(results: dict[str, ScopeResult]) -> dict[str, float]:
    """MLflow metrics of one window: pooled without suffix, institutions as `.<name>`."""
    out: dict[str, float] = {}
    for scope, result in results.items():
        where = None if scope == POOLED else scope
        out[run_schema.at("rows", where)] = result.rows
        out[run_schema.at("psi_score", where)] = result.psi[SCORE]
        out[run_schema.at("psi_score_noise_bound", where)] = result.bound[SCORE]
        for column, value in result.psi.items():
            if column != SCORE:
                out[run_schema.at(f"csi.{column}", where)] = value
        for key, value in result.performance.items():
            out[run_schema.at(key, where)] = value
        for key, value in result.drops.items():
            out[run_schema.at(f"{key}_drop", where)] = value
        out[run_schema.at("level", where)] = result.level
    out["level_worst"] = max(r.level for r in results.values())
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}
