"""What MLflow's sign-in costs a campaign: 300 metric writes against one tracking server without
authentication, with it checking every request, and with fedrisk's setting (a sign-in checked
once a minute). Side by side, on this machine; prints a Markdown table (docs/operators.md)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from fedrisk import registry_guard
from fedrisk.federation import Processes, flower_env, free_port, tracking_server_command, wait_for_https

WRITES = 300


def _measure(folder: Path, auth: str) -> float:
    processes = Processes(folder / "logs")
    port, env = free_port(), flower_env(folder / "flwr")
    if auth != "none":
        env.update(registry_guard.prepare(folder / "mlflow" / "auth"))
        if auth == "every request":
            ini = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
            ini.write_text(ini.read_text().replace("auth_cache_ttl_seconds = 60", "auth_cache_ttl_seconds = 0"))
        os.environ.update(registry_guard.identity(folder / "mlflow" / "auth", registry_guard.SERVICE))
    else:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
    server = processes.start("mlflow", tracking_server_command(folder / "mlflow", port=port, basic_auth=auth != "none"),
                             env, folder)
    try:
        wait_for_https(f"http://127.0.0.1:{port}/health", None, server, timeout=180)
        client = MlflowClient(f"http://127.0.0.1:{port}")
        run = client.create_run(client.create_experiment("e")).info.run_id
        client.log_metric(run, "warm", 0.0)
        started = time.perf_counter()
        for step in range(WRITES):
            client.log_metric(run, "m", float(step), step=step)
        return (time.perf_counter() - started) / WRITES
    finally:
        processes.stop_all()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = {auth: _measure(Path(tmp) / auth.replace(" ", "_"), auth)
                   for auth in ("none", "every request", "once a minute")}
    base = results["none"]
    print("| sign-in | ms per write | vs none |\n|---|---|---|")
    for auth, seconds in results.items():
        print(f"| {auth} | {seconds * 1000:.1f} | {seconds / base:.2f}x |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
