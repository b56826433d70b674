"""What one institution does in a campaign: statistics, a DP training round, an evaluation.

Each function takes the node's session (its typed config and its own rows) and plain values,
and returns plain values; the ClientApp wraps them in Flower records (`fedrisk.protocol`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedrisk.columns import DAY
from fedrisk.config import CampaignConfig
from fedrisk.data import load_window
from fedrisk.drift import column_counts, fine_grid
from fedrisk.errors import FedriskInputError
from fedrisk.evaluation import SplitStatistics
from fedrisk.fairness import group_histograms
from fedrisk.fraud_metrics import FraudStats
from fedrisk.metrics import EvalStats, score_histograms
from fedrisk.models import build_model, predict_proba
from fedrisk.preprocessing import category_labels, local_statistics
from fedrisk.privacy import PrivacyLedger
from fedrisk.session import NodeSession
from fedrisk.training import DPSettings, dp_sampling, train_local


def statistics(session: NodeSession) -> dict:
    """Preprocessing statistics of the institution's training rows."""
    data, split = session.data, session.split
    stats = local_statistics(split.train, data.columns)
    # for the audit log and the data-quality gate: counts and a hash, never rows
    stats["data"] = {"fingerprint": data.fingerprint, "source": data.source,
                     "rows": len(data.frame), "quality": data.quality}
    stats["split_rows"] = {"train": len(split.train), "validation": len(split.validation), "test": len(split.test)}
    if DAY in split.train.columns:  # fraud: the calendar of each window, no rows
        used = sum(stats["split_rows"].values())
        # history before train, the two delay gaps, and rows after time_split.end
        stats["split_rows"]["outside_windows"] = len(data.frame) - used
        stats["split_days"] = {
            part: [str(np.datetime64(int(frame[DAY].min()), "D")), str(np.datetime64(int(frame[DAY].max()), "D"))]
            for part, frame in vars(split).items()
        }
    return stats


@dataclass(frozen=True)
class RoundResult:
    """What a training round gives back: new weights, their aggregation weight and the spend."""

    state: dict[str, torch.Tensor]
    examples: int
    weight: float  # training rows; 1 under institution-level DP, whose noise assumes uniform weights
    steps: int
    mean_loss: float
    seconds: float
    epsilon: float | None = None  # the institution's epsilon after the round, at `delta`
    delta: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None


def sampling_plan(config: CampaignConfig, rows: int) -> tuple[float, int]:
    """(sample rate charged, DP steps per round) of an institution with `rows` training rows."""
    rate, per_epoch = dp_sampling(rows, config.training.batch_size)
    return rate, per_epoch * config.training.local_epochs


def check_delta(config: CampaignConfig, name: str, rows: int, file: str | None = None) -> None:
    if config.privacy.enabled and config.privacy.delta >= 1.0 / rows:
        raise FedriskInputError(
            f"privacy.delta {config.privacy.delta:g} is not below 1/rows = {1.0 / rows:.3g}; lower it",
            institution=name, file=file,
        )


def _model(config: CampaignConfig, width: int, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build_model(config.model, width, config.seed)
    model.load_state_dict(state)
    return model


def train_round(
    session: NodeSession, preprocessor: str, state: dict[str, torch.Tensor], server_round: int, campaign: str,
    proximal_mu: float,
) -> RoundResult:
    """One round of local training from the global weights; DP spend goes to the ledger."""
    config, name = session.config, session.name
    x, y = session.matrices(preprocessor, "train")
    check_delta(config, name, len(x))
    model = _model(config, x.shape[1], state)
    tr, pv = config.training, config.privacy
    seed = config.seed * 100_003 + server_round * 101 + len(x)
    dp = None
    if pv.enabled:
        ledger = PrivacyLedger.open(pv.ledger_dir, name, session.data.fingerprint)
        rate, per_round = sampling_plan(config, len(x))
        sigma = ledger.plan(campaign, pv.target_epsilon, pv.delta, rate, per_round, tr.rounds, pv.max_noise_multiplier)
        ledger.authorise(campaign, server_round, sigma, rate, per_round, pv.target_epsilon, pv.delta)
        dp = DPSettings(sigma, pv.max_grad_norm)
    result = train_local(
        model, x, y, epochs=tr.local_epochs, batch_size=tr.batch_size, learning_rate=tr.learning_rate,
        momentum=tr.momentum, dp=dp, proximal_mu=proximal_mu, seed=seed, positive_weight=tr.positive_weight,
        focal_gamma=tr.focal_gamma,
    )
    weight = 1.0 if pv.institution_level.enabled else float(result.examples)
    spend = {}
    if dp is not None:
        epsilon = ledger.record(campaign, server_round, result.spend, pv.delta)
        spend = {"epsilon": epsilon, "delta": pv.delta, "noise_multiplier": sigma, "sample_rate": rate}
    return RoundResult(result.state, result.examples, weight, result.steps, result.mean_loss, result.seconds, **spend)


def evaluate_split(session: NodeSession, preprocessor: str, state: dict[str, torch.Tensor],
                   part: str = "validation") -> SplitStatistics:
    """Evaluation statistics of the received model: overall, by protected group, and for fraud."""
    config, data = session.config, session.data
    x, y = session.matrices(preprocessor, part)
    scores = predict_proba(_model(config, x.shape[1], state), torch.as_tensor(x)).numpy()
    frame = getattr(session.split, part)
    groups = {  # the same labels at every institution, whatever dtype its file gave the column
        c: category_labels(frame[c]).reindex(frame.index, fill_value="missing").to_numpy()
        for c in data.columns.protected
    }
    bins = config.evaluation.bins
    fraud = None
    if data.columns.amount is not None:
        fraud = FraudStats.from_scores(y, scores, frame[data.columns.amount].to_numpy(), frame[DAY].to_numpy(),
                                       bins, config.evaluation.alerts_per_day)
    return SplitStatistics(EvalStats.from_scores(y, scores, bins), group_histograms(y, scores, groups, bins), fraud)


def importance_histograms(session: NodeSession, preprocessor: str, state: dict[str, torch.Tensor],
                          part: str = "validation") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Score histograms with each input column ablated to the federated mean or mode.

    Blanking a column makes the shared preprocessing impute it, so every institution ablates
    to the same consortium-wide value; the server sums the histograms and reads the AUC lost.
    """
    config = session.config
    shared = session.preprocessor(preprocessor)
    frame = getattr(session.split, part)
    y = frame[session.data.columns.target].to_numpy()
    model = _model(config, shared.width, state)
    out = {}
    for column in shared.input_columns:
        ablated = frame.copy()
        ablated[column] = np.nan
        scores = predict_proba(model, torch.as_tensor(shared.transform(ablated))).numpy()
        out[column] = score_histograms(y, scores, config.evaluation.bins)
    return out


def reference_counts(session: NodeSession, preprocessor: str, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Fine-grid counts of the final model's score and of every input on the training rows.

    The server adds them up and reads the consortium's reference deciles from the sums.
    """
    shared = session.preprocessor(preprocessor)
    x, _ = session.matrices(preprocessor, "train")
    scores = predict_proba(_model(session.config, shared.width, state), torch.as_tensor(x)).numpy()
    return column_counts(session.split.train, scores, shared, fine_grid(shared, session.config.evaluation.bins))


def window_statistics(
    session: NodeSession, preprocessor: str, state: dict[str, torch.Tensor], edges: dict[str, list[float]],
    window_days: int,
) -> tuple[dict[str, np.ndarray], SplitStatistics | None]:
    """Counts of a monitoring window on the reference bins, and score histograms if labelled."""
    config = session.config
    shared = session.preprocessor(preprocessor)
    frame, labels, _ = load_window(config.data, session.name, config.seed, shared.numeric, shared.categorical,
                                   window_days)
    scores = predict_proba(_model(config, shared.width, state), torch.as_tensor(shared.transform(frame))).numpy()
    counts = column_counts(frame, scores, shared, edges)
    known = ~np.isnan(labels) if labels is not None else np.zeros(len(frame), dtype=bool)
    if not known.any():
        return counts, None
    return counts, SplitStatistics(EvalStats.from_scores(labels[known], scores[known], config.evaluation.bins), {})
