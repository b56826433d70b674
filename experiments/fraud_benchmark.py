"""Fraud throughput: simulator, local features, and round time on ~1 million transactions.

Baselines run side by side on this machine:
- simulator: the handbook's reference generator (Le Borgne et al. 2022, section 3.2: a Python
  loop per customer and day, distances per customer, fraud scenarios day by day), on a
  smaller world because it is slow; compared in transactions per second;
- features: the handbook's pandas implementation (section 3.4: groupby + time-based rolling
  per customer and per terminal) on the same transactions;
- round time: the default fraud campaign (5 issuers, ~1 million transactions) on the real
  Flower simulation engine, against the slowest issuer's pure local DP training round
  (`experiments/benchmark.py`'s measure, as for credit).

    python experiments/fraud_benchmark.py [--out docs/fraud_benchmarks.md] [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
import pandas as pd
from benchmark import (
    overhead,  # experiments/benchmark.py: the same measure as for credit (on fresh institution homes)
)
from report_file import write_report  # experiments/report_file.py

from fedrisk.generators import fraud
from fedrisk.transaction_features import transaction_features


def _median_seconds(fn, repeat: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def handbook_generator(customers: int, terminals: int, days: int, seed: int = 0) -> pd.DataFrame:
    """The reference design as the handbook codes it (loops), for the side-by-side baseline."""
    np.random.seed(seed)
    profiles = []
    for c in range(customers):
        x, y = np.random.uniform(0, 100), np.random.uniform(0, 100)
        mean_amount = np.random.uniform(5, 100)
        profiles.append([c, x, y, mean_amount, mean_amount / 2, np.random.uniform(0, 4)])
    customer_profiles = pd.DataFrame(profiles, columns=["CUSTOMER_ID", "x", "y", "mean_amount", "std_amount",
                                                        "mean_nb_tx_per_day"])
    terminal_xy = np.random.uniform(0, 100, (terminals, 2))
    customer_profiles["available_terminals"] = customer_profiles.apply(
        lambda p: list(np.where(np.sqrt(np.sum(np.square(p[["x", "y"]].to_numpy(float) - terminal_xy), axis=1)) < 5)[0]),
        axis=1)
    rows = []
    for _, p in customer_profiles.iterrows():
        random.seed(int(p.CUSTOMER_ID))
        np.random.seed(int(p.CUSTOMER_ID))
        for day in range(days):
            for _ in range(np.random.poisson(p.mean_nb_tx_per_day)):
                time_tx = int(np.random.normal(86400 / 2, 20000))
                if 0 < time_tx < 86400:
                    amount = np.random.normal(p.mean_amount, p.std_amount)
                    if amount < 0:
                        amount = np.random.uniform(0, p.mean_amount * 2)
                    if len(p.available_terminals) > 0:
                        rows.append([time_tx + day * 86400, day, p.CUSTOMER_ID,
                                     random.choice(p.available_terminals), np.round(amount, 2)])
    tx = pd.DataFrame(rows, columns=["TX_TIME_SECONDS", "TX_TIME_DAYS", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT"])
    tx["TX_FRAUD"] = (tx.TX_AMOUNT > 220).astype(int)
    for day in range(days):
        compromised = pd.Series(range(terminals)).sample(n=max(1, round(2e-4 * terminals)), random_state=day)
        hit = tx[(tx.TX_TIME_DAYS >= day) & (tx.TX_TIME_DAYS < day + 28) & tx.TERMINAL_ID.isin(compromised)]
        tx.loc[hit.index, "TX_FRAUD"] = 1
    for day in range(days):
        stolen = customer_profiles.CUSTOMER_ID.sample(n=max(1, round(6e-4 * customers)), random_state=day).values
        hit = tx[(tx.TX_TIME_DAYS >= day) & (tx.TX_TIME_DAYS < day + 14) & tx.CUSTOMER_ID.isin(stolen)]
        chosen = random.sample(list(hit.index), k=int(len(hit) / 3))
        tx.loc[chosen, "TX_AMOUNT"] = tx.loc[chosen, "TX_AMOUNT"] * 5
        tx.loc[chosen, "TX_FRAUD"] = 1
    return tx


def handbook_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Section 3.4's pandas code: groupby + time-based rolling, per customer and per terminal."""
    def customer(c: pd.DataFrame) -> pd.DataFrame:
        c = c.sort_values("tx_datetime").set_index("tx_datetime", drop=False)
        for w in (1, 7, 30):
            total, count = c.tx_amount.rolling(f"{w}D").sum(), c.tx_amount.rolling(f"{w}D").count()
            c[f"nb_{w}"], c[f"avg_{w}"] = count.to_numpy(), (total / count).to_numpy()
        return c.reset_index(drop=True)

    def terminal(c: pd.DataFrame) -> pd.DataFrame:
        c = c.sort_values("tx_datetime").set_index("tx_datetime", drop=False)
        frauds_delay, count_delay = c.tx_fraud.rolling("7D").sum(), c.tx_fraud.rolling("7D").count()
        for w in (1, 7, 30):
            count = c.tx_fraud.rolling(f"{7 + w}D").count() - count_delay
            c[f"risk_{w}"] = ((c.tx_fraud.rolling(f"{7 + w}D").sum() - frauds_delay) / count).fillna(0).to_numpy()
        return c.reset_index(drop=True)

    cols = ["tx_datetime", "customer_id", "terminal_id", "tx_amount", "tx_fraud"]
    frame = frame[cols]
    out = frame.groupby("customer_id", group_keys=False)[cols].apply(customer)
    return out.groupby("terminal_id", group_keys=False)[list(out.columns)].apply(terminal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/fraud_benchmarks.md")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: small worlds, 30 customers for the pandas features, 2 rounds, 1 repeat")
    args = parser.parse_args()
    lines = ["Measured by `python experiments/fraud_benchmark.py` on this 2-core machine (medians of 3).", "",
             "| measure | fedrisk | baseline run side by side | ratio |", "|---|---|---|---|"]

    small = {"customers": 100, "terminals": 200, "days": 98} if args.quick else {"customers": 500, "terminals": 1000,
                                                                                  "days": 98}
    world = {"customers": 500, "terminals": 1000} if args.quick else {}  # the default consortium's otherwise
    sample_customers = 30 if args.quick else 300
    base_s, base_tx = _median_seconds(lambda: handbook_generator(**small), repeat=1)
    ours_small_s, ours_small = _median_seconds(lambda: fraud.generate_consortium(1, **small, seed=0))
    ours_s, consortium = _median_seconds(lambda: fraud.generate_consortium(**world, seed=42))
    ours_rate, base_rate = len(consortium) / ours_s, len(base_tx) / base_s
    world_label = "a small consortium (--quick)" if args.quick else "default consortium"
    lines.append(f"| simulator, {world_label} ({len(consortium):,} transactions) | {ours_s:.2f} s = "
                 f"{ours_rate:,.0f} tx/s | handbook reference code, {len(base_tx):,} tx in {base_s:.1f} s = "
                 f"{base_rate:,.0f} tx/s | **{ours_rate / base_rate:.0f}x** |")
    lines.append(f"| simulator, a world of the baseline's size ({len(ours_small):,} tx) | {ours_small_s:.3f} s | "
                 f"{base_s:.1f} s | {base_s / ours_small_s:.0f}x |")
    print(lines[-2:], flush=True)

    largest = consortium[consortium.issuer == "inst01"].reset_index(drop=True)

    def ours_features(frame: pd.DataFrame) -> pd.DataFrame:
        return transaction_features(frame.tx_datetime, frame.customer_id, frame.terminal_id, frame.tx_amount,
                                    frame.tx_fraud, [1, 7, 30], 7)

    feat_s, _ = _median_seconds(lambda: ours_features(largest))
    sample = largest[largest.customer_id.isin(largest.customer_id.unique()[:sample_customers])].reset_index(drop=True)
    ref_s, _ = _median_seconds(lambda: handbook_features(sample), repeat=1)
    ours_sample_s, _ = _median_seconds(lambda: ours_features(sample))
    lines.append(f"| local features, largest issuer ({len(largest):,} tx) | {feat_s:.2f} s = "
                 f"{len(largest) / feat_s:,.0f} tx/s | handbook pandas code, {len(sample):,} tx of "
                 f"{sample_customers} customers in {ref_s:.1f} s = {len(sample) / ref_s:,.0f} tx/s | "
                 f"**{(len(largest) / feat_s) / (len(sample) / ref_s):.0f}x** |")
    lines.append(f"| local features, the same {len(sample):,} tx | {ours_sample_s:.3f} s | {ref_s:.1f} s | "
                 f"{ref_s / ours_sample_s:.0f}x |")
    print(lines[-2:], flush=True)

    quick = {"data.synthetic.customers": 500, "data.synthetic.terminals": 1000, "training.rounds": 2}
    lines += ["", *overhead(1 if args.quick else 3, {"task": "fraud", **(quick if args.quick else {})})]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
