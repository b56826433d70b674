"""The campaign strategy: Flower's FedAvg/FedProx plus exclusions, sums and logging.

Aggregation of weights is Flower's (weighted by examples). What this adds: institutions that
reply with an input error or a budget refusal are excluded for the rest of the campaign, the
campaign stops cleanly when fewer than the minimum remain, evaluation histograms are summed
(not averaged), and every round is logged to MLflow with time and epsilon per institution.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from fedrisk.metrics import evaluation_summary
from fedrisk.tracking import CampaignRun


class CampaignStopped(Exception):
    """Too few institutions remain to go on."""


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
    ) -> None:
        self.names = names
        self.min_institutions = min_institutions
        self.rng = random.Random(seed)
        self.run = run
        self.on_round = on_round
        self.excluded: dict[str, dict[str, object]] = {}
        self.epsilon: dict[str, float] = {}
        self.privacy: dict[str, dict[str, float]] = {}
        self.latest_arrays: ArrayRecord | None = None
        self.rounds_done = 0
        self._round_start = 0.0
        self._train: dict[str, dict[str, float]] = {}

    def exclude(self, name: str, reason: str, server_round: int, kind: str) -> None:
        if name not in self.excluded:
            self.excluded[name] = {"reason": reason, "round": server_round, "kind": kind}

    def active_nodes(self, grid: Grid) -> list[int]:
        return sorted(
            n for n in grid.get_node_ids() if n in self.names and self.names[n] not in self.excluded
        )

    def _split_replies(self, replies: Iterable[Message], server_round: int) -> list[Message]:
        ok = []
        for msg in replies:
            name = self.names.get(msg.metadata.src_node_id, f"node-{msg.metadata.src_node_id}")
            if msg.has_error():
                kind = "budget" if msg.error.code == 2002 else "input"
                self.exclude(name, str(msg.error.reason).strip().splitlines()[-1], server_round, kind)
            else:
                ok.append(msg)
        return ok

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
        return self._construct_messages(record, chosen, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ok = self._split_replies(replies, server_round)
        if len(ok) < self.min_institutions:
            raise CampaignStopped(
                f"round {server_round}: {len(ok)} institution(s) trained, "
                f"minimum is {self.min_institutions}"
            )
        self._train = {}
        for msg in ok:
            name = str(msg.content["who"]["institution"])
            metrics = dict(msg.content["metrics"])
            self._train[name] = metrics
            if "epsilon" in metrics:
                self.epsilon[name] = float(metrics["epsilon"])
                entry = self.privacy.setdefault(name, {"rounds": 0})
                entry.update(
                    epsilon=float(metrics["epsilon"]),
                    delta=float(metrics["delta"]),
                    noise_multiplier=float(metrics["noise-multiplier"]),
                    sample_rate=float(metrics["sample-rate"]),
                    steps_per_round=float(metrics["steps"]),
                )
                entry["rounds"] += 1
        arrays, metrics = super().aggregate_train(server_round, ok)  # type: ignore[misc]
        if arrays is not None:
            self.latest_arrays = arrays
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, self.active_nodes(grid), MessageType.EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        parts = evaluation_parts(self._split_replies(replies, server_round))
        metrics = evaluation_summary(parts)
        for name, values in self._train.items():
            metrics[f"train_loss.{name}"] = values["train-loss"]
            metrics[f"train_seconds.{name}"] = values["train-seconds"]
        for name, eps in self.epsilon.items():
            metrics[f"epsilon.{name}"] = eps
        if self.epsilon:
            metrics["epsilon_max"] = max(self.epsilon.values())
        metrics["institutions_trained"] = float(len(self._train))
        metrics["institutions_excluded"] = float(len(self.excluded))
        metrics["round_seconds"] = time.perf_counter() - self._round_start
        self.run.log_metrics(metrics, step=server_round)
        self.rounds_done = server_round
        self.on_round(server_round, metrics)
        pooled = {k: v for k, v in metrics.items() if "." not in k and math.isfinite(v)}
        return MetricRecord(pooled)

    def summary(self) -> None:  # Flower logs the strategy; the campaign logs to MLflow
        return None


def evaluation_parts(replies: list[Message]) -> dict[str, tuple[int, float, np.ndarray, np.ndarray]]:
    """Per-institution (examples, loss sum, positive and negative histograms)."""
    parts = {}
    for msg in replies:
        m = msg.content["metrics"]
        parts[str(msg.content["who"]["institution"])] = (
            int(m["num-examples"]),
            float(m["loss-sum"]),
            np.asarray(m["hist-pos"], dtype=np.int64),
            np.asarray(m["hist-neg"], dtype=np.int64),
        )
    return parts


class CampaignFedAvg(CampaignMixin, FedAvg):
    """FedAvg weighted by examples."""


class CampaignFedProx(CampaignMixin, FedProx):
    """FedProx: FedAvg with a proximal term applied by the clients."""
