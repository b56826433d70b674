"""The monitoring guide's worked example, measured: train, then watch three drift scenarios.

In a fresh folder: the default credit campaign, then `fedrisk monitor` on the default
population shift, on a downturn (with warm-started retraining) and, for the default fraud
campaign, on a new fraud pattern. The charts of the first two runs are copied to
docs/monitoring/; the command lines' tables and the timings go to docs/monitoring_results.md.

Speed: the time of a monitoring window through the Flower engine against the same work done
locally in one process (each institution loads its window, scores it and counts it on the
reference bins, one after the other): the overhead of running it as a federation.

    python experiments/monitoring_demo.py [--work /tmp/fedrisk-monitoring] [--out docs/monitoring_results.md]
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
from mlflow.tracking import MlflowClient
from report_file import write_report  # experiments/report_file.py

from fedrisk.drift import SCORE
from fedrisk.institution import window_statistics
from fedrisk.monitor_config import load_monitor_config
from fedrisk.monitoring import plan_monitoring

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _fedrisk(work: Path, *args: str) -> tuple[str, float]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 3):
        raise RuntimeError(f"fedrisk {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout, seconds


def _local_seconds(work: Path, model: str, config: str | None) -> tuple[float, int]:
    """Per-window time of the same measurement done locally, institution after institution."""
    monitor = load_monitor_config(config, {"tracking.uri": f"sqlite:///{work}/mlflow.db"}, work_dir=work)
    plan = plan_monitoring(monitor, model)
    edges = {c: s["edges"] for c, s in plan.reference["columns"].items() if s["kind"] == "numeric"}
    start = time.perf_counter()
    rows = 0
    for _, config_json, _ in plan.windows:
        for name in plan.institutions:
            counts, _ = window_statistics(config_json, name, plan.preprocessor_json, plan.state, edges,
                                          monitor.windows.days)
            rows += int(counts[SCORE].sum())
    return (time.perf_counter() - start) / len(plan.windows), rows


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
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = ["# Monitoring: the worked example, measured", "",
             "Written by `python experiments/monitoring_demo.py` on this 2-core machine, in a fresh folder.", ""]
    steps = [
        ("Train the default credit campaign", ["simulate"], None),
        ("Population shift (the default monitoring config)", ["monitor", "fedrisk-credit@challenger"], "population"),
        ("Downturn, with retraining", ["monitor", "fedrisk-credit/1", "--config",
                                       str(ROOT / "configs" / "monitor_credit_downturn.yaml"), "--retrain"], "downturn"),
        ("Train the default fraud campaign", ["simulate", str(ROOT / "configs" / "fraud.yaml")], None),
        ("New fraud pattern", ["monitor", "fedrisk-fraud@challenger", "--config",
                               str(ROOT / "configs" / "monitor_fraud.yaml")], "fraud"),
    ]
    timings, outputs = {}, {}
    for title, command, charts in steps:
        stdout, seconds = _fedrisk(work, *command)
        timings[title], outputs[title] = seconds, stdout
        lines += [f"## {title}", "", f"`fedrisk {' '.join(Path(c).name if c.startswith('/') else c for c in command)}` "
                  f"({seconds:.1f} s)", "", "```", stdout.rstrip(), "```", ""]
        if charts:
            _copy_charts(work, _run_id(stdout), ROOT / "docs" / "monitoring" / charts)
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    local, rows = _local_seconds(work, "fedrisk-credit/1", None)
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    monitor_seconds = timings["Population shift (the default monitoring config)"]
    population = _run_id(outputs["Population shift (the default monitoring config)"])
    engine = statistics.median(m.value for m in client.get_metric_history(population, "window_seconds"))
    windows = len(load_monitor_config(None).windows.synthetic.severities)
    lines += ["## Speed", "",
              "| measure | time | ratio |", "|---|---|---|",
              f"| one monitoring round through the Flower engine (median of {windows} windows; send, load, "
              f"score, count, reply, judge) | {engine:.2f} s | {engine / local:.1f}x |",
              f"| the same work locally in one process, institution after institution (load, score, count; "
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
