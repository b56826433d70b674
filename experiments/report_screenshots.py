"""Screenshots of each report inside MLflow's artifact viewer, as a validator opens them (issue 21).

Runs the default campaign, a monitoring run and the evidence pack in a temporary folder, serves
the store with `mlflow server`, and has headless Chromium (Debian's `chromium` package) capture
the gate report, the drift report and the evidence pack in the artifact viewer. Each page is
also checked for external images and empty sections (`tests/self_contained.py`). Without
Chromium it says so and exits 0.

    .venv/bin/python experiments/report_screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from self_contained import self_contained_problems  # noqa: E402

from fedrisk.federation import Processes, flower_env, free_port, tracking_server_command, wait_for_https  # noqa: E402


def _fedrisk(folder: Path, *args: str) -> str:
    env = {**os.environ, "FEDRISK_HOME": str(folder / "home"), "FLWR_HOME": str(folder / "flwr"),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    done = subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=1800)
    if done.returncode not in (0, 3):
        raise SystemExit(f"fedrisk {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/screenshots")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("no chromium on this machine (Debian: apt-get install chromium): nothing captured")
        return 0
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("default campaign, monitoring and evidence pack ...", file=sys.stderr)
        _fedrisk(folder, "simulate")
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        client = MlflowClient(uri)
        run = client.search_runs([client.get_experiment_by_name("fedrisk-credit").experiment_id])[0]
        _fedrisk(folder, "monitor", "fedrisk-credit@challenger")
        _fedrisk(folder, "report", run.info.run_id)
        monitoring = client.search_runs([client.get_experiment_by_name("fedrisk-monitoring").experiment_id])[0]
        pages = {"gate_report": (run, "gate/report.html"), "drift_report": (monitoring, "drift/report.html"),
                 "evidence_pack": (run, "evidence/report.html")}
        processes = Processes(folder / "logs")
        port = free_port()
        server = processes.start("mlflow", tracking_server_command(folder, port=port), flower_env(folder / "flwr"),
                                 folder)
        try:
            wait_for_https(f"http://127.0.0.1:{port}/health", None, server, timeout=120)
            for name, (owner, path) in pages.items():
                page = Path(client.download_artifacts(owner.info.run_id, path, str(folder))).read_text()
                problems = self_contained_problems(page)
                url = (f"http://127.0.0.1:{port}/#/experiments/{owner.info.experiment_id}/runs/"
                       f"{owner.info.run_id}/artifacts/{path}")
                subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                "--window-size=1400,1800", "--virtual-time-budget=15000",
                                f"--screenshot={out / f'{name}.png'}", url], capture_output=True, timeout=180)
                verdict = problems or "renders: no external image, no empty section"
                print(f"{name:<14} {out / f'{name}.png'}  {verdict}")
        finally:
            processes.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
