"""`fedrisk inspect`: a proposed data spec from one file, each choice with its reason, nothing leaving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fedrisk.cli import main
from fedrisk.config import load_config
from fedrisk.data import load_institution
from fedrisk.generators import credit, fraud
from fedrisk.inspection import inspect_file

SEED = 4


def _spec_with(tmp_path: Path, text: str, extra: dict[str, Path]) -> dict:
    raw = yaml.safe_load(text)
    raw["data"]["files"].update({k: str(v) for k, v in extra.items()})
    return raw


def test_the_credit_generators_file_gets_the_projects_own_spec(tmp_path):
    files = {name: tmp_path / f"{name}.csv" for name in ("inst01", "inst02")}
    for i, path in enumerate(files.values()):
        credit.generate_institution(i, 3, 6000, SEED).to_csv(path, index=False)
    proposal, text = inspect_file(str(files["inst01"]))
    spec = proposal.spec
    assert proposal.task == "credit" and spec["target"] == "default"
    assert spec["protected"] == credit.PROTECTED and spec["drop"] == ["customer_id"]
    assert sorted(spec["categorical"]) == sorted(credit.CATEGORICAL_FEATURES)
    assert sorted(spec["quality"]["ranges"]) == sorted(credit.NUMERIC_FEATURES)
    assert "approval_rate_difference.sex <= 0.05 (block)" in text and proposal.warnings == []
    raw = _spec_with(tmp_path, text, {"inst02": files["inst02"]})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(str(tmp_path / "spec.yaml"), work_dir=tmp_path)
    mine = load_institution(config.data, "inst02", SEED)
    built_in = load_institution(load_config(None, {"institutions": 3, "data.synthetic.rows": 6000}).data, "inst02",
                                SEED)
    assert sorted(mine.columns.numeric) == sorted(built_in.columns.numeric)
    assert sorted(mine.columns.categorical) == sorted(built_in.columns.categorical)
    assert mine.columns.protected == built_in.columns.protected
    assert mine.quality["invalid"] == {c: 0.0 for c in credit.NUMERIC_FEATURES}  # the ranges hold


def test_the_fraud_generators_file_gets_the_projects_own_spec(tmp_path):
    path = tmp_path / "issuer.csv"
    fraud.generate_issuer(0, 3, 400, 500, 60, SEED, "none", 0.0, 0, 0).to_csv(path, index=False)
    proposal, text = inspect_file(str(path))
    spec = proposal.spec
    assert proposal.task == "fraud" and spec["target"] == "tx_fraud"
    assert spec["transactions"] == {"timestamp": "tx_datetime", "customer": "customer_id",
                                    "terminal": "terminal_id", "amount": "tx_amount"}
    assert spec["drop"] == ["transaction_id", "tx_fraud_scenario"]  # a row number and a label leak
    assert "label leak" in text
    config = load_config(None, {"task": "fraud", "data": yaml.safe_load(text)["data"]})
    data = load_institution(config.data, "issuer", SEED)
    assert "tx_fraud_scenario" not in data.frame.columns


def _bank_file(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Shaped like a public credit-default file: an ID, coded categories, upper-case names."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "ID": np.arange(1, rows + 1), "LIMIT_BAL": rng.integers(1, 80, rows) * 10_000,
        "SEX": rng.integers(1, 3, rows), "EDUCATION": rng.integers(0, 7, rows), "MARRIAGE": rng.integers(0, 4, rows),
        "AGE": rng.integers(21, 75, rows), "PAY_0": rng.integers(-2, 9, rows),
        "BILL_AMT1": rng.normal(50_000, 20_000, rows).round(), "default.payment.next.month": rng.random(rows) < 0.22,
    }).astype({"default.payment.next.month": int})


def test_a_public_style_credit_file_gets_codes_ids_and_protected_attributes_proposed(tmp_path):
    path = tmp_path / "bank.csv"
    frame = _bank_file()
    frame.to_csv(path, index=False)
    proposal, text = inspect_file(str(path))
    spec = proposal.spec
    rate = f"{frame['default.payment.next.month'].mean():.1%} positive"
    assert spec["target"] == "default.payment.next.month" and rate in text.split("target:")[1].splitlines()[0]
    assert spec["drop"] == ["id"]
    assert spec["categorical"] == ["education", "pay_0"]
    assert spec["protected"] == ["sex", "marriage"]
    assert any("age_band" in w for w in proposal.warnings)
    assert sorted(spec["quality"]["ranges"]) == ["age", "bill_amt1", "limit_bal"]
    for value in (frame["LIMIT_BAL"].max(), frame["BILL_AMT1"].max(), frame["BILL_AMT1"].min()):
        assert f"{value:g}" not in text and str(int(value)) not in text  # no customer's value is written


def test_the_cli_writes_the_spec_and_refuses_a_missing_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "bank.csv"
    _bank_file().to_csv(path, index=False)
    assert main(["inspect", str(path), "--out", str(tmp_path / "spec.yaml")]) == 0
    out = capsys.readouterr()
    assert "fedrisk simulate" in out.out and "age_band" in out.err
    assert yaml.safe_load((tmp_path / "spec.yaml").read_text())["data"]["drop"] == ["id"]
    assert main(["inspect", str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.csv" in err


@pytest.mark.parametrize("task", ["credit", "fraud"])
def test_the_task_can_be_named(tmp_path, task):
    path = tmp_path / "bank.csv"
    _bank_file().to_csv(path, index=False)
    proposal, _ = inspect_file(str(path), task)
    assert proposal.task == task
    if task == "fraud":
        assert any("timestamp" in w for w in proposal.warnings)
