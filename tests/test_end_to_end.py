"""End to end on the real Flower simulation engine, a real MLflow store and Opacus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import write_policies
from mlflow.tracking import MlflowClient
from self_contained import self_contained_problems
from sklearn.metrics import roc_auc_score

from fedrisk.config import load_config
from fedrisk.errors import BudgetExhaustedError, FedriskInputError
from fedrisk.generators.credit import generate_consortium
from fedrisk.launcher import campaign_outcome, simulate
from fedrisk.privacy import EPSILON_TOLERANCE

pytestmark = pytest.mark.slow

SMALL = {
    "institutions": 3,
    "rounds": 2,
    "data.synthetic.rows": 9000,
    "epsilon": 2.0,
    "training.batch_size": 128,
}


def _config(tmp_path: Path, **extra):
    overrides = {**SMALL, "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", **extra}
    return load_config(None, overrides, work_dir=tmp_path)


def _artifact_files(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifact_files(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_three_institutions_two_rounds(tmp_path):
    """Validation every round and feature importance: both releases the default campaign skips."""
    config = _config(tmp_path, **{"evaluation.every_round": True, "evaluation.importance": True})
    outcome = simulate(config)
    assert outcome.status == "completed"
    client = MlflowClient(config.tracking.uri)
    run = client.get_run(outcome.run_id)
    assert run.data.params["training.rounds"] == "2"
    assert run.data.params["privacy.target_epsilon"] == "2.0"
    auc_history = client.get_metric_history(outcome.run_id, "val_auc")
    assert [m.step for m in auc_history] == [0, 1, 2]  # 0: the initial model
    # noised (a round-1 model near 0.6 read 0.498 once; with a round's small share of the
    # evaluation budget a class's noised total can fall to zero or below: undefined, NaN), so a
    # range only; the model's own AUC is checked below
    assert all(np.isnan(m.value) or 0.0 <= m.value <= 1.0 for m in auc_history)
    names = ["inst01", "inst02", "inst03"]
    for name in names:
        assert [m.step for m in client.get_metric_history(outcome.run_id, f"val_auc.{name}")] == [0, 1, 2]
        eps = client.get_metric_history(outcome.run_id, f"epsilon.{name}")
        # the lifetime spend with the campaign's reservation: the whole plan from its first release
        assert all(e.value == pytest.approx(eps[0].value) for e in eps) and eps[-1].value <= 2.0
    eps_max = run.data.metrics["epsilon_max"]
    assert eps_max == max(run.data.metrics[f"epsilon.{n}"] for n in names)
    assert eps_max <= 2.0  # never above the target ...
    assert 2.0 - eps_max <= EPSILON_TOLERANCE  # ... and the two planned rounds use it up
    assert len(client.get_metric_history(outcome.run_id, "round_seconds")) == 2
    assert "delta=1e-06" in run.data.tags["fedrisk.epsilon"]  # each institution's policy delta
    assert run.data.tags["fedrisk.delta"] == "1e-06" and run.data.tags["fedrisk.accountant"] == "rdp"
    for mechanism in ("bounds", "preprocessing", "dp_sgd", "evaluation", "importance", "drift_reference"):
        assert 0 < run.data.metrics[f"epsilon_{mechanism}.inst01"] <= eps_max

    # The model loads from MLflow alone and scores raw feature columns.
    model = mlflow.pyfunc.load_model(run.data.tags["fedrisk.model_uri"])
    raw = pd.concat(generate_consortium(3, 9000, seed=7).values())
    features = raw.drop(columns=["default", "customer_id", "sex", "age_band"])
    scores = np.asarray(model.predict(features))
    assert scores.shape == (len(raw),)
    assert ((scores > 0) & (scores < 1)).all()
    assert roc_auc_score(raw["default"], scores) > 0.65

    # The ledger snapshot states accountant and delta; epsilons equal the run's.
    ledger_file = client.download_artifacts(outcome.run_id, "privacy/ledger_snapshot.json", str(tmp_path))
    ledger = json.loads(Path(ledger_file).read_text())
    assert ledger["accountant"] == "rdp" and {i["delta"] for i in ledger["institutions"].values()} == {1e-6}
    assert ledger["federation_epsilon"] == pytest.approx(eps_max)

    # No row-level data among the artifacts.
    files = _artifact_files(client, outcome.run_id)
    assert "config.yaml" in files and any(f.startswith("institutions/") for f in files)
    assert "evaluation/calibration_test.json" in files
    ranked = json.loads(Path(client.download_artifacts(outcome.run_id, "evaluation/feature_importance.json",
                                                       str(tmp_path))).read_text())["importance"]
    assert set(ranked) == set(features.columns)  # noised (3x the validation noise per cell): no ranking asserted
    for key in ("test_auc", "test_gini", "test_ks", "test_brier", "test_average_precision",
                "test_recall_at_fpr_0.1", "test_precision_at_0.2", "test_auc_gap", "test_ks.inst02",
                "test_approval_rate_difference.sex",
                "test_equal_opportunity_difference.sex.inst01", "val_approval_rate_ratio.age_band"):
        assert key in run.data.metrics, key
    # a group's rates are left out when its noised size is within the noise (fairness_by_attribute)
    assert any(k.startswith("test_approval_rate.age_band:") for k in run.data.metrics)
    download = Path(client.download_artifacts(outcome.run_id, "", str(tmp_path / "all")))
    ids = set(pd.concat(generate_consortium(3, 9000, seed=42).values())["customer_id"].head(50))
    for file in download.rglob("*"):
        if file.is_file() and file.suffix in {".json", ".yaml", ".txt", ".csv", ".MLmodel", ""}:
            text = file.read_text(errors="ignore")
            assert not any(cid in text for cid in ids), file
        assert file.suffix not in {".csv", ".parquet"}, file


def test_spent_budget_stops_the_next_campaign(tmp_path):
    write_policies(["inst01", "inst02", "inst03"], **{"privacy.lifetime_epsilon": 2.0,
                                                       "privacy.max_campaign_epsilon": 2.0})
    first = simulate(_config(tmp_path, rounds=1))
    assert first.status == "completed"
    # Their policies' lifetime cap of 2.0 is spent: a campaign asking 1.5 more cannot be paid.
    config = _config(tmp_path, rounds=1, epsilon=1.5)
    # The CLI's local check refuses at once, naming the institution.
    with pytest.raises(BudgetExhaustedError, match=r"institution inst01.*privacy budget left"):
        simulate(config)
    # Through Flower: every institution refuses, the campaign stops cleanly and says why.
    with pytest.raises(FedriskInputError, match="minimum is 2"):
        simulate(config, campaign="second", check_inputs=False)
    second = campaign_outcome(config, "second")
    assert second.status == "stopped"
    assert "minimum is 2" in second.tags["fedrisk.stop_reason"]
    assert "budget" in second.tags["fedrisk.excluded"]
    assert "inst01" in second.tags["fedrisk.excluded"]


def test_faulty_institution_is_excluded_and_others_go_on(tmp_path):
    frames = generate_consortium(3, 9000, seed=3)
    files = {}
    for name, frame in frames.items():
        if name == "inst02":
            frame = frame.drop(columns=["debt_to_income"])
        path = tmp_path / f"{name}.csv"
        frame.to_csv(path, index=False)
        files[name] = str(path)
    overrides = {**SMALL, "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "data.source": "files",
                 "training.strategy": "fedprox", "model.kind": "logistic",
                 "data.files": files, "data.features": [c for c in frames["inst01"].columns
                                                       if c not in {"default", "customer_id", "sex", "age_band"}]}
    overrides.pop("institutions")
    config = load_config(None, overrides, work_dir=tmp_path)
    outcome = simulate(config, check_inputs=False)
    assert outcome.status == "completed"
    excluded = outcome.tags["fedrisk.excluded"]
    assert "inst02" in excluded and "debt_to_income" in excluded and "inst02.csv" in excluded
    assert "val_auc.inst02" not in outcome.metrics
    assert "val_auc.inst01" in outcome.metrics and "val_auc.inst03" in outcome.metrics
    model = mlflow.pyfunc.load_model(outcome.tags["fedrisk.model_uri"])  # FedProx with a logistic model learns too:
    fresh = pd.concat(generate_consortium(3, 9000, seed=8).values())  # its exact AUC, free of evaluation noise
    assert roc_auc_score(fresh["default"], np.asarray(model.predict(fresh.drop(columns=["default"])))) > 0.65
    # The logistic model explains itself as a scorecard with reason codes.
    frames["inst01"].head(40).to_csv(tmp_path / "applicants.csv", index=False)
    explained = _cli("explain", outcome.tags["fedrisk.model_uri"], "applicants.csv",
                     "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path)
    assert explained.returncode == 0, explained.stderr
    assert "points to double the odds" in explained.stdout and "credit_utilisation" in explained.stdout
    codes = pd.read_csv(tmp_path / "reason_codes.csv")
    assert list(codes.columns) == ["score", "pd", "reason_1", "reason_2", "reason_3"] and len(codes) == 40
    model = mlflow.pyfunc.load_model(outcome.tags["fedrisk.model_uri"])
    scored = np.asarray(model.predict(frames["inst01"].head(40).drop(columns=["default"])))
    assert codes["pd"].to_numpy() == pytest.approx(scored, abs=1e-5)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "yaml_text,expected",
    [
        ("data: {source: files, files: {bankA: nope.csv, bankB: b.csv}}\n", "institution bankA, file"),
        ("training: {roundz: 2}\n", "key 'training.roundz': unknown key"),
        ("privacy: {delta: 0.01}\ndata: {synthetic: {institutions: 3, rows: 3000}}\n", "privacy.delta"),
    ],
)
def test_cli_input_errors_are_one_line_exit_2(tmp_path, yaml_text, expected):
    (tmp_path / "c.yaml").write_text(yaml_text)
    result = _cli("simulate", "c.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("fedrisk: error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_cli_bad_data_names_institution_file_and_column(tmp_path):
    frames = generate_consortium(2, 4000, seed=1)
    frames["inst02"]["default"] = frames["inst02"]["default"] * 2  # values 0 and 2
    for name, frame in frames.items():
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    (tmp_path / "c.yaml").write_text(
        "data:\n  source: files\n  files: {inst01: inst01.csv, inst02: inst02.csv}\n"
    )
    result = _cli("simulate", "c.yaml", cwd=tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "institution inst02" in line and "inst02.csv" in line and "column 'default'" in line
    assert "not binary" in line


PROJECT = Path(__file__).resolve().parents[1]


def _pids_started_under(home: Path) -> list[int]:
    """Processes whose command line names `home` (the local SuperLink `flwr run` started)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(home) in cmdline and "flower-superlink" in cmdline:
                pids.append(int(proc.name))
    return pids


def _stop(pids: list[int]) -> None:
    """Stop what `flwr run` left running, by process id: TERM, then KILL after 15 s."""
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def test_flwr_run_runs_the_same_app(tmp_path):
    home = tmp_path / "flwr-home"
    env = {**os.environ, "FLWR_HOME": str(home),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    overrides = json.dumps({"rounds": 1, "institutions": 3, "data.synthetic.rows": 6000,
                            "training.fraction": 0.4,
                            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})
    try:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), "run", str(PROJECT),
             "--run-config", f"overrides='{overrides}' campaign-id='viaflwrrun'",
             "--federation-config", "num-supernodes=3 client-resources-num-cpus=1", "--stream"],
            env=env, capture_output=True, text=True, timeout=600,
        )
    finally:
        _stop(_pids_started_under(home))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    from fedrisk.tracking import find_campaign_run

    run = find_campaign_run(f"sqlite:///{tmp_path}/mlflow.db", "fedrisk-credit", "viaflwrrun")
    assert run is not None
    assert run.data.tags["fedrisk.status"] == "completed"
    assert run.data.tags["fedrisk.institutions"] == "inst01,inst02,inst03"
    assert run.data.metrics["epsilon_max"] <= 3.0
    assert run.data.metrics["institutions_trained"] == 2  # fraction 0.4 of 3, at least 2
    assert not _pids_started_under(home)


def test_gate_challenges_a_fair_model_and_blocks_a_biased_or_random_one(tmp_path):
    """Through the real Flower simulation: verdict, registry alias and exit codes."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # 30,000 applicants at epsilon 3: the test histograms' DP noise then moves the AUC by about
    # 0.012 and the sex approval gap by about 0.008 (the runs' *_noise_sd); at 9,000 and epsilon 2
    # (0.035 and 0.025) a fair model's verdict would be a coin toss.
    size = {"data.synthetic.rows": 30_000, "epsilon": 3.0}
    fair = simulate(_config(tmp_path, rounds=3, seed=11, **size))
    biased = simulate(_config(tmp_path, rounds=3, seed=12, **size, **{"data.synthetic.group_bias": 1.5}))
    random_model = simulate(_config(tmp_path, rounds=1, seed=13, **size, **{"training.learning_rate": 1e-6}))
    assert fair.metrics["test_auc_noise_sd"] < 0.02 and fair.metrics["test_approval_rate_difference.sex_noise_sd"] < 0.015
    client = MlflowClient(uri)
    assert fair.tags["fedrisk.gate.verdict"] in ("pass", "warn")
    assert fair.tags["fedrisk.gate.alias"] == "challenger"
    assert biased.tags["fedrisk.gate.verdict"] == "block"
    assert "approval_rate_difference.sex" in biased.tags["fedrisk.gate.failed_rules"]
    assert biased.metrics["test_approval_rate_difference.sex"] > 0.05
    assert random_model.tags["fedrisk.gate.verdict"] == "block"
    assert "auc" in random_model.tags["fedrisk.gate.failed_rules"]
    # Only the fair model holds the deployable alias; blocked versions exist, tagged, alias-free.
    challenger = client.get_model_version_by_alias("fedrisk-credit", "challenger")
    assert challenger.run_id == fair.run_id
    for outcome in (biased, random_model):
        name, version = outcome.tags["fedrisk.gate.model_version"].split("/")
        mv = client.get_model_version(name, version)
        assert mv.aliases == [] and mv.tags["fedrisk.gate.verdict"] == "block"
    files = _artifact_files(client, biased.run_id)
    assert {"gate/verdict.json", "gate/report.html", "evaluation/test_statistics.json"} <= set(files)
    report = Path(client.download_artifacts(biased.run_id, "gate/report.html", str(tmp_path))).read_text()
    assert self_contained_problems(report) == []
    assert "Verdict: BLOCK" in report and "approval_rate_difference.sex" in report

    # On demand, from the command line: exit 0 for pass/warn, 3 for block, 2 for bad input.
    ok = _cli("validate", fair.run_id, "--tracking-uri", uri, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    blocked = _cli("validate", biased.run_id, "--tracking-uri", uri, cwd=tmp_path)
    assert blocked.returncode == 3 and "BLOCK approval_rate_difference.sex" in blocked.stdout
    # a fair model's measured gap: up to 0.037 seen, and its 95 % interval reaches 0.035 above it
    # (sampling and DP noise, sd ~0.018; an upper end of 0.069 was seen): a rule is met only when
    # the whole interval is, so the warning sits at 0.12, 0.05 (near 3 sd) beyond the highest end seen
    sex_only = tmp_path / "sex_only.yaml"
    sex_only.write_text(
        "name: sex-only\nrules:\n"
        "  - {metric: approval_rate_difference.sex, comparator: '<=', threshold: 0.15, severity: block}\n"
        "  - {metric: approval_rate_difference.sex, comparator: '<=', threshold: 0.12, severity: warn}\n"
        "  - {metric: auc, comparator: '>=', threshold: 0.7, severity: block}\n"
    )
    clean = _cli("validate", fair.run_id, "--tracking-uri", uri, "--policy", str(sex_only), cwd=tmp_path)
    assert clean.returncode == 0 and "verdict PASS" in clean.stdout, clean.stdout
    strict = tmp_path / "strict.yaml"
    # no AUC passes, noised or not (a noised AUC on a small test split can reach 0.99)
    strict.write_text("name: strict\nrules:\n  - {metric: auc, comparator: '>', threshold: 1.0, severity: block}\n")
    version = fair.tags["fedrisk.gate.model_version"].split("/")[1]
    assert _cli("validate", fair.run_id, "--tracking-uri", uri, "--policy", str(strict), cwd=tmp_path).returncode == 3
    # Judged blocked, the same version loses the alias; no new version is registered.
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("fedrisk-credit", "challenger")
    assert client.get_model_version("fedrisk-credit", version).tags["fedrisk.gate.verdict"] == "block"
    assert _cli("validate", fair.run_id, "--tracking-uri", uri, cwd=tmp_path).returncode == 0
    again = client.get_model_version_by_alias("fedrisk-credit", "challenger")
    assert again.run_id == fair.run_id and str(again.version) == version
    missing = _cli("validate", "nope", "--tracking-uri", uri, cwd=tmp_path)
    assert missing.returncode == 2 and "not found" in missing.stderr
