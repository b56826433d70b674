"""Monitoring end to end: a trained model, windows from the simulator, Flower, MLflow, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from self_contained import self_contained_problems

from fedrisk.config import config_from_json, load_config
from fedrisk.data import load_window
from fedrisk.drift import SCORE, psi
from fedrisk.generators.credit import generate_institution
from fedrisk.guard import REFERENCE_BINS
from fedrisk.launcher import monitor, simulate
from fedrisk.metrics import logit_edges
from fedrisk.monitor_config import load_monitor_config
from fedrisk.monitoring import plan_monitoring
from fedrisk.serving import load_reference

pytestmark = pytest.mark.slow

# The retraining campaign inherits this one's data spec: a consortium that expects downturns
# accepts default rates up to 90 % (at the downturn test's severity 2 they reach 65-77 %).
CAMPAIGN = {"institutions": 3, "rounds": 4, "data.synthetic.rows": 20_000, "training.batch_size": 128,
            "data.quality.positive_rate": [0.02, 0.9]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A credit model registered as fedrisk-credit@challenger, with its drift reference."""
    folder = tmp_path_factory.mktemp("monitor")
    uri = f"sqlite:///{folder}/mlflow.db"
    config = load_config(None, {**CAMPAIGN, "tracking_uri": uri},
                         work_dir=folder)
    outcome = simulate(config)
    assert outcome.tags["fedrisk.gate.alias"] == "challenger"
    return folder, uri, outcome


def _monitor_config(folder: Path, uri: str, **overrides):
    return load_monitor_config(None, {"tracking.uri": uri, "windows.synthetic.rows": 12_000, **overrides},
                               work_dir=folder)


def _elsewhere(folder: Path) -> Path:
    """A working folder without the store: the model must be read from --tracking-uri."""
    other = folder / "elsewhere"
    other.mkdir(exist_ok=True)
    return other


def _fresh_env() -> dict[str, str]:
    """The environment of a new shell: MLflow exports the tracking URI set in this process."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def test_reference_is_stored_with_the_model(trained):
    folder, uri, outcome = trained
    mlflow.set_tracking_uri(uri)
    reference = load_reference(outcome.tags["fedrisk.model_uri"])
    score = reference["columns"][SCORE]
    # deciles read on the 200-cell log-odds grid (0.1 log-odds a cell): a DP model whose scores
    # crowd into a few cells has fewer distinct deciles (3 to 9 edges measured over 12 such
    # campaigns, CI once saw 4), never more than 9
    assert 2 <= len(score["edges"]) <= 9
    assert set(score["edges"]) <= set(logit_edges(REFERENCE_BINS).tolist())
    # the score's reference: the validation histograms coarsened to its deciles, pooled = the sum
    own = [reference["institutions"][n]["score"] for n in ("inst01", "inst02", "inst03")]
    assert score["counts"] == pytest.approx(np.sum(own, axis=0), rel=1e-9)
    assert set(reference["score_noise"]) == {"pooled", "inst01", "inst02", "inst03"}
    assert {"income", "age", "region", "employment_type"} <= set(reference["columns"])
    assert set(reference["institutions"]) == {"inst01", "inst02", "inst03"}
    assert reference["performance"]["pooled"]["auc"] == pytest.approx(outcome.metrics["val_auc"], abs=1e-9)


def test_population_shift_goes_green_yellow_orange_red_in_mlflow(trained):
    folder, uri, outcome = trained
    # the PSI bands only: how a shifted population's AUC moves depends on the model (it fell
    # 5.5 % at severity 0.4 and 2.7 % at 0.6 in one run); the downturn test covers performance
    psi_only = {"levels.performance.max_drop": 0.5, "levels.performance.severe_drop": 0.9}
    plan = plan_monitoring(_monitor_config(folder, uri, **psi_only), "fedrisk-credit@challenger")
    run = monitor(plan.monitor, f"{plan.model.name}/{plan.model.version}", len(plan.institutions))
    client = MlflowClient(uri)
    pooled = [int(m.value) for m in sorted(client.get_metric_history(run.info.run_id, "level"), key=lambda m: m.step)]
    assert pooled == [0, 0, 1, 2, 3, 3]  # green, green, yellow, orange, red (sustained), red (severe)
    psis = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "psi_score"), key=lambda m: m.step)]
    bounds = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "psi_score_noise_bound"),
                                      key=lambda m: m.step)]
    # without a shift the PSI stays within what sampling and the DP noise of both reference and
    # window explain (the bound the run states); with it, it climbs through the bands
    assert max(psis[:2]) < 0.1 and max(bounds[:2]) < 0.1  # green: below the band and the bound is small
    assert 0.10 <= psis[2] < 0.25 <= psis[3] < 0.5 <= psis[5]
    tags = run.data.tags
    assert tags["fedrisk.monitor.level"] == "red" and tags["fedrisk.model_version"] == "1"
    assert tags["fedrisk.training_run"] == outcome.run_id
    version = client.get_model_version("fedrisk-credit", "1")
    assert version.tags["fedrisk.monitor.level"] == "red" and version.tags["fedrisk.monitor.run"] == run.info.run_id
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "drift")}
    assert {"drift/report.json", "drift/report.html", "drift/psi_by_window.png", "drift/csi_by_feature.png",
            "drift/score_distribution.png", "drift/performance.png"} <= artifacts
    page = Path(client.download_artifacts(run.info.run_id, "drift/report.html", str(folder))).read_text()
    assert self_contained_problems(page) == [] and page.count("<img src='data:image/png") == 4  # renders in MLflow
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "drift/report.json", str(folder))).read_text())
    # the pooled scope of the stable windows (the overall level above covers the institutions':
    # a small institution's reference cell noised to near zero once made its CSI 0.33-0.57 on
    # stable windows; a noised count now counts as at least its noise sd, tests/test_drift.py)
    assert [w["scopes"]["pooled"]["level"] for w in report["windows"]][:2] == ["green", "green"]
    assert not report["retrain"]["triggered"]

    # The federated PSI equals the PSI the test computes itself on the pooled window rows,
    # scored by the registered model, binned with NumPy on the reference edges, against the
    # institutions' own training references mixed in the window's proportions.
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/fedrisk-credit/1")
    reference = load_reference(outcome.tags["fedrisk.model_uri"])
    edges = reference["columns"][SCORE]["edges"]
    window = config_from_json(plan.windows[3][1])
    frames = [load_window(window.data, name, window.seed, ["income"], [], 7)[0] for name in plan.institutions]
    pooled_rows = pd.concat(frames)
    share = {name: len(f) / len(pooled_rows) for name, f in zip(plan.institutions, frames)}

    def mixture(column: str) -> np.ndarray:
        own = reference["institutions"]
        return sum(np.asarray(own[n][column], float) / sum(own[n][column]) * share[n] for n in plan.institutions)

    # The window's counts are released with DP noise: the federated PSI is the exact one within
    # the noise bound the run states for that window.
    scores = np.asarray(model.predict(pooled_rows))
    hist, _ = np.histogram(scores, [-np.inf, *edges, np.inf])
    assert abs(psis[3] - psi(mixture(SCORE), [*hist, 0])) < bounds[3]
    # (the inputs' CSIs equal NumPy's without noise in tests/test_drift.py; their noise bounds
    # are not logged, so no end-to-end tolerance is asserted for them here)


def test_downturn_triggers_warm_started_retraining_from_the_cli(trained):
    # Severity 2: the AUC falls ~14 % relative (measured); at severity 1 it fell ~6.5 %, and the
    # noised validation reference (its own sd ~0.01-0.02) put that on either side of the 5 % rule
    folder, uri, _ = trained
    result = subprocess.run(
        [sys.executable, "-m", "fedrisk.cli", "monitor", "fedrisk-credit/1", "--tracking-uri", uri,
         "--set", "windows.synthetic.scenario=downturn", "--set", "windows.synthetic.severities=[0.0, 2.0]",
         "--set", "windows.synthetic.rows=12000", "--retrain", "--rounds", "2"],
        cwd=_elsewhere(folder), env=_fresh_env(), capture_output=True, text=True, timeout=900,
    )
    assert result.returncode in (0, 3), result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("retraining triggered at window-2") for line in lines)
    client = MlflowClient(uri)
    run = next(r for r in client.search_runs([client.get_experiment_by_name("fedrisk-monitoring").experiment_id],
                                              order_by=["start_time DESC"]))
    pooled = [int(m.value) for m in sorted(client.get_metric_history(run.info.run_id, "level"), key=lambda m: m.step)]
    assert pooled[0] == 0 and pooled[1] >= 2  # the pooled scope: green, then orange or red
    newest = max(client.search_model_versions("name = 'fedrisk-credit'"), key=lambda v: int(v.version))
    retrained = client.get_run(newest.run_id)
    assert retrained.data.tags["fedrisk.warm_start"] == client.get_model_version("fedrisk-credit", "1").source
    assert retrained.data.params["data.synthetic.drift.scenario"] == "downturn"
    assert client.get_model_version("fedrisk-credit", "1").tags["fedrisk.monitor.retrain"] == "due"


def test_windows_from_files_labelled_unlabelled_and_broken(trained):
    folder, uri, _ = trained
    windows = []
    for k in range(2):
        files = {}
        for i, name in enumerate(["inst01", "inst02", "inst03"]):
            frame = generate_institution(i, 3, 6000, 42, stream=10 + k)
            if k == 1:
                frame = frame.drop(columns=["default"])  # labels not known yet
            if k == 1 and name == "inst03":
                frame = frame.drop(columns=["income"])
            path = folder / f"{name}_w{k}.csv"
            frame.to_csv(path, index=False)
            files[name] = str(path)
        windows.append(files)
    config = folder / "monitor_files.yaml"
    config.write_text(json.dumps({"windows": {"source": "files", "files": windows, "names": ["2026-06", "2026-07"]}}))
    result = subprocess.run(
        [sys.executable, "-m", "fedrisk.cli", "monitor", "fedrisk-credit/1", "--config", str(config),
         "--tracking-uri", uri], cwd=_elsewhere(folder), env=_fresh_env(), capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    june = next(line for line in out.splitlines() if line.startswith("2026-06 "))
    july = next(line for line in out.splitlines() if line.startswith("2026-07 "))
    assert " green " in june and "no labels (2 classes)" in july
    assert "not measured: institution inst03, file " in out and "column 'income': model input column missing" in out


def test_unknown_model_is_one_line_and_exit_2(trained):
    folder, uri, _ = trained
    result = subprocess.run([sys.executable, "-m", "fedrisk.cli", "monitor", "nope@champion", "--tracking-uri", uri],
                            cwd=folder, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("fedrisk: error: model 'nope@champion' not found")
    assert len(result.stderr.strip().splitlines()) == 1
