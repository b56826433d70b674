"""Drift metrics from summed counts, against pooled computations and statistical theory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import rel_entr
from sklearn.metrics import roc_auc_score

from fedrisk.columns import Columns
from fedrisk.drift import (
    SCORE,
    UNSEEN,
    bin_counts,
    build_reference,
    coarsen,
    column_counts,
    noise_bound,
    psi,
    reference_edges,
)
from fedrisk.metrics import EvalStats, uniform_edges
from fedrisk.monitor_config import Bands, Levels, Performance
from fedrisk.preprocessing import Preprocessor
from fedrisk.warning_levels import (
    GREEN,
    ORANGE,
    RED,
    YELLOW,
    assess_window,
    auc_standard_error,
    band_level,
    drop,
    measure_scope,
    performance_level,
    ranking_metrics,
    retrain_due,
    sustain,
)


def _institution(rng: np.random.Generator, n: int, shift: float) -> tuple[pd.DataFrame, np.ndarray]:
    income = rng.lognormal(10.5 + shift, 0.5, n)
    income[rng.random(n) < 0.05] = np.nan
    frame = pd.DataFrame({
        "income": income,
        "delinquencies": rng.poisson(0.5 + shift, n).astype(float),
        "region": rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2]),
    })
    return frame, rng.beta(2, 5 + 3 * shift, n)


def _preprocessor(frames: list[pd.DataFrame]) -> Preprocessor:
    pooled = pd.concat(frames)
    numeric = ["income", "delinquencies"]
    return Preprocessor(numeric, [float(pooled[c].mean()) for c in numeric], [float(pooled[c].std()) for c in numeric],
                        [0.0, 0.0], [1e9, 1e9], ["region"], [["east", "north"]], ["north"])  # 'south' unseen


def test_psi_equals_the_symmetric_kullback_leibler_divergence():
    expected = np.array([25, 25, 25, 25])
    actual = np.array([10, 20, 30, 40])
    a, e = actual / actual.sum(), expected / expected.sum()
    assert psi(expected, actual) == pytest.approx(np.sum(rel_entr(a, e) + rel_entr(e, a)))
    assert psi(expected, expected * 3) == 0.0
    # by hand: shares 0.2/0.8 against 0.5/0.5 -> -0.3 ln(0.4) + 0.3 ln(1.6) = 0.4159
    assert psi([50, 50], [20, 80]) == pytest.approx(0.3 * np.log(2.5) + 0.3 * np.log(1.6), abs=1e-12)


def test_federated_reference_and_psi_equal_the_pooled_computation():
    """Without noise: the reference's score deciles are the pooled ones (to a fine-grid step), its
    counts pandas' on the pooled rows, and a window's federated PSI the pooled PSI."""
    from fedrisk.preprocessing import bounds_from_counts, local_bounds

    rng = np.random.default_rng(3)
    train = [_institution(rng, n, s) for n, s in [(4000, 0.0), (1500, 0.3), (700, -0.2)]]
    new = [_institution(rng, n, s + 0.4) for n, s in [(900, 0.0), (400, 0.3), (300, -0.2)]]
    pre = _preprocessor([f for f, _ in train])
    columns = Columns(pre.numeric, pre.categorical, [], "y")
    bounds = bounds_from_counts({c: sum(local_bounds(f, columns)[c] for f, _ in train) for c in pre.numeric}, 0.0)
    grid = reference_edges({c: b.deciles for c, b in bounds.items()}, 100)
    fine = [column_counts(f, s, pre, grid) for f, s in train]
    summed = {c: sum(part[c] for part in fine) for c in fine[0]}
    reference = build_reference(summed[SCORE], grid[SCORE], {c: summed[c] for c in pre.numeric}, grid,
                                {"region": summed["region"]}, {"region": pre.vocabularies[0]})
    edges = {c: reference["columns"][c]["edges"] for c in [SCORE, *pre.numeric]}
    pooled_train = pd.concat([f for f, _ in train])
    pooled_scores = np.concatenate([s for _, s in train])
    for column, values in [(SCORE, pooled_scores), *((c, pooled_train[c].to_numpy()) for c in pre.numeric)]:
        present = values[~np.isnan(values)]
        if column == SCORE:  # score deciles: the pooled deciles, to one fine-grid step
            step = np.diff(np.r_[0.0, grid[SCORE], 1.0]).max()
            for q in np.quantile(present, np.arange(1, 10) / 10):
                assert min(abs(np.asarray(edges[SCORE]) - q)) <= step + 1e-12
        # reference counts: pandas on the pooled rows, same bins
        cut = pd.cut(pd.Series(values), [-np.inf, *edges[column], np.inf], right=False)
        expected = [*cut.value_counts(sort=False).tolist(), int(np.isnan(values).sum())]
        assert reference["columns"][column]["counts"] == pytest.approx(expected)
    # the region column: vocabulary, unseen values, missing
    assert reference["columns"]["region"]["values"] == ["east", "north", UNSEEN]
    assert reference["columns"]["region"]["counts"] == [
        int((pooled_train.region == "east").sum()), int((pooled_train.region == "north").sum()),
        int((pooled_train.region == "south").sum()), 0]

    # a window: institutions count on the reference bins, the server adds up
    parts = [column_counts(f, s, pre, edges) for f, s in new]
    federated = {c: psi(reference["columns"][c]["counts"], sum(p[c] for p in parts)) for c in parts[0]}
    pooled_new = pd.concat([f for f, _ in new])
    new_scores = np.concatenate([s for _, s in new])
    for column, values in [(SCORE, new_scores), *((c, pooled_new[c].to_numpy()) for c in pre.numeric)]:
        hist, _ = np.histogram(values[~np.isnan(values)], [-np.inf, *edges[column], np.inf])
        pooled = psi(reference["columns"][column]["counts"], [*hist, np.isnan(values).sum()])
        assert federated[column] == pytest.approx(pooled, rel=1e-12)
        assert federated[column] > 0.05  # the window did move
    # coarsening the fine score counts equals counting on the coarse edges directly
    assert coarsen(fine[1][SCORE], grid[SCORE], edges[SCORE]).tolist() == \
        column_counts(train[1][0], train[1][1], pre, edges)[SCORE].tolist()


def test_dp_noise_on_the_counts_widens_the_bound_as_much_as_it_moves_psi():
    """Stable windows whose counts carry Gaussian noise (as released): within the bound ~99 % of the time."""
    rng = np.random.default_rng(12)
    probabilities = np.array([0.1] * 10)
    reference = rng.multinomial(20_000, probabilities) + rng.normal(0, 40, 10)
    exceed, noiseless = [], []
    for _ in range(400):
        window = rng.multinomial(2_000, probabilities) + rng.normal(0, 40, 10)
        exceed.append(psi(reference, window, 40.0, 40.0) > noise_bound(reference, window, 0.99, 40.0, 40.0))
        noiseless.append(psi(reference, window) > noise_bound(reference, window, 0.99))
    assert np.mean(exceed) <= 0.03
    assert np.mean(noiseless) > 0.2  # the sampling bound alone would raise false alarms


def test_a_small_cell_noised_to_nothing_does_not_make_a_stable_institution_drift():
    """Seen in CI: a small institution's reference cell of ~116 rows, released with noise sd 56,
    came back near zero, and at the share floor its CSI on stable windows read 0.33-0.57 (red).
    A noised count counts as at least its noise's sd, in the PSI and in its bound alike."""
    true = np.array([358, 556, 548, 447, 292, 116], dtype=float)
    noised_down = true - [0, 0, 0, 0, 0, 130]  # -14: a 2.3 sd draw
    window = true / true.sum() * 1012
    assert psi(noised_down, window) > 0.3  # the share floor's reading
    assert psi(noised_down, window, 56.25, 30.0) < 0.05
    rng = np.random.default_rng(3)
    values, exceed = [], []
    for _ in range(300):
        reference = true + rng.normal(0, 56.25, 6)
        stable = rng.multinomial(1012, true / true.sum()) + rng.normal(0, 30.0, 6)
        values.append(psi(reference, stable, 56.25, 30.0))
        exceed.append(values[-1] > noise_bound(reference, stable, 0.99, 56.25, 30.0, draws=5000))
    assert np.quantile(values, 0.99) < 0.25  # below red (0.51 at the share floor alone)
    assert np.mean(exceed) <= 0.03  # and the bound still covers ~99 %


def test_psi_of_stable_windows_stays_within_the_sampling_noise_bound():
    """Yurdakul & Naranjo (2020): n_eff PSI ~ chi2(B-1); the 99 % bound holds ~99 % of the time."""
    rng = np.random.default_rng(11)
    probabilities = np.array([0.1] * 10)
    reference = rng.multinomial(20_000, probabilities)
    values, bounds = [], []
    for _ in range(400):
        window = rng.multinomial(2_000, probabilities)
        values.append(psi(reference, window))
        bounds.append(noise_bound(reference, window, 0.99))
    values = np.asarray(values)
    assert np.mean(values > np.asarray(bounds)) <= 0.03
    assert values.mean() == pytest.approx(9 * (1 / 2000 + 1 / 20_000), rel=0.15)  # the chi-square mean
    assert max(bounds) < 0.10  # such windows stay green
    shifted = rng.multinomial(2_000, np.r_[[0.05] * 5, [0.15] * 5])
    assert psi(reference, shifted) > noise_bound(reference, shifted)


def test_hanley_mcneil_standard_error_matches_monte_carlo():
    """Exponential scores, where the Hanley-McNeil variance is exact."""
    rng = np.random.default_rng(5)
    aucs = []
    for _ in range(600):
        neg = rng.exponential(1.0, 300)
        pos = rng.exponential(3.0, 100)  # AUC = 3 / (1 + 3) = 0.75
        aucs.append(roc_auc_score(np.r_[np.ones(100), np.zeros(300)], np.r_[pos, neg]))
    assert auc_standard_error(0.75, 100, 300) == pytest.approx(np.std(aucs), rel=0.1)


def test_bands_and_noise():
    bands = Bands()
    assert [band_level(v, 0.01, bands) for v in (0.05, 0.10, 0.2, 0.25, 0.49, 0.5)] == \
        [GREEN, YELLOW, YELLOW, ORANGE, ORANGE, RED]
    assert band_level(0.3, 0.35, bands) == GREEN  # within sampling noise
    assert band_level(float("nan"), 0.0, bands) == GREEN


def test_performance_rule_relative_and_absolute():
    relative = Performance()
    assert drop(0.80, 0.76, "relative") == pytest.approx(0.05)
    assert [performance_level(d, relative) for d in (0.02, 0.025, 0.05, 0.0501, 0.1)] == \
        [GREEN, YELLOW, YELLOW, ORANGE, RED]
    absolute = Performance(mode="absolute", max_drop=0.03, severe_drop=0.06)
    assert drop(0.80, 0.76, "absolute") == pytest.approx(0.04)
    assert performance_level(drop(0.80, 0.76, "absolute"), absolute) == ORANGE
    assert performance_level(drop(0.80, 0.76, "relative"), Performance(max_drop=0.06)) == YELLOW


def test_sustained_orange_turns_red():
    assert sustain([GREEN], ORANGE, 2) == ORANGE
    assert sustain([GREEN, ORANGE], ORANGE, 2) == RED
    assert sustain([ORANGE, RED], ORANGE, 2) == RED
    assert sustain([ORANGE, ORANGE], ORANGE, 3) == RED
    assert sustain([YELLOW, ORANGE], ORANGE, 3) == ORANGE
    assert sustain([ORANGE], YELLOW, 2) == YELLOW


def _stats(rng: np.random.Generator, n: int, separation: float) -> EvalStats:
    y = rng.random(n) < 0.2
    scores = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + separation * y - 1.5)))
    return EvalStats.from_scores(y, scores, uniform_edges(1000))


def test_retraining_trigger_fires_on_a_degraded_window_only():
    rng = np.random.default_rng(8)
    reference_stats = _stats(rng, 20_000, 1.6)
    perf = ranking_metrics(reference_stats)
    counts = {SCORE: np.array([100, 100, 0])}
    reference_counts = {SCORE: [1000, 1000, 0]}
    levels = Levels()
    stable = measure_scope(reference_counts, counts, _stats(rng, 20_000, 1.6), perf, levels)
    degraded = measure_scope(reference_counts, counts, _stats(rng, 20_000, 1.0), perf, levels)
    assert stable.level == GREEN and not retrain_due(stable, levels.performance)
    assert degraded.drops["auc"] > 0.05 and retrain_due(degraded, levels.performance)
    assert degraded.level >= ORANGE and any("auc drop" in r for r in degraded.reasons)
    # the same drop measured on 300 rows is within sampling noise: no level, no trigger
    small = measure_scope(reference_counts, counts, _stats(np.random.default_rng(1), 300, 1.35), perf, levels)
    assert small.drops["auc"] > 0.05
    assert not retrain_due(small, levels.performance) and small.level == GREEN
    # absolute rule: a 0.02 drop is enough when max_drop is 0.01
    strict = Levels(performance=Performance(mode="absolute", max_drop=0.01, severe_drop=0.2))
    slight = measure_scope(reference_counts, counts, _stats(rng, 50_000, 1.45), perf, strict)
    assert slight.drops["auc"] > 0.01 and retrain_due(slight, strict.performance)


def test_assess_window_pools_counts_and_compares_each_institution_with_its_own_reference():
    reference = {
        "columns": {SCORE: {"kind": "numeric", "edges": [0.5], "counts": [600, 400, 0]}},
        "institutions": {"a": {SCORE: [500, 100, 0]}, "b": {SCORE: [100, 300, 0]}},
    }
    parts = {"a": ({SCORE: np.array([500, 100, 0])}, None), "b": ({SCORE: np.array([100, 300, 0])}, None)}
    results = assess_window(reference, parts, Levels(), {})
    assert results["pooled"].psi[SCORE] == 0.0
    assert results["a"].psi[SCORE] == 0.0 and results["b"].psi[SCORE] == 0.0  # not against the pool
    assert {r.level for r in results.values()} == {GREEN}


@pytest.mark.slow  # seconds of end-to-end work: the full suite runs it
def test_a_stable_window_stays_green_with_the_windows_confidence_however_many_tests_it_makes():
    """Two institutions, five columns of ten bins, reference and window counts noised as
    released (the noise as large as a fifth of a cell): 18 tests a window. Each held to 99 %
    alone, a stable window's two institution scopes alarm in about 1 - 0.99^10 = 10 % of
    windows; held to the window's 99 % together (Bonferroni, a bootstrap bound), in at most 1 %."""
    rng = np.random.default_rng(21)
    columns = [SCORE, *(f"x{k}" for k in range(4))]
    shares = {c: rng.dirichlet(np.full(10, 5.0)) for c in columns}
    names, noise = ["a", "b"], 25.0
    bands = Bands(yellow=0.001, orange=0.25, severe=0.5)  # so that the bound alone decides
    levels = Levels(psi=bands, csi=bands)

    def counts(rows: int) -> dict[str, np.ndarray]:
        return {c: np.append(rng.multinomial(rows, shares[c]) + rng.normal(0, noise, 10), 0.0) for c in columns}

    alarms, alone, windows = 0, 0, 100
    for _ in range(windows):
        own = {n: counts(2000) for n in names}
        reference = {"columns": {c: {"counts": sum(own[n][c] for n in names)} for c in columns},
                     "institutions": own, "noise": dict.fromkeys(names, noise)}
        parts = {n: (counts(1000), None) for n in names}
        results = assess_window(reference, parts, levels, {}, dict.fromkeys(names, noise))
        alarms += any(r.level > GREEN for r in results.values())
        alone += any(measure_scope(own[n], parts[n][0], None, None, levels, noise, noise).level > GREEN for n in names)
    assert alarms <= 4  # at most 1 % expected: P(5 or more of 100) < 0.004
    assert alone >= 4  # about 10 % expected: P(3 or fewer of 100) < 0.01


def test_bin_counts_edges_and_missing():
    assert bin_counts(np.array([0.0, 1.0, 1.5, 2.0, np.nan, 5.0]), [1.0, 2.0]).tolist() == [1, 2, 2, 1]


def test_pooled_scope_covers_the_same_institutions_on_both_sides_and_gaps_break_runs():
    reference = {
        "columns": {SCORE: {"kind": "numeric", "edges": [0.5], "counts": [700, 700, 0]}},
        "institutions": {"a": {SCORE: [600, 100, 0]}, "b": {SCORE: [100, 600, 0]}},
    }
    only_a = {"a": ({SCORE: np.array([600, 100, 0])}, None)}
    results = assess_window(reference, only_a, Levels(), {})
    assert results["pooled"].psi[SCORE] == 0.0  # a alone against a's reference, not the consortium's
    shifted = {"a": ({SCORE: np.array([200, 500, 0])}, None), "b": ({SCORE: np.array([100, 600, 0])}, None)}
    history: dict[str, list[int]] = {}
    levels = Levels(psi=Bands(yellow=0.1, orange=0.25, severe=5.0), csi=Bands(yellow=0.1, orange=0.25, severe=5.0))
    assert assess_window(reference, shifted, levels, history)["a"].level == ORANGE
    assess_window(reference, {"b": shifted["b"]}, levels, history)  # a did not report
    assert assess_window(reference, shifted, levels, history)["a"].level == ORANGE  # not two in a row
    assert assess_window(reference, shifted, levels, history)["a"].level == RED


def test_pooled_performance_reference_follows_the_windows_labelled_mix():
    """No drift, but one institution labels 2 % of its window: the pool must stay green."""
    rng = np.random.default_rng(4)

    def stats(n: int, separation: float) -> EvalStats:
        return _stats(rng, n, separation)

    strong, weak = stats(20_000, 3.0), stats(20_000, 1.2)
    reference = {
        "columns": {SCORE: {"kind": "numeric", "edges": [0.5], "counts": [200, 200, 0]}},
        "grid": uniform_edges(1000).tolist(),
        "institutions": {"a": {SCORE: [100, 100, 0]}, "b": {SCORE: [100, 100, 0]}},
        "validation": {n: {"hist_pos": s.hist_pos.tolist(), "hist_neg": s.hist_neg.tolist()}
                       for n, s in (("a", strong), ("b", weak))},
        "performance": {"pooled": ranking_metrics(strong + weak)},
    }
    parts = {"a": ({SCORE: np.array([100, 100, 0])}, stats(400, 3.0)),
             "b": ({SCORE: np.array([100, 100, 0])}, stats(20_000, 1.2))}
    results = assess_window(reference, parts, Levels(), {})
    assert results["pooled"].drops["auc"] < 0.02  # against the same mix, not the consortium's 50/50
    assert not retrain_due(results["pooled"], Levels().performance) and results["pooled"].level == GREEN
    naive = measure_scope({SCORE: [200, 200, 0]}, {SCORE: np.array([200, 200, 0])}, parts["a"][1] + parts["b"][1],
                          reference["performance"]["pooled"], Levels())
    assert naive.drops["auc"] > 0.05  # what comparing with the consortium's mix would have claimed
