"""Where the time goes, measured side by side with baselines (not a test; numbers to docs/).

(a) Framework overhead: a round of the default campaign on the Flower simulation engine vs
    the slowest institution's pure local DP training for one round, run in this process.
(b) DP cost: one local epoch with Opacus DP vs without, for fedrisk's batch-gathering
    loader and for the standard per-row DataLoader that Opacus examples use.

Each campaign runs on fresh institution homes (`experiments/homes.py`): unspent budgets under
the shipped default policy. The local DP round uses the noise the institution's own plan
calibrates for the campaign (`fedrisk.budget.plan_campaign`), as its ClientApp does.

    python experiments/benchmark.py [--repeats 5] [--out docs/benchmarks.md] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from homes import fresh_homes  # experiments/homes.py
from mlflow.tracking import MlflowClient
from opacus import PrivacyEngine
from report_file import write_report  # experiments/report_file.py
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedrisk.budget import CampaignPlan, Shape, plan_campaign
from fedrisk.config import CampaignConfig, ModelSpec, load_config
from fedrisk.data import load_institution
from fedrisk.guard import homes_root, load_policy
from fedrisk.launcher import simulate
from fedrisk.ledger import PrivacyLedger
from fedrisk.models import build_model
from fedrisk.preprocessing import exact_preprocessor
from fedrisk.sources import institution_names
from fedrisk.splits import split_institution
from fedrisk.training import DPSettings, train_local

warnings.filterwarnings("ignore")
torch.set_num_threads(1)  # as in the ClientApp: one core per simulated institution
QUICK = {"data.synthetic.rows": 6000, "training.rounds": 2}  # --quick: a smoke test, not a measurement


def institution_matrices(config: CampaignConfig):
    """Each institution's training matrix and privacy shape under the shared preprocessing
    (the federated steps, without their noise)."""
    names = institution_names(config.data)
    parts = {}
    for name in names:
        data = load_institution(config.data, name, config.seed)
        parts[name] = (data, split_institution(data, config.data, config.seed).train)
    columns = next(iter(parts.values()))[0].columns
    pre = exact_preprocessor([train for _, train in parts.values()], columns)
    shapes = {name: Shape(len(train), len(columns.numeric), len(columns.categorical), len(columns.protected),
                          columns.amount is not None) for name, (_, train) in parts.items()}
    return {
        name: (pre.transform(train), train[data.columns.target].to_numpy(np.float32))
        for name, (data, train) in parts.items()
    }, pre, shapes


def dp_plan(config: CampaignConfig, name: str, shape: Shape) -> CampaignPlan:
    """The institution's privacy plan for the campaign under its own policy, as its node
    calibrates it, on an empty ledger held in memory (nothing is reserved or spent)."""
    home = homes_root() / name
    rules = load_policy(home, name).privacy
    ledger = PrivacyLedger(home / "benchmark-ledger-never-written.json", name, rules.lifetime_epsilon, rules.delta)
    return plan_campaign(config, shape, ledger, "benchmark", rules.max_campaign_epsilon, rules.lifetime_epsilon)


def local_round_seconds(config: CampaignConfig, plan: CampaignPlan, x, y) -> float:
    """One institution's DP training round, alone, as its ClientApp runs it."""
    tr, pv = config.training, config.privacy
    model = build_model(config.model, x.shape[1], config.seed)
    start = time.perf_counter()
    train_local(model, x, y, epochs=tr.local_epochs, batch_size=tr.batch_size, learning_rate=tr.learning_rate,
                momentum=tr.momentum, dp=DPSettings(plan.dp_sgd, pv.max_grad_norm),
                positive_weight=tr.positive_weight, focal_gamma=tr.focal_gamma)
    return time.perf_counter() - start


def overhead(repeats: int, overrides: dict | None = None) -> list[str]:
    """Round time of a campaign (the default one unless `overrides`) vs pure local training."""
    work = Path(tempfile.mkdtemp(prefix="fedrisk-bench-"))
    fresh_homes()  # the campaign's institutions start with unspent budgets
    config = load_config(None, {**(overrides or {}), "tracking_uri": f"sqlite:///{work}/mlflow.db"}, work_dir=work)
    matrices, _, shapes = institution_matrices(config)
    plans = {name: dp_plan(config, name, shapes[name]) for name in matrices}
    local = {name: statistics.median(local_round_seconds(config, plans[name], x, y) for _ in range(repeats))
             for name, (x, y) in matrices.items()}
    slowest = max(local.values())
    ideal = max(slowest, sum(local.values()) / 2)  # 2 cores: at best two institutions at once
    start = time.perf_counter()
    outcome = simulate(config)
    wall = time.perf_counter() - start
    if outcome.status != "completed":
        raise SystemExit(f"campaign {outcome.campaign}: {outcome.status} ({outcome.tags})")
    client = MlflowClient(config.tracking.uri)
    rounds = [m.value for m in sorted(client.get_metric_history(outcome.run_id, "round_seconds"), key=lambda m: m.step)]
    steady = statistics.median(rounds[1:] or rounds)
    return [
        "### (a) Round time vs pure local training",
        "",
        f"Default {config.task} campaign ({len(local)} institutions, {config.model.kind}, DP on, "
        f"{config.training.local_epochs} local epoch(s), {sum(len(x) for x, _ in matrices.values()):,} training rows), "
        f"{config.training.rounds} rounds on Flower's simulation engine (Ray, 2 cores).",
        "",
        "| measure | seconds |",
        "|---|---|",
        *[f"| pure local DP round, {n} ({len(matrices[n][0])} rows) | {s:.3f} |" for n, s in local.items()],
        f"| slowest institution alone | {slowest:.3f} |",
        f"| best possible round on 2 cores, max(slowest, sum/2) | {ideal:.3f} |",
        f"| fedrisk round 1 (actors start, data load and cache) | {rounds[0]:.3f} |",
        f"| fedrisk round, median of rounds 2-{len(rounds)} | {steady:.3f} |",
        f"| whole `simulate` call, incl. Ray start, MLflow, model logging | {wall:.1f} |",
        "",
        f"Overhead ratio (steady round / slowest institution's local training): "
        f"**{steady / slowest:.2f}x**; against the 2-core lower bound: **{steady / ideal:.2f}x**. "
        "Reference on this machine for a naive Flower simulation: about 5x.",
        "",
    ]


def _epoch(model: nn.Module, loader, optimizer, criterion) -> None:
    for xb, yb in loader:
        optimizer.zero_grad(set_to_none=True)
        if len(xb):
            criterion(model(xb).squeeze(-1), yb).backward()
        else:
            model(xb).sum().backward()
        optimizer.step()


def standard_epoch_seconds(kind: str, x: np.ndarray, y: np.ndarray, dp: bool, batch: int, sigma: float) -> float:
    """The Opacus-tutorial pipeline: TensorDataset + DataLoader (per-row collation)."""
    model = build_model(ModelSpec(kind=kind), x.shape[1], 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=batch, shuffle=True)
    start = time.perf_counter()
    if dp:
        model, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma,
            max_grad_norm=1.0, poisson_sampling=True)
    _epoch(model, loader, optimizer, nn.BCEWithLogitsLoss())
    return time.perf_counter() - start


def fedrisk_epoch_seconds(kind: str, x: np.ndarray, y: np.ndarray, dp: bool, batch: int, sigma: float) -> float:
    model = build_model(ModelSpec(kind=kind), x.shape[1], 0)
    start = time.perf_counter()
    train_local(model, x, y, epochs=1, batch_size=batch, learning_rate=0.1,
                dp=DPSettings(sigma, 1.0) if dp else None)
    return time.perf_counter() - start


def dp_cost(repeats: int, overrides: dict | None = None) -> list[str]:
    config = load_config(None, overrides)
    matrices, _, _ = institution_matrices(config)
    name = max(matrices, key=lambda n: len(matrices[n][0]))
    x, y = matrices[name]
    batch = config.training.batch_size
    lines = [
        "### (b) One local epoch: DP vs no DP",
        "",
        f"Largest institution ({name}, {len(x)} training rows, {x.shape[1]} inputs), batch "
        f"{batch}, one thread, median of {repeats}; DP times include `make_private`.",
        "",
        "| model | loader | no DP (s) | DP (s) | DP / no DP | DP vs standard DP |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("mlp", "logistic"):
        times = {}
        for loader, fn in (("standard DataLoader", standard_epoch_seconds), ("fedrisk batch loader", fedrisk_epoch_seconds)):
            for dp in (False, True):
                times[loader, dp] = statistics.median(fn(kind, x, y, dp, batch, 1.0) for _ in range(repeats))
        std_dp = times["standard DataLoader", True]
        for loader in ("standard DataLoader", "fedrisk batch loader"):
            plain, private = times[loader, False], times[loader, True]
            lines.append(f"| {kind} | {loader} | {plain:.3f} | {private:.3f} | {private / plain:.2f}x | "
                         f"{std_dp / private:.2f}x faster |" if loader != "standard DataLoader" else
                         f"| {kind} | {loader} | {plain:.3f} | {private:.3f} | {private / plain:.2f}x | baseline |")
        lines.append(
            f"| {kind} | fedrisk DP vs standard plain SGD | {times['standard DataLoader', False]:.3f} | "
            f"{times['fedrisk batch loader', True]:.3f} | "
            f"{times['fedrisk batch loader', True] / times['standard DataLoader', False]:.2f}x | |"
        )
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="smoke test: 6,000 rows, 2 rounds, 1 repeat")
    args = parser.parse_args()
    overrides = QUICK if args.quick else {}
    repeats = 1 if args.quick else args.repeats
    lines = ["# Benchmarks", "", "Measured by `python experiments/benchmark.py` on this 2-core, no-GPU machine.", ""]
    lines += dp_cost(repeats, overrides)
    lines += overhead(repeats, overrides)
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
