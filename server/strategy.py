"""The campaign strategy: Flower's FedAvg/FedProx plus exclusions, sums and logging.

Aggregation of weights is Flower's (weighted by examples). What this adds:
- one message exchange per round; with `evaluation.every_round`, the institutions sampled for
  training evaluate the global model they receive before training, the others get an
  evaluate message in the same batch, so round r's replies carry the validation statistics of
  the model after round r-1 (by default validation is released once, at the end: each
  release costs epsilon);
- institutions that reply with an input error or a budget refusal are excluded for the rest
  of the campaign, and the campaign stops cleanly when fewer than the minimum remain;
- evaluation histograms are summed (never averaged) into pooled and per-institution metrics;
- every round is logged to MLflow with its time and epsilon per institution.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from fedrisk import checkpoint, protocol, run_schema, witness
from fedrisk.config import CampaignConfig
from fedrisk.evaluation import SplitStatistics, split_metrics
from fedrisk.tracking import CampaignRun


class CampaignStopped(Exception):
    """Too few institutions remain to go on."""


def split_parts(replies: Iterable[Message], split: str = "validation") -> dict[str, SplitStatistics]:
    """Each institution's statistics of a split, as its ClientApp sent them."""
    return {protocol.institution_of(msg): protocol.read_evaluation(msg, split) for msg in replies}


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
        self.privacy_summaries: dict[str, dict] = {}  # each institution's latest ledger summary
        self.rounds_done = 0
        self.round_offset = 0  # rounds done before a resumed campaign's first
        self.checkpoints = True  # False when a wrapper changes the aggregate (institution-level DP noise) and keeps it
        self._round_start = 0.0

    def restore(self, saved: checkpoint.Checkpoint) -> None:
        """Continue after round `saved.server_round` of an interrupted campaign."""
        state = saved.server
        self.round_offset = self.rounds_done = saved.server_round
        self.excluded = {str(k): dict(v) for k, v in state["excluded"].items()}
        self.epsilon = {str(k): float(v) for k, v in state["epsilon"].items()}
        self.privacy = {str(k): dict(v) for k, v in state["privacy"].items()}
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def save_checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        """The global model and this state after a completed round (`fedrisk.checkpoint`)."""
        checkpoint.save(self.config, self.run.campaign, checkpoint.Checkpoint(server_round, arrays.to_torch_state_dict(), {
            "excluded": self.excluded, "epsilon": self.epsilon, "privacy": self.privacy,
            "rng": list(self.rng.getstate())}))

    def exclude(self, name: str, reason: str, server_round: int, kind: str) -> None:
        """Sit an institution out for the rest of the campaign (kind: input, quality or budget)."""
        if name not in self.excluded:
            self.excluded[name] = {"reason": reason, "round": server_round, "kind": kind}
            self.run.audit("institution_excluded", {"institution": name, "round": server_round,
                                                    "kind": kind, "reason": reason})

    def active_nodes(self, grid: Grid) -> list[int]:
        return sorted(n for n in grid.get_node_ids() if n in self.names and self.names[n] not in self.excluded)

    def usable_replies(self, replies: Iterable[Message], server_round: int) -> list[Message]:
        """Replies without error; an error excludes its institution from the campaign."""
        ok = []
        for msg in replies:
            name = self.names.get(msg.metadata.src_node_id, f"node-{msg.metadata.src_node_id}")
            if msg.has_error():
                kind, reason = protocol.error_reason(msg.error.code, msg.error.reason, name)
                self.exclude(name, reason, server_round, kind)
            else:
                ok.append(msg)
        self.note_privacy(ok)
        return ok

    def note_privacy(self, replies: Iterable[Message]) -> None:
        """Keep each institution's latest statement of what its ledger holds."""
        for msg in replies:
            summary = protocol.privacy_of(msg)
            if summary is not None:
                self.privacy_summaries[protocol.institution_of(msg)] = summary

    def log_validation(self, step: int, replies: list[Message]) -> dict[str, float]:
        """Validation metrics of the replies that carry them (every reply, or none: `every_round`)."""
        carrying = [m for m in replies if protocol.has_evaluation(m, "validation")]
        if not carrying:
            return {}
        metrics = split_metrics(split_parts(carrying, "validation"), run_schema.VALIDATION, self.config)
        self.run.log_metrics(metrics, step=step)
        self.latest_validation = metrics
        return metrics

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self._round_start = time.perf_counter()
        active = self.active_nodes(grid)
        if len(active) < self.min_institutions:
            raise CampaignStopped(
                f"round {server_round}: {len(active)} institution(s) left, minimum is {self.min_institutions}")
        wanted = max(math.ceil(len(active) * self.fraction_train), self.min_institutions)
        chosen = sorted(self.rng.sample(active, min(wanted, len(active))))
        protocol.with_round(config, server_round, float(getattr(self, "proximal_mu", 0.0)))
        protocol.with_audit_head(config, witness.head_of(self.config.audit.path))
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        # institutions resting this round evaluate only, when validation is released every round
        resting = [n for n in active if n not in chosen] if self.config.evaluation.every_round else []
        return [
            *self._construct_messages(record, chosen, MessageType.TRAIN),
            *self._construct_messages(record, resting, MessageType.EVALUATE),
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        ok = self.usable_replies(replies, server_round)
        self.log_validation(server_round - 1, ok)
        trained = [m for m in ok if m.metadata.message_type == MessageType.TRAIN]
        metrics: dict[str, float] = {}
        for msg in trained:
            name = protocol.institution_of(msg)
            values = protocol.train_metrics(msg)
            metrics[run_schema.at("train_seconds", name)] = values["train-seconds"]
            if "epsilon" in values:
                self.epsilon[name] = values["epsilon"]
                entry = self.privacy.setdefault(name, {"rounds": 0})
                entry.update(epsilon=values["epsilon"], delta=values["delta"],
                             noise_multiplier=values["noise-multiplier"], sample_rate=values["sample-rate"],
                             steps_per_round=values["steps"])
                entry["rounds"] += 1
        if len(trained) < self.min_institutions:  # after recording what they spent
            raise CampaignStopped(
                f"round {server_round}: {len(trained)} institution(s) trained, minimum is {self.min_institutions}")
        arrays, aggregated = super().aggregate_train(server_round, trained)  # type: ignore[misc]
        if arrays is not None:
            self.latest_arrays = arrays
        metrics.update(run_schema.per_institution("epsilon", self.epsilon))
        if self.epsilon:
            metrics[run_schema.EPSILON_MAX] = max(self.epsilon.values())
        metrics[run_schema.INSTITUTIONS_TRAINED] = float(len(trained))
        metrics[run_schema.INSTITUTIONS_EXCLUDED] = float(len(self.excluded))
        metrics[run_schema.ROUND_SECONDS] = time.perf_counter() - self._round_start
        self.run.log_metrics(metrics, step=server_round)
        self.run.flush()  # in MLflow before the audit log says the round completed: a kill never leaves MLflow behind
        self.run.audit("round_completed", {
            "round": server_round, "trained": sorted(protocol.institution_of(m) for m in trained),
            "epsilon_max": metrics.get(run_schema.EPSILON_MAX),
        })
        self.rounds_done = server_round
        if arrays is not None and self.checkpoints:
            self.save_checkpoint(server_round, arrays)
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
