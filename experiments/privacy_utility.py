"""Default campaign: federated with DP vs federated without DP vs the same model on pooled data.

Runs the real Flower simulation twice (DP on, DP off), then trains the same model on the
pooled training rows of all institutions (what no consortium may do, as the upper bound) and
scores everything on the pooled test rows. The oracle AUC is that of the generator's true PD.
Each campaign runs on fresh institution homes (`experiments/homes.py`); for the run without DP
every institution's own policy first allows it (`privacy.require_dp: false`).

    python experiments/privacy_utility.py [--rounds N] [--rows N] [--out docs/results.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from baselines import campaign_grid  # experiments/baselines.py
from homes import NO_DP, fresh_homes  # experiments/homes.py
from report_file import markdown_table, write_report  # experiments/report_file.py
from sklearn.metrics import roc_auc_score

from fedrisk import run_schema
from fedrisk.config import CampaignConfig, load_config
from fedrisk.data import load_institution
from fedrisk.generators.credit import true_pd
from fedrisk.launcher import simulate
from fedrisk.metrics import EvalStats, auc_from_histograms
from fedrisk.models import build_model, predict_proba
from fedrisk.preprocessing import exact_preprocessor
from fedrisk.sources import institution_names
from fedrisk.splits import split_institution
from fedrisk.training import train_local


def pooled_baseline(config: CampaignConfig) -> tuple[float, float, pd.DataFrame]:
    """(test AUC, seconds, pooled test rows) of the model trained on pooled rows, no DP, scored
    on the evaluation grid a campaign would read from its training scores."""
    names = institution_names(config.data)
    splits = {}
    for name in names:
        data = load_institution(config.data, name, config.seed)
        splits[name] = (data, split_institution(data, config.data, config.seed))
    columns = next(iter(splits.values()))[0].columns
    train = pd.concat([s.train for _, s in splits.values()], ignore_index=True)
    test = pd.concat([s.test for _, s in splits.values()], ignore_index=True)
    pre = exact_preprocessor([s.train for _, s in splits.values()], columns)
    x, y = pre.transform(train), train[columns.target].to_numpy(np.float32)
    model = build_model(config.model, pre.width, config.seed)
    tr = config.training
    start = time.perf_counter()
    train_local(model, x, y, epochs=tr.rounds * tr.local_epochs, batch_size=tr.batch_size,
                learning_rate=tr.learning_rate, momentum=tr.momentum, seed=config.seed)
    seconds = time.perf_counter() - start
    ev = config.evaluation
    grid = campaign_grid(predict_proba(model, torch.as_tensor(x)).numpy(), ev.bins, ev.threshold)
    scores = predict_proba(model, torch.as_tensor(pre.transform(test))).numpy()
    stats = EvalStats.from_scores(test[columns.target].to_numpy(), scores, grid)
    return auc_from_histograms(stats.hist_pos, stats.hist_neg), seconds, test


def exact_test_auc(config: CampaignConfig, model_uri: str, test: pd.DataFrame) -> float:
    """The model's AUC on the pooled test rows, scored here: what the campaign's noised
    histograms estimate (their noise standard deviation is the run's `test_auc_noise_sd`)."""
    mlflow.set_tracking_uri(config.tracking.uri)
    scores = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(test))
    return float(roc_auc_score(test[config.data.target], scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--rows", type=int, help="rows over all institutions (default: the campaign's 60,000)")
    parser.add_argument("--shares", type=float, nargs="*", default=[0.1, 0.5],
                        help="other privacy.statistics_share values to run besides the default")
    parser.add_argument("--out", default="docs/results.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedrisk-utility-"))
    base = {"tracking_uri": f"sqlite:///{work}/mlflow.db"}
    if args.rounds:
        base["rounds"] = args.rounds
    if args.rows:
        base["data.synthetic.rows"] = args.rows
    config = load_config(None, base, work_dir=work)
    names = institution_names(config.data)
    pooled_auc, seconds, test = pooled_baseline(config)
    default_share = config.privacy.statistics_share
    cases = [("federated, DP (the default)", {}, None),
             *[(f"federated, DP, statistics share {share:g}", {"privacy.statistics_share": share}, None)
               for share in args.shares],
             ("federated, no DP", {"privacy.enabled": False}, NO_DP)]
    rows, deltas = [], set()
    for label, extra, policy in cases:
        fresh_homes(names, policy)  # unspent budgets; without DP, policies that allow it
        start = time.perf_counter()
        campaign = load_config(None, {**base, **extra}, work_dir=work)
        outcome = simulate(campaign)
        wall = time.perf_counter() - start
        if outcome.status != "completed":
            raise SystemExit(f"{label}: campaign {outcome.status} ({outcome.tags})")
        eps = outcome.metrics.get(run_schema.EPSILON_FINAL_MAX)
        dp = campaign.privacy.enabled
        if dp:
            deltas.add(outcome.tags.get(run_schema.DELTA, "?"))
        noise = outcome.metrics.get("test_auc_noise_sd")
        rows.append({"model": label,
                     "test AUC of the model": exact_test_auc(campaign, outcome.tags[run_schema.MODEL_URI], test),
                     "test AUC reported (noise sd)": f"{outcome.metrics['test_auc']:.4f}"
                                                     + (f" ({noise:.4f})" if noise else ""),
                     "ε (max over institutions)": f"{eps:.3f}" if dp else "-",
                     "wall time (s)": f"{wall:.1f}"})
        print(rows[-1], flush=True)
    rows.append({"model": "pooled data, no DP (not allowed; upper bound)", "test AUC of the model": pooled_auc,
                 "test AUC reported (noise sd)": "-", "ε (max over institutions)": "-",
                 "wall time (s)": f"{seconds:.1f} (training only)"})
    oracle = roc_auc_score(test[config.data.target], true_pd(test))
    rows.append({"model": "oracle: the generator's true PD", "test AUC of the model": oracle,
                 "test AUC reported (noise sd)": "-", "ε (max over institutions)": "-", "wall time (s)": "-"})
    dp_auc, nodp_auc = rows[0]["test AUC of the model"], rows[len(cases) - 1]["test AUC of the model"]
    lines = [
        "# Privacy and utility of the default campaign", "",
        f"From `python experiments/privacy_utility.py`: {config.data.synthetic.institutions} institutions, "
        f"{config.data.synthetic.rows} rows, {config.model.kind} {config.model.hidden}, "
        f"{config.training.rounds} rounds x {config.training.local_epochs} local epoch, "
        f"epsilon {config.privacy.target_epsilon} per campaign for every release, stated at each institution's own "
        f"delta ({', '.join(sorted(deltas))}; RDP); statistics share {default_share:g} unless stated. "
        "'Test AUC of the model': the registered model scored here on the pooled test rows of all institutions "
        "(exact). 'Reported': what the campaign computed from the institutions' noised histograms, with the "
        "standard deviation of that noise (parametric bootstrap). Pooled baseline on the campaign's grid.",
        "",
        markdown_table(rows),
        "",
        f"AUC lost to privacy: {100 * (nodp_auc - dp_auc) / nodp_auc:.2f} % relative (consortium limit: 5 %); "
        f"federated DP vs pooled: {100 * (pooled_auc - dp_auc) / pooled_auc:.2f} % relative.",
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
