"""What one institution releases in a campaign, each release noised and charged first.

Each function takes the node's session (its typed config, policy and rows) and plain values,
computes the exact aggregate on its own rows, charges the release to the institution's
ledger (`fedrisk.ledger`: a release the plan does not cover is refused, and nothing leaves),
adds the planned Gaussian noise (`fedrisk.mechanisms`) and returns it; the ClientApp wraps the
result in Flower records (`fedrisk.protocol`). No exact count leaves: the training rows and the
data-quality scorecard are noised with the admission's statistics.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrisk import data_quality, drill
from fedrisk.budget import (
    Shape,
    evaluation_release,
    importance_release,
    plan_monitoring,
    quality_releases,
    sgd_release,
    shared_counts_releases,
    statistics_release,
)
from fedrisk.columns import DAY, ROW_ID, TERMINAL
from fedrisk.config import CampaignConfig
from fedrisk.consortium_features import TABLE_SCALE, feature_names, local_table
from fedrisk.data import load_window
from fedrisk.drift import column_counts
from fedrisk.errors import FedriskInputError, PolicyRefused
from fedrisk.evaluation import SplitStatistics
from fedrisk.fairness import GroupHistograms, group_edges, group_histograms
from fedrisk.fraud_metrics import FraudStats
from fedrisk.ledger import Release
from fedrisk.mechanisms import noised, partition_threshold, secure_rng, select_partitions
from fedrisk.metrics import EvalStats, score_histograms
from fedrisk.models import ablated_probabilities, build_model, predict_proba
from fedrisk.preprocessing import Bounds, category_labels, check_bounds, local_bounds, local_statistics, schema
from fedrisk.replay import current_key, replayed
from fedrisk.session import NodeSession
from fedrisk.splits import table_calendar, time_windows, window_calendar
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


def _charge(session: NodeSession, campaign: str, release: Release, server_round: int = 0) -> float:
    """Charge a release before anything leaves; returns the institution's lifetime epsilon after it."""
    return session.ledger().charge(campaign, release, server_round, current_key())


def privacy_summary(session: NodeSession, campaign: str) -> dict[str, Any]:
    """The institution's spend as its ledger states it: per mechanism, this campaign, for life."""
    ledger = session.ledger()
    return {**ledger.summary(campaign), "lifetime_cap": ledger.effective_cap(session.policy.privacy.lifetime_epsilon)}


@replayed("admission")
def admit(session: NodeSession, campaign: str) -> dict[str, Any]:
    """First contact: the campaign's plan reserved, then its first release: the log-grid
    histograms of the numeric columns (for the clipping bounds), the data-quality counts and the
    training rows, all noised; and what identifies the data (a hash, the file's name)."""
    data, split = session.data, session.split
    plan = session.reserve(campaign)
    for release in [statistics_release(session.shape, "bounds", plan.statistics, plan.partition_delta),
                    *quality_releases(session.shape, plan.statistics)]:
        _charge(session, campaign, release)
    rng = secure_rng()
    out = {
        "data": {"fingerprint": session.released_fingerprint, "source": data.source,
                 "quality": data_quality.release(data.quality, plan.statistics, rng)},
        "split_rows": {"train": session.released_rows(campaign)},
        "schema": schema(data.columns),
        "bounds": {c: noised(v, plan.statistics, rng) for c, v in local_bounds(split.train, data.columns).items()},
        "noise": {"statistics": plan.statistics, "validation": plan.validation, "test": plan.test},
        "privacy": {"planned_epsilon": plan.epsilon, **privacy_summary(session, campaign)},
    }
    ts = session.config.data.time_split
    if ts is not None and ts.end is not None:  # the campaign's calendar, never the data's own dates
        out["split_days"] = {part: [str(np.datetime64(first, "D")), str(np.datetime64(last, "D"))]
                             for part, (first, last) in time_windows(session.config.data, 0).items()}
    return out


@replayed("terminals")
def terminal_counts(session: NodeSession, campaign: str, secure: bool = False) -> np.ndarray:
    """The issuer's share of the consortium's terminal table (`fedrisk.consortium_features`):
    transactions and frauds per cell of the campaign's calendar and terminal bucket, noised and
    charged; the same shape at every issuer. `secure`: SecAgg+ masks it (the server sees the sum)."""
    config, plan = session.config, session.plan(campaign)
    if not session.uses_table:
        raise PolicyRefused("the campaign does not use consortium features: no terminal table is released",
                            institution=session.name)
    _check_in_clear(session, secure)
    tx = config.data.transactions
    assert tx is not None
    frame = session.data.frame
    table = local_table(frame[DAY].to_numpy(), frame[TERMINAL].to_numpy(), frame[session.data.columns.target].to_numpy(),
                        table_calendar(config.data), tx.sketch_width)
    if secure:  # SecAgg+ carries cells within +/- scale x clipping range: refuse before anything is charged
        carried = TABLE_SCALE * config.secure_aggregation.clipping_range
        if table.max(initial=0.0) + 6 * plan.shared_counts > carried:
            raise FedriskInputError(f"a terminal table cell would exceed the {carried:g} counts secure aggregation "
                                    "carries: raise secure_aggregation.clipping_range or data.transactions.sketch_width",
                                    institution=session.name)
    for release in shared_counts_releases(plan.shared_counts):
        _charge(session, campaign, release)
    return noised(table, plan.shared_counts)


def _check_in_clear(session: NodeSession, secure: bool) -> None:
    """A deployed node's table reaches the server summed under SecAgg+, or in clear only where its
    policy says so (a simulation's nodes are one operator's)."""
    if session.deployed and not secure and not session.policy.release.shared_counts_in_clear:
        raise PolicyRefused("a deployed node sends its terminal table to the server only under secure aggregation, "
                            "or where its policy sets release.shared_counts_in_clear: true", institution=session.name)


@replayed("statistics")
def statistics(session: NodeSession, campaign: str, bounds: dict[str, Bounds]) -> dict[str, Any]:
    """Clipped sums and counts of the training rows, noised; category values by partition selection."""
    session.require_table(campaign)
    plan, data = session.plan(campaign), session.data
    check_bounds(bounds, data.columns.numeric, session.name)
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


@replayed("train")
def train_round(session: NodeSession, preprocessor: str, state: dict[str, torch.Tensor], server_round: int,
                campaign: str, proximal_mu: float) -> RoundResult:
    """One round of DP-SGD from the global weights, charged before it runs."""
    config = session.config
    plan = session.plan(campaign)
    x, y = session.matrices(preprocessor, "train")
    attack = drill.of(config, session.name)  # a simulated attacker trains on its lies
    y = drill.labels(attack, y, session.split.train, session.name)
    tr, pv = config.training, config.privacy
    release = sgd_release(session.shape, plan.dp_sgd, plan.sample_rate, plan.steps_per_round)
    epsilon = _charge(session, campaign, release, server_round)
    dp = DPSettings(plan.dp_sgd, pv.max_grad_norm, plan.sample_rate) if plan.dp_sgd > 0 else None  # the plan's
    result = train_local(
        _model(config, x.shape[1], state), x, y, epochs=tr.local_epochs, batch_size=tr.batch_size,
        learning_rate=tr.learning_rate, momentum=tr.momentum, dp=dp, proximal_mu=proximal_mu,
        seed=config.seed * 100_003 + server_round * 101 + len(x), positive_weight=tr.positive_weight,
        focal_gamma=tr.focal_gamma,
    )
    if dp is not None and result.spend != [(plan.dp_sgd, plan.sample_rate, plan.steps_per_round)]:
        raise RuntimeError(f"DP-SGD ran {result.spend}, not the charged {release}")  # never, by construction
    rows = session.released_rows(campaign)  # the exact count never leaves: the noised one released at admission
    weight = drill.weight(attack, 1.0 if pv.institution_level.enabled else rows)
    return RoundResult(drill.update(attack, state, result.state), int(drill.weight(attack, rows)), weight,
                       result.steps, result.seconds, epsilon,
                       session.ledger().delta, plan.dp_sgd, plan.sample_rate)


def _groups(session: NodeSession, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: category_labels(frame[c]).reindex(frame.index, fill_value="missing").to_numpy()
            for c in session.data.columns.protected}


def _noised_groups(groups: GroupHistograms, noise: float, rng: np.random.Generator) -> GroupHistograms:
    return {a: {g: (noised(pos, noise, rng), noised(neg, noise, rng)) for g, (pos, neg) in by.items()}
            for a, by in groups.items()}


@replayed("evaluation")
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
    coarse = group_edges(grid, config.evaluation.threshold)
    by_group = _noised_groups(group_histograms(y, scores, _groups(session, frame), coarse, groups), z, rng)
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


@replayed("importance")
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
    # The matrix once; a blanked column's inputs are the imputed row's (the transform is column
    # by column), and the model moves only by that column's block: linear in the columns, where
    # transforming and scoring a copy of the rows per column was quadratic.
    x = torch.as_tensor(shared.transform(frame))
    imputed = torch.as_tensor(shared.imputed_row())
    slices = shared.output_slices()
    columns = shared.input_columns
    blocks = ((slices[c], imputed[slices[c]]) for c in columns)
    rng = secure_rng()
    out = {}
    for column, scores in zip(columns, ablated_probabilities(model, x, blocks), strict=True):
        pos, neg = score_histograms(y, scores.numpy(), grid)
        out[column] = (noised(pos, z, rng), noised(neg, z, rng))
    return out


@replayed("reference")
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


def _monitoring_plan(session: NodeSession, preprocessor: str, run: str, edges: dict[str, list[float]],
                     grid: np.ndarray, windows: int) -> dict[str, Any]:
    """The monitoring run's plan: calibrated and reserved at its first message, then read back. A
    message of another model or other bins than the run was planned for is refused."""
    config, rules = session.config, session.policy.privacy
    shared = session.preprocessor(preprocessor, monitoring=True)
    binding = hashlib.sha256(json.dumps([preprocessor, edges, np.asarray(grid).tolist()]).encode()).hexdigest()
    ledger = session.ledger()
    if run not in ledger.plans:  # the run's first message: calibrate and reserve every window
        consortium = [c for c in shared.numeric if c in _consortium_columns(config)]
        shape = Shape(0, len(shared.numeric), len(shared.categorical), 0, config.data.transactions is not None,
                      shared=len(consortium))
        noise, releases, table = plan_monitoring(config.privacy.monitoring_epsilon, shape, windows, ledger, run,
                                                 rules.max_campaign_epsilon, rules.lifetime_epsilon,
                                                 config.privacy.shared_counts_share)
        ledger.plan(run, list(releases), rules.lifetime_epsilon,
                    {"noise": {"monitoring": noise, "shared_counts": table}, "binding": binding})
    saved = session.ledger().plans[run]
    if saved.get("binding") != binding:
        raise PolicyRefused(f"monitoring run {run} was planned for another model or other bins", institution=session.name)
    return saved


def _consortium_columns(config: CampaignConfig) -> list[str]:
    tx = config.data.transactions
    return feature_names(tx.windows_days) if tx is not None else []


def _window_release(saved: dict[str, Any], run: str, window: int, mechanism: str, name: str) -> Release:
    for raw in saved["releases"]:
        release = Release.from_dict(raw)
        if release.part == f"window:{window}" and release.mechanism == mechanism:
            return release
    raise FedriskInputError(f"monitoring run {run} planned no {mechanism} release for window {window}", institution=name)


def window_terminal_counts(session: NodeSession, preprocessor: str, run: str, edges: dict[str, list[float]],
                           grid: np.ndarray, window_days: int, window: int, windows: int) -> tuple[np.ndarray, float]:
    """A monitoring window's share of the consortium's terminal table (its calendar: the window and
    its look-back), noised and charged to the window's part; and its noise per cell."""
    config = session.config
    tx = config.data.transactions
    if tx is None or session.sketch_key_file is None:
        raise PolicyRefused("the model has no consortium features: no terminal table is released",
                            institution=session.name)
    _check_in_clear(session, secure=False)  # monitoring tables are summed by the server
    cal = window_calendar(config.data, window_days)  # before anything is reserved: files are refused
    saved = _monitoring_plan(session, preprocessor, run, edges, grid, windows)
    release = _window_release(saved, run, window, "shared_counts", session.name)
    frame, _, _ = load_window(config.data, session.name, config.seed, [], [], window_days, sketch_key=session.sketch_key(),
                              look_back=True)
    check_window_rows(session, run, window, frame)  # the table's rows, look-back included, are the window's part
    _charge(session, run, release, window)
    noise = float(saved["noise"]["shared_counts"])
    table = local_table(frame[DAY].to_numpy(), frame[TERMINAL].to_numpy(), frame[config.data.target].fillna(0).to_numpy(),
                        cal, tx.sketch_width)
    return noised(table, noise), noise


def window_statistics(
    session: NodeSession, preprocessor: str, state: dict[str, torch.Tensor], run: str, edges: dict[str, list[float]],
    grid: np.ndarray, window_days: int, window: int, windows: int, table: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], SplitStatistics | None]:
    """Counts of a monitoring window on the reference bins, and its score histograms if labelled,
    noised and charged to the window's rows. Each window is its own part of the run only if its
    rows are other rows than the earlier windows' (checked here, on their hashes): a window that
    shares rows with an earlier one is refused, as is a window of another model or other bins
    than the run was planned for. A model with consortium features needs the window's summed
    terminal `table`."""
    config = session.config
    shared = session.preprocessor(preprocessor, monitoring=True)
    saved = _monitoring_plan(session, preprocessor, run, edges, grid, windows)
    noise = float(saved["noise"]["monitoring"])
    release = _window_release(saved, run, window, "monitoring", session.name)
    consortium = None
    if any(c in _consortium_columns(config) for c in shared.numeric):
        if table is None:
            raise FedriskInputError("the model has consortium features: a window needs the consortium's terminal "
                                    "table (query.terminals first)", institution=session.name)
        if session.sketch_key_file is None or config.data.transactions is None:
            raise PolicyRefused("the model has consortium features, the campaign's data do not",
                                institution=session.name)
        consortium = (session.sketch_key(), np.asarray(table, dtype=float),
                      window_calendar(config.data, window_days))
    frame, labels, _ = load_window(config.data, session.name, config.seed, shared.numeric, shared.categorical,
                                   window_days, consortium=consortium)
    check_window_rows(session, run, window, frame)
    _charge(session, run, release, window)
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


def check_window_rows(session: NodeSession, run: str, window: int, frame: pd.DataFrame) -> None:
    """Refuse a window whose rows an earlier window of the run released (their parts would overlap);
    remember its rows' hashes in the institution's home (hashes only, never values). A window's
    terminal table counts its look-back rows too: they join the window's part."""
    folder = session.home / "windows" / hashlib.sha256(run.encode()).hexdigest()[:32]
    mine = np.unique(frame[ROW_ID].to_numpy())
    for earlier in sorted(folder.glob("*.npy")) if folder.is_dir() else []:
        if earlier.stem != str(window) and np.intersect1d(mine, np.load(earlier), assume_unique=True).size:
            raise PolicyRefused(f"window {window} shares rows with window {earlier.stem} of monitoring run {run}: "
                                "a second release on them is not in its plan", institution=session.name)
    folder.mkdir(parents=True, exist_ok=True)
    own = folder / f"{window}.npy"
    np.save(own, np.union1d(mine, np.load(own)) if own.is_file() else mine)
