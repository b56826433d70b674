"""Governance from the command line, on real campaigns: a corrupted institution sits out,
four-eyes promotion, rollback, an override, the evidence pack and the audit log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import consortium_keys
from mlflow.tracking import MlflowClient
from self_contained import self_contained_problems

from fedrisk import audit, run_schema
from fedrisk.evidence import SECTIONS
from fedrisk.generators.credit import generate_institution
from fedrisk.guard import update_policy

pytestmark = pytest.mark.slow
MODEL = "fedrisk-credit"


MEMBERS = {"tom": "trainer", "alice": "approver", "bob": "approver", "carol": "approver", "dora": "approver",
           "victor": "validator"}
KEYS: dict[str, str] = {}  # the consortium's keys and roster, made by the fixture


def _cli(*args: str, cwd: Path, actor: str = "tom") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(KEYS)
    env["FEDRISK_ACTOR"] = actor
    env["FEDRISK_HOME"] = str(cwd / "homes")  # the lenders' homes: their policies and ledgers
    return subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    """Three lenders' files, the third one corrupted; two campaigns trained by tom."""
    folder = tmp_path_factory.mktemp("governance")
    KEYS.update(consortium_keys(folder, MEMBERS))  # every entry is signed by its actor's key
    files = {}
    for index, name in enumerate(["inst01", "inst02", "inst03"]):
        frame = generate_institution(index, 3, 12_000, 42)
        if name == "inst03":  # a broken extract: replayed rows, ages in months, lost incomes
            # a quarter of the ages: the score's noise gives the institution two noise sd of
            # benefit, and with a tenth the corrupted lender passed once
            frame.loc[: len(frame) // 4, "age"] *= 12
            frame.loc[len(frame) // 2:, "income"] = np.nan
            frame = pd.concat([frame, frame.iloc[:300]], ignore_index=True)
        files[name] = f"{name}.csv"
        frame.to_csv(folder / files[name], index=False)
        # each lender allows a non-private campaign (the second one: its customers' epsilon is then infinite)
        update_policy(folder / "homes" / "institutions" / name, name, {"privacy.require_dp": False})
    config = {"data": {"source": "files", "files": files, "quality": {"ranges": {"age": [18, 100]}}},
              "training": {"rounds": 2, "batch_size": 128}, "privacy": {"target_epsilon": 2.0},
              "gate": {"policy": "pilot.yaml"}}
    (folder / "campaign.yaml").write_text(yaml.safe_dump(config))
    # The shipped rules as warnings: the governance steps need the first verdict to pass or warn,
    # and on two small lenders the metrics a gate reads carry the DP noise of the released
    # histograms (test_auc_noise_sd about 0.02-0.03 here): a block would be a coin toss.
    pilot = yaml.safe_load((Path(__file__).parent.parent / "configs" / "gate_credit.yaml").read_text())
    pilot["name"] = "pilot"
    for rule in pilot["rules"]:
        rule["severity"] = "warn"
    (folder / "pilot.yaml").write_text(yaml.safe_dump(pilot))
    (folder / "strict.yaml").write_text(yaml.safe_dump({"name": "strict", "rules": [
        {"metric": "auc", "comparator": ">=", "threshold": 0.99, "severity": "block"}]}))
    first = _cli("simulate", "campaign.yaml", cwd=folder)
    # the second campaign names a policy no model meets: the gate blocks it
    second = _cli("simulate", "campaign.yaml", "--no-dp", "--seed", "7", "--set", "gate.policy=strict.yaml", cwd=folder)
    return folder, first, second


def _run_id(result: subprocess.CompletedProcess) -> str:
    line = next(line for line in result.stdout.splitlines() if line.startswith("MLflow run"))
    return line.split()[2]


def _client(folder: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{folder}/mlflow.db")


def _events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / ".fedrisk" / "audit.jsonl").read_text().splitlines()]


def test_the_corrupted_institution_is_excluded_and_the_campaign_completes(consortium):
    folder, first, _ = consortium
    assert first.returncode == 0, first.stderr[-3000:]
    assert "(completed)" in first.stdout
    excluded = next(line for line in first.stdout.splitlines() if line.startswith("excluded"))
    assert "institution inst03, file" in excluded and "inst03.csv: data quality" in excluded and "below 90" in excluded
    run = _client(folder).get_run(_run_id(first))
    assert run.data.tags["fedrisk.institutions"] == "inst01,inst02"
    assert run.data.metrics["dq_score.inst03"] < 90 <= run.data.metrics["dq_score.inst01"]
    broken = pd.read_csv(folder / "inst03.csv")
    path = _client(folder).download_artifacts(run.info.run_id, "institutions/data_quality.json", str(folder))
    cards = json.loads(Path(path).read_text())["institutions"]
    # from noised counts: duplicates and rows each carry the card's noise; within four of its deviations
    noise = cards["inst03"]["noise"]
    exact = 100 * (1 - broken.duplicated().sum() / len(broken))
    assert abs(run.data.metrics["dq_duplicates.inst03"] - exact) < 4 * 100 * noise * np.sqrt(2) / len(broken)
    assert not cards["inst03"]["passed"] and cards["inst01"]["passed"]
    exclusion = [e for e in _events(folder) if e["event"] == "institution_excluded"][0]
    assert exclusion["details"]["institution"] == "inst03" and exclusion["details"]["kind"] == "quality"
    assert exclusion["details"]["run_id"] == run.info.run_id
    started = [e for e in _events(folder) if e["event"] == "campaign_started"][0]
    assert started["details"]["config_sha256"] == run.data.tags["fedrisk.config_sha256"]
    assert started["actor"] == run.data.tags["fedrisk.trainer"] == "tom"
    fingerprints = {e["details"]["institution"]: e["details"] for e in _events(folder) if e["event"] == "institution_data"}
    # the file's hash, keyed with the lender's own secret: it identifies the data's version
    # without letting anyone holding a candidate file test it
    import hashlib
    import hmac
    secret = (folder / "homes" / "institutions" / "inst01" / "secret.key").read_bytes()
    raw = hashlib.sha256((folder / "inst01.csv").read_bytes()).hexdigest()
    assert fingerprints["inst01"]["fingerprint"] == hmac.new(secret, raw.encode(), hashlib.sha256).hexdigest() != raw
    rows = len(pd.read_csv(folder / "inst01.csv"))  # a noised count (noise per cell below 100 here)
    assert abs(fingerprints["inst01"]["rows"] - rows) < 500


def test_four_eyes_promotion_rollback_and_override(consortium):
    folder, first, second = consortium
    assert second.returncode == 3, second.stderr[-3000:]  # blocked by its own (strict) policy
    client = _client(folder)
    assert client.get_model_version(MODEL, "1").tags["fedrisk.gate.verdict"] in ("pass", "warn")
    assert client.get_model_version(MODEL, "2").tags["fedrisk.gate.verdict"] == "block"
    # the trainer cannot approve, under any spelling; one approver is not enough; nor the same one twice
    for spelling in ("tom", "ＴＯＭ", "to\u200bm", "tоm", "t o m"):  # full-width, zero-width, Cyrillic o, spaced
        refused = _cli("promote", f"{MODEL}/1", "--approver", spelling, cwd=folder, actor="tom")
        assert refused.returncode == 3 and "trained this model" in refused.stderr, spelling
    one = _cli("promote", f"{MODEL}/1", "--approver", "alice", cwd=folder, actor="alice")
    assert one.returncode == 0 and "approval 1 of 2" in one.stdout
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(MODEL, "champion")
    again = _cli("promote", f"{MODEL}/1", "--approver", "Alice\u200b", cwd=folder, actor="alice")
    assert again.returncode == 3 and "already approved" in again.stderr
    # approvals are read from the audit log: one forged into the registry's tag does not count
    client.set_model_version_tag(MODEL, "1", "fedrisk.approvals", json.dumps([{"approver": "ghost"}] * 3))
    assert "approval 1 of 2" not in _cli("promote", f"{MODEL}/1", "--approver", "bob", cwd=folder).stdout
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert json.loads(client.get_model_version(MODEL, "1").tags["fedrisk.approved_by"])[1]["approver"] == "bob"

    # version 2 was blocked: plain approvals are refused, a verdict from a lenient policy does not count
    plain = _cli("promote", f"{MODEL}/2", "--approver", "alice", cwd=folder)
    assert plain.returncode == 3 and "blocked by the gate" in plain.stderr
    lenient = folder / "lenient.yaml"
    lenient.write_text(yaml.safe_dump({"name": "lenient", "rules": [
        {"metric": "auc", "comparator": ">=", "threshold": 0.5, "severity": "block"}]}))
    assert _cli("validate", _run_id(second), "--policy", str(lenient), cwd=folder).returncode == 0
    # the validator sees the candidate beside the champion it would replace (issue 21)
    (folder / "page").mkdir(exist_ok=True)
    page = Path(client.download_artifacts(_run_id(second), "gate/report.html", str(folder / "page"))).read_text()
    assert "Against the champion fedrisk-credit/1" in page and "<td>auc</td>" in page
    shopped = _cli("promote", f"{MODEL}/2", "--approver", "alice", cwd=folder)
    assert shopped.returncode == 3 and "not from its campaign's policy 'strict'" in shopped.stderr
    assert _cli("validate", _run_id(second), cwd=folder).returncode == 3  # its own policy again: blocked
    terse = _cli("promote", f"{MODEL}/2", "--approver", "alice", "--override", "--justification", "ok", cwd=folder)
    assert terse.returncode == 3 and "justification" in terse.stderr
    why = "Bridge model while the strict policy is recalibrated; see ticket RISK-142."
    for approver in ("alice", "carol"):
        done = _cli("promote", f"{MODEL}/2", "--approver", approver, "--override", "--justification", why, cwd=folder)
        assert done.returncode == 0, done.stderr
    assert "OVERRIDE" in done.stdout and "previous     fedrisk-credit/1 archived" in done.stdout
    version = client.get_model_version(MODEL, "2")
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    assert version.tags["fedrisk.override"] == "true" and "RISK-142" in version.tags["fedrisk.override_justification"]
    assert version.description.startswith("OVERRIDE")
    assert client.get_run(_run_id(second)).data.tags["fedrisk.override"] == "true"
    assert client.get_model_version(MODEL, "1").tags["fedrisk.archived"] == "true"

    # rollback restores the previous champion; there is nothing before the first
    back = _cli("rollback", MODEL, "--reason", "complaints from branch staff", cwd=folder, actor="dora")
    assert back.returncode == 0, back.stderr
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert client.get_model_version(MODEL, "2").tags["fedrisk.rolled_back"] == "true"
    assert client.get_model_version(MODEL, "1").tags["fedrisk.archived"] == "false"
    first_only = _cli("rollback", MODEL, cwd=folder)
    assert first_only.returncode == 3 and "no earlier one" in first_only.stderr
    events = [e["event"] for e in _events(folder)]
    assert events.count("approval") == 4 and events.count("promotion") == 1
    assert events.count("override_promotion") == 1 and events.count("rollback") == 1
    assert [e["actor"] for e in _events(folder) if e["event"] == "rollback"] == ["dora"]


def test_the_evidence_pack_has_every_section(consortium):
    folder, _, second = consortium
    run_id = _run_id(second)
    made = _cli("report", run_id, "--out", "pack", cwd=folder, actor="victor")
    assert made.returncode == 0, made.stderr
    page = (folder / "pack" / "report.html").read_text()
    assert self_contained_problems(page) == []
    pack = json.loads((folder / "pack" / "report.json").read_text())
    assert list(pack) == list(SECTIONS)
    for title in ("Model identification", "Intended use", "Data (aggregates", "Method and hyper-parameters",
                  "Privacy", "Performance", "Calibration", "Fairness", "Data-quality scorecards",
                  "Monitoring plan", "Gate verdict", "Approvals", "Audit"):
        assert f". {title}" in page, title
    assert "Annex III" in page and "High-risk" in page and "OVERRIDE" in page
    assert "src='http" not in page and "<script" not in page  # self-contained
    assert pack["data_quality"]["institutions"]["inst03"]["passed"] is False
    assert pack["data"]["excluded"]["inst03"]["kind"] == "quality"
    assert pack["gate"]["verdict"] == "block" and pack["identification"]["override"] is True
    assert {a["approver"] for a in pack["approvals"][0]["approvals"] if a["override"]} == {"alice", "carol"}
    assert pack["audit"]["verification"].startswith("chain intact")
    first_run = _client(folder).get_run(_run_id(consortium[1]))  # DP spend on the same lenders, earlier
    assert pack["privacy"]["earlier_campaigns"] == [{"run": first_run.info.run_id, "institutions": "inst01, inst02",
                                                     "epsilon_max_after": first_run.data.metrics["epsilon_final_max"]}]
    attached = {a.path for a in _client(folder).list_artifacts(run_id, "evidence")}
    assert attached == {"evidence/report.html", "evidence/report.json"}
    last = _events(folder)[-1]
    assert last["event"] == "evidence_pack" and last["actor"] == "victor"
    assert last["details"]["json_sha256"] == __import__("hashlib").sha256(
        (folder / "pack" / "report.json").read_bytes()).hexdigest()


def test_the_audit_log_verifies_and_its_anchors_catch_a_cut(consortium):
    folder = consortium[0]
    ok = _cli("audit", "verify", cwd=folder)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "chain intact" in ok.stdout and "all match" in ok.stdout and "signed by their roster key" in ok.stdout
    head = audit.verify(folder / ".fedrisk" / "audit.jsonl").head
    runs = _client(folder).search_runs([_client(folder).get_experiment_by_name("fedrisk-credit").experiment_id])
    assert head["seq"] == max(int(r.data.tags[run_schema.AUDIT_HEAD].split(":")[0]) for r in runs)
    copy = folder / "copy"
    shutil.copytree(folder / ".fedrisk", copy)
    log = copy / "audit.jsonl"
    lines = log.read_bytes().split(b"\n")[:-1]
    log.write_bytes(b"".join(line + b"\n" for line in lines[:-1]))  # the last entry removed
    cut = _cli("audit", "verify", str(log), cwd=folder)
    assert cut.returncode == 1 and "cut short" in cut.stdout
    lines[5] = lines[5].replace(b'"tom"', b'"eve"')
    log.write_bytes(b"".join(line + b"\n" for line in lines))
    tampered = _cli("audit", "verify", str(log), cwd=folder)
    assert tampered.returncode == 1 and "line 6" in tampered.stdout
    # a fresh log put in the place of the real one: its chain is intact, the runs know it is not theirs
    real = folder / ".fedrisk" / "audit.jsonl"
    shutil.copy(real, copy / "kept.jsonl")
    real.unlink()
    audit.append(real, "campaign_started", "eve", {})
    replaced = _cli("audit", "verify", cwd=folder)
    assert replaced.returncode == 1 and "the log was replaced" in replaced.stdout
    real.write_bytes(b"")
    assert _cli("audit", "verify", cwd=folder).returncode == 1
    shutil.copy(copy / "kept.jsonl", real)
    assert _cli("audit", "verify", cwd=folder).returncode == 0


def test_an_alias_moved_by_hand_is_flagged_by_verify_and_the_pack(consortium):
    """MLflow's own alias pencil (its REST API) makes version 1 champion again, around the approvers."""
    folder = consortium[0]
    client = _client(folder)
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    other = next(v.version for v in client.search_model_versions(f"name = '{MODEL}'") if v.version != champion)
    client.set_registered_model_alias(MODEL, "champion", other)
    try:
        moved = _cli("audit", "verify", cwd=folder)
        assert moved.returncode == 1, moved.stdout
        assert f"registry     BROKEN: {MODEL}@champion is version {other}" in moved.stdout
        assert "moved outside fedrisk" in moved.stdout
        run_id = client.get_model_version(MODEL, champion).tags[run_schema.RUN_ID]
        assert _cli("report", run_id, "--out", str(folder / "pack2"), cwd=folder, actor="victor").returncode == 0
        pack = json.loads((folder / "pack2" / "report.json").read_text())
        assert pack["audit"]["registry"].startswith("ALIASES MOVED OUTSIDE fedrisk")
    finally:
        client.set_registered_model_alias(MODEL, "champion", champion)
    ok = _cli("audit", "verify", cwd=folder)
    assert ok.returncode == 0 and "registry     champion and challenger of 1 model(s) as the log decided" in ok.stdout
