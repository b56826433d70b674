"""The campaign strategy: Flower's FedAvg/FedProx plus exclusions, sums and logging.

Aggregation of weights is Flower's (weighted by examples). What this adds:
- one message exchange per round: the institutions sampled for training evaluate the global
  model they receive before training, the others get an evaluate message in the same batch,
  so round r's replies carry the validation statistics of the model after round r-1;
- institutions that reply with an input error or a budget refusal are excluded for the rest
  of the campaign, and the campaign stops cleanly when fewer than the minimum remain;
- evaluation histograms are summed (never averaged) into pooled and per-institution metrics;
- every round is logged to MLflow with its time and epsilon per institution.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import fields

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from fedrisk.config import CampaignConfig
from fedrisk.errors import BUDGET_REFUSED_REPLY, INPUT_ERROR_REPLY
from fedrisk.fraud_metrics import FraudStats, fraud_summary
from fedrisk.fairness import GroupHistograms, fairness_metrics, merge_group_histograms
from fedrisk.metrics import EvalStats, evaluation_summary
from fedrisk.tracking import CampaignRun



def error_reason(code: int, text: str, name: str) -> tuple[str, str]:
    """(kind, one line) of an error reply. Only fedrisk's own messages are quoted: any other
    exception's text may quote a customer's value, and the audit log keeps what it is given."""
    if code not in (INPUT_ERROR_REPLY, BUDGET_REFUSED_REPLY):
        return "error", f"institution {name}: the ClientApp failed (Flower error code {code}); see the institution's log"
    reason = (str(text).strip().splitlines() or ["(no reason given)"])[-1]
    if name not in reason:
        reason = f"institution {name}: {reason}"
    return ("budget" if code == BUDGET_REFUSED_REPLY else "input"), reason


class CampaignStopped(Exception):
    """Too few institutions remain to go on."""


def evaluation_parts(replies: Iterable[Message], split: str = "validation") -> dict[str, EvalStats]:
    """Per-institution evaluation statistics of a split, as the ClientApp sent them."""
    parts = {}
    for msg in replies:
        e = msg.content["evaluation"]
        values = {f.name: e[f"{split}.{f.name}"] for f in fields(EvalStats)}
        parts[str(msg.content["who"]["institution"])] = EvalStats(
            **{k: np.asarray(v) if isinstance(v, list) else v for k, v in values.items()}
        )
    return parts


def group_parts(replies: Iterable[Message], split: str = "validation") -> dict[str, GroupHistograms]:
    """Per-institution histograms by protected group of a split."""
    parts = {}
    for msg in replies:
        raw = json.loads(str(msg.content["evaluation"][f"{split}.groups"]))
        parts[str(msg.content["who"]["institution"])] = {
            a: {g: (np.asarray(pos), np.asarray(neg)) for g, (pos, neg) in by.items()}
            for a, by in raw.items()
        }
    return parts


def fraud_parts(replies: Iterable[Message], split: str = "validation") -> dict[str, tuple[EvalStats, FraudStats]]:
    """Per-issuer (evaluation, fraud) statistics of a split."""
    overall = evaluation_parts(replies, split)
    parts = {}
    for msg in replies:
        e = msg.content["evaluation"]
        name = str(msg.content["who"]["institution"])
        values = {f.name: e[f"{split}.fraud.{f.name}"] for f in fields(FraudStats)}
        parts[name] = (overall[name], FraudStats(
            **{k: np.asarray(v) if isinstance(v, list) else v for k, v in values.items()}
        ))
    return parts


def evaluation_metrics(replies: list[Message], split: str, prefix: str,
                       config: CampaignConfig) -> dict[str, float]:
    """Performance and fairness, pooled and per institution, from the replies' sums.

    Fraud: each issuer's alert threshold comes from its validation statistics.
    """
    ev = config.evaluation
    if config.task == "fraud":
        return fraud_summary(fraud_parts(replies, "validation"), fraud_parts(replies, split), prefix,
                             ev.max_fpr, ev.alerts_per_day)
    threshold, max_fpr = ev.threshold, ev.max_fpr
    metrics = evaluation_summary(evaluation_parts(replies, split), prefix, threshold, max_fpr)
    groups = group_parts(replies, split)
    metrics.update(fairness_metrics(merge_group_histograms(list(groups.values())), threshold, prefix))
    for name, mine in groups.items():
        for key, value in fairness_metrics(mine, threshold, prefix).items():
            metrics[f"{key}.{name}"] = value
    return metrics


class CampaignMixin:
    """State of one campaign on top of a Flower strategy (the real state of the server)."""

    def setup(
        self,
        *,
        names: dict[int, str],
        min_institutions: int,
        seed: int,
        run: CampaignRun,
        on_round: Callable[[int, dict[str, float]], None],
        config: CampaignConfig,
    ) -> None:
        self.names = names
        self.config = config
        self.min_institutions = min_institutions
        self.rng = random.Random(seed)
        self.run = run
        self.on_round = on_round
        self.excluded: dict[str, dict[str, object]] = {}
        self.epsilon: dict[str, float] = {}
        self.privacy: dict[str, dict[str, float]] = {}
        self.latest_arrays: ArrayRecord | None = None
        self.latest_validation: dict[str, float] = {}
        self.institution_privacy: dict[str, float | str] = {}  # set by the institution-level DP wrapper
        self.rounds_done = 0
        self._round_start = 0.0

    def exclude(self, name: str, reason: str, server_round: int, kind: str) -> None:
        """Sit an institution out for the rest of the campaign (kind: input, quality or budget)."""
        if name not in self.excluded:
            self.excluded[name] = {"reason": reason, "round": server_round, "kind": kind}
            self.run.audit("institution_excluded", {"institution": name, "round": server_round,
                                                    "kind": kind, "reason": reason})

    def active_nodes(self, grid: Grid) -> list[int]:
        return sorted(
            n for n in grid.get_node_ids() if n in self.names and self.names[n] not in self.excluded
        )

    def usable_replies(self, replies: Iterable[Message], server_round: int) -> list[Message]:
        """Replies without error; an error excludes its institution from the campaign."""
        ok = []
        for msg in replies:
            name = self.names.get(msg.metadata.src_node_id, f"node-{msg.metadata.src_node_id}")
            if msg.has_error():
                kind, reason = error_reason(msg.error.code, msg.error.reason, name)
                self.exclude(name, reason, server_round, kind)
            else:
                ok.append(msg)
        return ok

    def log_validation(self, step: int, replies: list[Message]) -> dict[str, float]:
        metrics = evaluation_metrics(replies, "validation", "val", self.config)
        self.run.log_metrics(metrics, step=step)
        self.latest_validation = metrics
        return metrics

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_start = time.perf_counter()
        active = self.active_nodes(grid)
        if len(active) < self.min_institutions:
            raise CampaignStopped(
                f"round {server_round}: {len(active)} institution(s) left, "
                f"minimum is {self.min_institutions}"
            )
        wanted = max(math.ceil(len(active) * self.fraction_train), self.min_institutions)
        chosen = sorted(self.rng.sample(active, min(wanted, len(active))))
        config["server-round"] = server_round
        config["proximal-mu"] = float(getattr(self, "proximal_mu", 0.0))
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        resting = [n for n in active if n not in chosen]
        return [
            *self._construct_messages(record, chosen, MessageType.TRAIN),
            *self._construct_messages(record, resting, MessageType.EVALUATE),
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ok = self.usable_replies(replies, server_round)
        self.log_validation(server_round - 1, ok)
        trained = [m for m in ok if m.metadata.message_type == MessageType.TRAIN]
        metrics: dict[str, float] = {}
        for msg in trained:
            name = str(msg.content["who"]["institution"])
            values = dict(msg.content["metrics"])
            metrics[f"train_loss.{name}"] = values["train-loss"]
            metrics[f"train_seconds.{name}"] = values["train-seconds"]
            if "epsilon" in values:
                self.epsilon[name] = float(values["epsilon"])
                entry = self.privacy.setdefault(name, {"rounds": 0})
                entry.update(
                    epsilon=float(values["epsilon"]),
                    delta=float(values["delta"]),
                    noise_multiplier=float(values["noise-multiplier"]),
                    sample_rate=float(values["sample-rate"]),
                    steps_per_round=float(values["steps"]),
                )
                entry["rounds"] += 1
        if len(trained) < self.min_institutions:  # after recording what they spent
            raise CampaignStopped(
                f"round {server_round}: {len(trained)} institution(s) trained, "
                f"minimum is {self.min_institutions}"
            )
        arrays, aggregated = super().aggregate_train(server_round, trained)  # type: ignore[misc]
        if arrays is not None:
            self.latest_arrays = arrays
        for name, eps in self.epsilon.items():
            metrics[f"epsilon.{name}"] = eps
        if self.epsilon:
            metrics["epsilon_max"] = max(self.epsilon.values())
        metrics["institutions_trained"] = float(len(trained))
        metrics["institutions_excluded"] = float(len(self.excluded))
        metrics["round_seconds"] = time.perf_counter() - self._round_start
        self.run.log_metrics(metrics, step=server_round)
        self.run.audit("round_completed", {
            "round": server_round, "trained": sorted(str(m.content["who"]["institution"]) for m in trained),
            "epsilon_max": metrics.get("epsilon_max"),
        })
        self.rounds_done = server_round
        self.on_round(server_round, {**self.latest_validation, **metrics})
        return arrays, aggregated

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # validation rides on the next round's exchange, and on the final one

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:  # Flower logs the strategy; the campaign logs to MLflow
        return None


class CampaignFedAvg(CampaignMixin, FedAvg):
    """FedAvg weighted by examples."""


class CampaignFedProx(CampaignMixin, FedProx):
    """FedProx: FedAvg with a proximal term applied by the clients."""
