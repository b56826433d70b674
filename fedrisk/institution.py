"""What one institution does in a campaign: statistics, a DP training round, an evaluation.

The ClientApp calls these with plain values and wraps the results in Flower records. Data
are loaded once per process and institution and kept in memory across rounds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrisk.config import CampaignConfig, config_from_json
from fedrisk.columns import DAY
from fedrisk.data import InstitutionData, load_institution, load_window
from fedrisk.sources import institution_names
from fedrisk.splits import Split, split_institution
from fedrisk.drift import column_counts, fine_grid
from fedrisk.fraud_metrics import FraudStats
from fedrisk.errors import FedriskInputError
from fedrisk.fairness import GroupHistograms, group_histograms
from fedrisk.models import build_model, predict_proba
from fedrisk.preprocessing import Preprocessor, category_labels, local_statistics
from fedrisk.privacy import PrivacyLedger
from fedrisk.metrics import EvalStats, score_histograms
from fedrisk.training import DPSettings, dp_sampling, train_local


AGGREGATION_WEIGHT = "aggregation-weight"  # the train metric FedAvg and SecAgg+ weight an update by


@dataclass(frozen=True)
class LocalData:
    data: InstitutionData
    split: Split


@lru_cache(maxsize=8)
def _local_data(config_json: str, name: str) -> LocalData:
    config = config_from_json(config_json)
    data = load_institution(config.data, name, config.seed)
    return LocalData(data, split_institution(data, config.data, config.seed))


@lru_cache(maxsize=8)
def _matrices(config_json: str, name: str, preprocessor_json: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    local = _local_data(config_json, name)
    frame = getattr(local.split, part)
    x = Preprocessor.from_json(preprocessor_json).transform(frame)
    y = frame[local.data.columns.target].to_numpy(dtype=np.float32)
    return x, y


def resolve_institution(config: CampaignConfig, node_config: dict[str, Any], names: list[str] | None = None) -> str:
    """This node's institution: named in its node config, else its simulation partition.

    `names` fixes the partition order when the data differ between messages (monitoring
    windows need not all name every institution).
    """
    if "institution" in node_config:
        return str(node_config["institution"])
    names = names or institution_names(config.data)
    partition = int(node_config.get("partition-id", 0))
    if partition >= len(names):
        raise FedriskInputError(
            f"simulation partition {partition} has no institution ({len(names)} configured)"
        )
    return names[partition]


def for_node(config_json: str, name: str, node_config: dict[str, Any]) -> str:
    """The campaign as this institution's node runs it. A deployed node's operator names, in
    its node config, the file of its own data (`data-path`) and its privacy ledger
    (`ledger-dir`): the campaign's config, written at the server, cannot know them."""
    raw = json.loads(config_json)
    if "data-path" in node_config:
        path = _absolute_node_path(name, "data-path", node_config["data-path"])
        if not path.is_file():
            raise FedriskInputError("node config data-path: no such file", institution=name, file=str(path))
        raw["data"].update(source="files", files={name: str(path)}, path=None, institution_column=None,
                           partition=None)
    if "ledger-dir" in node_config:
        raw["privacy"]["ledger_dir"] = str(_absolute_node_path(name, "ledger-dir", node_config["ledger-dir"]))
    return json.dumps(raw, sort_keys=True)


def _absolute_node_path(name: str, key: str, value: Any) -> Path:
    path = Path(str(value))
    if not path.is_absolute():
        raise FedriskInputError(f"node config {key} must be an absolute path", institution=name, file=str(value))
    return path


def statistics(config_json: str, name: str) -> dict[str, Any]:
    """Preprocessing statistics of the institution's training rows."""
    local = _local_data(config_json, name)
    stats = local_statistics(local.split.train, local.data.columns)
    # for the audit log and the data-quality gate: counts and a hash, never rows
    stats["data"] = {"fingerprint": local.data.fingerprint, "source": local.data.source,
                     "rows": len(local.data.frame), "quality": local.data.quality}
    stats["split_rows"] = {
        "train": len(local.split.train),
        "validation": len(local.split.validation),
        "test": len(local.split.test),
    }
    if DAY in local.split.train.columns:  # fraud: the calendar of each window, no rows
        used = sum(stats["split_rows"].values())
        # history before train, the two delay gaps, and rows after time_split.end
        stats["split_rows"]["outside_windows"] = len(local.data.frame) - used
        stats["split_days"] = {
            part: [str(np.datetime64(int(frame[DAY].min()), "D")), str(np.datetime64(int(frame[DAY].max()), "D"))]
            for part, frame in vars(local.split).items()
        }
    return stats


def sampling_plan(config: CampaignConfig, rows: int) -> tuple[float, int]:
    """(sample rate charged, DP steps per round) of an institution with `rows` training rows."""
    rate, per_epoch = dp_sampling(rows, config.training.batch_size)
    return rate, per_epoch * config.training.local_epochs


def check_delta(config: CampaignConfig, name: str, rows: int, file: str | None = None) -> None:
    if config.privacy.enabled and config.privacy.delta >= 1.0 / rows:
        raise FedriskInputError(
            f"privacy.delta {config.privacy.delta:g} is not below 1/rows = {1.0 / rows:.3g}; "
            "lower it",
            institution=name,
            file=file,
        )


def train_round(
    config_json: str,
    name: str,
    preprocessor_json: str,
    state: dict[str, torch.Tensor],
    server_round: int,
    campaign: str,
    proximal_mu: float,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One round of local training from the global weights; DP spend goes to the ledger."""
    config = config_from_json(config_json)
    x, y = _matrices(config_json, name, preprocessor_json, "train")
    check_delta(config, name, len(x))
    model = build_model(config.model, x.shape[1], config.seed)
    model.load_state_dict(state)
    tr = config.training
    seed = config.seed * 100_003 + server_round * 101 + len(x)
    dp = None
    ledger = None
    metrics: dict[str, float] = {}
    if config.privacy.enabled:
        pv = config.privacy
        local = _local_data(config_json, name)
        ledger = PrivacyLedger.open(pv.ledger_dir, name, local.data.fingerprint)
        rate, per_round = sampling_plan(config, len(x))
        sigma = ledger.plan(
            campaign, pv.target_epsilon, pv.delta, rate, per_round, tr.rounds, pv.max_noise_multiplier
        )
        ledger.authorise(campaign, server_round, sigma, rate, per_round, pv.target_epsilon, pv.delta)
        dp = DPSettings(sigma, pv.max_grad_norm, list(ledger.history))
        metrics.update({"noise-multiplier": sigma, "sample-rate": rate})
    result = train_local(
        model, x, y,
        epochs=tr.local_epochs,
        batch_size=tr.batch_size,
        learning_rate=tr.learning_rate,
        momentum=tr.momentum,
        dp=dp,
        proximal_mu=proximal_mu,
        seed=seed,
        positive_weight=tr.positive_weight,
        focal_gamma=tr.focal_gamma,
    )
    metrics.update(
        {
            "num-examples": float(result.examples),
            # the average's weight: uniform under institution-level DP, whose noise assumes it
            AGGREGATION_WEIGHT: 1.0 if config.privacy.institution_level.enabled else float(result.examples),
            "train-loss": result.mean_loss,
            "steps": float(result.steps),
            "train-seconds": result.seconds,
        }
    )
    if ledger is not None:
        epsilon = ledger.record(campaign, server_round, [(sigma, rate, result.steps)], config.privacy.delta)
        metrics.update({"epsilon": epsilon, "delta": config.privacy.delta})
    return result.state, metrics


def evaluate_round(
    config_json: str, name: str, preprocessor_json: str, state: dict[str, torch.Tensor], part: str = "validation"
) -> tuple[EvalStats, GroupHistograms, FraudStats | None]:
    """Evaluation statistics of the received model: overall, by protected group, and for fraud."""
    config = config_from_json(config_json)
    x, y = _matrices(config_json, name, preprocessor_json, part)
    scores = _score(config, x.shape[1], state, x)
    local = _local_data(config_json, name)
    frame = getattr(local.split, part)
    groups = {  # the same labels at every institution, whatever dtype its file gave the column
        c: category_labels(frame[c]).reindex(frame.index, fill_value="missing").to_numpy()
        for c in local.data.columns.protected
    }
    bins = config.evaluation.bins
    fraud = None
    if local.data.columns.amount is not None:
        fraud = FraudStats.from_scores(y, scores, frame[local.data.columns.amount].to_numpy(),
                                       frame[DAY].to_numpy(), bins, config.evaluation.alerts_per_day)
    return EvalStats.from_scores(y, scores, bins), group_histograms(y, scores, groups, bins), fraud


def importance_histograms(
    config_json: str, name: str, preprocessor_json: str, state: dict[str, torch.Tensor], part: str = "validation"
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Score histograms with each input column ablated to the federated mean or mode.

    Blanking a column makes the shared preprocessing impute it, so every institution ablates
    to the same consortium-wide value; the server sums the histograms and reads the AUC lost.
    """
    config = config_from_json(config_json)
    preprocessor = Preprocessor.from_json(preprocessor_json)
    local = _local_data(config_json, name)
    frame = getattr(local.split, part)
    y = frame[local.data.columns.target].to_numpy()
    model = build_model(config.model, preprocessor.width, config.seed)
    model.load_state_dict(state)
    out = {}
    for column in preprocessor.input_columns:
        ablated = frame.copy()
        ablated[column] = np.nan
        scores = predict_proba(model, torch.as_tensor(preprocessor.transform(ablated))).numpy()
        out[column] = score_histograms(y, scores, config.evaluation.bins)
    return out


def _score(config: CampaignConfig, width: int, state: dict[str, torch.Tensor], x: np.ndarray) -> np.ndarray:
    """The received model's probabilities for the rows of `x`."""
    model = build_model(config.model, width, config.seed)
    model.load_state_dict(state)
    return predict_proba(model, torch.as_tensor(x)).numpy()


def reference_counts(
    config_json: str, name: str, preprocessor_json: str, state: dict[str, torch.Tensor]
) -> dict[str, np.ndarray]:
    """Fine-grid counts of the final model's score and of every input on the training rows.

    The server adds them up and reads the consortium's reference deciles from the sums.
    """
    config = config_from_json(config_json)
    preprocessor = Preprocessor.from_json(preprocessor_json)
    x, _ = _matrices(config_json, name, preprocessor_json, "train")
    frame = _local_data(config_json, name).split.train
    return column_counts(frame, _score(config, preprocessor.width, state, x), preprocessor,
                         fine_grid(preprocessor, config.evaluation.bins))


def window_statistics(
    config_json: str, name: str, preprocessor_json: str, state: dict[str, torch.Tensor],
    edges: dict[str, list[float]], window_days: int,
) -> tuple[dict[str, np.ndarray], EvalStats | None]:
    """Counts of a monitoring window on the reference bins, and score histograms if labelled."""
    config = config_from_json(config_json)
    preprocessor = Preprocessor.from_json(preprocessor_json)
    frame, labels, _ = load_window(config.data, name, config.seed, preprocessor.numeric,
                                   preprocessor.categorical, window_days)
    scores = _score(config, preprocessor.width, state, preprocessor.transform(frame))
    counts = column_counts(frame, scores, preprocessor, edges)
    known = ~np.isnan(labels) if labels is not None else np.zeros(len(frame), dtype=bool)
    stats = EvalStats.from_scores(labels[known], scores[known], config.evaluation.bins) if known.any() else None
    return counts, stats
