"""The campaign strategy: Flower's aggregation rule plus screening, exclusions, sums and logging.

Aggregation of weights is Flower's: FedAvg/FedProx weighted by examples, or one of its robust
rules (`training.strategy`). What this adds:
- each reply checked before it is used (`malformed`: the node's own name, the sent model's
  layout, finite weights, a positive weight), then each update screened (`server.robust`):
  claimed weights capped at the admitted rows, long updates bounded, suspicious ones flagged
  and their institution excluded after `training.robust.flag_rounds` flagged rounds in a row;
- institutions that do not reply within `training.round_timeout` sit that round out;
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

import logging
import math
import random
import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum, MultiKrum

from fedrisk import checkpoint, drill, protocol, run_schema, witness
from fedrisk.config import CampaignConfig
from fedrisk.evaluation import SplitStatistics, split_metrics
from fedrisk.tracking import CampaignRun
from server import robust

log = logging.getLogger("fedrisk")
MAX_REASON = 300  # characters of an exclusion's reason kept: one institution's text cannot crowd out the others'


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
        weight_caps: dict[str, float] | None = None,
    ) -> None:
        self.names = names
        self.weight_caps = weight_caps or {}  # institution -> the most an update may weigh (its admitted rows)
        self.screens = not config.secure_aggregation.enabled  # SecAgg+ hides the individual updates
        self.streaks: dict[str, int] = {}  # institution -> rounds flagged in a row
        self._sent: np.ndarray | None = None  # the round's model, flat
        self._asked: set[str] = set()  # institutions asked to train this round
        self._layout: list[tuple[str, tuple[int, ...], str]] = []  # names, shapes and types of the sent model
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
        self.streaks = {str(k): int(v) for k, v in state.get("streaks", {}).items()}
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def save_checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        """The global model and this state after a completed round (`fedrisk.checkpoint`)."""
        checkpoint.save(self.config, self.run.campaign, checkpoint.Checkpoint(server_round, arrays.to_torch_state_dict(), {
            "excluded": self.excluded, "epsilon": self.epsilon, "privacy": self.privacy, "streaks": self.streaks,
            "rng": list(self.rng.getstate())}))

    def exclude(self, name: str, reason: str, server_round: int, kind: str) -> None:
        """Sit an institution out for the rest of the campaign (kind: input, quality, budget, policy or robust)."""
        reason = " ".join(reason.split())[:MAX_REASON]  # one line, bounded: its sender may write it
        if name not in self.excluded:
            self.excluded[name] = {"reason": reason, "round": server_round, "kind": kind}
            self.run.audit("institution_excluded", {"institution": name, "round": server_round,
                                                    "kind": kind, "reason": reason})

    def active_nodes(self, grid: Grid) -> list[int]:
        return sorted(n for n in grid.get_node_ids() if n in self.names and self.names[n] not in self.excluded)

    def usable_replies(self, replies: Iterable[Message], server_round: int) -> list[Message]:
        """Replies without error; an error excludes its institution from the campaign."""
        ok = []
        for msg in self.lost_in_drill(server_round, list(replies)):
            name = self.names.get(msg.metadata.src_node_id)
            if name is None or name in self.excluded:  # not admitted to this campaign, or already out
                continue
            if msg.has_error():
                kind, reason = protocol.error_reason(msg.error.code, msg.error.reason, name)
                self.exclude(name, reason, server_round, kind)
                continue
            problem = self.malformed(msg, name)
            if problem:
                self.exclude(name, f"institution {name}: {problem}", server_round, "robust")
            else:
                ok.append(msg)
        self.note_privacy(ok)
        return ok

    def malformed(self, msg: Message, name: str) -> str:
        """Why a reply cannot be used as it is ('' when it can). The node it came from, not the
        name it writes, says whose it is; a training reply must carry the sent model's layout,
        finite weights and a finite positive aggregation weight."""
        try:
            claimed = protocol.institution_of(msg)
        except (KeyError, TypeError):
            claimed = None
        if claimed != name:
            return "replied under another institution's name"
        if msg.metadata.message_type != MessageType.TRAIN:
            return ""
        arrays = msg.content.array_records.get(self.arrayrecord_key)
        metrics = msg.content.metric_records.get(protocol.METRICS)
        if arrays is None or metrics is None:
            return "sent a training reply without its weights or metrics"
        if self.screens and self._layout and robust.layout(arrays) != self._layout:
            return "sent weights whose names, order, shapes or types differ from the model it was sent"
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        if not all(k in values for k in (protocol.AGGREGATION_WEIGHT, "train-seconds", "steps")):
            return "sent a training reply without its aggregation weight, steps or time"
        required = [values[k] for k in (protocol.AGGREGATION_WEIGHT, "train-seconds", "steps")]
        if any(np.isnan(v) for v in values.values()) or not np.isfinite(required).all():  # a non-private epsilon is inf
            return "sent non-finite training metrics"
        weight = values[protocol.AGGREGATION_WEIGHT]
        if weight <= 0 or (self.config.privacy.institution_level.enabled and weight != 1.0):
            return f"claimed an aggregation weight of {weight:g}"
        if self.screens and not np.isfinite(robust.flat(arrays)).all():
            return "sent non-finite model weights"
        return ""

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
        self._asked = {self.names[n] for n in chosen}
        protocol.with_round(config, server_round, float(getattr(self, "proximal_mu", 0.0)))
        protocol.with_audit_head(config, witness.head_of(self.config.audit.path))
        self._sent = robust.flat(arrays) if self.screens else None
        self._layout = robust.layout(arrays)
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
        replies = self.lost_in_drill(server_round, list(replies))
        dropped = self.note_dropouts(server_round, replies)
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
        screening, deltas = None, {}
        if self.screens and self._sent is not None:
            if self.config.training.robust.cap_weights:
                self.cap_weights(server_round, trained)
            screening, deltas = self.bound(trained)
        if len(trained) < self.min_institutions:  # after recording what they spent
            raise CampaignStopped(
                f"round {server_round}: {len(trained)} institution(s) trained, minimum is {self.min_institutions}")
        self.per_round_settings(len(trained))
        arrays, aggregated = super().aggregate_train(server_round, trained)  # type: ignore[misc]
        if arrays is None:  # Flower's rule skipped the round (e.g. too few updates for Bulyan): never in silence
            raise CampaignStopped(f"round {server_round}: training.strategy {self.config.training.strategy} "
                                  f"aggregated nothing from {len(trained)} update(s)")
        self.latest_arrays = arrays
        if screening is not None:
            metrics.update(self.judge(server_round, screening, deltas))
        metrics.update(run_schema.per_institution("epsilon", self.epsilon))
        if self.epsilon:
            metrics[run_schema.EPSILON_MAX] = max(self.epsilon.values())
        metrics[run_schema.INSTITUTIONS_TRAINED] = float(len(trained))
        metrics[run_schema.INSTITUTIONS_DROPPED] = float(len(dropped))
        metrics[run_schema.INSTITUTIONS_EXCLUDED] = float(len(self.excluded))
        metrics[run_schema.ROUND_SECONDS] = time.perf_counter() - self._round_start
        self.run.log_metrics(metrics, step=server_round)
        self.run.flush()  # in MLflow before the audit log says the round completed: a kill never leaves MLflow behind
        self.run.audit("round_completed", {
            "round": server_round, "trained": sorted(protocol.institution_of(m) for m in trained),
            "epsilon_max": metrics.get(run_schema.EPSILON_MAX),
        })
        self.rounds_done = server_round
        if self.checkpoints:  # after the log's entry: a kill in between redoes the round, with the same releases
            self.save_checkpoint(server_round, arrays)
        self.on_round(server_round, {**self.latest_validation, **metrics})
        return arrays, aggregated

    def lost_in_drill(self, server_round: int, replies: list[Message]) -> list[Message]:
        """A dropout drill's lost training replies: dropped here, as if their round had timed out
        first (before anything counts them: institution-level DP's fixed set then stops the campaign)."""
        def lost(msg: Message) -> bool:
            name = self.names.get(msg.metadata.src_node_id, "")
            return (msg.metadata.message_type == MessageType.TRAIN
                    and drill.drops(drill.of(self.config, name), name, server_round, self.config.seed))

        return [m for m in replies if not lost(m)]

    def note_dropouts(self, server_round: int, replies: list[Message]) -> list[str]:
        """Institutions asked to train that did not answer within `training.round_timeout`: out of
        this round only (asked again the next), recorded in the audit log."""
        answered = {self.names.get(m.metadata.src_node_id) for m in replies}
        dropped = sorted(self._asked - answered - set(self.excluded))
        if dropped:
            log.warning("round %d: no reply from %s; going on without", server_round, ", ".join(dropped))
            self.run.audit("institutions_dropped", {"round": server_round, "institutions": dropped})
        return dropped

    def per_round_settings(self, updates: int) -> None:
        """Flower's robust rules on this round's count of updates: MultiKrum keeps all but the
        tolerated hostile ones of *this* round (not of admission), FedTrimmedAvg cuts at least
        one update from each tail (its 0.1 of fewer than 10 would cut none)."""
        robust_settings, rule = self.config.training.robust, self.config.training.strategy
        if rule == "multikrum":
            self.num_nodes_to_select = max(updates - robust_settings.byzantine, 1)
        if rule == "fedtrimmedavg" and updates >= 3:
            self.beta = max(robust_settings.trim, 1 / updates + 1e-9)

    def cap_weights(self, server_round: int, trained: list[Message]) -> None:
        """No update weighs more than its institution's admitted training rows."""
        for msg in trained:
            name, record = protocol.institution_of(msg), msg.content[protocol.METRICS]
            cap = self.weight_caps.get(name)
            claimed = float(record[protocol.AGGREGATION_WEIGHT])
            if cap is not None and claimed > cap:
                record[protocol.AGGREGATION_WEIGHT] = cap
                self.run.audit("update_weight_capped", {"institution": name, "round": server_round,
                                                        "claimed": claimed, "cap": cap})

    def bound(self, trained: list[Message]) -> tuple[robust.Screening, dict[str, np.ndarray]]:
        """Each update measured against the others' median norm; those too long scaled down in place."""
        assert self._sent is not None
        key = self.arrayrecord_key
        updates = {protocol.institution_of(m): robust.flat(m.content[key]) for m in trained}
        screening, deltas = robust.measure(self._sent, updates, self.config.training.robust)
        for msg in trained:
            name = protocol.institution_of(msg)
            if name in screening.bounded:
                msg.content[key] = robust.unflat(self._sent + deltas[name], msg.content[key])
        return screening, deltas

    def judge(self, server_round: int, screening: robust.Screening, deltas: dict[str, np.ndarray]) -> dict[str, float]:
        """Directions against the others' median update, flags, exclusions after repeated flags;
        the round's metrics."""
        settings = self.config.training.robust
        robust.judge_direction(screening, deltas, settings)
        self.streaks = robust.flagged_in_a_row(self.streaks, screening, list(deltas))
        for name, why in sorted(screening.flags.items()):
            streak = self.streaks[name]
            self.run.audit("update_flagged", {"institution": name, "round": server_round, "why": why,
                                              "rounds_in_a_row": streak})
            if settings.flag_rounds and streak >= settings.flag_rounds:
                self.exclude(name, f"institution {name}: update flagged {streak} rounds in a row ({why})",
                             server_round, "robust")
        return {**run_schema.per_institution(run_schema.UPDATE_NORM_RATIO, screening.norm_ratio),
                **run_schema.per_institution(run_schema.UPDATE_COSINE, screening.cosine),
                run_schema.UPDATES_FLAGGED: float(len(screening.flags)),
                run_schema.UPDATES_BOUNDED: float(len(screening.bounded))}

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # validation rides on the next round's exchange, and on the final one

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:  # Flower logs the strategy; the campaign logs to MLflow
        return None


RULES: dict[str, type[FedAvg]] = {"fedavg": FedAvg, "fedprox": FedProx, "fedtrimmedavg": FedTrimmedAvg,
                                  "fedmedian": FedMedian, "krum": Krum, "multikrum": MultiKrum, "bulyan": Bulyan}


def campaign_strategy(config: CampaignConfig, institutions: int, **flower: object) -> CampaignMixin:
    """The campaign's state on Flower's rule `training.strategy`, with the rule's own settings."""
    tr = config.training
    rule = RULES[tr.strategy]
    settings: dict[str, object] = {
        "fedprox": {"proximal_mu": tr.proximal_mu},
        "fedtrimmedavg": {"beta": tr.robust.trim},
        "krum": {"num_malicious_nodes": tr.robust.byzantine},
        "multikrum": {"num_malicious_nodes": tr.robust.byzantine,
                      "num_nodes_to_select": max(institutions - tr.robust.byzantine, 1)},
        "bulyan": {"num_malicious_nodes": tr.robust.byzantine},
    }.get(tr.strategy, {})
    cls = type(f"Campaign{rule.__name__}", (CampaignMixin, rule), {"__doc__": f"The campaign on Flower's {rule.__name__}."})
    return cls(**flower, **settings)
