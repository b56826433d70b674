"""What the shared terminal table costs a campaign: wall time and traffic, side by side.

Runs the default fraud campaign (configs/fraud.yaml) with and without consortium features,
alternating, each on fresh institution homes, and reports the whole `simulate` wall time, the
table phase's own time (MLflow `shared_table_seconds`) and each issuer's traffic for the table
(`shared_table_megabytes`: its table up, the sum down, float16). Writes docs/consortium_cost.md.

    python experiments/consortium_cost.py [--repeats 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from homes import fresh_homes  # experiments/homes.py
from report_file import write_report  # experiments/report_file.py

from fedrisk import run_schema
from fedrisk.config import load_config
from fedrisk.launcher import simulate
from fedrisk.sources import institution_names

FRAUD_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fraud.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="docs/consortium_cost.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedrisk-consortium-cost-"))
    rows: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for repeat in range(args.repeats):
        for shared in (False, True):
            config = load_config(str(FRAUD_CONFIG), {"data.transactions.consortium_features": shared,
                                                        "tracking_uri": f"sqlite:///{work}/mlflow.db"}, work_dir=work)
            fresh_homes(institution_names(config.data))
            start = time.perf_counter()
            outcome = simulate(config)
            seconds = time.perf_counter() - start
            if outcome.status != "completed":
                raise SystemExit(f"campaign {outcome.status}")
            rows[shared].append({"seconds": seconds,
                                 "table_seconds": outcome.metrics.get(run_schema.SHARED_TABLE_SECONDS, 0.0),
                                 "megabytes": outcome.metrics.get(run_schema.SHARED_TABLE_MEGABYTES, 0.0)})
            print(f"repeat {repeat + 1} consortium_features={shared}: {seconds:.1f} s", flush=True)
    base = statistics.median(r["seconds"] for r in rows[False])
    with_table = statistics.median(r["seconds"] for r in rows[True])
    table = statistics.median(r["table_seconds"] for r in rows[True])
    lines = [f"Default fraud campaign (configs/fraud.yaml, 5 issuers), `fedrisk simulate` wall time, median of "
             f"{args.repeats} runs each, alternating, on this 2-core machine.", "",
             "| consortium features | campaign wall time (s) | table phase (s) | traffic per issuer (MB) |",
             "|---|---|---|---|",
             f"| off | {base:.1f} | - | - |",
             f"| on | {with_table:.1f} | {table:.1f} | {rows[True][0]['megabytes']:.1f} |", "",
             f"Ratio on / off: **{with_table / base:.2f}x** (runs: off "
             + ", ".join(f"{r['seconds']:.1f}" for r in rows[False]) + "; on "
             + ", ".join(f"{r['seconds']:.1f}" for r in rows[True]) + ")."]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
