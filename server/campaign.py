"""One campaign as a list of named phases, from admission to the gate.

`run_campaign` reads as the campaign does:

1. `admit`: every institution sends its preprocessing statistics and says what its data are;
   bad data, another schema or poor data quality sit an institution out;
2. `start_model`: the shared preprocessing from the summed statistics, and the initial model;
3. `train`: the rounds, on Flower's strategy (plain, SecAgg+ or institution-level DP);
4. `evaluate_final`: validation and test statistics of the final model, summed;
5. `log_privacy`, `log_importance`, `build_reference`: the privacy snapshot, the feature
   importance and the drift reference;
6. `record_model` and `end`: the model in MLflow, the run's tags and the audit log's end;
7. `judge`: the validation gate.

Each phase takes and returns plain values, so a test can drive one alone.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from tqdm import tqdm

from fedrisk import protocol, run_schema
from fedrisk.config import CampaignConfig, check_secure_aggregation, config_to_json
from fedrisk.data_quality import exclusion_reason
from fedrisk.drift import SCORE, build_reference, coarsen, fine_grid
from fedrisk.errors import FedriskInputError
from fedrisk.evaluation import SplitStatistics, pooled, split_metrics
from fedrisk.metrics import calibration_bands, importance_from_histograms
from fedrisk.models import build_model
from fedrisk.preprocessing import (
    Preprocessor,
    fit_preprocessor,
    merge_statistics,
    missing_counts,
)
from fedrisk.privacy import institution_noise_multiplier
from fedrisk.tracking import CampaignRun
from fedrisk.validation import statistics_to_dict, validate_run
from fedrisk.warning_levels import POOLED, ranking_metrics
from server.institution_privacy import with_institution_dp
from server.messaging import REPLY_TIMEOUT_SECONDS, query, wait_for_nodes
from server.secure_aggregation import SecureAggregationFailed, SecureAggregationGrid
from server.strategy import (
    CampaignFedAvg,
    CampaignFedProx,
    CampaignMixin,
    CampaignStopped,
    split_parts,
)

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
    """Ask every institution for its statistics; sit out bad data, another schema, low quality."""
    expected = config.institution_count_hint() or config.training.min_institutions
    nodes = wait_for_nodes(grid, expected)
    replies = query(grid, nodes, protocol.STATISTICS, protocol.request_config(config_to_json(config), campaign))
    admission = Admission({}, {}, {}, {})
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            admission.errors[f"node-{node}"] = protocol.error_reason(msg.error.code, msg.error.reason,
                                                                     f"node-{node}")[1]
            continue
        name = protocol.institution_of(msg)
        if name in admission.statistics:  # two nodes claiming one institution would share one budget
            admission.errors[f"node-{node}"] = f"institution {name}: a second node claims this institution"
            continue
        admission.names[node] = name
        admission.statistics[name] = protocol.read_statistics(msg)
    stats = admission.statistics
    admission.data = {name: s["data"] for name, s in stats.items()}
    if stats:  # institutions must share one column schema; the majority's is the consortium's
        schemas = Counter(json.dumps(s["schema"], sort_keys=True) for s in stats.values())
        consortium = json.loads(schemas.most_common(1)[0][0])
        for name in [n for n, s in stats.items() if s["schema"] != consortium]:
            column = schema_difference(stats.pop(name)["schema"], consortium)
            admission.errors[name] = f"institution {name}, column '{column}': not of the consortium's schema"
    for name in [n for n, s in stats.items() if not s["data"]["quality"]["passed"]]:
        mine = stats.pop(name)["data"]
        admission.errors[name] = exclusion_reason(name, mine["source"], mine["quality"])
        admission.kinds[name] = "quality"
    _record_admission(admission, config, run)
    if len(stats) < config.training.min_institutions:
        for name, reason in sorted(admission.errors.items()):  # the strategy that records exclusions is not set up
            run.audit("institution_excluded", {"institution": name, "round": 0, "reason": reason,
                                               "kind": admission.kind(name)})
        raise FedriskInputError(
            f"only {len(stats)} institution(s) with usable data, minimum is {config.training.min_institutions}: "
            + "; ".join(admission.errors.values()))
    check_secure_aggregation(config, len(stats))
    return admission


def schema_difference(mine: dict, theirs: dict) -> str:
    """First column whose presence or kind differs between two schemas."""
    for kind in ("numeric", "categorical"):
        for column in sorted(set(mine[kind]) ^ set(theirs[kind])):
            return column
    return "(column order)"


def _record_admission(admission: Admission, config: CampaignConfig, run: CampaignRun) -> None:
    for reason in sorted(admission.errors.values()):
        log.warning("excluded %s", reason)
    for name, mine in sorted(admission.data.items()):
        card = mine["quality"]
        run.audit("institution_data", {"institution": name, "fingerprint": mine["fingerprint"],
                                       "source": mine["source"], "rows": mine["rows"],
                                       "quality_score": card["score"], "quality_passed": card["passed"]})
        run.log_metrics(run_schema.data_quality_metrics(name, card), step=0)
    run.log_dict({"min_score": config.data.quality.min_score, "score": "the weakest dimension",
                  "institutions": {n: d["quality"] for n, d in admission.data.items()}},
                 run_schema.DATA_QUALITY_ARTIFACT)
    run.set_tags({run_schema.INSTITUTIONS: ",".join(sorted(admission.statistics))})
    run.log_dict({"excluded": admission.errors}, run_schema.EXCLUDED_ARTIFACT)


@dataclass(frozen=True)
class StartingModel:
    preprocessor: Preprocessor
    initial: ArrayRecord


def start_model(config: CampaignConfig, admission: Admission, run: CampaignRun) -> StartingModel:
    """The shared preprocessing from the summed statistics, and the model the rounds start from."""
    stats = admission.statistics
    preprocessor = fit_preprocessor(merge_statistics(list(stats.values())))
    initial = ArrayRecord(build_model(config.model, preprocessor.width, config.seed).state_dict())
    if config.training.initial_model:  # warm start: the old model's weights need its own preprocessing
        state, preprocessor = warm_start(config.training.initial_model, config, preprocessor)
        initial = ArrayRecord(state)
    summary = {name: {"rows": s["split_rows"], "imputed": missing_counts(s), "fingerprint": s["data"]["fingerprint"],
                      **({"days": s["split_days"]} if "split_days" in s else {})}
               for name, s in stats.items()}
    run.log_dict({"institutions": summary, "features": preprocessor.output_names}, run_schema.DATA_SUMMARY_ARTIFACT)
    for name, s in stats.items():
        run.log_metrics({run_schema.at("rows_train", name): s["split_rows"]["train"],
                         run_schema.at("imputed_values", name): sum(missing_counts(s).values())}, step=0)
    return StartingModel(preprocessor, initial)


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
          run: CampaignRun, on_round: Callable[[int, dict[str, float]], None]) -> Training:
    """The campaign's rounds on Flower's strategy, with SecAgg+ and institution-level DP if asked."""
    tr, inst_dp, secure = config.training, config.privacy.institution_level, config.secure_aggregation
    stats = admission.statistics
    noise = (institution_noise_multiplier(inst_dp.target_epsilon, inst_dp.delta, tr.rounds, inst_dp.noise_multiplier)
             if inst_dp.enabled else None)  # a budget the rounds would overspend stops the campaign here
    strategy_cls = CampaignFedProx if tr.strategy == "fedprox" else CampaignFedAvg
    strategy = strategy_cls(
        fraction_train=tr.fraction, min_train_nodes=tr.min_institutions, min_evaluate_nodes=tr.min_institutions,
        min_available_nodes=tr.min_institutions, weighted_by_key=protocol.AGGREGATION_WEIGHT,
        **({"proximal_mu": tr.proximal_mu} if tr.strategy == "fedprox" else {}),
    )
    strategy.setup(names=admission.names, min_institutions=tr.min_institutions, seed=config.seed, run=run,
                   on_round=on_round, config=config)
    for name, reason in admission.errors.items():
        strategy.exclude(name, reason, 0, admission.kind(name))
    runner = strategy if noise is None else with_institution_dp(strategy, inst_dp, noise, len(stats))
    if secure.enabled:  # the largest weight any institution can send: its training rows, or 1
        max_weight = 1.0 if inst_dp.enabled else float(max(s["split_rows"]["train"] for s in stats.values()))
        grid = SecureAggregationGrid(grid, secure, max_weight)
        run.set_tags({run_schema.SECURE_AGGREGATION: (
            f"SecAgg+ (num_shares {secure.num_shares}, reconstruction_threshold {secure.reconstruction_threshold}, "
            f"clipping_range {secure.clipping_range:g}, max_weight {max_weight:g})")})
    stop_reason = ""
    try:
        runner.start(grid=grid, initial_arrays=start.initial, num_rounds=tr.rounds, timeout=REPLY_TIMEOUT_SECONDS,
                     train_config=ConfigRecord(dict(request)), evaluate_config=ConfigRecord(dict(request)))
    except (CampaignStopped, SecureAggregationFailed) as stop:
        stop_reason = str(stop)
        log.warning("campaign stopped: %s", stop_reason)
    if isinstance(grid, SecureAggregationGrid):
        for step, seconds in enumerate(grid.seconds, start=1):
            run.log_metrics({run_schema.SECURE_AGGREGATION_SECONDS: seconds}, step=step)
    return Training(strategy, grid, strategy.latest_arrays or start.initial, stop_reason)


@dataclass
class FinalEvaluation:
    replies: list[Message]
    validation: dict[str, SplitStatistics]
    test: dict[str, SplitStatistics]
    metrics: dict[str, float]  # the test metrics, under their MLflow names


def evaluate_final(training: Training, config: CampaignConfig, request: ConfigRecord,
                   run: CampaignRun) -> FinalEvaluation:
    """Validation and test statistics of the final model; test metrics, calibration, test sums."""
    strategy = training.strategy
    config_record = ConfigRecord({**request, protocol.SPLITS: "validation,test"})
    replies = strategy.usable_replies(
        query(training.grid, strategy.active_nodes(training.grid), protocol.EVALUATE, config_record, training.final),
        strategy.rounds_done + 1)
    strategy.log_validation(strategy.rounds_done, replies)
    validation, test = split_parts(replies, "validation"), split_parts(replies, "test")
    metrics = split_metrics(test, run_schema.TEST, config, validation)
    run.log_metrics(metrics, step=strategy.rounds_done)
    if test:
        consortium = pooled(test)
        stats = consortium.overall
        bands = calibration_bands(stats.hist_pos, stats.hist_neg, stats.score_sum_pos + stats.score_sum_neg, bands=10)
        run.log_dict({"split": "test", "bands": bands}, run_schema.CALIBRATION_ARTIFACT)
        run.log_dict(statistics_to_dict(stats, consortium.groups, config.evaluation.threshold),
                     run_schema.TEST_STATISTICS_ARTIFACT)
    return FinalEvaluation(replies, validation, test, metrics)


def log_privacy(training: Training, config: CampaignConfig, run: CampaignRun) -> None:
    """What each institution spent, the federation's epsilon (the maximum), and who refused."""
    strategy = training.strategy
    if strategy.epsilon:
        run.log_metrics({run_schema.EPSILON_FINAL_MAX: max(strategy.epsilon.values())}, step=strategy.rounds_done)
    run.log_dict({
        "accountant": "rdp",
        "delta": config.privacy.delta,
        "target_epsilon": config.privacy.target_epsilon,
        "federation_epsilon": max(strategy.epsilon.values()) if strategy.epsilon else None,
        "institutions": strategy.privacy,
        "refused": {n: e for n, e in strategy.excluded.items() if e["kind"] == "budget"},
        "institution_level": strategy.institution_privacy or None,
    }, run_schema.LEDGER_ARTIFACT)
    run.log_dict({"excluded": strategy.excluded}, run_schema.EXCLUDED_ARTIFACT)


def log_importance(training: Training, request: ConfigRecord, evaluation: FinalEvaluation,
                   run: CampaignRun) -> None:
    """Validation AUC lost when each feature is ablated, from institutions' summed histograms."""
    strategy = training.strategy
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
    full = pooled(evaluation.validation).overall
    importance = importance_from_histograms((full.hist_pos, full.hist_neg),
                                            {f: (p, n) for f, (p, n) in ablated.items()})
    run.log_metrics({run_schema.importance_metric(f): v for f, v in importance.items()}, step=strategy.rounds_done)
    ranked = sorted(importance.items(), key=lambda kv: -kv[1])
    run.log_dict({"measure": "validation AUC lost when the feature is set to the federated mean/mode",
                  "importance": dict(ranked)}, run_schema.IMPORTANCE_ARTIFACT)


def build_drift_reference(training: Training, request: ConfigRecord, evaluation: FinalEvaluation,
                          preprocessor: Preprocessor, config: CampaignConfig) -> dict | None:
    """The drift reference: pooled deciles of the score and inputs on the training rows, and
    the validation metrics, from the institutions' summed counts."""
    strategy = training.strategy
    replies = query(training.grid, strategy.active_nodes(training.grid), protocol.REFERENCE, request, training.final)
    for msg in replies:  # the model is trained: a failure here costs the reference, not the campaign
        if msg.has_error():
            log.warning("drift reference without node %s: %s", msg.metadata.src_node_id,
                        str(msg.error.reason).strip().splitlines()[-1])
    fine = {protocol.institution_of(msg): protocol.read_counts(msg) for msg in replies if not msg.has_error()}
    if not fine:
        return None
    sums = {column: sum(mine[column] for mine in fine.values()) for column in next(iter(fine.values()))}
    grid_edges = fine_grid(preprocessor, config.evaluation.bins)
    numeric = [SCORE, *preprocessor.numeric]
    reference = build_reference({c: sums[c] for c in numeric}, grid_edges,
                                {c: sums[c] for c in preprocessor.categorical},
                                dict(zip(preprocessor.categorical, preprocessor.vocabularies, strict=True)))
    # Each institution's own distribution on the pooled bins: its windows are compared with
    # it, so that a regional lender is not flagged for differing from the consortium.
    reference["institutions"] = {
        name: {c: (coarsen(counts[c], grid_edges[c], reference["columns"][c]["edges"]) if c in numeric
                   else counts[c]).tolist() for c in counts}
        for name, counts in fine.items()
    }
    validation = {name: part.overall for name, part in evaluation.validation.items()}
    reference["performance"] = {POOLED: ranking_metrics(pooled(evaluation.validation).overall),
                                **{name: ranking_metrics(stats) for name, stats in validation.items()}}
    # score histograms of each institution's validation rows: the pooled performance
    # reference of any subset of institutions that report a window
    reference["validation"] = {name: {"hist_pos": s.hist_pos.tolist(), "hist_neg": s.hist_neg.tolist()}
                               for name, s in validation.items()}
    reference["rows"] = {name: int(np.sum(counts[SCORE])) for name, counts in fine.items()}
    reference["population"] = "training rows of the final model's institutions"
    return reference


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
        tags[run_schema.EPSILON] = (f"{max(strategy.epsilon.values()):.4f} (max over institutions, delta="
                                    f"{config.privacy.delta:g}, accountant=rdp)")
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
        # The figures shown are those of the global model this round started from.
        postfix = {"auc": f"{metrics.get(run_schema.split_metric(run_schema.VALIDATION, 'auc'), float('nan')):.4f}"}
        if config.task == "fraud":
            ap = metrics.get(run_schema.split_metric(run_schema.VALIDATION, "average_precision"), float("nan"))
            postfix["auprc"] = f"{ap:.4f}"
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
                    "institution_level": config.privacy.institution_level.model_dump(mode="json")},
        "secure_aggregation": config.secure_aggregation.model_dump(mode="json"),
        "warm_start": config.training.initial_model,
    }


def run_campaign(grid: Grid, config: CampaignConfig, campaign: str) -> None:
    """The whole campaign; its MLflow run and audit entries end however it ends."""
    run = CampaignRun(config, campaign)
    log.debug("campaign %s: MLflow run %s at %s", campaign, run.run_id, config.tracking.uri)
    try:
        with run.closing():
            run.audit("campaign_started", _started(config, run))  # inside: a log that refuses it ends the run
            _phases(grid, config, campaign, run)
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


def _phases(grid: Grid, config: CampaignConfig, campaign: str, run: CampaignRun) -> None:
    admission = admit(grid, config, campaign, run)
    start = start_model(config, admission, run)
    request = protocol.request_config(config_to_json(config), campaign, preprocessor=start.preprocessor.to_json())
    bar, on_round = progress_bar(config)
    try:
        training = train(grid, config, request, admission, start, run, on_round)
    finally:
        bar.close()
    evaluation = evaluate_final(training, config, request, run)
    log_privacy(training, config, run)
    log_importance(training, request, evaluation, run)
    try:
        reference = build_drift_reference(training, request, evaluation, start.preprocessor, config)
    except Exception as exc:  # the campaign stands; monitoring needs a retrained model
        reference = None
        run.set_tags({run_schema.REFERENCE_ERROR: str(exc)[:4000]})
        log.warning("no drift reference: %s", exc)
    tags = record_model(training, start, reference, evaluation, config, run)
    end(training, tags, evaluation, admission, config, run)
    judge(config, evaluation, run)
