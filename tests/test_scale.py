"""What a thousand institutions on one machine need. A node process serving many institutions (a
simulation's actor) keeps each one's session:
a round must not reload and re-check an institution's data because others came in between; and
a preflight of many institutions does not calibrate what it only needs to check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from local_grid import LocalGrid
from mlflow.tracking import MlflowClient

from clients.client_app import app as client_app
from fedrisk import lineage, run_schema
from fedrisk import session as sessions
from fedrisk.budget import Shape, check_campaign_fits, plan_campaign
from fedrisk.config import config_to_json, load_config
from fedrisk.errors import BudgetExhaustedError, FedriskInputError
from fedrisk.evidence import write_evidence
from fedrisk.launcher import campaign_outcome
from fedrisk.ledger import PrivacyLedger
from fedrisk.tracking import TrackedRun, read_artifact, run_metrics
from server.campaign import run_campaign


def test_sessions_of_many_institutions_are_kept_across_rounds(monkeypatch):
    """20 institutions served in turn for three rounds, as two Ray actors do at 40: each
    institution's data is loaded once (an 8-session cache reloaded every one of them every round)."""
    loads: list[str] = []
    real = sessions.load_institution

    def counting(data, name, *args, **kwargs):
        loads.append(name)
        return real(data, name, *args, **kwargs)

    monkeypatch.setattr(sessions, "load_institution", counting)
    monkeypatch.setattr(sessions, "_SESSIONS", type(sessions._SESSIONS)())
    config = config_to_json(load_config(None, {"data.synthetic.institutions": 20, "data.synthetic.rows": 8000}))
    for _ in range(3):
        for partition in range(20):
            assert len(sessions.open_session(config, {"partition-id": partition}).split.train) > 0
    assert sorted(loads) == sorted(set(loads)) and len(loads) == 20


def test_the_cache_is_bounded_by_the_rows_it_holds(monkeypatch):
    """Kept sessions stay within the rows a process may hold; the least recently used go first."""
    monkeypatch.setattr(sessions, "_SESSIONS", type(sessions._SESSIONS)())
    monkeypatch.setattr(sessions, "MAX_CACHED_ROWS", 3000)
    config = config_to_json(load_config(None, {"data.synthetic.institutions": 10, "data.synthetic.rows": 10000}))
    opened = []
    for partition in range(10):
        opened.append(sessions.open_session(config, {"partition-id": partition}))
        opened[-1].data  # noqa: B018 - loads the rows
    assert sessions.cached_rows() <= 3000 + max(len(s.data.frame) for s in opened)
    assert opened[-1] in sessions._SESSIONS.values() and opened[0] not in sessions._SESSIONS.values()


def test_a_config_is_parsed_once_per_process(monkeypatch):
    parsed: list[int] = []
    real = sessions.config_from_json

    def counting(text):
        parsed.append(1)
        return real(text)

    monkeypatch.setattr(sessions, "config_from_json", counting)
    monkeypatch.setattr(sessions, "_SESSIONS", type(sessions._SESSIONS)())
    sessions.parsed_config.cache_clear()
    config = config_to_json(load_config(None, {"data.synthetic.institutions": 3, "data.synthetic.rows": 3000}))
    for _ in range(4):
        for partition in range(3):
            sessions.open_session(config, {"partition-id": partition})
    assert len(parsed) == 1


@pytest.mark.parametrize("cap", [0.05, 0.3, 0.8, 1.5, 3.0])
def test_the_preflight_check_refuses_exactly_what_the_plan_refuses(tmp_path, cap):
    """`check_campaign_fits` skips DP-SGD's calibration; it must still refuse the campaigns the
    institution's plan refuses, with the same line, and accept the others."""
    config = load_config(None, {"training.rounds": 8})
    shape = Shape(train_rows=9000, numeric=8, categorical=3, protected=2, fraud=False)
    ledger = PrivacyLedger(tmp_path / "ledger.json", "inst01", cap, 1e-6)
    outcomes = []
    for check in (plan_campaign, check_campaign_fits):
        try:
            check(config, shape, ledger, "c1", 3.0, cap)
            outcomes.append("fits")
        except BudgetExhaustedError as err:
            outcomes.append(err.one_line())
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("overlap", [0.3, 0.45, 0.5, 0.55, 0.7, 1.0])
def test_the_population_check_refuses_what_the_sketch_estimate_refuses(tmp_path, overlap):
    """Each home's check against its siblings skips pairs by a bound (and reads each sibling's
    file once); it must refuse exactly the pairs whose estimated shared rows reach the threshold."""
    rng = np.random.default_rng(int(overlap * 100))
    base = np.unique(rng.integers(0, 2**64, 60_000, dtype=np.uint64))
    mine = base[:20_000]
    theirs = np.concatenate([base[:int(20_000 * overlap)], base[40_000:40_000 + int(20_000 * (1 - overlap))]])
    sketch_of = [int(h) for h in np.unique(theirs)[:lineage.SKETCH_SIZE]]
    rows = [int(h) for h in np.unique(mine)[:lineage.SKETCH_SIZE]]
    lineage.record(tmp_path / "inst01", "their-data", sketch_of)
    expected = lineage.similarity(rows, sketch_of) >= lineage.SAME_POPULATION
    for _ in range(2):  # the second time from the parsed cache
        try:
            lineage.check_population(tmp_path / "inst02", "inst02", rows, "mine.csv")
            refused = False
        except FedriskInputError as err:
            refused = "inst01" in err.one_line()
        assert refused == expected


def test_a_thousand_institutions_fit_the_runs_tags_whole():
    """MLflow cuts a tag at 8,000 characters; the validator, the evidence pack and the privacy audit
    read the campaign's institutions from its tags, so none may be lost (a look-alike cut name
    would be another institution)."""
    names = [f"institution-{i:04d}" for i in range(1000)]
    tags = run_schema.institution_tags(names)
    assert len(tags) > 1 and all(len(v) <= run_schema.TAG_LIMIT for v in tags.values())
    assert run_schema.institutions_of(tags) == sorted(names)
    assert run_schema.institutions_of(run_schema.institution_tags(["inst02", "inst01"])) == ["inst01", "inst02"]
    assert run_schema.institutions_of({run_schema.INSTITUTIONS: "inst01,inst02"}) == ["inst01", "inst02"]  # older runs


def test_a_large_consortium_keeps_its_institutions_metrics_in_one_table(tmp_path):
    """Beyond `tracking.institution_metrics_limit` institutions, each one's metrics go to one
    artifact table, not to thousands of MLflow metrics; the gate still judges every institution
    from it, and the CLI's summary and the evidence pack read it (the real ServerApp phases and
    ClientApp through `LocalGrid`)."""
    config = load_config(None, {"data.synthetic.institutions": 3, "data.synthetic.rows": 9000, "training.rounds": 2,
                                "tracking.institution_metrics_limit": 2,
                                "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db"}, work_dir=tmp_path)
    run_campaign(LocalGrid.simulation(client_app, 3), config, "table")
    outcome = campaign_outcome(config, "table")
    assert outcome.status == "completed"
    client = MlflowClient(config.tracking.uri)
    run = client.get_run(outcome.run_id)
    names = ["inst01", "inst02", "inst03"]
    assert not [k for k in run.data.metrics if k.rsplit(".", 1)[-1] in names]
    assert run_schema.split_metric("test", "auc") in run.data.metrics  # consortium-wide: still a metric
    table = json.loads(read_artifact(client, outcome.run_id, run_schema.INSTITUTION_METRICS_ARTIFACT))
    assert {run_schema.at("train_seconds", n) for n in names} <= set(table["1"]) & set(table["2"])
    merged = run_metrics(client, run)
    test_auc = {n: merged[run_schema.split_metric("test", "auc", n)] for n in names}
    assert outcome.metrics[run_schema.split_metric("test", "auc", "inst02")] == test_auc["inst02"]
    verdict = json.loads(read_artifact(client, outcome.run_id, run_schema.VERDICT_ARTIFACT))
    rule = next(r for r in verdict["results"] if r["scope"] == "every_institution")
    assert rule["outcome"] != "missing" and rule["value"] == pytest.approx(min(test_auc.values()))
    page, _, _ = write_evidence(config.tracking.uri, outcome.run_id, tmp_path / "pack", "tom")
    assert f"{test_auc['inst03']:.4f}" in Path(page).read_text()


def test_the_institution_table_changes_only_what_it_may(tmp_path):
    """The table artifact is read only for a run that routed metrics to it, only for keys of the
    run's institutions, and never over a metric MLflow holds: a table uploaded by hand to any
    run does not change what the gate, the evidence pack or the privacy audit read."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = TrackedRun(uri, "e", {})
    run.log_metrics({"test_auc": 0.61, run_schema.split_metric("test", "auc", "inst01"): 0.6}, step=1)
    run.flush()
    client = MlflowClient(uri)
    forged = {"9": {"test_auc": 0.99, "test_auc.inst01": 0.99, "test_auc.inst09": 0.99, "epsilon.inst01": 0.01}}
    client.log_dict(run.run_id, forged, run_schema.INSTITUTION_METRICS_ARTIFACT)
    assert run_metrics(client, client.get_run(run.run_id)) == {"test_auc": 0.61, "test_auc.inst01": 0.6}
    big = TrackedRun(uri, "e", {})
    big.set_institutions(["inst01", "inst02"], metrics_limit=1)
    big.log_metrics({"test_auc": 0.7, "test_auc.inst01": 0.65, "test_auc.inst02": 0.66}, step=2)
    big.flush()
    client.log_dict(big.run_id, {**json.loads(read_artifact(client, big.run_id, run_schema.INSTITUTION_METRICS_ARTIFACT)),
                                 **forged}, run_schema.INSTITUTION_METRICS_ARTIFACT)
    merged = run_metrics(client, client.get_run(big.run_id))
    assert merged["test_auc"] == 0.7 and "test_auc.inst09" not in merged
    assert merged["test_auc.inst02"] == 0.66


def test_a_resumed_campaign_keeps_one_table_and_its_own_institutions(tmp_path):
    """A resume admitting fewer institutions must not leave the first attempt's table values or
    tag parts behind: the validator would judge institutions that did not take part."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = TrackedRun(uri, "e", {})
    names = [f"institution-{i:04d}" for i in range(1000)]
    first.set_institutions(names, metrics_limit=20)
    first.log_metrics({run_schema.at("epsilon", names[0]): 1.0}, step=1)
    first.flush()
    again = TrackedRun(uri, "e", {}, run_id=first.run_id)
    again.set_institutions(names[:800], metrics_limit=20)
    assert run_schema.institutions_of(MlflowClient(uri).get_run(first.run_id).data.tags) == sorted(names[:800])
    again.log_metrics({run_schema.at("epsilon", names[0]): 2.0}, step=2)
    again.flush()
    client = MlflowClient(uri)
    assert run_metrics(client, client.get_run(first.run_id))[run_schema.at("epsilon", names[0])] == 2.0
    small = TrackedRun(uri, "e", {}, run_id=first.run_id)
    small.set_institutions(names[:5], metrics_limit=20)  # the table once begun stays the run's table
    small.log_metrics({run_schema.at("epsilon", names[0]): 3.0}, step=3)
    small.flush()
    assert run_metrics(client, client.get_run(first.run_id))[run_schema.at("epsilon", names[0])] == 3.0


def test_a_node_keeps_at_most_a_few_sessions_of_one_institution(monkeypatch):
    """Many campaign configs for one institution (a coordinator varying a key that changes
    nothing) keep at most MAX_SESSIONS_PER_INSTITUTION of its sessions, as the 8-session cache did."""
    monkeypatch.setattr(sessions, "_SESSIONS", type(sessions._SESSIONS)())
    for i in range(30):
        config = config_to_json(load_config(None, {"data.synthetic.institutions": 3, "data.synthetic.rows": 3000,
                                                   "tracking.experiment": f"x{i}"}))
        sessions.open_session(config, {"partition-id": 0})
        sessions.open_session(config, {"partition-id": 1})
    names = [s.name for s in sessions._SESSIONS.values()]
    assert names.count("inst01") == names.count("inst02") == sessions.MAX_SESSIONS_PER_INSTITUTION
