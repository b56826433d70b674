"""The monitoring guide's worked example, measured: train, then watch three drift scenarios.

In a fresh folder: the default credit campaign, then `fedrisk monitor` on the default
population shift, on a downturn (with warm-started retraining) and, for the default fraud
campaign, on a new fraud pattern. The charts of the first two runs are copied to
docs/monitoring/; the command lines' tables and the timings go to docs/monitoring_results.md.

Institution homes (`experiments/homes.py`): the lenders and the card issuers are two
consortia, each on fresh homes under the shipped default policy. The lenders' two campaigns
and two monitoring runs all spend the same customers' lifetime budget (their ledgers compose
them), so the retraining campaign gets what is left of it.

Speed: the time of a monitoring window through the Flower engine against the same work done
locally in one process (each institution loads its window, scores it, counts it on the
reference bins and charges its ledger, one after the other, on homes of its own): the overhead
of running it as a federation.

    python experiments/monitoring_demo.py [--work /tmp/fedrisk-monitoring] [--out docs/monitoring_results.md]
        [--charts docs/monitoring] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
from homes import fresh_homes  # experiments/homes.py
from mlflow.tracking import MlflowClient
from report_file import write_report  # experiments/report_file.py

from fedrisk.drift import SCORE
from fedrisk.institution import window_statistics
from fedrisk.monitor_config import load_monitor_config
from fedrisk.monitoring import plan_monitoring
from fedrisk.session import open_session

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# --quick: a smoke test on small data, not a measurement
QUICK_CREDIT = ["--rounds", "2", "--set", "data.synthetic.rows=6000"]
QUICK_FRAUD = ["--rounds", "2", "--set", "data.synthetic.customers=500", "--set", "data.synthetic.terminals=1000"]
QUICK_WINDOWS = {"windows.synthetic.severities": [0.0, 1.0]}
QUICK_CREDIT_WINDOWS = {**QUICK_WINDOWS, "windows.synthetic.rows": 3000}


def _set(values: dict) -> list[str]:
    """Monitoring config overrides as `fedrisk monitor --set KEY=VALUE` arguments."""
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def _fedrisk(work: Path, *args: str) -> tuple[str, float]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 3):
        raise RuntimeError(f"fedrisk {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout, seconds


def _local_seconds(work: Path, model: str, config: str | None, overrides: dict) -> tuple[float, int]:
    """Per-window time of the same measurement done locally, institution after institution, each
    on a fresh home of its own (the example's ledgers are left as the federation left them)."""
    monitor = load_monitor_config(config, {**overrides, "tracking.uri": f"sqlite:///{work}/mlflow.db"}, work_dir=work)
    plan = plan_monitoring(monitor, model)
    edges = {c: s["edges"] for c, s in plan.reference["columns"].items() if s["kind"] == "numeric"}
    grid = np.asarray(plan.reference["grid"])
    fresh_homes(prefix="fedrisk-monitoring-local-")
    start = time.perf_counter()
    rows = 0.0
    for index, (_, config_json, _) in enumerate(plan.windows):
        for partition, _ in enumerate(plan.institutions):
            session = open_session(config_json, {"partition-id": partition}, plan.institutions)
            counts, _ = window_statistics(session, plan.preprocessor_json, plan.state, "local-" + plan.request, edges,
                                          grid, monitor.windows.days, index + 1, len(plan.windows))
            rows += float(counts[SCORE].sum())  # noised counts: about the window's rows
    return (time.perf_counter() - start) / len(plan.windows), round(rows)


def _copy_charts(work: Path, run_id: str, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(MlflowClient(f"sqlite:///{work}/mlflow.db").download_artifacts(run_id, "drift", tmp))
        for png in folder.glob("*.png"):
            shutil.copy(png, into / png.name)


def _run_id(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith("MLflow run   ") and "monitoring" in line)
    return line.split()[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=tempfile.mkdtemp(prefix="fedrisk-monitoring-"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "monitoring_results.md"))
    parser.add_argument("--charts", default=str(ROOT / "docs" / "monitoring"),
                        help="folder the population and downturn (and fraud) charts are copied to")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 rounds on small data, 2 monitoring windows, 1 retraining round")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    fresh_homes(prefix="fedrisk-lenders-")  # the lenders' homes: budgets unspent, the shipped default policy
    lines = ["# Monitoring: the worked example, measured", "",
             "Written by `python experiments/monitoring_demo.py` on this 2-core machine, in a fresh folder, on fresh "
             "institution homes (the lenders' and the card issuers', each under the shipped default policy).", ""]
    # --quick: registered versions rather than the challenger alias (a tiny model may be blocked by the gate)
    credit_model, fraud_model = ("fedrisk-credit/1", "fedrisk-fraud/1") if quick else ("fedrisk-credit@challenger",
                                                                                     "fedrisk-fraud@challenger")
    fraud_yaml = str(ROOT / "configs" / "fraud.yaml")
    steps = [
        ("Train the default credit campaign", ["simulate", *(QUICK_CREDIT if quick else [])], None),
        ("Population shift (the default monitoring config)",
         ["monitor", credit_model, *(_set(QUICK_CREDIT_WINDOWS) if quick else [])], "population"),
        ("Downturn, with retraining", ["monitor", "fedrisk-credit/1", "--config",
                                       str(ROOT / "configs" / "monitor_credit_downturn.yaml"), "--retrain",
                                       *([*_set(QUICK_CREDIT_WINDOWS), "--rounds", "1"] if quick else [])], "downturn"),
        ("Train the default fraud campaign", ["simulate", fraud_yaml, *(QUICK_FRAUD if quick else [])], None),
        ("New fraud pattern", ["monitor", fraud_model, "--config", str(ROOT / "configs" / "monitor_fraud.yaml"),
                               *(_set(QUICK_WINDOWS) if quick else [])], "fraud"),
    ]
    timings, outputs = {}, {}
    for title, command, charts in steps:
        if command[:2] == ["simulate", fraud_yaml]:  # the card issuers: another consortium, on homes of their own
            fresh_homes(prefix="fedrisk-issuers-")
        stdout, seconds = _fedrisk(work, *command)
        timings[title], outputs[title] = seconds, stdout
        lines += [f"## {title}", "", f"`fedrisk {' '.join(Path(c).name if c.startswith('/') else c for c in command)}` "
                  f"({seconds:.1f} s)", "", "```", stdout.rstrip(), "```", ""]
        if charts:
            _copy_charts(work, _run_id(stdout), Path(args.charts) / charts)
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    window_overrides = QUICK_CREDIT_WINDOWS if quick else {}
    local, rows = _local_seconds(work, "fedrisk-credit/1", None, window_overrides)
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    monitor_seconds = timings["Population shift (the default monitoring config)"]
    population = _run_id(outputs["Population shift (the default monitoring config)"])
    engine = statistics.median(m.value for m in client.get_metric_history(population, "window_seconds"))
    windows = len(load_monitor_config(None, window_overrides).windows.synthetic.severities)
    lines += ["## Speed", "",
              "| measure | time | ratio |", "|---|---|---|",
              f"| one monitoring round through the Flower engine (median of {windows} windows; send, load, "
              f"score, count, charge, reply, judge) | {engine:.2f} s | {engine / local:.1f}x |",
              f"| the same work locally in one process, institution after institution (load, score, count, charge; "
              f"{rows // windows:,} rows a window) | {local:.2f} s | 1x |",
              f"| the whole `fedrisk monitor` command, {windows} windows (Ray start, MLflow, report) | "
              f"{monitor_seconds:.1f} s | |", ""]
    experiments = client.get_experiment_by_name("fedrisk-monitoring")
    runs = client.search_runs([experiments.experiment_id]) if experiments else []
    lines += [f"Monitoring runs in MLflow: {len(runs)}, tags `fedrisk.monitor.level`: "
              f"{json.dumps(sorted(r.data.tags.get('fedrisk.monitor.level', '') for r in runs))}", ""]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
