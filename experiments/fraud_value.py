"""What federating is worth to each card issuer: federated (DP) vs alone vs pooled data.

For each seed (a new simulated consortium), per issuer, on the issuer's own test window:
- federated with DP: the default fraud campaign on the real Flower simulation engine;
- federated without DP: the same campaign, DP off (what privacy costs);
- federated with consortium features, DP and no DP: the same campaigns with the shared terminal
  table (`data.transactions.consortium_features`), its noise included in the DP one;
- alone: the same model trained on the issuer's own rows only, no DP (its best solo option;
  its data never leave it, so it needs no DP), same epochs, its own preprocessing;
- alone with DP: the same at the campaign's epsilon, stated at the delta of the institutions'
  default policy (what it could share under the same rule);
- pooled: the same model trained on every issuer's rows together, no DP (what no consortium
  may do; the upper bound); and pooled with consortium-wide terminal features (the terminal
  counts and fraud shares over every issuer's transactions, exact).
Every figure comes from the project's own fraud metrics, exact (a federated model is scored on
each issuer's rows as its node sees them, consortium columns from the table it received), on
each model's evaluation grid (read from its scores on its training rows, as a campaign's server
does); alert thresholds from each issuer's validation window. Each campaign runs on fresh
institution homes (`experiments/homes.py`); for those without DP every issuer's own policy
first allows it. Writes docs/fraud_results_<institutions>.md, .csv and .png.

    python experiments/fraud_value.py [--institutions 5] [--seeds 42 7 11] [--out FILE.md] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from baselines import campaign_grid  # experiments/baselines.py  # noqa: E402
from homes import NO_DP, default_policy, fresh_homes  # experiments/homes.py  # noqa: E402
from report_file import write_report  # experiments/report_file.py  # noqa: E402

from fedrisk import run_schema  # noqa: E402
from fedrisk.columns import DAY  # noqa: E402
from fedrisk.config import CampaignConfig, load_config  # noqa: E402
from fedrisk.data import load_institution  # noqa: E402
from fedrisk.fraud_metrics import FraudStats, fraud_summary  # noqa: E402
from fedrisk.generators.fraud import generate_issuer  # noqa: E402
from fedrisk.guard import homes_root  # noqa: E402
from fedrisk.launcher import simulate  # noqa: E402
from fedrisk.metrics import EvalStats  # noqa: E402
from fedrisk.models import build_model, predict_proba  # noqa: E402
from fedrisk.preprocessing import Preprocessor, exact_preprocessor  # noqa: E402
from fedrisk.privacy import calibrate_noise_multiplier  # noqa: E402
from fedrisk.serving import load_model_files  # noqa: E402
from fedrisk.session import NodeSession, sketch_key_file  # noqa: E402
from fedrisk.sources import institution_names  # noqa: E402
from fedrisk.splits import Split, split_institution  # noqa: E402
from fedrisk.training import DPSettings, dp_sampling, train_local  # noqa: E402
from fedrisk.transaction_features import terminal_risk  # noqa: E402

METRICS = {"average_precision": "AUPRC", "recall_at_fpr_0.01": "recall at 1 % FPR",
           "recall_at_budget": "recall at 30 alerts/day", "amount_recall_at_budget": "fraud value caught"}
SETTINGS = ["federated, DP", "federated, no DP", "federated + consortium, DP", "federated + consortium, no DP",
            "alone, no DP", "alone, DP", "pooled, no DP", "pooled + consortium-wide, no DP"]
CONSORTIUM = {"data.transactions.consortium_features": True}
warnings.filterwarnings("ignore", message="Secure RNG turned off")  # Opacus, for the local DP baselines
QUICK = {"data.synthetic.customers": 500, "data.synthetic.terminals": 1000, "training.rounds": 2}  # --quick


def _stats(config: CampaignConfig, model: torch.nn.Module, pre: Preprocessor, grid: np.ndarray, frame: pd.DataFrame,
           amount: str, days: int) -> tuple[EvalStats, FraudStats]:
    """A split's statistics on the model's grid, exact, as an issuer counts them (`days`: the window's)."""
    ev = config.evaluation
    y = frame[config.data.target].to_numpy()
    scores = predict_proba(model, torch.as_tensor(pre.transform(frame))).numpy()
    return (EvalStats.from_scores(y, scores, grid),
            FraudStats.from_scores(y, scores, frame[amount].to_numpy(), frame[DAY].to_numpy(), grid,
                                   ev.alerts_per_day, days, ev.amount_cap))


def _train(config: CampaignConfig, splits: dict[str, Split], columns,
           dp: bool) -> tuple[torch.nn.Module, Preprocessor, np.ndarray]:
    """A model on the issuers' pooled training rows, its preprocessing and its evaluation grid."""
    train = pd.concat([s.train for s in splits.values()], ignore_index=True)
    pre = exact_preprocessor([s.train for s in splits.values()], columns)
    x, y = pre.transform(train), train[columns.target].to_numpy(np.float32)
    tr, pv, ev = config.training, config.privacy, config.evaluation
    model = build_model(config.model, pre.width, config.seed)
    settings = None
    if dp:
        rate, steps = dp_sampling(len(x), tr.batch_size)
        sigma = calibrate_noise_multiplier(pv.target_epsilon, default_policy().privacy.delta, rate,
                                           steps * tr.rounds * tr.local_epochs)
        settings = DPSettings(sigma, pv.max_grad_norm)
    train_local(model, x, y, epochs=tr.rounds * tr.local_epochs, batch_size=tr.batch_size,
                learning_rate=tr.learning_rate, momentum=tr.momentum, seed=config.seed, dp=settings,
                positive_weight=tr.positive_weight, focal_gamma=tr.focal_gamma)
    grid = campaign_grid(predict_proba(model, torch.as_tensor(x)).numpy(), ev.bins, ev.threshold)
    return model, pre, grid


def _evaluate(config: CampaignConfig, splits: dict[str, Split], models: dict[str, tuple], amount: str) -> dict[str, float]:
    """Fraud metrics per issuer under their MLflow names, each scored by models[issuer] on its
    grid (thresholds from the issuer's validation window)."""
    ev, ts = config.evaluation, config.data.time_split
    assert ts is not None
    metrics: dict[str, float] = {}
    for name, split in splits.items():
        val = _stats(config, *models[name], split.validation, amount, ts.validation_days)
        test = _stats(config, *models[name], split.test, amount, ts.test_days)
        scores = fraud_summary({name: val}, {name: test}, ev.max_fpr, ev.alerts_per_day)
        metrics.update(run_schema.split_metrics(run_schema.TEST, scores.institutions[name], name,
                                                threshold=ev.threshold, max_fpr=ev.max_fpr, k=ev.alerts_per_day))
    return metrics


def _federated_exact(config: CampaignConfig, outcome, names: list[str]) -> dict[str, float]:
    """Exact fraud metrics of a campaign's model: each issuer's rows as its node saw them (the
    consortium's columns from the table the node kept), scored on the model's grid."""
    state, pre, spec = load_model_files(outcome.tags[run_schema.MODEL_URI], config.tracking.uri)
    model = build_model(spec, pre.width, config.seed)
    model.load_state_dict(state)
    splits = {}
    for name in names:
        session = NodeSession(name, config, homes_root() / name,
                              sketch_key_file=sketch_key_file(name, {}) if config.consortium_features else None)
        session.attach_table(outcome.campaign)
        splits[name] = session.split
    train = pd.concat([s.train for s in splits.values()], ignore_index=True)
    ev = config.evaluation
    grid = campaign_grid(predict_proba(model, torch.as_tensor(pre.transform(train))).numpy(), ev.bins, ev.threshold)
    amount = config.data.transactions.amount
    return _evaluate(config, splits, {n: (model, pre, grid) for n in names}, amount)


def _consortium_wide(config: CampaignConfig, data: dict, splits: dict[str, Split]) -> tuple[dict[str, Split], object]:
    """Each issuer's split with the terminal counts and fraud shares over every issuer's
    transactions (exact, same windows and label delay): what no issuer can compute alone."""
    tx, syn = config.data.transactions, config.data.synthetic
    names = list(splits)
    raw = [generate_issuer(i, len(names), syn.customers, syn.terminals, syn.days, config.seed) for i in range(len(names))]
    pooled = pd.concat(raw, ignore_index=True)
    seconds = pd.DatetimeIndex(pooled[tx.timestamp]).to_numpy(dtype="datetime64[s]").astype(np.int64)
    wide = terminal_risk(pooled[tx.terminal].to_numpy(), seconds, pooled[config.data.target].to_numpy(float),
                         tx.windows_days, tx.delay_days)
    extra = [f"consortium_{name}" for name in wide]
    out, start = {}, 0
    for name, frame in zip(names, raw, strict=True):
        rows = slice(start, start + len(frame))
        start += len(frame)
        full = data[name].frame.copy()
        if len(full) != len(frame):  # load_institution keeps every generated row, in order
            raise SystemExit(f"{name}: {len(full)} loaded rows for {len(frame)} generated")
        for column, values in zip(extra, wide.values(), strict=True):
            full[column] = values[rows]
        out[name] = split_institution(replace(data[name], frame=full), config.data, config.seed)
    columns = data[names[0]].columns
    return out, replace(columns, numeric=columns.numeric + extra)


def one_seed(seed: int, institutions: int, work: Path, overrides: dict | None = None) -> pd.DataFrame:
    base = {**(overrides or {}), "task": "fraud", "seed": seed, "institutions": institutions,
            "tracking_uri": f"sqlite:///{work}/mlflow.db"}
    config = load_config(None, base, work_dir=work)
    names = institution_names(config.data)
    rows: list[dict] = []

    def record(setting: str, metrics: dict[str, float], seconds: float) -> None:
        for name in names:
            rows.append({"seed": seed, "setting": setting, "issuer": name, "seconds": seconds,
                         **{k: metrics[f"test_{k}.{name}"] for k in METRICS}})
        print(f"seed {seed} {setting:18} " + " ".join(
            f"{n}:{metrics[f'test_average_precision.{n}']:.3f}" for n in names), flush=True)

    for setting, extra, policy in [("federated, DP", {}, None),
                                   ("federated, no DP", {"privacy.enabled": False}, NO_DP),
                                   ("federated + consortium, DP", CONSORTIUM, None),
                                   ("federated + consortium, no DP", {**CONSORTIUM, "privacy.enabled": False}, NO_DP)]:
        fresh_homes(names, policy)  # unspent budgets; without DP, policies that allow it
        start = time.perf_counter()
        campaign_config = load_config(None, {**base, **extra}, work_dir=work)
        outcome = simulate(campaign_config)
        if outcome.status != "completed":
            raise SystemExit(f"seed {seed} {setting}: campaign {outcome.status} ({outcome.tags})")
        record(setting, _federated_exact(campaign_config, outcome, names), time.perf_counter() - start)
    data = {n: load_institution(config.data, n, config.seed) for n in names}
    splits = {n: split_institution(d, config.data, config.seed) for n, d in data.items()}
    columns, amount = data[names[0]].columns, data[names[0]].columns.amount
    for setting, dp in [("alone, no DP", False), ("alone, DP", True)]:
        start = time.perf_counter()
        models = {n: _train(config, {n: splits[n]}, columns, dp) for n in names}
        record(setting, _evaluate(config, splits, models, amount), time.perf_counter() - start)
    start = time.perf_counter()
    pooled = _train(config, splits, columns, dp=False)
    record("pooled, no DP", _evaluate(config, splits, {n: pooled for n in names}, amount),
           time.perf_counter() - start)
    start = time.perf_counter()
    wide, wide_columns = _consortium_wide(config, data, splits)
    pooled = _train(config, wide, wide_columns, dp=False)
    record("pooled + consortium-wide, no DP", _evaluate(config, wide, {n: pooled for n in names}, amount),
           time.perf_counter() - start)
    sizes = {n: len(s.train) for n, s in splits.items()}
    frauds = {n: int(s.train[config.data.target].sum()) for n, s in splits.items()}
    out = pd.DataFrame(rows)
    out["train_rows"] = out["issuer"].map(sizes)
    out["train_frauds"] = out["issuer"].map(frauds)
    return out


def _plot(table: pd.DataFrame, path: Path) -> None:
    mean = table.groupby(["issuer", "setting"])["average_precision"].mean().unstack()[SETTINGS]
    err = table.groupby(["issuer", "setting"])["average_precision"].std().unstack()[SETTINGS]
    fig, ax = plt.subplots(figsize=(max(9.0, 0.8 * len(mean)), 3.8))
    width = 0.8 / len(SETTINGS)
    x = np.arange(len(mean))
    for i, setting in enumerate(SETTINGS):
        ax.bar(x + i * width, mean[setting], width, yerr=err[setting].fillna(0), label=setting, capsize=2)
    ax.set_xticks(x + width * (len(SETTINGS) - 1) / 2, mean.index)
    ax.set(ylabel="test AUPRC", title="Each issuer's fraud detection: federated vs alone vs pooled")
    ax.legend(fontsize=8, ncol=3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 11])
    parser.add_argument("--institutions", type=int, default=5, help="issuers sharing the 5,000 customers")
    parser.add_argument("--out", help="default: docs/fraud_results_<institutions>.md (+ .csv, .png)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 500 customers, 1,000 terminals, 2 rounds")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedrisk-fraud-value-"))
    overrides = QUICK if args.quick else {}
    table = pd.concat([one_seed(seed, args.institutions, work, overrides) for seed in args.seeds], ignore_index=True)
    out = Path(args.out or f"docs/fraud_results_{args.institutions}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    _plot(table, out.with_suffix(".png"))
    mean = table.groupby(["issuer", "setting"])[list(METRICS)].mean()
    lines = [
        f"Fraud campaign of configs/fraud.yaml with {args.institutions} issuers, seeds {args.seeds}: "
        "each seed is a new simulated "
        "consortium. Test window of each issuer; mean over seeds (sd in brackets for AUPRC). Alert "
        "thresholds from each issuer's validation window.", "",
        "| issuer | train transactions (frauds), first seed | " + " | ".join(f"AUPRC {s}" for s in SETTINGS) + " |",
        "|---|---|" + "---|" * len(SETTINGS),
    ]
    sd = table.groupby(["issuer", "setting"])["average_precision"].std()
    for issuer in sorted(table.issuer.unique()):
        first = table[(table.issuer == issuer)].iloc[0]
        cells = [f"{mean.loc[(issuer, s), 'average_precision']:.3f} ({sd.loc[(issuer, s)]:.3f})" for s in SETTINGS]
        lines.append(f"| {issuer} | {int(first.train_rows):,} ({int(first.train_frauds)}) | " + " | ".join(cells) + " |")
    lines += ["", "Other metrics (mean over seeds and issuers):", "",
              "| setting | " + " | ".join(METRICS.values()) + " |", "|---|" + "---|" * len(METRICS)]
    overall = table.groupby("setting")[list(METRICS)].mean()
    for s in SETTINGS:
        lines.append(f"| {s} | " + " | ".join(f"{overall.loc[s, k]:.3f}" for k in METRICS) + " |")
    write_report(out, lines)


if __name__ == "__main__":
    main()
