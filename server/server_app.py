"""fedrisk ServerApp: one campaign, from federated preprocessing to a model in MLflow.

Run config keys: `config-path` (campaign YAML, absolute), `overrides` (JSON of dotted keys),
`campaign-id` (optional; the CLI sets it to find the MLflow run afterwards).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from tqdm import tqdm

from fedrisk.config import CampaignConfig, check_secure_aggregation, config_to_json, from_run_config
from fedrisk.data_quality import exclusion_reason
from fedrisk.drift import SCORE, build_reference, coarsen, fine_grid
from fedrisk.errors import FedriskInputError
from fedrisk.fairness import merge_group_histograms
from fedrisk.institution import AGGREGATION_WEIGHT
from fedrisk.metrics import EvalStats, calibration_bands, importance_from_histograms
from fedrisk.models import build_model
from fedrisk.preprocessing import Preprocessor, fit_preprocessor, merge_statistics, missing_counts
from fedrisk.privacy import institution_noise_multiplier
from fedrisk.tracking import CampaignRun
from fedrisk.validation import STATISTICS_ARTIFACT, statistics_to_dict, validate_run
from fedrisk.warning_levels import POOLED, ranking_metrics
from server.institution_privacy import with_institution_dp
from server.secure_aggregation import SecureAggregationFailed, SecureAggregationGrid
from server.strategy import (
    CampaignFedAvg,
    CampaignFedProx,
    CampaignMixin,
    CampaignStopped,
    error_reason,
    evaluation_metrics,
    evaluation_parts,
    group_parts,
)

NODE_WAIT_SECONDS = 120.0
REPLY_TIMEOUT_SECONDS = 3600.0

app = ServerApp()


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    """Wait until `expected` nodes are connected or the timeout passes."""
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    last_report = time.monotonic()
    while len(nodes) < expected and time.monotonic() < deadline:
        if time.monotonic() - last_report > 10:
            log(WARNING, "waiting for institutions: %d of %d connected", len(nodes), expected)
            last_report = time.monotonic()
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    if len(nodes) < expected:
        log(WARNING, "going on with %d of %d institutions connected", len(nodes), expected)
    return sorted(nodes)


def _query(grid: Grid, nodes: list[int], message_type: str, content: RecordDict) -> list[Message]:
    messages = [Message(content, dst_node_id=n, message_type=message_type) for n in nodes]
    return list(grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_SECONDS))


def collect_statistics(
    grid: Grid, nodes: list[int], base: ConfigRecord
) -> tuple[dict[int, str], dict[str, dict], dict[str, str], dict[str, dict]]:
    """Ask every node for its preprocessing statistics; returns names, stats, errors and
    what each institution said about its data (fingerprint, rows, quality scorecard)."""
    replies = _query(grid, nodes, "query.statistics", RecordDict({"config": base}))
    names: dict[int, str] = {}
    stats: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            errors[f"node-{node}"] = error_reason(msg.error.code, msg.error.reason, f"node-{node}")[1]
            continue
        name = str(msg.content["who"]["institution"])
        if name in stats:  # two nodes claiming one institution would share one budget
            errors[f"node-{node}"] = f"institution {name}: a second node claims this institution"
            continue
        names[node] = name
        stats[name] = json.loads(str(msg.content["statistics"]["json"]))
    data = {name: s["data"] for name, s in stats.items()}
    # Institutions must share one column schema; the majority's is the consortium's.
    if stats:
        schemas = Counter(json.dumps(s["schema"], sort_keys=True) for s in stats.values())
        consortium = schemas.most_common(1)[0][0]
        for name in [n for n, s in stats.items() if json.dumps(s["schema"], sort_keys=True) != consortium]:
            mine = stats.pop(name)["schema"]
            column = schema_difference(mine, json.loads(consortium))
            errors[name] = f"institution {name}, column '{column}': not of the consortium's schema"
    # Data quality is scored by each institution on its own rows; a low score sits it out.
    for name in [n for n, s in stats.items() if not s["data"]["quality"]["passed"]]:
        mine = stats.pop(name)["data"]
        errors[name] = exclusion_reason(name, mine["source"], mine["quality"])
        data[name]["excluded_for"] = "quality"
    return names, stats, errors, data


def schema_difference(mine: dict, theirs: dict) -> str:
    """First column whose presence or kind differs between two schemas."""
    for kind in ("numeric", "categorical"):
        for column in sorted(set(mine[kind]) ^ set(theirs[kind])):
            return column
    return "(column order)"


def log_feature_importance(
    grid: Grid, strategy: CampaignMixin, final: ArrayRecord, shared: dict, replies: list[Message],
    run: CampaignRun,
) -> None:
    """Validation AUC lost when each feature is ablated, from institutions' summed histograms."""
    answers = strategy.usable_replies(
        _query(grid, strategy.active_nodes(grid), "query.importance",
               RecordDict({"arrays": final, "config": ConfigRecord(shared)})),
        strategy.rounds_done + 1,
    )
    if not answers:
        return
    ablated: dict[str, list] = {}
    for msg in answers:
        for feature, (pos, neg) in json.loads(str(msg.content["importance"]["json"])).items():
            into = ablated.setdefault(feature, [0, 0])
            into[0] = into[0] + np.asarray(pos)
            into[1] = into[1] + np.asarray(neg)
    pooled = sum(evaluation_parts(replies).values(), start=EvalStats(0, 0.0, 0, 0, 0, 0, 0.0))
    importance = importance_from_histograms((pooled.hist_pos, pooled.hist_neg),
                                            {f: (p, n) for f, (p, n) in ablated.items()})
    run.log_metrics({f"importance.{f}": v for f, v in importance.items()}, step=strategy.rounds_done)
    ranked = sorted(importance.items(), key=lambda kv: -kv[1])
    run.log_dict({"measure": "validation AUC lost when the feature is set to the federated mean/mode",
                  "importance": dict(ranked)}, "evaluation/feature_importance.json")


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


def collect_reference(
    grid: Grid, strategy: CampaignMixin, final: ArrayRecord, shared: dict, replies: list[Message],
    preprocessor: Preprocessor, config: CampaignConfig,
) -> dict | None:
    """The drift reference: pooled deciles of the score and inputs on the training rows, and
    the validation metrics, from the institutions' summed counts."""
    replies_ = _query(grid, strategy.active_nodes(grid), "query.reference",
                      RecordDict({"arrays": final, "config": ConfigRecord(shared)}))
    answers = [msg for msg in replies_ if not msg.has_error()]
    for msg in replies_:  # the model is trained: a failure here costs the reference, not the campaign
        if msg.has_error():
            log(WARNING, "drift reference without node %s: %s", msg.metadata.src_node_id,
                str(msg.error.reason).strip().splitlines()[-1])
    if not answers:
        return None
    fine = {str(msg.content["who"]["institution"]): {c: np.asarray(v) for c, v in json.loads(
        str(msg.content["counts"]["json"])).items()} for msg in answers}
    sums = {column: sum(mine[column] for mine in fine.values()) for column in next(iter(fine.values()))}
    grid_edges = fine_grid(preprocessor, config.evaluation.bins)
    numeric = [SCORE, *preprocessor.numeric]
    reference = build_reference({c: sums[c] for c in numeric}, grid_edges,
                                {c: sums[c] for c in preprocessor.categorical},
                                dict(zip(preprocessor.categorical, preprocessor.vocabularies)))
    # Each institution's own distribution on the pooled bins: its windows are compared with
    # it, so that a regional lender is not flagged for differing from the consortium.
    reference["institutions"] = {
        name: {c: (coarsen(counts[c], grid_edges[c], reference["columns"][c]["edges"]) if c in numeric
                   else counts[c]).tolist() for c in counts}
        for name, counts in fine.items()
    }
    validation = evaluation_parts(replies, "validation")
    pooled = sum(validation.values(), start=EvalStats(0, 0.0, 0, 0, 0, 0, 0.0))
    reference["performance"] = {POOLED: ranking_metrics(pooled),
                                **{name: ranking_metrics(stats) for name, stats in validation.items()}}
    # score histograms of each institution's validation rows: the pooled performance
    # reference of any subset of institutions that report a window
    reference["validation"] = {name: {"hist_pos": s.hist_pos.tolist(), "hist_neg": s.hist_neg.tolist()}
                               for name, s in validation.items()}
    reference["rows"] = {name: int(np.sum(counts[SCORE])) for name, counts in fine.items()}
    reference["population"] = "training rows of the final model's institutions"
    return reference


def _progress_callback(bar: tqdm, config: CampaignConfig) -> Callable[[int, dict[str, float]], None]:
    def on_round(server_round: int, metrics: dict[str, float]) -> None:
        # The figures shown are those of the global model this round started from.
        postfix = {"auc": f"{metrics.get('val_auc', float('nan')):.4f}"}
        if config.task == "fraud":
            postfix["auprc"] = f"{metrics.get('val_average_precision', float('nan')):.4f}"
        if "epsilon_max" in metrics:
            postfix["eps_max"] = f"{metrics['epsilon_max']:.3f}"
        postfix["s/round"] = f"{metrics['round_seconds']:.1f}"
        bar.set_postfix(postfix)
        bar.update(1)

    return on_round


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point under `flwr run` and SuperLink: the campaign comes from the run config."""
    config = from_run_config(dict(context.run_config))
    campaign = str(context.run_config.get("campaign-id", "") or "") or uuid.uuid4().hex
    run_campaign(grid, config, campaign)


def app_for(config: CampaignConfig, campaign: str) -> ServerApp:
    """The same ServerApp with an already validated campaign (used by `fedrisk simulate`)."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        run_campaign(grid, config, campaign)

    return bound


def _exclusion_kind(name: str, data: dict[str, dict]) -> str:
    return data.get(name, {}).get("excluded_for", "input")


def run_campaign(grid: Grid, config: CampaignConfig, campaign: str) -> None:
    run = CampaignRun(config, campaign)
    log(INFO, "fedrisk campaign %s: MLflow run %s at %s", campaign, run.run_id, config.tracking.uri)
    started = {
        "task": config.task, "config_sha256": run.tags["fedrisk.config_sha256"],
        "code_version": run.tags["fedrisk.code_version"],
        "institutions_expected": config.institution_count_hint(), "rounds": config.training.rounds,
        "privacy": {"enabled": config.privacy.enabled, "target_epsilon": config.privacy.target_epsilon,
                    "delta": config.privacy.delta, "accountant": config.privacy.accountant,
                    "institution_level": config.privacy.institution_level.model_dump(mode="json")},
        "secure_aggregation": config.secure_aggregation.model_dump(mode="json"),
        "warm_start": config.training.initial_model,
    }
    try:
        with run.closing():
            run.audit("campaign_started", started)  # inside: a log that refuses it ends the run
            _campaign_body(grid, config, campaign, run)
    except Exception as exc:
        stopped = isinstance(exc, FedriskInputError)
        # the server's own text only for fedrisk's errors: others may quote a value
        reason = exc.one_line() if stopped else f"{type(exc).__name__} (see the server log)"
        try:
            if not run.ended:  # a failure after the campaign's end (the gate) is not a second end
                run.audit("campaign_ended", {"status": "stopped" if stopped else "failed", "reason": reason})
        except (FedriskInputError, OSError) as audit_error:
            log(WARNING, "audit log: %s", audit_error)
        raise


def _campaign_body(grid: Grid, config: CampaignConfig, campaign: str, run: CampaignRun) -> None:
    tr = config.training
    expected = config.institution_count_hint() or tr.min_institutions
    nodes = wait_for_nodes(grid, expected, NODE_WAIT_SECONDS)
    base = ConfigRecord({"campaign-config": config_to_json(config), "campaign": campaign})
    names, stats, errors, data = collect_statistics(grid, nodes, base)
    for name, reason in sorted(errors.items()):
        log(WARNING, "excluded %s", reason)
    for name, mine in sorted(data.items()):
        card = mine["quality"]
        run.audit("institution_data", {"institution": name, "fingerprint": mine["fingerprint"],
                                       "source": mine["source"], "rows": mine["rows"],
                                       "quality_score": card["score"], "quality_passed": card["passed"]})
        run.log_metrics({f"dq_score.{name}": card["score"],
                         **{f"dq_{d}.{name}": v["score"] for d, v in card["dimensions"].items()}}, step=0)
    run.log_dict({"min_score": config.data.quality.min_score, "score": "the weakest dimension",
                  "institutions": {n: d["quality"] for n, d in data.items()}}, "institutions/data_quality.json")
    run.set_tags({"fedrisk.institutions": ",".join(sorted(stats))})
    run.log_dict({"excluded": errors}, "institutions/excluded.json")
    if len(stats) < tr.min_institutions:
        for name, reason in sorted(errors.items()):  # the strategy that records exclusions is not set up yet
            run.audit("institution_excluded", {"institution": name, "round": 0, "reason": reason,
                                               "kind": _exclusion_kind(name, data)})
        raise FedriskInputError(
            f"only {len(stats)} institution(s) with usable data, minimum is {tr.min_institutions}: "
            + "; ".join(errors.values())
        )
    check_secure_aggregation(config, len(stats))
    preprocessor = fit_preprocessor(merge_statistics(list(stats.values())))
    model = build_model(config.model, preprocessor.width, config.seed)
    initial = ArrayRecord(model.state_dict())
    if tr.initial_model:  # warm start: the old model's weights need its own preprocessing
        state, preprocessor = warm_start(tr.initial_model, config, preprocessor)
        initial = ArrayRecord(state)
    data_summary = {
        name: {"rows": s["split_rows"], "imputed": missing_counts(s), "fingerprint": s["data"]["fingerprint"],
               **({"days": s["split_days"]} if "split_days" in s else {})}
        for name, s in stats.items()
    }
    run.log_dict({"institutions": data_summary, "features": preprocessor.output_names},
                 "institutions/data_summary.json")
    for name, s in stats.items():
        run.log_metrics({f"rows_train.{name}": s["split_rows"]["train"],
                         f"imputed_values.{name}": sum(missing_counts(s).values())}, step=0)

    strategy_cls = CampaignFedProx if tr.strategy == "fedprox" else CampaignFedAvg
    kwargs = {"proximal_mu": tr.proximal_mu} if tr.strategy == "fedprox" else {}
    inst_dp = config.privacy.institution_level
    noise = (institution_noise_multiplier(inst_dp.target_epsilon, inst_dp.delta, tr.rounds, inst_dp.noise_multiplier)
             if inst_dp.enabled else None)  # a budget the rounds would overspend stops the campaign here
    strategy = strategy_cls(
        fraction_train=tr.fraction,
        min_train_nodes=tr.min_institutions,
        min_evaluate_nodes=tr.min_institutions,
        min_available_nodes=tr.min_institutions,
        weighted_by_key=AGGREGATION_WEIGHT,
        **kwargs,
    )
    bar = tqdm(total=tr.rounds, desc="fedrisk", unit="round", file=sys.stderr, dynamic_ncols=True)
    strategy.setup(
        names=names, min_institutions=tr.min_institutions, seed=config.seed, run=run,
        on_round=_progress_callback(bar, config),
        config=config,
    )
    for name, reason in errors.items():
        strategy.exclude(name, reason, 0, _exclusion_kind(name, data))
    shared = {"campaign-config": config_to_json(config), "campaign": campaign,
              "preprocessor": preprocessor.to_json()}
    runner = strategy if noise is None else with_institution_dp(strategy, inst_dp, noise, len(stats))
    secure = config.secure_aggregation
    if secure.enabled:  # the largest weight any institution can send: its training rows, or 1
        max_weight = 1.0 if inst_dp.enabled else float(max(s["split_rows"]["train"] for s in stats.values()))
        grid = SecureAggregationGrid(grid, secure, max_weight)
        run.set_tags({"fedrisk.secure_aggregation": f"SecAgg+ (num_shares {secure.num_shares}, reconstruction_"
                      f"threshold {secure.reconstruction_threshold}, clipping_range {secure.clipping_range:g}, "
                      f"max_weight {max_weight:g})"})
    stop_reason = ""
    try:
        runner.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=tr.rounds,
            timeout=REPLY_TIMEOUT_SECONDS,
            train_config=ConfigRecord(dict(shared)),
            evaluate_config=ConfigRecord(dict(shared)),
        )
    except (CampaignStopped, SecureAggregationFailed) as stop:
        stop_reason = str(stop)
        log(WARNING, "campaign stopped: %s", stop_reason)
    finally:
        bar.close()
    if isinstance(grid, SecureAggregationGrid):
        for step, seconds in enumerate(grid.seconds, start=1):
            run.log_metrics({"secure_aggregation_seconds": seconds}, step=step)

    final = strategy.latest_arrays or initial
    replies = strategy.usable_replies(
        _query(grid, strategy.active_nodes(grid), "evaluate",
               RecordDict({"arrays": final, "config": ConfigRecord({**shared, "splits": "validation,test"})})),
        strategy.rounds_done + 1,
    )
    strategy.log_validation(strategy.rounds_done, replies)
    test = evaluation_metrics(replies, "test", "test", config)
    run.log_metrics(test, step=strategy.rounds_done)
    test_parts = evaluation_parts(replies, "test")
    if test_parts:
        pooled = sum(test_parts.values(), start=EvalStats(0, 0.0, 0, 0, 0, 0, 0.0))
        bands = calibration_bands(pooled.hist_pos, pooled.hist_neg,
                                  pooled.score_sum_pos + pooled.score_sum_neg, bands=10)
        run.log_dict({"split": "test", "bands": bands}, "evaluation/calibration_test.json")
        groups = merge_group_histograms(list(group_parts(replies, "test").values()))
        run.log_dict(statistics_to_dict(pooled, groups, config.evaluation.threshold), STATISTICS_ARTIFACT)
    if strategy.epsilon:
        run.log_metrics({"epsilon_final_max": max(strategy.epsilon.values())}, step=strategy.rounds_done)
    log_feature_importance(grid, strategy, final, shared, replies, run)
    run.log_dict(
        {
            "accountant": config.privacy.accountant,
            "delta": config.privacy.delta,
            "target_epsilon": config.privacy.target_epsilon,
            "federation_epsilon": max(strategy.epsilon.values()) if strategy.epsilon else None,
            "institutions": strategy.privacy,
            "refused": {n: e for n, e in strategy.excluded.items() if e["kind"] == "budget"},
            "institution_level": strategy.institution_privacy or None,
        },
        "privacy/ledger_snapshot.json",
    )
    run.log_dict({"excluded": strategy.excluded}, "institutions/excluded.json")
    try:
        reference = collect_reference(grid, strategy, final, shared, replies, preprocessor, config)
    except Exception as exc:  # the campaign stands; monitoring needs a retrained model
        reference = None
        run.set_tags({"fedrisk.reference_error": str(exc)[:4000]})
        log(WARNING, "no drift reference: %s", exc)
    if reference is not None:
        run.log_dict(reference, "monitoring/reference.json")
    model_uri = run.log_model(final.to_torch_state_dict(), preprocessor, reference)
    tags = {
        "fedrisk.rounds_completed": str(strategy.rounds_done),
        "fedrisk.model_uri": model_uri,
        "fedrisk.model_name": config.tracking.model_name,
        "fedrisk.status": "stopped" if stop_reason else "completed",
    }
    if strategy.epsilon:
        tags["fedrisk.epsilon"] = (
            f"{max(strategy.epsilon.values()):.4f} (max over institutions, delta="
            f"{config.privacy.delta:g}, accountant={config.privacy.accountant})"
        )
    if strategy.institution_privacy:
        ip = strategy.institution_privacy
        tags["fedrisk.institution_epsilon"] = (
            f"{ip['epsilon']:.4f} (institution level, delta={ip['delta']:g}, accountant=rdp, "
            f"{inst_dp.clipping}-side clipping {ip['clipping_norm']:g}, noise multiplier {ip['noise_multiplier']:.4g})")
    if stop_reason:
        tags["fedrisk.stop_reason"] = stop_reason
    if strategy.excluded:
        tags["fedrisk.excluded"] = "; ".join(str(e["reason"]) for e in strategy.excluded.values())[:4000]
    run.set_tags(tags)
    run.flush()
    run.audit("campaign_ended", {
        "status": tags["fedrisk.status"], "rounds_completed": strategy.rounds_done, "model_uri": model_uri,
        "epsilon_max": max(strategy.epsilon.values()) if strategy.epsilon else None,
        "delta": config.privacy.delta, "accountant": config.privacy.accountant,
        "institution_epsilon": strategy.institution_privacy.get("epsilon"),
        "institutions": sorted(stats), "excluded": sorted(strategy.excluded), "stop_reason": stop_reason or None,
        "test_auc": test.get("test_auc"),
    })
    run.ended = True
    if config.gate.enabled and test_parts:
        try:
            verdict = validate_run(config.tracking.uri, run.run_id, config.gate.policy, actor=run.actor)
            log(INFO, "gate verdict: %s", verdict.verdict)
        except FedriskInputError as err:  # the campaign stands; the gate could not judge it
            run.set_tags({"fedrisk.gate.error": err.one_line()[:4000]})
