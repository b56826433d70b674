"""What one institution releases in a campaign, each release noised and charged first.

Each function takes the node's session (its typed config, policy and rows) and plain values,
computes the exact aggregate on its own rows, charges the release to the institution's
ledger (`fedrisk.ledger`: a release the plan does not cover is refused, and nothing leaves),
adds the planned Gaussian noise (`fedrisk.mechanisms`) and returns it; the ClientApp wraps the
result in Flower records (`fedrisk.protocol`). Exact counts that are not noised (rows, the
data-quality scorecard) leave only from the policy's minimum count up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrisk import data_quality, lineage
from fedrisk.budget import Shape, evaluation_release, importance_release, plan_monitoring, statistics_release
from fedrisk.columns import DAY
from fedrisk.config import CampaignConfig
from fedrisk.data import load_window
from fedrisk.drift import column_counts
from fedrisk.errors import FedriskInputError
from fedrisk.evaluation import SplitStatistics
from fedrisk.fairness import GroupHistograms, group_histograms
from fedrisk.fraud_metrics import FraudStats
from fedrisk.ledger import Release
from fedrisk.mechanisms import noised, partition_threshold, secure_rng, select_partitions
from fedrisk.metrics import EvalStats, score_histograms
from fedrisk.models import build_model, predict_proba
from fedrisk.preprocessing import Bounds, category_labels, local_bounds, local_statistics, schema
from fedrisk.session import NodeSession
from fedrisk.training import DPSettings, train_local


@dataclass(frozen=True)
class RoundResult:
    """What a training round gives back: new weights, their aggregation weight and the spend."""

    state: dict[str, torch.Tensor]
    examples: int
    weight: float  # training rows; 1 under institution-level DP, whose noise assumes uniform weights
    steps: int
    seconds: float
    epsilon: float | None = None  # the institution's lifetime epsilon after the round, at `delta`
    delta: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None


def suppressed(count: float, minimum: int) -> float | None:
    """An exact count as it may leave: not at all (None) when it is below the policy's minimum."""
    return None if 0 < count < minimum else count


def check_delta(config: CampaignConfig, name: str, rows: int, delta: float, file: str | None = None) -> None:
    if config.privacy.enabled and delta >= 1.0 / rows:
        raise FedriskInputError(f"the institution's delta {delta:g} is not below 1/rows = {1.0 / rows:.3g}: its "
                                "policy must state a smaller privacy.delta", institution=name, file=file)


def _charge(session: NodeSession, campaign: str, release: Release, server_round: int = 0) -> float:
    """Charge a release before anything leaves; returns the institution's lifetime epsilon after it."""
    return session.ledger().charge(campaign, release, server_round)


def privacy_summary(session: NodeSession, campaign: str) -> dict[str, Any]:
    """The institution's spend as its ledger states it: per mechanism, this campaign, for life."""
    ledger = session.ledger()
    return {**ledger.summary(campaign), "lifetime_cap": ledger.effective_cap(session.policy.privacy.lifetime_epsilon)}


def admit(session: NodeSession, campaign: str) -> dict[str, Any]:
    """First contact: what the institution says of its data, its plan, and its first release
    (the log-grid histograms of its numeric columns, for the clipping bounds)."""
    data, split, name = session.data, session.split, session.name
    k = session.policy.release.min_count
    check_delta(session.config, name, len(split.train), session.ledger().delta, data.source)
    used = [*data.columns.features, *data.columns.protected, data.columns.target]
    rows = lineage.sketch(data.frame, used)
    lineage.check_population(session.home, name, rows, data.source)
    plan = session.plan(campaign)
    lineage.record(session.home, data.fingerprint, rows)
    release = statistics_release(session.shape, "bounds", plan.statistics, plan.partition_delta)
    _charge(session, campaign, release)
    rng = secure_rng()
    bounds = {c: noised(v, plan.statistics, rng) for c, v in local_bounds(split.train, data.columns).items()}
    split_rows = {part: suppressed(len(frame), k) for part, frame in vars(split).items()}
    out = {
        # for the audit log and the data-quality gate: a hash, counts from the minimum up, no rows
        "data": {"fingerprint": data.fingerprint, "source": data.source, "rows": suppressed(len(data.frame), k),
                 "quality": data_quality.suppressed(data.quality, k)},
        "split_rows": split_rows,
        "schema": schema(data.columns),
        "bounds": bounds,
        "noise": {"statistics": plan.statistics, "validation": plan.validation, "test": plan.test},
        "privacy": {"planned_epsilon": plan.epsilon, **privacy_summary(session, campaign)},
    }
    if DAY in split.train.columns:  # fraud: the calendar of each window (the campaign's, not the data's)
        out["split_rows"]["outside_windows"] = suppressed(len(data.frame) - sum(len(f) for f in vars(split).values()), k)
        out["split_days"] = {part: [str(np.datetime64(int(f[DAY].min()), "D")), str(np.datetime64(int(f[DAY].max()), "D"))]
                             for part, f in vars(split).items()}
    return out


def statistics(session: NodeSession, campaign: str, bounds: dict[str, Bounds]) -> dict[str, Any]:
    """Clipped sums and counts of the training rows, noised; category values by partition selection."""
    plan, data = session.plan(campaign), session.data
    _charge(session, campaign, statistics_release(session.shape, "preprocessing", plan.statistics, plan.partition_delta))
    exact = local_statistics(session.split.train, data.columns, bounds)
    rng, z = secure_rng(), plan.statistics
    threshold = partition_threshold(z, plan.partition_delta, session.policy.release.min_count)
    return {
        "numeric": {c: {k: float(noised(v, z, rng)) for k, v in s.items()} for c, s in exact["numeric"].items()},
        "categories": {c: {"counts": select_partitions(s["counts"], z, threshold, rng),
                           "missing": float(noised(s["missing"], z, rng))}
                       for c, s in exact["categories"].items()},
        "schema": schema(data.columns),
    }


def _model(config: CampaignConfig, width: int, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build_model(config.model, width, config.seed)
    model.load_state_dict(state)
    return model


def _scores(session: NodeSession, preprocessor: str, state: dict[str, torch.Tensor], frame: pd.DataFrame) -> np.ndarray:
    shared = session.preprocessor(preprocessor)
    return predict_proba(_model(session.config, shared.width, state), torch.as_tensor(shared.transform(frame))).numpy()


def train_round(session: NodeSession, preprocessor: str, state: dict[str, torch.Tensor], server_round: int,
                campaign: str, proximal_mu: float) -> RoundResult:
    """One round of DP-SGD from the global weights, charged before it runs."""
    config = session.config
    plan = session.plan(campaign)
    x, y = session.matrices(preprocessor, "train")
    tr, pv = config.training, config.privacy
    release = Release("train", "dp_sgd", plan.dp_sgd, plan.sample_rate, plan.steps_per_round)
    epsilon = _charge(session, campaign, release, server_round)
    dp = DPSettings(plan.dp_sgd, pv.max_grad_norm) if pv.enabled else None
    result = train_local(
        _model(config, x.shape[1], state), x, y, epochs=tr.local_epochs, batch_size=tr.batch_size,
        learning_rate=tr.learning_rate, momentum=tr.momentum, dp=dp, proximal_mu=proximal_mu,
        seed=config.seed * 100_003 + server_round * 101 + len(x), positive_weight=tr.positive_weight,
        focal_gamma=tr.focal_gamma,
    )
    if dp is not None and result.spend != [(plan.dp_sgd, plan.sample_rate, plan.steps_per_round)]:
        raise RuntimeError(f"DP-SGD ran {result.spend}, not the charged {release}")  # never, by construction
    weight = 1.0 if pv.institution_level.enabled else float(result.examples)
    return RoundResult(result.state, result.examples, weight, result.steps, result.seconds, epsilon,
                       session.ledger().delta, plan.dp_sgd, plan.sample_rate)


def _groups(session: NodeSession, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: category_labels(frame[c]).reindex(frame.index, fill_value="missing").to_numpy()
            for c in session.data.columns.protected}


def _noised_groups(groups: GroupHistograms, noise: float, rng: np.random.Generator) -> GroupHistograms:
    return {a: {g: (noised(pos, noise, rng), noised(neg, noise, rng)) for g, (pos, neg) in by.items()}
            for a, by in groups.items()}


def evaluate_split(session: NodeSession, preprocessor: str, state: dict[str, torch.Tensor], part: str, campaign: str,
                   grid: np.ndarray, groups: dict[str, list[str]], server_round: int = 0) -> SplitStatistics:
    """Score histograms of a split on the server's grid, by protected group and (fraud) per
    issuer, noised and charged to the split's rows."""
    config, data, plan = session.config, session.data, session.plan(campaign)
    z = plan.cell_noise("evaluation", part)
    _charge(session, campaign, evaluation_release(session.shape, part, z), server_round)
    frame = getattr(session.split, part)
    _, y = session.matrices(preprocessor, part)
    scores = _scores(session, preprocessor, state, frame)
    rng = secure_rng()
    exact = EvalStats.from_scores(y, scores, grid)
    overall = EvalStats(exact.edges, *(noised(getattr(exact, f), z, rng)
                                       for f in ("hist_pos", "hist_neg", "score_sum_pos", "score_sum_neg")))
    by_group = _noised_groups(group_histograms(y, scores, _groups(session, frame), grid, groups), z, rng)
    fraud = None
    if data.columns.amount is not None:
        ev = config.evaluation
        days = int(frame[DAY].max() - frame[DAY].min() + 1) if len(frame) else 0
        ts = config.data.time_split
        window = {"validation": ts.validation_days, "test": ts.test_days}.get(part, days) if ts else days
        exact_fraud = FraudStats.from_scores(y, scores, frame[data.columns.amount].to_numpy(), frame[DAY].to_numpy(),
                                             grid, ev.alerts_per_day, window, ev.amount_cap)
        # amounts in units of the cap (one row: at most 1), and the top-k hits and alerts
        fraud = FraudStats(noised(exact_fraud.amount_pos / ev.amount_cap, z, rng) * ev.amount_cap,
                           float(noised(exact_fraud.topk_hits, z, rng)), float(noised(exact_fraud.topk_alerts, z, rng)),
                           exact_fraud.days)
    return SplitStatistics(overall, by_group, fraud, noise=z)


def importance_histograms(session: NodeSession, preprocessor: str, state: dict[str, torch.Tensor], campaign: str,
                          grid: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Score histograms of the validation rows with each input column ablated to the federated
    mean or mode (blanked: the shared preprocessing imputes it), noised and charged."""
    plan = session.plan(campaign)
    z = plan.cell_noise("importance", "validation")
    _charge(session, campaign, importance_release(session.shape, plan.validation))
    shared = session.preprocessor(preprocessor)
    frame = session.split.validation
    y = frame[session.data.columns.target].to_numpy()
    model = _model(session.config, shared.width, state)
    rng = secure_rng()
    out = {}
    for column in shared.input_columns:
        ablated = frame.copy()
        ablated[column] = np.nan
        scores = predict_proba(model, torch.as_tensor(shared.transform(ablated))).numpy()
        pos, neg = score_histograms(y, scores, grid)
        out[column] = (noised(pos, z, rng), noised(neg, z, rng))
    return out


def reference_counts(session: NodeSession, preprocessor: str, state: dict[str, torch.Tensor], campaign: str,
                     edges: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """Counts of the final model's score (fine grid) and of every input (reference bins) on the
    training rows, noised and charged: the drift reference, and the server's evaluation grid."""
    plan = session.plan(campaign)
    _charge(session, campaign, statistics_release(session.shape, "drift_reference", plan.statistics, plan.partition_delta))
    frame = session.split.train
    scores = _scores(session, preprocessor, state, frame)
    rng = secure_rng()
    return {c: noised(v, plan.statistics, rng)
            for c, v in column_counts(frame, scores, session.preprocessor(preprocessor), edges).items()}


def window_statistics(
    session: NodeSession, preprocessor: str, state: dict[str, torch.Tensor], run: str, edges: dict[str, list[float]],
    grid: np.ndarray, window_days: int, window: int, windows: int,
) -> tuple[dict[str, np.ndarray], SplitStatistics | None]:
    """Counts of a monitoring window on the reference bins, and its score histograms if labelled,
    noised and charged to the window's rows (each window: other rows, its own part)."""
    config, rules = session.config, session.policy.privacy
    shared = session.preprocessor(preprocessor)
    ledger = session.ledger()
    if run not in ledger.plans:  # the run's first window: calibrate and reserve every window
        shape = Shape(0, len(shared.numeric), len(shared.categorical), 0, False)
        noise, releases = plan_monitoring(config.privacy.monitoring_epsilon, shape, windows, ledger, run,
                                          rules.max_campaign_epsilon, rules.lifetime_epsilon)
        ledger.plan(run, list(releases), rules.lifetime_epsilon, {"noise": {"monitoring": noise}})
    saved = session.ledger().plans[run]
    noise = float(saved["noise"]["monitoring"])
    release = next((r for r in map(Release.from_dict, saved["releases"]) if r.part == f"window:{window}"), None)
    if release is None:
        raise FedriskInputError(f"monitoring run {run} planned {len(saved['releases'])} windows, not window {window}",
                                institution=session.name)
    _charge(session, run, release, window)
    frame, labels, _ = load_window(config.data, session.name, config.seed, shared.numeric, shared.categorical,
                                   window_days)
    scores = predict_proba(_model(config, shared.width, state), torch.as_tensor(shared.transform(frame))).numpy()
    rng = secure_rng()
    counts = {c: noised(v, noise, rng) for c, v in column_counts(frame, scores, shared, edges).items()}
    known = ~np.isnan(labels) if labels is not None else np.zeros(len(frame), dtype=bool)
    if not known.any():
        return counts, None
    exact = EvalStats.from_scores(labels[known], scores[known], grid)
    stats = EvalStats(exact.edges, *(noised(getattr(exact, f), noise, rng)
                                     for f in ("hist_pos", "hist_neg", "score_sum_pos", "score_sum_neg")))
    return counts, SplitStatistics(stats, {}, None, noise=noise)

