"""What federated evaluation costs: bytes on the wire, and accuracy lost to binning.

(a) Bytes per institution per round of the evaluation statistics vs the model weights, both
    serialised by Flower's own protobuf serde, for the default campaign.
(b) Federated metric vs pooled metric (scikit-learn, SciPy, fairlearn) as a function of the
    number of score bins, on the default consortium scored by its true PD, for both grids a
    campaign uses: the log-odds grid (before any score is known) and the evaluation grid the
    server places at quantiles of the pooled scores (`fedrisk.metrics.evaluation_grid`).

(c) The same at base rates of 0.1 %, 0.2 %, 1 % (scores crowded near 0, as a fraud model's)
    and 20 %, over seeds: the largest error of the evaluation grid, and of an ideal grid at
    exact quantiles of the scores (what no fine grid limits: the part of the error that is the
    metric's own, e.g. KS on 200 positives).

    python experiments/evaluation_cost.py [--out docs/evaluation_cost.md] [--rows 60000]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from baselines import campaign_grid  # experiments/baselines.py
from fairlearn.metrics import demographic_parity_difference
from flwr.app import ArrayRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from report_file import write_report  # experiments/report_file.py
from scipy.stats import ks_2samp
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from fedrisk.config import load_config
from fedrisk.drift import bin_counts
from fedrisk.evaluation import SplitStatistics
from fedrisk.fairness import (
    fairness_by_attribute,
    group_histograms,
    merge_group_histograms,
)
from fedrisk.generators.credit import generate_consortium, true_pd
from fedrisk.guard import REFERENCE_BINS
from fedrisk.metrics import (
    EvalStats,
    auc_from_histograms,
    average_precision_from_histograms,
    brier_from_bins,
    evaluation_grid,
    ks_from_histograms,
    logit_edges,
    score_histograms,
    with_threshold,
)
from fedrisk.models import build_model
from fedrisk.protocol import evaluation_record

THRESHOLD = 0.2  # the default operating threshold: an edge of every grid


def wire_bytes(bins: int) -> list[str]:
    config = load_config(None, {"evaluation.bins": bins})
    width = 25  # inputs of the default credit model after one-hot encoding
    weights = ArrayRecord(build_model(config.model, width, 0).state_dict())
    grid = with_threshold(logit_edges(bins), config.evaluation.threshold)
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.2).astype(int)
    p = rng.random(2000)
    known = {"sex": ["F", "M"], "age_band": ["18-29", "30-49", "50+"]}  # the consortium's groups, fixed by the server
    groups = {attribute: rng.choice(values, 2000) for attribute, values in known.items()}
    stats = SplitStatistics(EvalStats.from_scores(y, p, grid), group_histograms(y, p, groups, grid, known))
    weight_bytes = recorddict_to_proto(RecordDict({"arrays": weights})).ByteSize()
    eval_bytes = recorddict_to_proto(RecordDict({"evaluation": evaluation_record({"validation": stats})})).ByteSize()
    # A round: weights down and up, validation statistics up.
    share = eval_bytes / (2 * weight_bytes + eval_bytes)
    return [f"| {bins} ({len(grid) + 1}) | {weight_bytes:,} | {eval_bytes:,} | {100 * share:.0f} % |"]


def grids(scores: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """The log-odds grid, and the evaluation grid placed at quantiles of the pooled scores
    (counted, noise-free, on the drift reference's fine grid, as the server reads them)."""
    return {"log-odds": with_threshold(logit_edges(bins), THRESHOLD),
            "at score quantiles": campaign_grid(scores, bins, THRESHOLD)}


def tolerance(bins_list: list[int], rows: int) -> list[str]:
    frames = generate_consortium(total_rows=rows)
    out = []
    pooled = pd.concat(frames.values(), ignore_index=True)
    y, p = pooled["default"].to_numpy(), true_pd(pooled)
    approved = (p < THRESHOLD).astype(int)
    exact = {
        "auc": roc_auc_score(y, p),
        "ks": ks_2samp(p[y == 1], p[y == 0]).statistic,
        "ap": average_precision_score(y, p),
        "brier": brier_score_loss(y, p),
        "dp": demographic_parity_difference(1 - y, approved, sensitive_features=pooled["age_band"]),
    }
    for bins in bins_list:
        for name, edges in grids(p, bins).items():
            parts = [EvalStats.from_scores(f["default"], true_pd(f), edges) for f in frames.values()]
            total = sum(parts, start=EvalStats.empty(edges))
            groups = merge_group_histograms(
                [group_histograms(f["default"], true_pd(f), {"age_band": f["age_band"].to_numpy()}, edges)
                 for f in frames.values()]
            )
            fed = {
                "auc": auc_from_histograms(total.hist_pos, total.hist_neg),
                "ks": ks_from_histograms(total.hist_pos, total.hist_neg),
                "ap": average_precision_from_histograms(total.hist_pos, total.hist_neg),
                "brier": brier_from_bins(total.hist_pos, total.hist_neg, total.means),
                "dp": fairness_by_attribute(groups["age_band"], THRESHOLD, edges)["approval_rate_difference"],
            }
            out.append(f"| {name} | {bins} | {len(edges) + 1} | "
                       + " | ".join(f"{abs(fed[k] - exact[k]):.5f}" for k in exact) + " |")
    return out


BASE_RATES = ((0.001, True), (0.002, True), (0.01, True), (0.2, False))  # (positives, scores crowded near 0)


def base_rates(bins_list: list[int], rows: int = 200_000, seeds: int = 5) -> list[str]:
    """Max |binned - scikit-learn/SciPy| over seeds, on scores of a known model: log-odds normal
    around -7 (crowded) or -1.5, shifted by 2.5 for positives."""
    out = []
    for rate, crowded in BASE_RATES:
        for bins in bins_list:
            errors: dict[str, list[np.ndarray]] = {"evaluation grid": [], "ideal quantile grid": []}
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                y = (rng.random(rows) < rate).astype(int)
                p = 1 / (1 + np.exp(-(rng.normal(-7.0 if crowded else -1.5, 1.0, rows) + 2.5 * y)))
                exact = np.array([roc_auc_score(y, p), ks_2samp(p[y == 1], p[y == 0]).statistic,
                                  average_precision_score(y, p)])
                threshold = 0.01 if crowded else THRESHOLD
                ideal = np.quantile(p, np.linspace(0, 1, 100_001)[1:-1])
                for name, edges in (("evaluation grid", campaign_grid(p, bins, threshold)),
                                    ("ideal quantile grid", evaluation_grid(bin_counts(p, ideal.tolist()), ideal,
                                                                            bins, threshold))):
                    pos, neg = score_histograms(y, p, edges)
                    binned = np.array([auc_from_histograms(pos, neg), ks_from_histograms(pos, neg),
                                       average_precision_from_histograms(pos, neg)])
                    errors[name].append(np.abs(binned - exact))
            worst = {name: np.max(e, axis=0) for name, e in errors.items()}
            out.append(f"| {rate:.1%} | {'yes' if crowded else 'no'} | {int(rate * rows):,} | {bins} | "
                       + " | ".join(f"{v:.4f}" for v in worst["evaluation grid"])
                       + f" | {worst['ideal quantile grid'][1]:.4f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/evaluation_cost.md")
    parser.add_argument("--rows", type=int, default=60_000, help="rows of the consortium in (b)")
    args = parser.parse_args()
    lines = [
        "# The cost of federated evaluation",
        "",
        "Measured by `python experiments/evaluation_cost.py`.",
        "",
        "## Bytes per institution per round (Flower protobuf serde)",
        "",
        "Default MLP (25 inputs, 32 hidden); validation statistics on the log-odds grid with the"
        " operating threshold as an edge (bins asked, in brackets the bins sent): counts and PD sums"
        " per bin by label, plus histograms by label for each of the consortium's groups of sex and"
        " age band (and `other`). A round with `evaluation.every_round` moves the weights down and"
        " up and the statistics up once.",
        "",
        "| bins | model weights (bytes) | evaluation statistics (bytes) | statistics' share of the round |",
        "|---|---|---|---|",
    ]
    for bins in (50, 100, 1000):
        lines += wire_bytes(bins)
    lines += [
        "",
        f"## Binning tolerance: |federated - pooled| on the default consortium ({args.rows:,} rows)",
        "",
        "Scores are the generator's true PD; pooled references are scikit-learn (AUC, average"
        " precision, Brier), SciPy (KS) and fairlearn (approval-rate gap by age band, PD < 0.2)."
        " Grids: log-odds bins, and the campaign's evaluation grid at quantiles of the pooled scores"
        f" (read from a fine grid of {REFERENCE_BINS} bins, so it has at most that many). Brier uses each"
        " bin's mean PD; calibration counts and threshold metrics are exact on any grid (the threshold"
        " is an edge).",
        "",
        "| grid | bins asked | bins | AUC | KS | average precision | Brier | approval-rate gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += tolerance([50, 100, 1000], args.rows)
    lines += [
        "",
        "## Binning tolerance at low and high base rates (200,000 scores, largest error over 5 seeds)",
        "",
        "Scores of a known model: log-odds normal with sd 1 around -7 (crowded near 0, as a fraud model's)"
        " or -1.5, positives shifted by 2.5; references scikit-learn and SciPy. The last column is KS on an"
        " ideal grid at exact score quantiles (no fine grid in the way): what remains there is KS's own"
        " granularity on few positives, not the grid's.",
        "",
        "| positives | crowded | positive rows | bins | AUC | KS | average precision | KS, ideal grid |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += base_rates([50, 100])
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
