"""The privacy rule is never skipped in silence: a run without a non-private reference is
`not evaluated` (a warning); `fedrisk simulate --reference` trains the twin where every
institution's policy allows it; `fedrisk validate --reference RUN --reference-uri URI` judges
against a reference in another store, and refuses one that does not answer the question."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import write_policies
from mlflow.tracking import MlflowClient

from fedrisk import run_schema
from fedrisk.cli import main
from fedrisk.tracking import read_artifact

NAMES = ["inst01", "inst02", "inst03"]


def _args(tmp_path, *extra):
    return ["simulate", "--institutions", "3", "--rounds", "2", "--set", "data.synthetic.rows=9000",
            "--set", "training.batch_size=128", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--set", f"audit.path={tmp_path}/audit.jsonl", *extra]


def test_without_a_reference_the_privacy_rule_is_not_evaluated_and_warns():
    from fedrisk.gate import apply_policy
    from fedrisk.policy import load_policy
    metrics = {"test_auc": 0.80, "test_ks": 0.45, "test_approval_rate_difference.sex": 0.01,
               "test_approval_rate_difference.age_band": 0.02, "test_auc.a": 0.79,
               "test_calibration_p": 0.5}
    verdict = apply_policy(load_policy(None), metrics, ["a"])
    rule = next(r for r in verdict.results if r.metric == "privacy_auc_loss")
    assert rule.outcome == "not evaluated" and rule.failed_as == "warn" and verdict.verdict == "warn"
    line = next(x for x in verdict.summary_lines() if "privacy_auc_loss" in x)
    assert line.startswith("NOT EVALUATED privacy_auc_loss <= 0.05") and "no reference run" in line
    assert apply_policy(load_policy(None), metrics, ["a"], reference_auc=0.81).verdict == "pass"


def test_a_reference_is_refused_before_anything_is_trained_where_a_policy_requires_dp(tmp_path, capsys):
    write_policies(NAMES[:2], **{"privacy.require_dp": False})  # inst03 keeps the shipped policy
    assert main(_args(tmp_path, "--reference")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "inst03" in err[-1] and "privacy.require_dp" in err[-1]
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(f"sqlite:///{tmp_path}/mlflow.db") \
        .search_runs([e.experiment_id for e in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()])


def test_validate_reference_uri_needs_a_reference(tmp_path, capsys):
    assert main(["validate", "abc", "--reference-uri", f"sqlite:///{tmp_path}/x.db"]) == 2
    assert "--reference-uri goes with --reference" in capsys.readouterr().err


@pytest.mark.slow  # two campaigns on Flower's simulation engine: the full suite runs it
def test_simulate_reference_trains_the_twin_and_the_gate_judges_against_it(tmp_path, capsys):
    write_policies(NAMES, **{"privacy.require_dp": False})
    code = main(_args(tmp_path, "--reference"))
    out = capsys.readouterr().out
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    private = next(r for r in runs if r.data.tags.get(run_schema.PRIVACY) == "dp")
    twin = next(r for r in runs if r.data.tags.get(run_schema.PRIVACY) == "none")
    assert len(runs) == 2 and twin.data.tags[run_schema.REFERENCE_FOR] == private.info.run_id
    assert f"reference    {twin.info.run_id}" in out
    # the twin is evidence, never a deployable model: no verdict, no registered version
    assert run_schema.GATE_VERDICT not in twin.data.tags
    assert all(v.run_id != twin.info.run_id for v in client.search_model_versions("name='fedrisk-credit'"))
    private = client.get_run(private.info.run_id)
    assert private.data.tags[run_schema.GATE_REFERENCE] == twin.info.run_id
    verdict = json.loads(read_artifact(client, private.info.run_id, run_schema.VERDICT_ARTIFACT))
    rule = next(r for r in verdict["results"] if r["metric"] == "privacy_auc_loss")
    ours, theirs = private.data.metrics["test_auc"], twin.data.metrics["test_auc"]
    assert rule["value"] == pytest.approx((theirs - ours) / theirs)
    assert rule["outcome"] == ("pass" if rule["value"] <= 0.05 else "block")
    assert code == (3 if verdict["verdict"] == "block" else 0)
    # the audit log holds the twin's campaign as a non-private one and the verdict that used it
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    verdicts = [e for e in entries if e["event"] == "gate_verdict"]
    assert verdicts[-1]["details"]["reference"] == twin.info.run_id
    started = [e["details"]["privacy"]["enabled"] for e in entries if e["event"] == "campaign_started"]
    assert started == [True, False]  # the private campaign, then its non-private twin

    # the reference in another store: named by --reference-uri, or refused where it is not
    other = tmp_path / "other.db"
    shutil.copy(tmp_path / "mlflow.db", other)
    client.delete_run(twin.info.run_id)
    assert main(["validate", private.info.run_id, "--tracking-uri", uri, "--reference", twin.info.run_id]) == 2
    assert "is deleted" in capsys.readouterr().err
    code = main(["validate", private.info.run_id, "--tracking-uri", uri, "--reference", twin.info.run_id,
                 "--reference-uri", f"sqlite:///{other}"])
    assert code in (0, 3) and "privacy_auc_loss" in capsys.readouterr().out
    assert client.get_run(private.info.run_id).data.tags[run_schema.GATE_REFERENCE] == \
        f"{twin.info.run_id} at sqlite:///{other}"
    # a DP run is no reference, nor a run of other institutions
    assert main(["validate", private.info.run_id, "--tracking-uri", uri, "--reference", private.info.run_id]) == 2
    assert "is not a non-private run" in capsys.readouterr().err
    MlflowClient(f"sqlite:///{other}").set_tag(twin.info.run_id, run_schema.INSTITUTIONS, "inst01,inst02")
    assert main(["validate", private.info.run_id, "--tracking-uri", uri, "--reference", twin.info.run_id,
                 "--reference-uri", f"sqlite:///{other}"]) == 2
    assert "trained on institutions inst01,inst02" in capsys.readouterr().err
