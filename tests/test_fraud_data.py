"""Issuers' transaction files: checks with one-line errors, local features, time-ordered splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrisk.config import load_config
from fedrisk.data import DAY, load_institution, split_institution, time_windows
from fedrisk.errors import FedriskInputError
from fedrisk.generators.fraud import generate_consortium

DAYS = 70


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("issuers")
    raw = generate_consortium(3, customers=900, terminals=1800, days=DAYS, seed=11)
    out = {}
    for name, part in raw.groupby("issuer"):
        path = folder / f"{name}.csv"
        part.drop(columns="issuer").to_csv(path, index=False)
        out[name] = str(path)
    return out


def _config(files: dict[str, str], **overrides):
    return load_config(None, {"task": "fraud", "data.source": "files", "data.files": files, **overrides})


def test_files_load_with_features_and_without_identifiers(files):
    config = _config(files)
    data = load_institution(config.data, "inst02", config.seed)
    for identifier in ("customer_id", "terminal_id", "transaction_id", "tx_datetime", "tx_fraud_scenario"):
        assert identifier not in data.frame.columns
        assert identifier not in data.columns.features
    assert "terminal_risk_7d" in data.columns.numeric and data.columns.amount == "tx_amount"
    raw = pd.read_csv(files["inst02"])
    assert len(data.frame) == len(raw)  # nothing dropped
    assert data.frame["tx_fraud"].sum() == raw["tx_fraud"].sum()


def test_time_split_is_ordered_with_the_label_delay_between_train_and_validation(files):
    config = _config(files)
    data = load_institution(config.data, "inst01", config.seed)
    split = split_institution(data, config.data, config.seed)
    ts, delay = config.data.time_split, config.data.transactions.delay_days
    train, val, test = (split.train[DAY], split.validation[DAY], split.test[DAY])
    assert test.max() == data.frame[DAY].max()  # test ends on the issuer's last day
    assert (test.max() - test.min() + 1, val.max() - val.min() + 1, train.max() - train.min() + 1) == (
        ts.test_days, ts.validation_days, ts.train_days)
    assert val.max() + 1 == test.min()
    assert val.min() - train.max() - 1 == delay  # the delay's transactions are in no split
    history = data.frame[DAY] < train.min()
    assert history.sum() > 0  # earlier days feed the look-back windows only
    assert len(split.train) + len(split.validation) + len(split.test) + history.sum() + (
        (data.frame[DAY] > train.max()) & (data.frame[DAY] < val.min())).sum() == len(data.frame)


def test_a_fixed_end_date_aligns_issuers(files):
    config = _config(files, **{"data.time_split.end": "2026-03-01"})
    windows = time_windows(config.data, last_day=0)
    assert np.datetime64(windows["test"][1], "D") == np.datetime64("2026-03-01")
    split = split_institution(load_institution(config.data, "inst03", 1), config.data, 1)
    assert str(np.datetime64(int(split.test[DAY].max()), "D")) == "2026-03-01"


def test_too_little_history_is_refused(files):
    config = _config(files, **{"data.time_split.train_days": DAYS})
    data = load_institution(config.data, "inst01", config.seed)
    with pytest.raises(FedriskInputError, match="train window starts on") as err:
        split_institution(data, config.data, config.seed)
    assert "institution inst01" in err.value.one_line() and "tx_datetime" in err.value.one_line()


@pytest.mark.parametrize(
    "change, message, column",
    [
        (lambda f: f.drop(columns="tx_datetime"), "timestamp column missing", "tx_datetime"),
        (lambda f: f.assign(tx_datetime=f.tx_datetime.where(f.index != 5, "yesterday")),
         "1 values are missing or not timestamps", "tx_datetime"),
        (lambda f: f.assign(tx_amount=f.tx_amount.where(f.index != 3, -4.0)),
         "1 negative (refunds?) values", "tx_amount"),
        (lambda f: f.assign(tx_amount=f.tx_amount.astype(object).where(f.index != 3, "12,50")),
         "1 non-numeric values", "tx_amount"),
        (lambda f: f.assign(customer_id=f.customer_id.where(f.index != 7)), "1 missing ids", "customer_id"),
        (lambda f: f.drop(columns="terminal_id"), "terminal id column missing", "terminal_id"),
        (lambda f: f.assign(tx_fraud=2), "not binary", "tx_fraud"),
    ],
)
def test_bad_transactions_fail_with_one_line(files, tmp_path, change, message, column):
    bad = tmp_path / "bad.csv"
    change(pd.read_csv(files["inst02"])).to_csv(bad, index=False)
    config = _config({**files, "inst02": str(bad)})
    with pytest.raises(FedriskInputError) as err:
        load_institution(config.data, "inst02", config.seed)
    line = err.value.one_line()
    assert message in line and "institution inst02" in line and str(bad) in line and f"'{column}'" in line
    assert "\n" not in line


def test_partition_of_one_file_keeps_each_customer_with_one_issuer(files, tmp_path):
    pooled = pd.concat([pd.read_csv(p) for p in files.values()], ignore_index=True)
    path = tmp_path / "all.csv"
    pooled.to_csv(path, index=False)
    config = load_config(None, {"task": "fraud", "data.source": "files", "data.path": str(path),
                                "data.partition": {"institutions": 3, "method": "dirichlet", "alpha": 2.0}})
    sizes = [len(load_institution(config.data, n, config.seed).frame) for n in ("inst01", "inst02", "inst03")]
    assert sum(sizes) == len(pooled)
    from fedrisk.data import _partition_rows

    owner = _partition_rows(pooled, config.data, config.seed)
    assert (pd.Series(owner).groupby(pooled["customer_id"]).nunique() == 1).all()


def test_credit_and_fraud_keys_do_not_mix():
    with pytest.raises(FedriskInputError, match="apply to task fraud only"):
        load_config(None, {"data.time_split": {"train_days": 7}})
    with pytest.raises(FedriskInputError, match="needs data.transactions"):
        load_config(None, {"task": "fraud", "data.transactions": None})
