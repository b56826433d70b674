"""`fedrisk` command line. Input errors print one line and exit 2; no traceback."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from fedrisk import model_names, run_schema
from fedrisk.cli_output import BLOCKED_EXIT_CODE, print_outcome, set_values
from fedrisk.config import load_config
from fedrisk.environment import quiet
from fedrisk.errors import INPUT_ERROR_EXIT_CODE, FedriskInputError, FourEyesRefused


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("rounds", "institutions", "epsilon", "seed", "tracking_uri"):
        value = getattr(args, key)
        if value is not None:
            out[key] = value
    if args.no_dp:
        out["privacy.enabled"] = False
    out.update(set_values(args.set))
    return out


def _simulate(args: argparse.Namespace) -> int:
    config = load_config(args.config, _overrides(args))
    if args.institutions is not None and config.data.source != "synthetic":
        raise FedriskInputError("--institutions applies to the built-in generator only")
    from fedrisk.launcher import simulate

    if args.resume:  # the campaign's own config; this one only says where its store is
        from fedrisk.launcher import resume

        if args.reference:
            raise FedriskInputError("--resume goes on with one campaign; --reference starts two")
        print(f"fedrisk: resuming campaign {args.resume} in {config.tracking.uri}", file=sys.stderr)
        return print_outcome(*resume(config, args.resume, verbose=args.verbose))
    dp = "on" if config.privacy.enabled else "off"
    print(
        f"fedrisk: {config.task} campaign, {config.institution_count_hint() or '?'} institutions, "
        f"{config.training.rounds} rounds, {config.model.kind}, DP {dp}",
        file=sys.stderr,
    )
    if args.reference:
        from fedrisk.launcher import simulate_with_reference

        outcome = simulate_with_reference(config, verbose=args.verbose)
        print(f"reference    {outcome.tags.get(run_schema.GATE_REFERENCE, '-')} (non-private twin)")
        return print_outcome(config, outcome)
    return print_outcome(config, simulate(config, verbose=args.verbose))


def _monitor(args: argparse.Namespace) -> int:
    from fedrisk.drift_report import window_rows
    from fedrisk.launcher import monitor, simulate
    from fedrisk.monitor_config import load_monitor_config
    from fedrisk.monitoring import plan_monitoring, retrain_config

    overrides = set_values(args.set)
    if args.tracking_uri:
        overrides["tracking.uri"] = args.tracking_uri
    if args.rounds is not None and not args.retrain:
        raise FedriskInputError("--rounds applies to the retraining campaign: add --retrain")
    if args.rounds is not None and args.rounds < 1:
        raise FedriskInputError("--rounds must be at least 1")
    plan = plan_monitoring(load_monitor_config(args.config, overrides), args.model)
    if args.retrain:  # a bad retraining campaign fails now, not after the last window
        retrain_config(plan, 0, args.rounds)
    print(f"fedrisk: monitoring {plan.model.name}/{plan.model.version} ({plan.training.task}) over "
          f"{len(plan.windows)} windows of {len(plan.institutions)} institutions", file=sys.stderr)
    run = monitor(plan.monitor, f"{plan.model.name}/{plan.model.version}", len(plan.institutions),
                  verbose=args.verbose)
    client_report = _download_report(plan.monitor.tracking.uri, run.info.run_id)
    metric = plan.monitor.levels.performance.metric
    print(f"{'window':<12} {'rows':>8} {'score PSI':>9} {'max CSI (input)':<28} {metric + ' (change)':<20} level   why")
    for row in window_rows(client_report):
        print(f"{row['window']:<12} {row['rows']:>8} {row['score PSI']:>9} {row['max CSI (input)']:<28} "
              f"{row[metric + ' (change)']:<20} {row['level']:<7} {'; '.join(row['why'][:2])}")
        for reason in row["not measured"]:
            print(f"{'':<12} not measured: {reason}")
    print(client_report["retrain"]["summary"])
    print(f"MLflow run   {run.info.run_id} (experiment '{plan.monitor.tracking.experiment}'), "
          f"report drift/report.html; tags {run_schema.MONITOR_LEVEL}={run.data.tags.get(run_schema.MONITOR_LEVEL)}")
    print(f"model        {plan.model.name}/{plan.model.version} tagged fedrisk.monitor.level, fedrisk.monitor.run")
    trigger = client_report["retrain"]
    if args.retrain and trigger["triggered"]:
        config = retrain_config(plan, trigger["index"], args.rounds)
        print(f"fedrisk: retraining, warm-started from {plan.model.uri}", file=sys.stderr)
        return print_outcome(config, simulate(config, verbose=args.verbose))
    if args.retrain:
        print("retraining not started: the rule was not met")
    return 0


def _download_report(uri: str, run_id: str) -> dict[str, Any]:
    import json

    from mlflow.tracking import MlflowClient

    from fedrisk.tracking import read_artifact

    text = read_artifact(MlflowClient(uri), run_id, run_schema.DRIFT_REPORT_ARTIFACT)
    if text is None:
        raise RuntimeError(f"the monitoring run {run_id} has no drift/report.json")
    return json.loads(text)


def _validate(args: argparse.Namespace) -> int:
    from fedrisk.validation import validate_run

    if args.reference_uri and not args.reference:
        raise FedriskInputError("--reference-uri goes with --reference RUN")
    verdict = validate_run(_tracking_uri(args), args.run_id, args.policy, audit_log=args.audit_log,
                           reference_run=args.reference, reference_uri=args.reference_uri)
    print(f"verdict {verdict.verdict.upper()} (policy {verdict.policy})")
    for line in verdict.summary_lines():
        print(f"  {line}")
    return BLOCKED_EXIT_CODE if verdict.verdict == "block" else 0


def _promote(args: argparse.Namespace) -> int:
    from fedrisk.model_names import parse_model
    from fedrisk.promotion import APPROVERS_NEEDED, approve, registered_version

    if args.justification and not args.override:
        raise FedriskInputError("--justification goes with --override (a blocked version)")
    named = parse_model(args.model)
    uri = _tracking_uri(args)
    version = named.version or registered_version(uri, named)
    decision = approve(uri, named.name, version, args.approver, override=args.override,
                       justification=args.justification, audit_log=args.audit_log)
    where = f"{decision.model}/{decision.version}"
    if not decision.promoted:
        print(f"approval {len(decision.approvers)} of {APPROVERS_NEEDED} recorded for {where} by {args.approver}"
              f"{' (override)' if decision.override else ''}; waiting for another approver, not the trainer")
    else:
        mark = " OVERRIDE of a blocked gate:" if decision.override else ""
        print(f"{where} is now champion:{mark} approved by {', '.join(decision.approvers)}")
        print(f"previous     {f'{decision.model}/{decision.previous} archived' if decision.previous else 'none'}")
    print(f"audit head   {decision.audit_head}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from fedrisk.audit import default_actor
    from fedrisk.promotion import rollback

    decision = rollback(_tracking_uri(args), args.model, args.approver or default_actor(), reason=args.reason,
                        audit_log=args.audit_log)
    print(f"{decision.model}/{decision.version} is champion again; {decision.model}/{decision.previous} archived")
    print(f"audit head   {decision.audit_head}")
    return 0


def _audit_privacy(args: argparse.Namespace) -> int:
    from fedrisk.privacy_audit import audit_run, summary_lines

    result = audit_run(_tracking_uri(args), args.run_id)
    for line in summary_lines(result):
        print(line)
    out = Path(args.out or f"privacy-audit-{args.run_id[:8]}.json")
    out.write_text(json.dumps(result, indent=1))
    print(f"written to {out}")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from fedrisk import audit, identity
    from fedrisk.tracking import audit_anchors

    path = Path(args.path or audit.DEFAULT_PATH).resolve()
    check = audit.verify(path)
    if not check.intact:
        print(f"audit log {path}: BROKEN at {check.problem}")
        print(f"first bad    line {check.line}; the {check.entries} entries before it are intact")
        return 1
    head = audit.head_tag(check.head) if check.head else "-"
    print(f"audit log {path}: chain intact, {check.entries} entries, head {head}")
    if args.chain_only:
        print("chain only   signatures and anchors not checked (--chain-only): who wrote the entries, and whether "
              "the log was cut short or rewritten whole, is not shown")
        return _witnesses(args.witness, path, None, check.entries)
    status = 0
    from fedrisk.config import absolute_tracking_uri

    uri = absolute_tracking_uri(args.tracking_uri, Path.cwd())  # a missing store is reported, not refused
    store = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    anchors: dict[str, str] | None = None
    if store is not None and not store.is_file():
        print(f"anchors      NOT CHECKED: no MLflow store at {store} (--tracking-uri)")
        status = 1
    else:
        try:
            anchors, foreign = audit_anchors(uri, check.log_id or "", path)
        except Exception as exc:  # an unreachable server: say so, and fail
            print(f"anchors      NOT CHECKED: MLflow store {uri} not reachable ({str(exc).splitlines()[0][:200]})")
            status = 1
    if anchors is not None:
        problem = audit.verify_anchors(path, anchors)
        if foreign:
            where, other = sorted(foreign.items())[0]
            problem = (f"{where} recorded log id {other} at this path; the file holds log {check.log_id}: the log "
                       "was replaced")
        if problem:
            print(f"audit log {path}: BROKEN: {problem}")
            return 1
        if anchors:
            print(f"anchors      {len(anchors)} MLflow run(s) hold a copy of an entry, all match")
        else:
            print(f"anchors      NOT CHECKED: no MLflow run of {uri} holds a copy of this log's head")
            status = 1
        status = max(status, _registry(uri, path))
    try:
        roster = identity.load_roster(args.roster, args.ca)
    except FedriskInputError as err:
        print(f"signatures   NOT CHECKED: {err.detail}")
        return 1
    problem = audit.verify_signatures(path, roster)
    if problem:
        print(f"audit log {path}: BROKEN: {problem}")
        return 1
    print(f"signatures   all {check.entries} entries signed by their roster key ({roster.path})")
    return max(status, _witnesses(args.witness, path, roster, check.entries))


def _registry(uri: str, path: Path) -> int:
    """The registry's champion and challenger aliases against the log's decisions: 1 on any moved by hand."""
    from fedrisk.registry_check import expected_aliases, unexplained_aliases

    problems = unexplained_aliases(uri, path)
    for problem in problems:
        print(f"registry     BROKEN: {problem}")
    if not problems:
        print(f"registry     champion and challenger of {len(expected_aliases(path))} model(s) as the log decided")
    return 1 if problems else 0


def _witnesses(folders: list[str] | None, path: Path, roster: Any, entries: int) -> int:
    """The institutions' witness logs against the coordinator's log: 1 on the first disagreement."""
    from fedrisk import witness

    if not folders:
        return 0
    try:
        checks = [witness.check(path, folder, roster) for folder in folders]
    except FedriskInputError as err:
        print(f"witnesses    NOT CHECKED: {err.one_line()}")
        return 1
    names = sorted({c.institution or "?" for c in checks})
    if len(names) < len(checks):
        print("witnesses    NOT CHECKED: the same institution's witness log given twice (each counts once)")
        return 1
    for check in checks:
        if check.problem:
            print(f"audit log {path}: BROKEN: {check.problem}")
            return 1
    last = max(c.last_seq or 0 for c in checks)
    print(f"witnesses    {len(checks)} institutions ({', '.join(names)}): {sum(c.heads for c in checks)} heads up to "
          f"entry {last}, all match{'' if roster is not None else ' (witness signatures not checked)'}")
    if last < entries:
        print(f"not witnessed entries {last + 1}-{entries}: written after the last message to an institution (a "
              "campaign's end, its gate verdict, approvals); the next campaign's first message covers them")
    return 0


def _report(args: argparse.Namespace) -> int:
    from fedrisk.audit import default_actor
    from fedrisk.evidence import write_evidence

    out = Path(args.out or f"evidence-{args.run_id[:8]}")
    page, data, head = write_evidence(_tracking_uri(args), args.run_id, out, default_actor(), args.audit_log)
    print(f"evidence pack {page} and {data}")
    print(f"MLflow run   {args.run_id}: attached as evidence/report.html and evidence/report.json")
    print(f"audit head   {head} (the pack's hashes are in the log)")
    return 0


def _tracking_uri(args: argparse.Namespace) -> str:
    """The store a command reads; a SQLite file that is not there is refused (MLflow would
    create an empty one in its place, and the command would then say the run does not exist)."""
    from fedrisk.config import absolute_tracking_uri

    uri = absolute_tracking_uri(args.tracking_uri, Path.cwd())
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise FedriskInputError(f"no MLflow store at {uri[len('sqlite:///'):]} (name it with --tracking-uri)")
    return uri


def _inspect(args: argparse.Namespace) -> int:
    from fedrisk.inspection import inspect_file

    proposal, text = inspect_file(args.file, args.task)
    if args.out is None:
        print(text, end="")
        return 0
    Path(args.out).write_text(text)
    for warning in proposal.warnings:
        print(f"fedrisk: warning: {warning}", file=sys.stderr)
    print(f"proposed {proposal.task} data spec written to {args.out}: review every line, add the other "
          f"institutions' files, then run: fedrisk simulate {args.out}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    import mlflow
    import pandas as pd

    from fedrisk.config import absolute_tracking_uri
    from fedrisk.model_names import model_uri
    from fedrisk.scorecard import build_scorecard
    from fedrisk.serving import load_model_files
    from fedrisk.sources import read_table

    mlflow.set_tracking_uri(absolute_tracking_uri(args.tracking_uri, Path.cwd()))
    uri = model_uri(args.model)  # a bad name is its own one line, not a failed load
    try:
        state, preprocessor, spec = load_model_files(uri)
    except Exception as exc:  # MLflow raises several types for an unknown model
        raise FedriskInputError(f"cannot load model {args.model}: {str(exc).splitlines()[0]}") from None
    if spec.kind != "logistic":
        raise FedriskInputError(f"model {args.model} is an {spec.kind}: a points scorecard needs model.kind logistic")
    if args.base_odds <= 0 or args.pdo <= 0 or args.top < 1:
        raise FedriskInputError("--base-odds, --pdo and --top must be positive")
    card = build_scorecard(state, preprocessor, args.base_score, args.base_odds, args.pdo)
    frame = read_table(args.csv)
    missing = [c for c in preprocessor.input_columns if c not in frame.columns]
    if missing:
        raise FedriskInputError("column missing", file=args.csv, column=missing[0])
    for column in preprocessor.numeric:
        bad = pd.to_numeric(frame[column], errors="coerce").isna() & frame[column].notna()
        if bad.any():
            raise FedriskInputError(f"{int(bad.sum())} non-numeric values", file=args.csv, column=column)
    print(f"scorecard: {args.base_score:g} points at odds {args.base_odds:g}:1, {args.pdo:g} points "
          f"to double the odds; base points {card.intercept_points:.1f}")
    print(card.points_table().to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    scores = card.score(frame)
    out = pd.concat([pd.DataFrame({"score": scores.round(1), "pd": card.pd_from_score(scores)},
                                  index=frame.index), card.reason_codes(frame, args.top)], axis=1)
    out.to_csv(args.out, index=False)
    print(f"scores and top {args.top} reason codes of {len(out)} applicants written to {args.out}")
    return 0


STORE_HELP = "the MLflow store (default: sqlite:///mlflow.db, in the current folder)"
EXIT_CODES = ("exit codes: 0 done (a verdict of pass or warn included); 1 a check failed or could not be made "
              "(audit verify); 2 bad input, one line naming institution, file and column; 3 blocked by the gate, or "
              "refused by the four-eyes rules; 130 interrupted (Ctrl-C)")


def _store_options(parser: argparse.ArgumentParser) -> None:
    """Where a decision about a run is read and recorded: its MLflow store and audit log."""
    parser.add_argument("--tracking-uri", dest="tracking_uri", default="sqlite:///mlflow.db", help=STORE_HELP)
    parser.add_argument("--audit-log", dest="audit_log", help="default: the log of the run's campaign")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrisk", description=__doc__, epilog=EXIT_CODES)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run a campaign on Flower's simulation engine")
    sim.add_argument("config", nargs="?", help="campaign YAML (default: built-in credit campaign)")
    sim.add_argument("--rounds", type=int)
    sim.add_argument("--institutions", type=int, help="institutions of the built-in generator")
    sim.add_argument("--epsilon", type=float, help="privacy.target_epsilon per institution")
    sim.add_argument("--seed", type=int)
    sim.add_argument("--tracking-uri", dest="tracking_uri", help="the MLflow store (default: the config's "
                     "tracking.uri, sqlite:///mlflow.db in the current folder)")
    sim.add_argument("--no-dp", action="store_true", help="non-private baseline")
    sim.add_argument("--reference", action="store_true",
                     help="then train the campaign's non-private twin and judge the privacy rule against it "
                          "(every institution's policy must allow privacy.require_dp false; spends their budget)")
    sim.add_argument("--resume", metavar="CAMPAIGN",
                     help="go on with an interrupted campaign (its id) after its last completed round, with the "
                          "config it started with; what the institutions already released is not spent again")
    sim.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override any config key, e.g. --set model.kind=logistic")
    sim.add_argument("-v", "--verbose", action="store_true", help="show Flower and Ray logs")
    sim.set_defaults(func=_simulate)
    val = sub.add_parser("validate", help="apply a gate policy to a campaign's MLflow run")
    val.add_argument("run_id")
    val.add_argument("--policy", help="policy YAML (default: the campaign's gate.policy, else the shipped policy of "
                                      "its task, as configs/gate_<task>.yaml)")
    val.add_argument("--reference", metavar="RUN", help="non-private run of the same set-up for the privacy rule "
                                                        "(overrides the policy's reference_run)")
    val.add_argument("--reference-uri", dest="reference_uri", metavar="URI",
                     help="tracking URI of the reference's store (default: the run's own)")
    _store_options(val)
    val.set_defaults(func=_validate)
    mon = sub.add_parser("monitor", help="watch a registered model's new data windows for drift")
    mon.add_argument("model", nargs="?", help=f"{model_names.HELP}; required unless the --config file sets model:")
    mon.add_argument("--config", help="monitoring YAML (default: built-in, as configs/monitor_credit.yaml)")
    mon.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a monitoring key, e.g. --set windows.synthetic.scenario=downturn")
    mon.add_argument("--tracking-uri", dest="tracking_uri", help="the MLflow store of the model (default: the "
                     "monitoring config's tracking.uri, sqlite:///mlflow.db in the current folder)")
    mon.add_argument("--retrain", action="store_true",
                     help="when the retraining rule is met, run a campaign warm-started from the model")
    mon.add_argument("--rounds", type=int, help="rounds of that retraining campaign")
    mon.add_argument("-v", "--verbose", action="store_true", help="show Flower and Ray logs")
    mon.set_defaults(func=_monitor)
    pro = sub.add_parser("promote", help="approve a registered model version; two approvers make it champion")
    pro.add_argument("model", help=f"{model_names.HELP}; an alias is read once, and the approval names its version")
    pro.add_argument("--approver", required=True, help="your name; not the campaign's trainer")
    pro.add_argument("--override", action="store_true", help="approve a version the gate blocked")
    pro.add_argument("--justification", help="why a blocked version should serve (with --override)")
    _store_options(pro)
    pro.set_defaults(func=_promote)
    rol = sub.add_parser("rollback", help="give the champion alias back to the previous champion")
    rol.add_argument("model", help="registered model name")
    rol.add_argument("--approver", help="who decides the rollback (default: $FEDRISK_ACTOR or the OS user)")
    rol.add_argument("--reason")
    _store_options(rol)
    rol.set_defaults(func=_rollback)
    aud = sub.add_parser("audit", help="check the hash-chained audit log")
    aud_sub = aud.add_subparsers(dest="audit_command", required=True)
    ver = aud_sub.add_parser("verify", help="chain, signatures against the roster, and the copies of its head in "
                                            "MLflow: exit 0 when all hold, 1 naming the first bad entry or what "
                                            "could not be checked")
    ver.add_argument("path", nargs="?", help="audit log (default: .fedrisk/audit.jsonl)")
    ver.add_argument("--tracking-uri", dest="tracking_uri", default="sqlite:///mlflow.db",
                     help="MLflow store whose runs hold copies of the log's head (catches a log cut short; "
                          "default: sqlite:///mlflow.db, in the current folder)")
    ver.add_argument("--roster", help="the consortium's signed roster (default: $FEDRISK_ROSTER)")
    ver.add_argument("--ca", help="the CA's public key the roster must be signed with (default: $FEDRISK_ROSTER_CA)")
    ver.add_argument("--chain-only", dest="chain_only", action="store_true",
                     help="check the hash chain alone and say so (exit 0 when intact)")
    ver.add_argument("--witness", nargs="+", metavar="HOME",
                     help="institutions' homes (or their witness.jsonl): every head they saw and signed must be in "
                          "this log as they saw it")
    ver.set_defaults(func=_audit_verify)
    pa = aud_sub.add_parser("privacy", help="attack a simulated campaign's run whose members are known: singleton "
                                            "bins, stored scores, loss-threshold membership inference")
    pa.add_argument("run_id")
    pa.add_argument("--tracking-uri", dest="tracking_uri", default="sqlite:///mlflow.db", help=STORE_HELP)
    pa.add_argument("--out", help="JSON result (default: privacy-audit-<run>.json)")
    pa.set_defaults(func=_audit_privacy)
    rep = sub.add_parser("report", help="the validators' evidence pack of a campaign run (HTML and JSON)")
    rep.add_argument("run_id")
    rep.add_argument("--out", help="folder (default: evidence-<run>)")
    _store_options(rep)
    rep.set_defaults(func=_report)
    ins = sub.add_parser("inspect", help="profile one institution's file locally and propose its data spec")
    ins.add_argument("file", help="CSV or Parquet file of one institution")
    ins.add_argument("--task", choices=["credit", "fraud"], default=None, help="default: guessed from the columns")
    ins.add_argument("--out", default=None, help="write the proposed spec here (YAML); default: print it")
    ins.set_defaults(func=_inspect)
    exp = sub.add_parser("explain", help="points scorecard and reason codes of a logistic model")
    exp.add_argument("model", help=f"{model_names.HELP}, or any MLflow model URI")
    exp.add_argument("csv", help="applicants (raw feature columns)")
    exp.add_argument("--out", default="reason_codes.csv")
    exp.add_argument("--top", type=int, default=3)
    exp.add_argument("--base-score", dest="base_score", type=float, default=600.0)
    exp.add_argument("--base-odds", dest="base_odds", type=float, default=50.0)
    exp.add_argument("--pdo", type=float, default=20.0)
    exp.add_argument("--tracking-uri", dest="tracking_uri", default="sqlite:///mlflow.db", help=STORE_HELP)
    exp.set_defaults(func=_explain)
    from fedrisk import federation_cli, institution_cli, keys_cli, score_cli

    federation_cli.add_parser(sub)
    institution_cli.add_parser(sub)
    keys_cli.add_parser(sub)
    score_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _entry_point_settings(verbose=bool(getattr(args, "verbose", False)))
    try:
        return int(args.func(args))
    except FourEyesRefused as err:
        print(f"fedrisk: refused: {err.one_line()}", file=sys.stderr)
        return BLOCKED_EXIT_CODE
    except FedriskInputError as err:
        print(f"fedrisk: error: {err.one_line()}", file=sys.stderr)
        return INPUT_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        return 130


def _entry_point_settings(verbose: bool) -> None:
    """What only an entry point sets: warnings, the fedrisk logger's output, the environment."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    quiet()
    logger = logging.getLogger("fedrisk")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("fedrisk: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
