"""One campaign as a list of named phases, from admission to the gate.

`run_campaign` reads as the campaign does:

1. `admit`: every institution checks the request against its own policy, says what its data
   are, plans its privacy spend and sends noised log-grid histograms of its numeric columns;
   a refusal, bad data, another schema or poor data quality sit an institution out;
2. `share_terminal_counts` (fraud with consortium features): each issuer's noised terminal
   table, summed: the consortium's columns and their bounds;
3. `start_model`: the clipping bounds from the summed histograms, then the shared
   preprocessing from the institutions' noised sums, and the initial model;
4. `train`: the rounds, on Flower's strategy (plain, SecAgg+ or institution-level DP);
5. `build_drift_reference`: the final model's score and inputs on the training rows, noised,
   summed: the drift reference, and the evaluation grid (`evaluation_grid`);
6. `evaluate_final`, `log_importance`, `log_privacy`: validation and test histograms on that
   grid, the feature importance, and what each institution's ledger says it spent;
7. `record_model` and `end`: the model in MLflow, the run's tags and the audit log's end;
8. `judge`: the validation gate.

Each phase takes and returns plain values, so a test can drive one alone.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from tqdm import tqdm

from fedrisk import checkpoint, protocol, run_schema, witness
from fedrisk.config import CampaignConfig, check_secure_aggregation, config_to_json
from fedrisk.consortium_features import shared_bounds
from fedrisk.data import quality_card
from fedrisk.data_quality import exclusion_reason
from fedrisk.drift import SCORE, build_reference, coarsen, reference_edges
from fedrisk.errors import FedriskInputError
from fedrisk.evaluation import NOISE_DRAWS, SplitStatistics, intervals, noise_error, pooled, split_metrics
from fedrisk.guard import REFERENCE_BINS
from fedrisk.metrics import (
    EvalStats,
    calibration_bands,
    evaluation_grid,
    importance_from_histograms,
    logit_edges,
    with_threshold,
)
from fedrisk.models import build_model
from fedrisk.preprocessing import (
    DECILES,
    Bounds,
    Preprocessor,
    bounds_from_counts,
    fit_preprocessor,
    merge_statistics,
    missing_counts,
    protected_groups,
)
from fedrisk.privacy import institution_noise_multiplier
from fedrisk.splits import table_calendar
from fedrisk.tracking import CampaignRun
from fedrisk.validation import statistics_to_dict, validate_run
from fedrisk.warning_levels import POOLED, auc_noise_sd, ranking_metrics
from server import robust
from server.institution_privacy import with_institution_dp
from server.messaging import REPLY_TIMEOUT_SECONDS, query, wait_for_nodes
from server.secure_aggregation import SecureAggregationFailed, SecureAggregationGrid
from server.strategy import CampaignMixin, CampaignStopped, campaign_strategy, split_parts

log = logging.getLogger("fedrisk.server")


@dataclass
class Admission:
    """Who takes part: each node's institution, its statistics, and who sits out and why."""

    names: dict[int, str]  # node id -> institution
    statistics: dict[str, dict[str, Any]]  # institution -> preprocessing statistics of its training rows
    errors: dict[str, str]  # institution (or node) -> the one line that sat it out
    data: dict[str, dict[str, Any]]  # institution -> fingerprint, source, rows, quality scorecard
    kinds: dict[str, str] = field(default_factory=dict)  # institution -> kind of exclusion, when not input

    def kind(self, name: str) -> str:
        return self.kinds.get(name, "input")


def admit(grid: Grid, config: CampaignConfig, campaign: str, run: CampaignRun) -> Admission:
    """Ask every institution to admit the campaign; sit out refusals, bad data, another schema, low quality."""
    expected = config.institution_count_hint() or config.training.min_institutions
    nodes = wait_for_nodes(grid, expected)
    replies = query(grid, nodes, protocol.BOUNDS, campaign_request(config, campaign))
    admission = Admission({}, {}, {}, {})
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            name = protocol.institution_named(msg.error.reason) or f"node-{node}"
            kind, reason = protocol.error_reason(msg.error.code, msg.error.reason, name)
            admission.errors[name] = reason
            admission.kinds[name] = kind
            continue
        name = protocol.institution_of(msg)
        if name in admission.statistics:  # two nodes claiming one institution would share one budget
            admission.errors[f"node-{node}"] = f"institution {name}: a second node claims this institution"
            continue
        admission.names[node] = name
        admission.statistics[name] = {**protocol.read_admission(msg), "privacy": protocol.privacy_of(msg)}
    # in the institutions' order, not the replies': sums of floats then come out the same in a
    # resumed campaign, whose preprocessing must match the one its institutions already trained on
    admission.statistics = stats = dict(sorted(admission.statistics.items()))
    for s in stats.values():  # the scorecard, from the counts as released (noised)
        s["data"]["card"] = quality_card(config.data, s["data"]["quality"])
    admission.data = {name: s["data"] for name, s in stats.items()}
    if stats:  # institutions must share one column schema; the majority's is the consortium's
        schemas = Counter(json.dumps(s["schema"], sort_keys=True) for s in stats.values())
        consortium = json.loads(schemas.most_common(1)[0][0])
        for name in [n for n, s in stats.items() if s["schema"] != consortium]:
            column = schema_difference(stats.pop(name)["schema"], consortium)
            admission.errors[name] = f"institution {name}, column '{column}': not of the consortium's schema"
    for name in [n for n, s in stats.items() if not s["data"]["card"]["passed"]]:
        mine = stats.pop(name)["data"]
        admission.errors[name] = exclusion_reason(name, mine["source"], mine["card"])
        admission.kinds[name] = "quality"
    _record_admission(admission, config, run)
    if len(stats) < config.training.min_institutions:
        for name, reason in sorted(admission.errors.items()):  # the strategy that records exclusions is not set up
            run.audit("institution_excluded", {"institution": name, "round": 0, "reason": reason,
                                               "kind": admission.kind(name)})
        run.set_tags({run_schema.EXCLUDED: "; ".join(admission.errors.values())[:4000]})
        raise FedriskInputError(
            f"only {len(stats)} institution(s) with usable data, minimum is {config.training.min_institutions}: "
            + "; ".join(admission.errors.values()))
    check_secure_aggregation(config, len(stats))
    return admission


def schema_difference(mine: dict, theirs: dict) -> str:
    """First column whose presence or kind differs between two schemas."""
    for kind in ("numeric", "categorical", "protected"):
        for column in sorted(set(mine.get(kind, [])) ^ set(theirs.get(kind, []))):
            return column
    return "(column order)"


def _record_admission(admission: Admission, config: CampaignConfig, run: CampaignRun) -> None:
    for reason in sorted(admission.errors.values()):
        log.warning("excluded %s", reason)
    deltas = [s["privacy"]["delta"] for s in admission.statistics.values() if s.get("privacy")]
    run.set_institutions(list(admission.statistics), config.tracking.institution_metrics_limit)
    if deltas:
        run.set_tags({run_schema.DELTA: f"{max(deltas):g}"})
    for name, mine in sorted(admission.data.items()):
        card = mine["card"]
        run.audit("institution_data", {"institution": name, "fingerprint": mine["fingerprint"],
                                       "source": mine["source"], "rows": round(mine["quality"]["rows"]),
                                       "quality_score": card["score"], "quality_passed": card["passed"]})
        run.log_metrics(run_schema.data_quality_metrics(name, card), step=0)
    run.log_dict({"min_score": config.data.quality.min_score, "score": "the weakest dimension",
                  "note": "computed from the institutions' DP-noised counts (rows are noised counts too)",
                  "institutions": {n: d["card"] for n, d in admission.data.items()}},
                 run_schema.DATA_QUALITY_ARTIFACT)
    run.log_dict({"excluded": admission.errors}, run_schema.EXCLUDED_ARTIFACT)


@dataclass(frozen=True)
class SharedTable:
    """The consortium's summed terminal table, its noise, and its columns' bounds."""

    table: np.ndarray
    noise: float  # standard deviation per cell of the sum
    bounds: dict[str, Bounds]


def share_terminal_counts(grid: Grid, config: CampaignConfig, campaign: str, admission: Admission,
                          run: CampaignRun) -> SharedTable | None:
    """Each admitted issuer's noised terminal table, summed (`fedrisk.consortium_features`);
    the consortium's columns' bounds are read off the sum. None without consortium features."""
    if not config.consortium_features:
        return None
    started = time.perf_counter()
    tx = config.data.transactions
    assert tx is not None
    cal = table_calendar(config.data)
    expected = (cal.cells, tx.sketch_width, 2)
    admitted = admission.statistics
    nodes = [n for n, name in admission.names.items() if name in admitted]
    record = campaign_request(config, campaign)
    secure = config.secure_aggregation.enabled
    if secure:  # Flower's SecAgg+: the server unmasks only the sum of the issuers' tables
        try:
            replies = SecureAggregationGrid(grid, config.secure_aggregation, 1.0).send_and_receive(
                [protocol.table_round_request(ConfigRecord(dict(record)), node) for node in nodes],
                timeout=REPLY_TIMEOUT_SECONDS)
        except SecureAggregationFailed as failed:
            raise FedriskInputError(f"the terminal tables could not be summed: {failed}") from None
    else:
        replies = query(grid, nodes, protocol.TERMINALS, record)
    contributors = sum(not msg.has_error() for msg in replies)
    tables: dict[str, tuple[np.ndarray, float]] = {}
    for msg in replies:
        name = admission.names.get(msg.metadata.src_node_id, f"node-{msg.metadata.src_node_id}")
        if msg.has_error():
            kind, reason = protocol.error_reason(msg.error.code, msg.error.reason, name)
        else:
            table, noise = (protocol.read_table_round(msg, contributors) if secure else protocol.read_terminals(msg))
            if table.shape == expected and np.isfinite(table).all():
                tables[name] = (table.astype(float), noise)
                continue
            kind, reason = "input", f"institution {name}: a terminal table of shape {table.shape}, not {expected}"
        admission.errors[name], admission.kinds[name] = reason, kind
        admitted.pop(name, None)
    if len(tables) < config.training.min_institutions:
        raise FedriskInputError(f"only {len(tables)} institution(s) shared their terminal table, minimum is "
                                f"{config.training.min_institutions}: " + "; ".join(admission.errors.values()))
    # under SecAgg+ every reply carries the one sum; otherwise the server adds the tables
    tables = dict(sorted(tables.items()))  # summed in the institutions' order (see `admit`)
    total = next(iter(tables.values()))[0] if secure else sum(table for table, _ in tables.values())
    noise = float(np.sqrt(sum(z ** 2 for _, z in tables.values())))
    bounds = {name: Bounds(lower, upper, sorted({min(max(d, lower), upper) for d in deciles} - {lower, upper}))
              for name, (lower, upper, deciles) in shared_bounds(total, cal, tx.windows_days, DECILES).items()}
    megabytes = 2 * np.dtype(protocol.WIRE_TABLE).itemsize * int(np.prod(expected)) / 1e6  # up, then the sum down
    run.log_metrics({run_schema.SHARED_TABLE_NOISE: noise, run_schema.SHARED_TABLE_MEGABYTES: megabytes,
                     run_schema.SHARED_TABLE_SECONDS: time.perf_counter() - started}, step=0)
    run.log_dict({"calendar": {"first_day": str(np.datetime64(cal.first_day, "D")),
                               "last_day": str(np.datetime64(cal.last_day, "D")), "cell_days": cal.cell_days,
                               "cells": cal.cells},
                  "sketch_width": tx.sketch_width, "institutions": sorted(tables),
                  "noise_per_cell": {name: z for name, (_, z) in tables.items()}, "noise_of_sum": noise,
                  "megabytes_per_institution": megabytes,
                  "summed": "under SecAgg+ (the server unmasked only the sum)" if secure else "by the server",
                  "note": "transactions and known frauds per terminal bucket and cell, DP-noised at each issuer; "
                          "the cells are not logged"}, run_schema.SHARED_TABLE_ARTIFACT)
    return SharedTable(total, noise, bounds)


@dataclass(frozen=True)
class StartingModel:
    preprocessor: Preprocessor
    initial: ArrayRecord
    bounds: dict[str, Bounds]  # the consortium's clipping bounds and decile edges per numeric column
    groups: dict[str, list[str]]  # the protected groups measured (values some institution released)
    statistics: dict[str, dict[str, Any]]  # each institution's released preprocessing statistics


def start_model(grid: Grid, config: CampaignConfig, campaign: str, admission: Admission,
                run: CampaignRun, shared: SharedTable | None = None) -> StartingModel:
    """Clipping bounds from the summed bound histograms (and the shared table's), the shared
    preprocessing from the noised sums, and the model the rounds start from."""
    admitted = admission.statistics
    columns = next(iter(admitted.values()))["bounds"].keys()
    noise = float(np.sqrt(sum(s["noise"]["statistics"] ** 2 for s in admitted.values())))
    bounds = bounds_from_counts({c: sum(s["bounds"][c] for s in admitted.values()) for c in columns}, noise)
    if shared is not None:
        bounds.update(shared.bounds)
    request = campaign_request(config, campaign, bounds=bounds,
                                      table=shared.table if shared is not None else None)
    nodes = [n for n, name in admission.names.items() if name in admitted]
    stats: dict[str, dict[str, Any]] = {}
    for msg in query(grid, nodes, protocol.STATISTICS, request):
        name = admission.names.get(msg.metadata.src_node_id, f"node-{msg.metadata.src_node_id}")
        if msg.has_error():
            kind, reason = protocol.error_reason(msg.error.code, msg.error.reason, name)
            admission.errors[name], admission.kinds[name] = reason, kind
            admitted.pop(name, None)
            continue
        stats[name] = protocol.read_statistics(msg)
    if len(stats) < config.training.min_institutions:
        raise FedriskInputError(f"only {len(stats)} institution(s) released their statistics, minimum is "
                                f"{config.training.min_institutions}: " + "; ".join(admission.errors.values()))
    shared_schema = next(iter(admitted.values()))["schema"]
    stats = dict(sorted(stats.items()))  # merged in the institutions' order (see `admit`)
    merged = merge_statistics(list(stats.values()))
    preprocessor = fit_preprocessor(merged, shared_schema, bounds)
    initial = ArrayRecord(build_model(config.model, preprocessor.width, config.seed).state_dict())
    if config.training.initial_model:  # warm start: the old model's weights need its own preprocessing
        state, preprocessor = warm_start(config.training.initial_model, config, preprocessor)
        initial = ArrayRecord(state)
    summary = {name: {"rows": {"train": round(admitted[name]["split_rows"]["train"])},
                      "imputed": {c: round(max(v, 0.0)) for c, v in missing_counts(s).items()},
                      "fingerprint": admitted[name]["data"]["fingerprint"],
                      **({"days": admitted[name]["split_days"]} if "split_days" in admitted[name] else {})}
               for name, s in stats.items()}
    run.log_dict({"institutions": summary, "features": preprocessor.output_names,
                  "bounds": {c: {"lower": b.lower, "upper": b.upper} for c, b in bounds.items()},
                  "note": "rows and imputed values are DP-noised counts"},
                 run_schema.DATA_SUMMARY_ARTIFACT)
    for name, s in stats.items():
        run.log_metrics({run_schema.at("rows_train", name): admitted[name]["split_rows"]["train"],
                         run_schema.at("imputed_values", name): max(sum(missing_counts(s).values()), 0.0)}, step=0)
    return StartingModel(preprocessor, initial, bounds, protected_groups(merged, shared_schema), stats)


def warm_start(uri: str, config: CampaignConfig, fitted: Preprocessor) -> tuple[dict, Preprocessor]:
    """Weights and preprocessing of the model a campaign starts from, checked against its data."""
    from fedrisk.serving import load_model_files

    try:
        state, preprocessor, spec = load_model_files(uri, config.tracking.uri)
    except Exception as exc:  # MLflow raises several types for an unknown model
        raise FedriskInputError(f"training.initial_model {uri}: cannot load ({str(exc).splitlines()[0]})") from None
    if spec != config.model:
        raise FedriskInputError(f"training.initial_model {uri} is a {spec.kind} {spec.hidden}, the campaign "
                                f"trains a {config.model.kind} {config.model.hidden}")
    for kind in ("numeric", "categorical"):
        mine, theirs = set(getattr(fitted, kind)), set(getattr(preprocessor, kind))
        for column in sorted(mine ^ theirs):
            raise FedriskInputError(f"training.initial_model {uri}: the data's {kind} inputs differ from the "
                                    "model's", column=column)
    return state, preprocessor


@dataclass
class Training:
    """The rounds' outcome: the strategy's state, the grid it used, the final model."""

    strategy: CampaignMixin
    grid: Grid
    final: ArrayRecord
    stop_reason: str  # empty when every round ran


def train(grid: Grid, config: CampaignConfig, request: ConfigRecord, admission: Admission, start: StartingModel,
          run: CampaignRun, on_round: Callable[[int, dict[str, float]], None],
          resume: checkpoint.Checkpoint | None = None) -> Training:
    """The campaign's rounds on Flower's strategy, with SecAgg+ and institution-level DP if asked;
    after `resume`'s round, from its model, when an interrupted campaign goes on."""
    tr, inst_dp, secure = config.training, config.privacy.institution_level, config.secure_aggregation
    stats = admission.statistics
    noise = (institution_noise_multiplier(inst_dp.target_epsilon, inst_dp.delta, tr.rounds, inst_dp.noise_multiplier)
             if inst_dp.enabled else None)  # a budget the rounds would overspend stops the campaign here
    strategy = campaign_strategy(
        config, len(stats), fraction_train=tr.fraction, min_train_nodes=tr.min_institutions,
        min_evaluate_nodes=tr.min_institutions, min_available_nodes=tr.min_institutions,
        weighted_by_key=protocol.AGGREGATION_WEIGHT)
    caps = {name: 1.0 if inst_dp.enabled else float(s["split_rows"]["train"]) for name, s in stats.items()}
    strategy.setup(names=admission.names, min_institutions=tr.min_institutions, seed=config.seed, run=run,
                   on_round=on_round, config=config, weight_caps=caps)
    for name, reason in admission.errors.items():
        strategy.exclude(name, reason, 0, admission.kind(name))
    initial, rounds = start.initial, tr.rounds
    if resume is not None:
        strategy.restore(resume)
        initial, rounds = ArrayRecord(resume.state), tr.rounds - resume.server_round
    unknown = [n for n in (config.drill.institutions if config.drill else []) if n not in admission.names.values()]
    if unknown:
        raise FedriskInputError(f"drill.institution '{unknown[0]}' is not an institution of this "
                                f"campaign ({', '.join(sorted(admission.names.values())[:5])}, ...)")
    run.set_tags({run_schema.ROBUST: robust.describe(config),
                  **({run_schema.DRILL: robust.describe_drill(config.drill)} if config.drill else {})})
    runner = strategy if noise is None else with_institution_dp(strategy, inst_dp, noise, len(stats))
    if secure.enabled:  # the largest weight any institution can send: its training rows, or 1
        max_weight = 1.0 if inst_dp.enabled else float(max(s["split_rows"]["train"] for s in stats.values()))
        grid = SecureAggregationGrid(grid, secure, max_weight)
        grid.round = strategy.round_offset  # the protocol's round numbers go on after a resumed campaign's
        run.set_tags({run_schema.SECURE_AGGREGATION: (
            f"SecAgg+ (num_shares {secure.num_shares}, reconstruction_threshold {secure.reconstruction_threshold}, "
            f"clipping_range {secure.clipping_range:g}, max_weight {max_weight:g})")})
    stop_reason = ""
    try:
        if rounds > 0:
            runner.start(grid=grid, initial_arrays=initial, num_rounds=rounds, timeout=tr.round_timeout,
                         train_config=ConfigRecord(dict(request)), evaluate_config=ConfigRecord(dict(request)))
    except (CampaignStopped, SecureAggregationFailed) as stop:
        stop_reason = str(stop)
        log.warning("campaign stopped: %s", stop_reason)
    if isinstance(grid, SecureAggregationGrid):
        for step, seconds in enumerate(grid.seconds, start=strategy.round_offset + 1):
            run.log_metrics({run_schema.SECURE_AGGREGATION_SECONDS: seconds}, step=step)
    return Training(strategy, grid, strategy.latest_arrays or initial, stop_reason)


@dataclass(frozen=True)
class Reference:
    """The drift reference (None when no institution could send it) and the evaluation grid."""

    reference: dict[str, Any] | None
    grid: np.ndarray


def build_drift_reference(training: Training, config: CampaignConfig, campaign: str, start: StartingModel) -> Reference:
    """The final model's score (fine grid) and inputs (reference bins) on the training rows, noised
    and summed: the drift reference, and the evaluation grid read from the pooled scores."""
    strategy = training.strategy
    edges = reference_edges({c: b.deciles for c, b in start.bounds.items()}, REFERENCE_BINS)
    request = campaign_request(config, campaign, preprocessor=start.preprocessor.to_json(),
                                      edges=edges)
    replies = query(training.grid, strategy.active_nodes(training.grid), protocol.REFERENCE, request, training.final)
    for msg in replies:  # the model is trained: a failure here costs the reference, not the campaign
        if msg.has_error():
            log.warning("drift reference without node %s: %s", msg.metadata.src_node_id,
                        str(msg.error.reason).strip().splitlines()[-1])
    answers = [msg for msg in replies if not msg.has_error()]
    strategy.note_privacy(answers)
    fine = {protocol.institution_of(msg): protocol.read_counts(msg) for msg in answers}
    if not fine:
        return Reference(None, evaluation_grid(None, edges[SCORE], config.evaluation.bins, config.evaluation.threshold))
    noise = float(np.sqrt(sum(protocol.counts_noise(msg) ** 2 for msg in answers)))
    sums = {column: sum(mine[column] for mine in fine.values()) for column in next(iter(fine.values()))}
    preprocessor = start.preprocessor
    reference = build_reference(sums[SCORE], edges[SCORE], {c: sums[c] for c in preprocessor.numeric}, edges,
                                {c: sums[c] for c in preprocessor.categorical},
                                dict(zip(preprocessor.categorical, preprocessor.vocabularies, strict=True)), noise)
    # the evaluation grid, with the score's deciles among its edges: validation histograms on it
    # coarsen to the deciles exactly (the score's reference, `score_reference`)
    grid = evaluation_grid(sums[SCORE], edges[SCORE], config.evaluation.bins, config.evaluation.threshold, noise,
                           keep=reference["columns"][SCORE]["edges"])
    # Each institution's own distribution on the pooled bins: its windows are compared with
    # it, so that a regional lender is not flagged for differing from the consortium.
    reference["institutions"] = {
        name: {c: (coarsen(counts[c], edges[SCORE], reference["columns"][SCORE]["edges"]) if c == SCORE
                   else counts[c]).tolist() for c in counts}
        for name, counts in fine.items()
    }
    reference["noise"] = {name: protocol.counts_noise(msg) for name, msg in zip(fine, answers, strict=True)}
    reference["rows"] = {name: float(max(np.sum(counts[SCORE]), 0.0)) for name, counts in fine.items()}
    reference["population"] = "training rows of the final model's institutions (the score: their validation rows)"
    reference["grid"] = grid.tolist()
    return Reference(reference, grid)


@dataclass
class FinalEvaluation:
    replies: list[Message]
    validation: dict[str, SplitStatistics]
    test: dict[str, SplitStatistics]
    metrics: dict[str, float]  # the test metrics, under their MLflow names


def evaluate_final(training: Training, config: CampaignConfig, campaign: str, start: StartingModel, grid: np.ndarray,
                   run: CampaignRun) -> FinalEvaluation:
    """Validation and test statistics of the final model on the evaluation grid: test metrics,
    the noise they carry, calibration, the test sums (for the gate)."""
    strategy = training.strategy
    request = campaign_request(config, campaign, preprocessor=start.preprocessor.to_json(),
                                      splits=("validation", "test"), grid=grid, groups=start.groups)
    replies = strategy.usable_replies(
        query(training.grid, strategy.active_nodes(training.grid), protocol.EVALUATE, request, training.final),
        strategy.rounds_done + 1)
    strategy.log_validation(strategy.rounds_done, replies)
    validation, test = split_parts(replies, "validation"), split_parts(replies, "test")
    metrics = split_metrics(test, run_schema.TEST, config, validation)
    if test:
        consortium = pooled(test)
        errors = noise_error(consortium, config)
        metrics.update(run_schema.noise_metrics(run_schema.TEST, errors))
        found = intervals(consortium, config)
        metrics.update(run_schema.interval_metrics(run_schema.TEST, found))
        stats = consortium.overall
        bands = calibration_bands(stats.hist_pos, stats.hist_neg, stats.score_sum_pos + stats.score_sum_neg, stats.edges)
        run.log_dict({"split": "test", "bands": bands, "noise_per_cell": consortium.noise}, run_schema.CALIBRATION_ARTIFACT)
        run.log_dict(statistics_to_dict(stats, consortium.groups, config.evaluation.threshold, consortium.noise),
                     run_schema.TEST_STATISTICS_ARTIFACT)
        run.log_dict({"split": "test", "noise_per_cell": consortium.noise, "draws": NOISE_DRAWS,
                      "standard_deviation": errors,
                      "meaning": "how much each pooled test metric moves under the DP noise the institutions added "
                                 "(parametric bootstrap of the released histograms)",
                      "intervals": {"level": run_schema.INTERVAL_LEVEL, "bounds": {k: list(v) for k, v in found.items()},
                                    "meaning": "the metric plus or minus z standard deviations of a bootstrap that "
                                               "redraws every histogram cell (the rows' sampling) and re-noises it "
                                               "(the DP noise)"}}, run_schema.NOISE_ARTIFACT)
    run.log_metrics(metrics, step=strategy.rounds_done)
    return FinalEvaluation(replies, validation, test, metrics)


def log_privacy(training: Training, config: CampaignConfig, admission: Admission, run: CampaignRun) -> None:
    """What each institution's ledger says it spent: per mechanism, this campaign, for life."""
    strategy = training.strategy
    summaries = {**{n: s["privacy"] for n, s in admission.statistics.items() if s.get("privacy")},
                 **strategy.privacy_summaries}
    lifetime = {n: s["lifetime"] for n, s in summaries.items()}
    metrics = {run_schema.at("epsilon", n): v for n, v in lifetime.items()}
    for name, summary in summaries.items():
        if summary.get("campaign") is not None:
            metrics[run_schema.at("epsilon_campaign", name)] = summary["campaign"]
        for mechanism, value in summary["by_mechanism"].items():
            metrics[run_schema.at(f"epsilon_{mechanism}", name)] = value
    if lifetime:
        metrics[run_schema.EPSILON_FINAL_MAX] = max(lifetime.values())
        strategy.epsilon.update(lifetime)
    run.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)}, step=strategy.rounds_done)
    run.log_dict({
        "accountant": "rdp",
        "federation_epsilon": max(lifetime.values()) if lifetime else None,
        "meaning": "epsilon per institution: its lifetime spend (every campaign and monitoring run, all mechanisms, "
                   "composed under RDP) at its delta; per mechanism: that mechanism alone; the federation's epsilon "
                   "is the maximum over institutions",
        "institutions": {n: {**s, **strategy.privacy.get(n, {})} for n, s in summaries.items()},
        "refused": {n: e for n, e in strategy.excluded.items() if e["kind"] in ("budget", "policy")},
        "institution_level": strategy.institution_privacy or None,
    }, run_schema.LEDGER_ARTIFACT)
    run.log_dict({"excluded": strategy.excluded}, run_schema.EXCLUDED_ARTIFACT)


def log_importance(training: Training, config: CampaignConfig, campaign: str, start: StartingModel, grid: np.ndarray,
                   evaluation: FinalEvaluation, run: CampaignRun) -> None:
    """Validation AUC lost when each feature is ablated, from institutions' summed histograms."""
    strategy = training.strategy
    if not config.evaluation.importance or not evaluation.validation:
        return
    request = campaign_request(config, campaign, preprocessor=start.preprocessor.to_json(),
                                      grid=grid)
    answers = strategy.usable_replies(
        query(training.grid, strategy.active_nodes(training.grid), protocol.IMPORTANCE, request, training.final),
        strategy.rounds_done + 1)
    if not answers:
        return
    ablated: dict[str, list] = {}
    for msg in answers:
        for feature, (pos, neg) in protocol.read_importance(msg).items():
            into = ablated.setdefault(feature, [0, 0])
            into[0] = into[0] + pos
            into[1] = into[1] + neg
    full = pooled({n: evaluation.validation[n] for n in map(protocol.institution_of, answers)
                   if n in evaluation.validation}).overall
    importance = importance_from_histograms((full.hist_pos, full.hist_neg),
                                            {f: (p, n) for f, (p, n) in ablated.items()})
    run.log_metrics({run_schema.importance_metric(f): v for f, v in importance.items()}, step=strategy.rounds_done)
    ranked = sorted(importance.items(), key=lambda kv: -kv[1])
    run.log_dict({"measure": "validation AUC lost when the feature is set to the federated mean/mode",
                  "importance": dict(ranked)}, run_schema.IMPORTANCE_ARTIFACT)


def with_validation(reference: Reference, evaluation: FinalEvaluation) -> dict[str, Any] | None:
    """The reference with the final model's validation performance (the drift baseline)."""
    if reference.reference is None:
        return None
    out = dict(reference.reference)
    validation = {name: part.overall for name, part in evaluation.validation.items()}
    if validation:
        consortium = pooled(evaluation.validation)
        out["performance"] = {POOLED: {**ranking_metrics(consortium.overall),
                                       "auc_noise_sd": auc_noise_sd(consortium.overall, consortium.noise)},
                              **{name: {**ranking_metrics(stats),
                                        "auc_noise_sd": auc_noise_sd(stats, evaluation.validation[name].noise)}
                                 for name, stats in validation.items()}}
        # score histograms of each institution's validation rows: the pooled performance
        # reference of any subset of institutions that report a window
        out["validation"] = {name: {"hist_pos": s.hist_pos.tolist(), "hist_neg": s.hist_neg.tolist(),
                                    "noise": evaluation.validation[name].noise}
                             for name, s in validation.items()}
        out.update(score_reference(out, consortium, evaluation.validation))
    return out


def score_reference(reference: dict[str, Any], consortium: SplitStatistics,
                    validation: dict[str, SplitStatistics]) -> dict[str, Any]:
    """The score's drift reference from the validation histograms (on the evaluation grid, whose
    edges the score's deciles are), not from the training rows' fine grid: a decile then sums a
    few cells of the validation release's low noise instead of twenty of the statistics' noise.
    Validation rows are drawn as the training rows are (credit) or just before the window
    (fraud): as good a reference of the scores."""
    grid, edges = reference["grid"], reference["columns"][SCORE]["edges"]
    # a decile's noise is its cells' together, and the grid is finer towards the top: per decile
    cells = np.sqrt(coarsen(np.append(np.ones(len(grid) + 1), 0.0), grid, edges))

    def deciles(stats: EvalStats) -> list[float]:
        return coarsen(np.append(stats.hist_pos + stats.hist_neg, 0.0), grid, edges).tolist()

    columns = {**reference["columns"], SCORE: {**reference["columns"][SCORE], "counts": deciles(consortium.overall)}}
    institutions = {name: {**own, SCORE: deciles(validation[name].overall)} if name in validation else own
                    for name, own in reference.get("institutions", {}).items()}
    return {"columns": columns, "institutions": institutions,
            "score_noise": {POOLED: (consortium.noise * cells).tolist(),
                            **{n: (v.noise * cells).tolist() for n, v in validation.items()}}}


def record_model(training: Training, start: StartingModel, reference: dict | None, evaluation: FinalEvaluation,
                 config: CampaignConfig, run: CampaignRun) -> dict[str, str]:
    """The model in MLflow with its preprocessing and reference, and the run's closing tags."""
    strategy = training.strategy
    if reference is not None:
        run.log_dict(reference, run_schema.REFERENCE_ARTIFACT)
    model_uri = run.log_model(training.final.to_torch_state_dict(), start.preprocessor, reference)
    tags = {
        run_schema.ROUNDS_COMPLETED: str(strategy.rounds_done),
        run_schema.MODEL_URI: model_uri,
        run_schema.MODEL_NAME: config.tracking.model_name,
        run_schema.STATUS: "stopped" if training.stop_reason else "completed",
    }
    if strategy.epsilon:
        tags[run_schema.EPSILON] = (f"{max(strategy.epsilon.values()):.4f} (max over institutions of their lifetime "
                                    f"spend, delta={run.tags.get(run_schema.DELTA, config.privacy.delta)}, "
                                    "accountant=rdp, every release)")
    if strategy.institution_privacy:
        ip = strategy.institution_privacy
        tags[run_schema.INSTITUTION_EPSILON] = (
            f"{ip['epsilon']:.4f} (institution level, delta={ip['delta']:g}, accountant=rdp, "
            f"{config.privacy.institution_level.clipping}-side clipping {ip['clipping_norm']:g}, noise multiplier "
            f"{ip['noise_multiplier']:.4g})")
    if training.stop_reason:
        tags[run_schema.STOP_REASON] = training.stop_reason
    if strategy.excluded:
        tags[run_schema.EXCLUDED] = "; ".join(str(e["reason"]) for e in strategy.excluded.values())[:4000]
    run.set_tags(tags)
    run.flush()
    return tags


def end(training: Training, tags: dict[str, str], evaluation: FinalEvaluation, admission: Admission,
        config: CampaignConfig, run: CampaignRun) -> None:
    """The audit log's `campaign_ended`: status, rounds, model, epsilon, who took part."""
    strategy = training.strategy
    run.audit("campaign_ended", {
        "status": tags[run_schema.STATUS], "rounds_completed": strategy.rounds_done,
        "model_uri": tags[run_schema.MODEL_URI],
        "epsilon_max": max(strategy.epsilon.values()) if strategy.epsilon else None,
        "delta": config.privacy.delta, "accountant": "rdp",
        "institution_epsilon": strategy.institution_privacy.get("epsilon"),
        "institutions": sorted(admission.statistics), "excluded": sorted(strategy.excluded),
        "stop_reason": training.stop_reason or None,
        "test_auc": evaluation.metrics.get(run_schema.split_metric(run_schema.TEST, "auc")),
    })
    run.ended = True


def judge(config: CampaignConfig, evaluation: FinalEvaluation, run: CampaignRun) -> None:
    """The validation gate on the finished run; a gate that cannot judge leaves the campaign standing."""
    if not config.gate.enabled or not evaluation.test:
        return
    try:
        verdict = validate_run(config.tracking.uri, run.run_id, config.gate.policy, actor=run.actor)
        log.debug("gate verdict: %s", verdict.verdict)
    except FedriskInputError as err:
        run.set_tags({run_schema.GATE_ERROR: err.one_line()[:4000]})


def progress_bar(config: CampaignConfig) -> tuple[tqdm, Callable[[int, dict[str, float]], None]]:
    """A progress bar of the rounds and the callback that advances it."""
    bar = tqdm(total=config.training.rounds, desc="fedrisk", unit="round", file=sys.stderr, dynamic_ncols=True)

    def on_round(server_round: int, metrics: dict[str, float]) -> None:
        postfix = {}
        auc = run_schema.split_metric(run_schema.VALIDATION, "auc")
        if auc in metrics:  # with evaluation.every_round: the model this round started from
            postfix[f"auc(round {server_round - 1})"] = f"{metrics[auc]:.4f}"
        ap = run_schema.split_metric(run_schema.VALIDATION, "average_precision")
        if config.task == "fraud" and ap in metrics:
            postfix[f"auprc(round {server_round - 1})"] = f"{metrics[ap]:.4f}"
        if run_schema.EPSILON_MAX in metrics:
            postfix["eps_max"] = f"{metrics[run_schema.EPSILON_MAX]:.3f}"
        postfix["s/round"] = f"{metrics[run_schema.ROUND_SECONDS]:.1f}"
        bar.set_postfix(postfix)
        bar.update(1)

    return bar, on_round


def _started(config: CampaignConfig, run: CampaignRun) -> dict[str, Any]:
    return {
        "task": config.task, "config_sha256": run.tags[run_schema.CONFIG_SHA256],
        "code_version": run.tags[run_schema.CODE_VERSION],
        "institutions_expected": config.institution_count_hint(), "rounds": config.training.rounds,
        "privacy": {"enabled": config.privacy.enabled, "target_epsilon": config.privacy.target_epsilon,
                    "delta": config.privacy.delta, "accountant": "rdp",
                    "statistics_share": config.privacy.statistics_share,
                    "institution_level": config.privacy.institution_level.model_dump(mode="json")},
        "secure_aggregation": config.secure_aggregation.model_dump(mode="json"),
        "warm_start": config.training.initial_model,
        "aggregation": robust.describe(config),
        **({"drill": config.drill.model_dump(mode="json")} if config.drill else {}),
    }


def run_campaign(grid: Grid, config: CampaignConfig, campaign: str, resume_run: str | None = None) -> None:
    """The whole campaign; its MLflow run and audit entries end however it ends. With
    `resume_run`, the interrupted campaign of that MLflow run goes on after its checkpoint."""
    resume = checkpoint.load(config, campaign) if resume_run else None
    run = CampaignRun(config, campaign, resume_run)
    log.debug("campaign %s: MLflow run %s at %s", campaign, run.run_id, config.tracking.uri)
    try:
        with run.closing():
            if resume is None:  # inside: a log that refuses it ends the run
                run.audit("campaign_started", _started(config, run))
            else:
                run.audit("campaign_resumed", {"after_round": resume.server_round, "rounds": config.training.rounds})
            _phases(grid, config, campaign, run, resume)
    except Exception as exc:
        stopped = isinstance(exc, FedriskInputError)
        # the server's own text only for fedrisk's errors: others may quote a value
        reason = exc.one_line() if stopped else f"{type(exc).__name__} (see the server log)"
        try:
            if not run.ended:  # a failure after the campaign's end (the gate) is not a second end
                run.audit("campaign_ended", {"status": "stopped" if stopped else "failed", "reason": reason})
        except (FedriskInputError, OSError) as audit_error:
            log.warning("audit log: %s", audit_error)
        raise
    except BaseException as exc:  # Ctrl-C: the campaign may resume; the log says where it stopped
        try:
            run.audit("campaign_interrupted", {"run_id": run.run_id, "reason": type(exc).__name__,
                                               "rounds_completed": _rounds_done(run)})
        except (FedriskInputError, OSError) as audit_error:
            log.warning("audit log: %s", audit_error)
        raise


def _rounds_done(run: CampaignRun) -> int:
    history = run.client.get_metric_history(run.run_id, run_schema.ROUND_SECONDS)
    return max((m.step for m in history), default=0)


def _phases(grid: Grid, config: CampaignConfig, campaign: str, run: CampaignRun,
            resume: checkpoint.Checkpoint | None = None) -> None:
    admission = admit(grid, config, campaign, run)
    shared = share_terminal_counts(grid, config, campaign, admission, run)
    start = start_model(grid, config, campaign, admission, run, shared)
    every_round = metrics_grid(config) if config.evaluation.every_round else None
    request = campaign_request(config, campaign, preprocessor=start.preprocessor.to_json(),
                                      grid=every_round, groups=start.groups if every_round is not None else None)
    bar, on_round = progress_bar(config)
    try:
        training = train(grid, config, request, admission, start, run, on_round, resume)
    finally:
        bar.close()
    try:
        reference = build_drift_reference(training, config, campaign, start)
    except FedriskInputError:
        raise
    except Exception as exc:  # the campaign stands; monitoring needs a retrained model
        reference = Reference(None, metrics_grid(config))
        run.set_tags({run_schema.REFERENCE_ERROR: str(exc)[:4000]})
        log.warning("no drift reference: %s", exc)
    evaluation = evaluate_final(training, config, campaign, start, reference.grid, run)
    log_importance(training, config, campaign, start, reference.grid, evaluation, run)
    log_privacy(training, config, admission, run)
    tags = record_model(training, start, with_validation(reference, evaluation), evaluation, config, run)
    end(training, tags, evaluation, admission, config, run)
    checkpoint.remove(config, campaign)
    judge(config, evaluation, run)


def campaign_request(config: CampaignConfig, campaign: str, **fields: Any) -> ConfigRecord:
    """A request of this campaign, carrying the audit log's head for the institutions to witness."""
    return protocol.with_audit_head(protocol.request_config(config_to_json(config), campaign, **fields),
                                    witness.head_of(config.audit.path))


def metrics_grid(config: CampaignConfig) -> np.ndarray:
    """The grid before any score is known: log-odds bins with the operating threshold among the edges."""
    return with_threshold(logit_edges(config.evaluation.bins), config.evaluation.threshold)
