"""`fedrisk score`: one scoring path for both tasks, from raw columns.

Credit scores must equal the MLflow pyfunc's. Fraud scores of raw transactions must equal an
independent computation: the look-back features computed with `transaction_features` on the
issuer's whole stream, then the model's preprocessor and network called directly (and, for
models of real campaigns, the pyfunc on the very rows the campaign evaluated). Bad inputs are
one line, exit 2. The fast tests use models saved here the way a campaign logs them; the slow
ones run small campaigns (in process, `LocalGrid`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

import fedrisk
from fedrisk.cli import main
from fedrisk.columns import Columns
from fedrisk.config import ModelSpec, load_config
from fedrisk.generators.credit import generate_institution
from fedrisk.generators.fraud import generate_issuer
from fedrisk.models import build_model, predict_proba
from fedrisk.preprocessing import exact_preprocessor
from fedrisk.serving import read_model, save_model_files
from fedrisk.transaction_features import transaction_features, window_names

WINDOWS, DELAY = [1, 7, 30], 7
HISTORY_DAYS = max(WINDOWS) + DELAY


def _save_pyfunc(folder: Path, state, preprocessor, spec: ModelSpec, transactions=None) -> str:
    """A model saved exactly as `CampaignRun.log_model` logs one, at a local path (its URI)."""
    from fedrisk.tracking import pip_requirements

    files = save_model_files(folder / "files", state, preprocessor, spec, transactions=transactions)
    path = folder / "model"
    mlflow.pyfunc.save_model(str(path), python_model=str(Path(fedrisk.__file__).parent / "mlflow_entry.py"),
                             artifacts=files, code_paths=[str(Path(fedrisk.__file__).parent)],
                             pip_requirements=pip_requirements())
    return str(path)


def _network(state, preprocessor, spec: ModelSpec):
    model = build_model(spec, preprocessor.width, 0)
    model.load_state_dict(state)
    return model


def _probabilities(state, preprocessor, spec: ModelSpec, frame: pd.DataFrame) -> np.ndarray:
    """The model's preprocessor and network, called directly."""
    x = torch.as_tensor(preprocessor.transform(frame))
    return predict_proba(_network(state, preprocessor, spec), x).numpy()


def _score(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()  # what came before (MLflow's warnings when a test saves a model)
    code = main(["score", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedrisk: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- fraud, a model saved here


@pytest.fixture(scope="module")
def fraud(tmp_path_factory):
    """An issuer's raw stream (with a categorical column the model uses), a fraud model saved
    with its transaction spec, and the reference features computed on the whole stream."""
    from fedrisk.scoring import transaction_spec

    tmp = tmp_path_factory.mktemp("fraud")
    raw = generate_issuer(0, 3, 400, 300, 60, 7).drop(columns=["tx_fraud_scenario"])
    raw["channel"] = np.where(raw["terminal_id"] % 3 == 0, "online", "pos")
    raw["card_number"] = raw["customer_id"].map(lambda c: f"4000-{c:06d}")  # a dropped column
    features = transaction_features(raw["tx_datetime"], raw["customer_id"], raw["terminal_id"], raw["tx_amount"],
                                    raw["tx_fraud"], WINDOWS, DELAY)
    engineered = pd.concat([raw[["tx_amount"]], features, raw[["channel", "tx_fraud"]]], axis=1)
    columns = Columns(["tx_amount", *window_names(WINDOWS)], ["channel"], [], "tx_fraud")
    preprocessor = exact_preprocessor([engineered], columns)
    spec = ModelSpec(kind="mlp", hidden=[8])
    state = build_model(spec, preprocessor.width, 5).state_dict()
    config = load_config(None, {"task": "fraud"}, work_dir=tmp)
    uri = _save_pyfunc(tmp, state, preprocessor, spec, transaction_spec(config, "c1"))
    reference = _probabilities(state, preprocessor, spec, engineered)
    day = (raw["tx_datetime"] - raw["tx_datetime"].min().normalize()).dt.days.to_numpy()
    return {"tmp": tmp, "raw": raw, "uri": uri, "reference": reference, "day": day,
            "state": state, "preprocessor": preprocessor, "spec": spec}


def _write(frame: pd.DataFrame, path: Path) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def test_fraud_scores_raw_transactions_with_their_history(fraud, tmp_path, capsys):
    raw, day = fraud["raw"], fraud["day"]
    new = day >= 45
    data = _write(raw[new], tmp_path / "new.csv")
    history = _write(raw[~new], tmp_path / "history.csv")
    out = tmp_path / "scores.csv"
    code, stdout, err = _score([fraud["uri"], data, "--history", history, "--out", str(out),
                                "--id", "transaction_id"], capsys)
    assert code == 0, err
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["transaction_id", "probability"]  # no other customer column
    assert len(scores) == int(new.sum())
    assert scores["transaction_id"].tolist() == raw.loc[new, "transaction_id"].tolist()
    np.testing.assert_allclose(scores["probability"], fraud["reference"][new], rtol=1e-5, atol=1e-7)
    assert np.ptp(scores["probability"]) > 0.01  # not a constant: the comparison means something
    assert f"{int(new.sum())} transactions scored" in stdout


def test_new_transactions_need_no_label_within_the_delay(fraud, tmp_path, capsys):
    raw, day = fraud["raw"], fraud["day"]
    new = day >= 55  # five days: no new transaction is older than the 7-day delay for another
    data = _write(raw[new].drop(columns=["tx_fraud"]), tmp_path / "new.csv")
    history = _write(raw[~new], tmp_path / "history.csv")
    out = tmp_path / "scores.csv"
    code, _, err = _score([fraud["uri"], data, "--history", history, "--out", str(out)], capsys)
    assert code == 0, err
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["row", "probability"]
    assert scores["row"].tolist() == list(range(int(new.sum())))
    np.testing.assert_allclose(scores["probability"], fraud["reference"][new], rtol=1e-5, atol=1e-7)


def test_one_file_holding_its_own_history(fraud, tmp_path, capsys):
    """Without --history the rows with a full look-back are scored, the earlier ones are history."""
    raw, day = fraud["raw"], fraud["day"]
    out = tmp_path / "scores.csv"
    code, stdout, err = _score([fraud["uri"], _write(raw, tmp_path / "all.csv"), "--out", str(out)], capsys)
    assert code == 0, err
    scored = day >= HISTORY_DAYS
    scores = pd.read_csv(out)
    assert scores["row"].tolist() == np.flatnonzero(scored).tolist()
    np.testing.assert_allclose(scores["probability"], fraud["reference"][scored], rtol=1e-5, atol=1e-7)
    assert f"{int((~scored).sum())} earlier ones" in stdout


def test_the_pyfunc_points_raw_transactions_to_fedrisk_score(fraud):
    model = mlflow.pyfunc.load_model(fraud["uri"])
    with pytest.raises(ValueError, match="fedrisk score"):
        model.predict(fraud["raw"].head(50))


def _bad_fraud_inputs(fraud, tmp_path, case):
    raw, day = fraud["raw"], fraud["day"]
    new, old = raw[day >= 45], raw[day < 45]

    def given(data, history=None, *extra):
        return [_write(data, tmp_path / "d.csv"), *(["--history", _write(history, tmp_path / "h.csv")]
                                                    if history is not None else []), *extra]

    cases = {
        "missing column": (lambda: given(new.drop(columns=["terminal_id"]), old), "column 'terminal_id'"),
        "history without labels": (lambda: given(new, old.drop(columns=["tx_fraud"])), "column 'tx_fraud'"),
        "too little history": (lambda: given(new, raw[(day >= 30) & (day < 45)]), "days of history"),
        "no history at all": (lambda: given(raw[day < 30]), "--history"),
        "unlabelled rows older than the delay": (lambda: given(new.drop(columns=["tx_fraud"]), old), "label delay"),
        "history given twice": (lambda: given(raw, old), "also in --history"),
        "bad timestamps": (lambda: given(new.assign(tx_datetime="yesterday"), old), "not timestamps"),
        "missing model input": (lambda: given(new.drop(columns=["channel"]), old), "column 'channel'"),
        "unknown id column": (lambda: given(new, old, "--id", "tx_ref"), "column 'tx_ref'"),
        "a table for a model without consortium features": (
            lambda: given(new, old, "--table", _write(old.head(2), tmp_path / "t.csv")), "consortium"),
    }
    make, expected = cases[case]
    return make(), expected


@pytest.mark.parametrize("case", ["missing column", "history without labels", "too little history",
                                  "no history at all", "unlabelled rows older than the delay", "history given twice",
                                  "bad timestamps", "missing model input", "unknown id column",
                                  "a table for a model without consortium features"])
def test_bad_fraud_inputs_are_one_line_exit_2(fraud, tmp_path, capsys, case):
    args, expected = _bad_fraud_inputs(fraud, tmp_path, case)
    out = tmp_path / "scores.csv"
    code, _, err = _score([fraud["uri"], *args, "--out", str(out)], capsys)
    assert expected in _one_line_error(code, err)
    assert not out.exists()


def test_a_fraud_model_logged_before_scoring_existed_says_so(fraud, tmp_path, capsys):
    uri = _save_pyfunc(tmp_path, fraud["state"], fraud["preprocessor"], fraud["spec"])  # no transactions.json
    raw = fraud["raw"]
    code, _, err = _score([uri, _write(raw, tmp_path / "d.csv"), "--out", str(tmp_path / "s.csv")], capsys)
    assert "no transaction spec" in _one_line_error(code, err)


# ---------------------------------------------------------------- credit, a model saved here


@pytest.fixture(scope="module")
def credit(tmp_path_factory, credit_institution):
    preprocessor, split = credit_institution
    tmp = tmp_path_factory.mktemp("credit")
    spec = ModelSpec(kind="mlp", hidden=[8])
    state = build_model(spec, preprocessor.width, 3).state_dict()
    return {"uri": _save_pyfunc(tmp, state, preprocessor, spec),
            "raw": generate_institution(0, 2, 2000, 9)}


def test_credit_scores_equal_the_pyfunc(credit, tmp_path, capsys):
    raw = credit["raw"]
    out = tmp_path / "scores.csv"
    code, _, err = _score([credit["uri"], _write(raw, tmp_path / "applicants.csv"), "--out", str(out),
                           "--id", "customer_id"], capsys)
    assert code == 0, err
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["customer_id", "probability"]
    expected = mlflow.pyfunc.load_model(credit["uri"]).predict(pd.read_csv(tmp_path / "applicants.csv"))
    np.testing.assert_allclose(scores["probability"], expected, rtol=1e-5, atol=1e-7)
    assert scores["customer_id"].tolist() == raw["customer_id"].tolist()
    upper = pd.read_csv(tmp_path / "applicants.csv").rename(columns=str.upper)  # a bank's headers
    np.testing.assert_allclose(mlflow.pyfunc.load_model(credit["uri"]).predict(upper), expected, rtol=1e-6)


@pytest.mark.parametrize("case", ["history", "missing column", "text in a number"])
def test_bad_credit_inputs_are_one_line_exit_2(credit, tmp_path, capsys, case):
    raw = credit["raw"]
    data = {"history": raw, "missing column": raw.drop(columns=["income"]),
            "text in a number": raw.assign(income=raw["income"].astype(str).where(raw.index > 3, "unknown"))}[case]
    extra = ["--history", _write(raw, tmp_path / "h.csv")] if case == "history" else []
    code, _, err = _score([credit["uri"], _write(data, tmp_path / "d.csv"), *extra,
                           "--out", str(tmp_path / "s.csv")], capsys)
    line = _one_line_error(code, err)
    assert {"history": "--history applies to fraud", "missing column": "column 'income'",
            "text in a number": "column 'income'"}[case] in line


def test_unknown_model_is_one_line_exit_2(tmp_path, capsys):
    data = _write(pd.DataFrame({"a": [1]}), tmp_path / "d.csv")
    code, _, err = _score([str(tmp_path / "no-such-model"), data], capsys)
    assert "no model folder there" in _one_line_error(code, err)
    code, _, err = _score(["models:/fedrisk-credit@champion", data, "--tracking-uri",
                           f"sqlite:///{tmp_path}/none.db"], capsys)
    assert "no MLflow store" in _one_line_error(code, err)
    assert not (tmp_path / "none.db").exists()


def test_the_entry_point_prints_one_line_without_traceback(tmp_path):
    data = _write(pd.DataFrame({"a": [1]}), tmp_path / "d.csv")
    result = subprocess.run([sys.executable, "-m", "fedrisk.cli", "score", "models:/nothing/1", data],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("fedrisk: error: ") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()


def test_the_kept_table_is_where_the_node_keeps_it(tmp_path):
    from fedrisk.consortium_features import kept_table
    from fedrisk.session import NodeSession

    config = load_config(None, {"task": "fraud"}, work_dir=tmp_path)
    session = NodeSession("inst01", config, tmp_path / "inst01")
    assert session.table_path("c1") == tmp_path / "inst01" / kept_table("c1")


# ---------------------------------------------------------------- real campaigns (slow)


def _campaign(tmp: Path, overrides: dict, institutions: int, campaign: str):
    from conftest import own_homes
    from local_grid import LocalGrid

    from clients.client_app import app as client_app
    from fedrisk.launcher import campaign_outcome
    from server.campaign import run_campaign

    config = load_config(None, {**overrides, "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
                                "audit.path": str(tmp / "audit.jsonl"), "gate.enabled": False}, work_dir=tmp)
    with own_homes(tmp / "fedrisk") as home:
        run_campaign(LocalGrid.simulation(client_app, institutions), config, campaign)
    outcome = campaign_outcome(config, campaign)
    assert outcome.status == "completed"
    return config, outcome.tags["fedrisk.model_uri"], home


FRAUD = {"task": "fraud", "institutions": 2, "rounds": 1, "data.synthetic.customers": 600,
         "data.synthetic.terminals": 400, "data.synthetic.days": 70, "training.batch_size": 128}


def _test_window(config, name: str, seed: int):
    """The issuer's raw stream, and which of its rows are the campaign's test window."""
    from fedrisk.sources import institution_names, raw_frame
    from fedrisk.splits import time_windows

    raw, _, _ = raw_frame(config.data, name, institution_names(config.data), seed)
    days = raw["tx_datetime"].to_numpy(dtype="datetime64[D]").astype(np.int64)
    first, _ = time_windows(config.data, int(days.max()))["test"]
    return raw, days >= first


@pytest.mark.slow
def test_credit_campaign_model_scores_as_its_pyfunc(tmp_path, capsys, monkeypatch):
    config, uri, _ = _campaign(tmp_path, {"institutions": 2, "rounds": 1, "data.synthetic.rows": 4000,
                                          "training.batch_size": 128}, 2, "credit1")
    applicants = generate_institution(1, 2, 4000, 11)
    data = _write(applicants, tmp_path / "applicants.csv")
    monkeypatch.chdir(tmp_path)  # the default store: ./mlflow.db
    code, _, err = _score([uri, data, "--out", "scores.csv"], capsys)
    assert code == 0, err
    mlflow.set_tracking_uri(config.tracking.uri)
    expected = mlflow.pyfunc.load_model(uri).predict(pd.read_csv(data))
    np.testing.assert_allclose(pd.read_csv(tmp_path / "scores.csv")["probability"], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_fraud_campaign_model_scores_its_test_window_from_raw_transactions(tmp_path, capsys):
    from fedrisk.data import load_institution
    from fedrisk.splits import split_institution

    config, uri, home = _campaign(tmp_path, FRAUD, 2, "fraud1")
    store = ["--tracking-uri", config.tracking.uri]
    stored = read_model(uri, config.tracking.uri)["transactions"]  # transactions.json, logged with the model
    assert stored["target"] == "tx_fraud" and "consortium" not in stored
    assert stored["transactions"]["windows_days"] == WINDOWS and stored["transactions"]["delay_days"] == DELAY
    raw, test = _test_window(config, "inst02", config.seed)
    data, history = _write(raw[test], tmp_path / "test.csv"), _write(raw[~test], tmp_path / "history.csv")
    out = tmp_path / "scores.csv"
    code, _, err = _score([uri, data, "--history", history, "--out", str(out), *store], capsys)
    assert code == 0, err
    split = split_institution(load_institution(config.data, "inst02", config.seed), config.data, config.seed)
    assert len(split.test) == int(test.sum())
    mlflow.set_tracking_uri(config.tracking.uri)
    expected = mlflow.pyfunc.load_model(uri).predict(split.test)
    np.testing.assert_allclose(pd.read_csv(out)["probability"], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_consortium_model_scores_with_the_kept_table_and_the_sketch_key(tmp_path, capsys, monkeypatch):
    from fedrisk.consortium_features import kept_table
    from fedrisk.session import NodeSession

    overrides = {**FRAUD, "data.transactions.consortium_features": True, "data.transactions.sketch_width": 4096}
    config, uri, home = _campaign(tmp_path, overrides, 2, "cons1")
    store = ["--tracking-uri", config.tracking.uri]
    raw, test = _test_window(config, "inst01", config.seed)
    data, history = _write(raw[test], tmp_path / "test.csv"), _write(raw[~test], tmp_path / "history.csv")
    table = home / "institutions" / "inst01" / kept_table("cons1")
    key = home / "federation" / "sketch.key"
    assert table.is_file() and key.is_file()
    out = tmp_path / "scores.csv"

    code, _, err = _score([uri, data, "--history", history, "--out", str(out), *store], capsys)
    line = _one_line_error(code, err)
    assert "--table" in line and kept_table("cons1") in line
    code, _, err = _score([uri, data, "--history", history, "--out", str(out), "--table", str(table), *store], capsys)
    assert "--sketch-key" in _one_line_error(code, err)

    code, _, err = _score([uri, data, "--history", history, "--out", str(out), "--table", str(table),
                           "--sketch-key", str(key), *store], capsys)
    assert code == 0, err
    monkeypatch.setenv("FEDRISK_HOME", str(home))
    session = NodeSession("inst01", config, home / "institutions" / "inst01", sketch_key_file=key)
    session.attach_table("cons1")  # the rows as the node evaluated them, consortium columns included
    mlflow.set_tracking_uri(config.tracking.uri)
    expected = mlflow.pyfunc.load_model(uri).predict(session.split.test)
    np.testing.assert_allclose(pd.read_csv(out)["probability"], expected, rtol=1e-5, atol=1e-7)
    empty = tmp_path / "empty.npy"  # the same shape without a count: other scores, so the table is read
    np.save(empty, np.zeros_like(np.load(table)))
    code, _, err = _score([uri, data, "--history", history, "--out", str(tmp_path / "empty.csv"), "--table",
                           str(empty), "--sketch-key", str(key), *store], capsys)
    assert code == 0, err
    assert not np.allclose(pd.read_csv(tmp_path / "empty.csv")["probability"], expected, rtol=1e-3)

    later = raw[test].assign(tx_datetime=raw.loc[test, "tx_datetime"] + pd.Timedelta(days=30))
    code, _, err = _score([uri, _write(later, tmp_path / "later.csv"), "--history",
                           _write(raw, tmp_path / "all.csv"), "--out", str(out), "--table", str(table),
                           "--sketch-key", str(key), *store], capsys)
    assert "newer table" in _one_line_error(code, err)
