"""What the shared terminal table is worth, and what its size, collisions and noise cost.

On the built-in card-transaction simulator (issuers split by customer, terminals shared), for
each seed and consortium size, one model family (fedrisk's MLP, trained on the issuers' pooled
training rows without DP, so that only the inputs differ) on:
- issuer-local features only (what each issuer computes alone);
- exact consortium features: terminal counts and fraud shares over all issuers' transactions,
  with the same label delay (what no issuer can compute: the upper bound);
- the shared table's features (`fedrisk.consortium_features`) at several sketch widths without
  noise (hash collisions only), and at the default width with the Gaussian noise a campaign
  adds for a given epsilon of the table (each issuer's noise, summed over the issuers).
Gap closed = (table - local) / (exact - local), on the test window's AUPRC, pooled and per
issuer. Feature error: mean absolute error of the 7-day fraud share and the 30-day count
against the exact ones, on the test transactions. Writes docs/consortium_results.md (and .csv).

    python experiments/consortium_value.py [--institutions 5 20] [--seeds 42 7 11] [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from homes import default_policy  # experiments/homes.py
from report_file import write_report  # experiments/report_file.py
from sklearn.metrics import average_precision_score

from fedrisk import consortium_features as cf
from fedrisk.budget import shared_counts_releases
from fedrisk.columns import Columns
from fedrisk.config import load_config
from fedrisk.generators.fraud import generate_issuer
from fedrisk.ledger import campaign_epsilon
from fedrisk.models import build_model, predict_proba
from fedrisk.preprocessing import exact_preprocessor
from fedrisk.privacy import smallest_noise
from fedrisk.splits import time_windows
from fedrisk.training import train_local
from fedrisk.transaction_features import terminal_risk, transaction_features, window_names

WIDTHS = [1024, 4096, 8192, 16384, 32768, 65536]
EPSILONS = [0.6, 3.0, 10.0, 30.0]  # of the table alone; 0.6 = the default share (0.2) of a campaign's 3
KEY = bytes(range(32))  # any key: the experiment holds every issuer's rows
torch.set_num_threads(1)  # as a node does: the other core runs whatever runs beside


def table_noise(epsilon: float, delta: float) -> float:
    """Each issuer's noise per cell for a table of `epsilon` alone (as a campaign calibrates it)."""
    found = smallest_noise(lambda z: campaign_epsilon(shared_counts_releases(z), delta), epsilon, 1e4)
    assert found is not None
    return found


def consortium(seed: int, institutions: int, overrides: dict) -> tuple[pd.DataFrame, dict]:
    """Every issuer's transactions with local, exact consortium features and buckets."""
    config = load_config(None, {"task": "fraud", "seed": seed, "institutions": institutions, **overrides})
    syn, tx = config.data.synthetic, config.data.transactions
    parts = []
    for i in range(institutions):
        raw = generate_issuer(i, institutions, syn.customers, syn.terminals, syn.days, seed)
        local = transaction_features(raw.tx_datetime, raw.customer_id, raw.terminal_id, raw.tx_amount, raw.tx_fraud,
                                     tx.windows_days, tx.delay_days)
        parts.append(pd.concat([raw, local], axis=1).assign(issuer=i))
    frame = pd.concat(parts, ignore_index=True)
    seconds = pd.DatetimeIndex(frame.tx_datetime).to_numpy(dtype="datetime64[s]").astype(np.int64)
    exact = terminal_risk(frame.terminal_id.to_numpy(), seconds, frame.tx_fraud.to_numpy(float), tx.windows_days,
                          tx.delay_days)
    for w in tx.windows_days:
        frame[f"exact_nb_tx_{w}d"] = exact[f"terminal_nb_tx_{w}d"]
        frame[f"exact_risk_{w}d"] = exact[f"terminal_risk_{w}d"]
    frame["day"] = pd.DatetimeIndex(frame.tx_datetime).to_numpy(dtype="datetime64[D]").astype(np.int64)
    windows = time_windows(config.data, int(frame.day.max()))
    frame["part"] = ""
    for part, (first, last) in windows.items():
        frame.loc[(frame.day >= first) & (frame.day <= last), "part"] = part
    cal = cf.calendar(windows["train"][0], windows["test"][1], tx.windows_days, tx.delay_days, tx.sketch_cell_days)
    return frame, {"config": config, "calendar": cal}


def fit_and_score(frame: pd.DataFrame, inputs: list[str], config) -> tuple[float, list[float]]:
    """Test AUPRC, pooled and per issuer, of fedrisk's MLP trained on the pooled training rows."""
    columns = Columns(inputs, [], [], "tx_fraud")
    train, test = frame[frame.part == "train"], frame[frame.part == "test"]
    pre = exact_preprocessor([train], columns)
    tr = config.training
    model = build_model(config.model, pre.width, config.seed)
    train_local(model, pre.transform(train), train.tx_fraud.to_numpy(np.float32), epochs=tr.rounds * tr.local_epochs,
                batch_size=tr.batch_size, learning_rate=tr.learning_rate, momentum=tr.momentum, seed=config.seed)
    scores = predict_proba(model, torch.as_tensor(pre.transform(test))).numpy()
    y = test.tx_fraud.to_numpy()
    per = [average_precision_score(y[test.issuer.to_numpy() == i], scores[test.issuer.to_numpy() == i])
           for i in sorted(test.issuer.unique())]
    return average_precision_score(y, scores), per


def with_table(frame: pd.DataFrame, cal: cf.Calendar, width: int, noise_sum: float, config,
               rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, float]]:
    """The frame with the table's features (noise: the summed table's sd per cell) and their error."""
    tx = config.data.transactions
    bucket = cf.buckets(frame.terminal_id, KEY, width)
    table = cf.local_table(frame.day.to_numpy(), bucket, frame.tx_fraud.to_numpy(), cal, width)
    table = table + rng.normal(0.0, noise_sum, table.shape) if noise_sum > 0 else table
    shared = cf.consortium_features(table, cal, frame.day.to_numpy(), bucket, tx.windows_days, tx.delay_days)
    out = pd.concat([frame, shared.set_index(frame.index)], axis=1)
    test = out.part == "test"
    errors = {"risk_7d_mae": float(np.abs(out.loc[test, "consortium_terminal_risk_7d"]
                                          - out.loc[test, "exact_risk_7d"]).mean()),
              "nb_tx_30d_mae": float(np.abs(out.loc[test, "consortium_terminal_nb_tx_30d"]
                                            - out.loc[test, "exact_nb_tx_30d"]).mean())}
    return out, errors


def one(seed: int, institutions: int, overrides: dict) -> list[dict]:
    frame, info = consortium(seed, institutions, overrides)
    config, cal = info["config"], info["calendar"]
    tx = config.data.transactions
    local = ["tx_amount", *window_names(tx.windows_days)]
    exact = [f"exact_{k}_{w}d" for k in ("nb_tx", "risk") for w in tx.windows_days]
    shared = cf.feature_names(tx.windows_days)
    delta = default_policy().privacy.delta
    rows = []

    def record(setting: str, inputs: list[str], data: pd.DataFrame, **extra) -> None:
        start = time.perf_counter()
        auprc, per = fit_and_score(data, inputs, config)
        rows.append({"seed": seed, "institutions": institutions, "setting": setting, "auprc": auprc,
                     **{f"issuer{i + 1}": a for i, a in enumerate(per)}, "seconds": time.perf_counter() - start, **extra})
        print(f"{institutions} issuers seed {seed} {setting:38} AUPRC {auprc:.4f}", flush=True)

    record("local", local, frame)
    record("exact consortium", local + exact, frame)
    rng = np.random.default_rng(seed)
    for width in WIDTHS:
        data, errors = with_table(frame, cal, width, 0.0, config, rng)
        megabytes = 2 * 2 * cal.cells * width * 2 / 1e6  # float16, up and down
        record(f"table, width {width}, no noise", local + shared, data, width=width, epsilon=np.inf,
               megabytes=megabytes, **errors)
    for epsilon in EPSILONS:
        z = table_noise(epsilon, delta)
        data, errors = with_table(frame, cal, tx.sketch_width, z * np.sqrt(institutions), config, rng)
        record(f"table, width {tx.sketch_width}, epsilon {epsilon:g}", local + shared, data, width=tx.sketch_width,
               epsilon=epsilon, noise_per_issuer=z, **errors)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--institutions", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 11])
    parser.add_argument("--out", default="docs/consortium_results.md")
    parser.add_argument("--quick", action="store_true", help="smoke test: 500 customers, 1,000 terminals, 2 rounds")
    args = parser.parse_args()
    overrides = ({"data.synthetic.customers": 500, "data.synthetic.terminals": 1000, "training.rounds": 2}
                 if args.quick else {})
    table = pd.DataFrame([row for n in args.institutions for seed in args.seeds for row in one(seed, n, overrides)])
    out = Path(args.out)
    table.to_csv(out.with_suffix(".csv"), index=False)
    lines = [f"Built-in simulator, seeds {args.seeds}; fedrisk's MLP on the pooled training rows without DP; test "
             "window AUPRC (mean over seeds). Gap closed = (setting - local) / (exact - local).", ""]
    for n in args.institutions:
        part = table[table.institutions == n]
        issuers = [f"issuer{i + 1}" for i in range(n)]
        mean = part.groupby("setting", sort=False)[["auprc", *issuers]].mean()
        low, high = mean.loc["local"], mean.loc["exact consortium"]
        smallest = issuers[-3:]
        lines += [f"### {n} issuers", "",
                  "| setting | AUPRC | gap closed | mean over issuers of gap closed | three smallest issuers' gap closed | "
                  "7-day share MAE | 30-day count MAE | traffic per issuer (MB) |", "|---|---|---|---|---|---|---|---|"]
        for setting, row in mean.iterrows():
            closed = (row.auprc - low.auprc) / (high.auprc - low.auprc)
            per = (row[issuers] - low[issuers]) / (high[issuers] - low[issuers])
            first = part[part.setting == setting].iloc[0]
            lines.append(f"| {setting} | {row.auprc:.3f} | {closed:.0%} | {per.mean():.0%} | "
                         + ", ".join(f"{v:.0%}" for v in per[smallest]) + " | "
                         + (f"{first.risk_7d_mae:.4f} | {first.nb_tx_30d_mae:.2f} | " if "risk_7d_mae" in first
                            and pd.notna(first.risk_7d_mae) else "- | - | ")
                         + (f"{first.megabytes:.1f} |" if "megabytes" in first and pd.notna(first.megabytes) else "- |"))
        lines.append("")
    write_report(out, lines)


if __name__ == "__main__":
    main()
