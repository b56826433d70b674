"""Default campaign: federated with DP vs federated without DP vs the same model on pooled data.

Runs the real Flower simulation twice (DP on, DP off), then trains the same model on the
pooled training rows of all institutions (what no consortium may do, as the upper bound) and
scores everything on the pooled test rows. The oracle AUC is that of the generator's true PD.

    python experiments/privacy_utility.py [--rounds N] [--out docs/results.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from report_file import write_report  # experiments/report_file.py
from sklearn.metrics import roc_auc_score

from fedrisk.config import CampaignConfig, load_config
from fedrisk.data import load_institution
from fedrisk.generators.credit import true_pd
from fedrisk.launcher import simulate
from fedrisk.metrics import EvalStats, auc_from_histograms
from fedrisk.models import build_model, predict_proba
from fedrisk.preprocessing import fit_preprocessor, local_statistics, merge_statistics
from fedrisk.sources import institution_names
from fedrisk.splits import split_institution
from fedrisk.training import train_local


def pooled_baseline(config: CampaignConfig) -> tuple[float, float, pd.DataFrame]:
    """(test AUC, seconds, pooled test rows) of the model trained on pooled rows, no DP."""
    names = institution_names(config.data)
    splits = {}
    for name in names:
        data = load_institution(config.data, name, config.seed)
        splits[name] = (data, split_institution(data, config.data, config.seed))
    columns = next(iter(splits.values()))[0].columns
    train = pd.concat([s.train for _, s in splits.values()], ignore_index=True)
    test = pd.concat([s.test for _, s in splits.values()], ignore_index=True)
    pre = fit_preprocessor(merge_statistics([local_statistics(train, columns)]))
    x, y = pre.transform(train), train[columns.target].to_numpy(np.float32)
    model = build_model(config.model, pre.width, config.seed)
    tr = config.training
    start = time.perf_counter()
    train_local(model, x, y, epochs=tr.rounds * tr.local_epochs, batch_size=tr.batch_size,
                learning_rate=tr.learning_rate, momentum=tr.momentum, seed=config.seed)
    seconds = time.perf_counter() - start
    scores = predict_proba(model, torch.as_tensor(pre.transform(test))).numpy()
    stats = EvalStats.from_scores(test[columns.target].to_numpy(), scores, config.evaluation.bins)
    return auc_from_histograms(stats.hist_pos, stats.hist_neg), seconds, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--out", default="docs/results.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedrisk-utility-"))
    base = {"tracking_uri": f"sqlite:///{work}/mlflow.db", "privacy.ledger_dir": str(work / "ledger")}
    if args.rounds:
        base["rounds"] = args.rounds
    rows = []
    for label, extra in [("federated, DP (default)", {}), ("federated, no DP", {"privacy.enabled": False})]:
        config = load_config(None, {**base, **extra}, work_dir=work)
        start = time.perf_counter()
        outcome = simulate(config)
        wall = time.perf_counter() - start
        eps = outcome.metrics.get("epsilon_final_max")
        rows.append((label, outcome.metrics["test_auc"], f"{eps:.3f}" if eps else "-", f"{wall:.1f}"))
        print(rows[-1], flush=True)
    config = load_config(None, base, work_dir=work)
    pooled_auc, seconds, test = pooled_baseline(config)
    rows.append(("pooled data, no DP (not allowed; upper bound)", pooled_auc, "-", f"{seconds:.1f} (training only)"))
    oracle = roc_auc_score(test[config.data.target], true_pd(test))
    rows.append(("oracle: the generator's true PD", oracle, "-", "-"))
    dp_auc, nodp_auc = rows[0][1], rows[1][1]
    lines = [
        f"Default campaign: {config.data.synthetic.institutions} institutions, "
        f"{config.data.synthetic.rows} rows, {config.model.kind} {config.model.hidden}, "
        f"{config.training.rounds} rounds x {config.training.local_epochs} local epoch, "
        f"target epsilon {config.privacy.target_epsilon} at delta {config.privacy.delta:g} (RDP). "
        "AUC on the pooled test rows of all institutions (computed from summed histograms).",
        "",
        "| model | test AUC | epsilon (max over institutions) | wall time (s) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r[0]} | {r[1]:.4f} | {r[2]} | {r[3]} |" for r in rows]
    lines += ["", f"AUC lost to privacy: {100 * (nodp_auc - dp_auc) / nodp_auc:.2f} % relative "
              f"(consortium limit: 5 %). Federated DP vs pooled: "
              f"{100 * (pooled_auc - dp_auc) / pooled_auc:.2f} % relative."]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
