"""Issuers' transaction files: checks with one-line errors, local features, time-ordered splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrisk.columns import DAY
from fedrisk.config import load_config
from fedrisk.data import load_institution
from fedrisk.errors import FedriskInputError
from fedrisk.generators.fraud import generate_consortium
from fedrisk.splits import check_history, split_institution, time_windows

DAYS = 84


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


def test_the_simulators_scenario_column_never_reaches_the_model():
    config = load_config(None, {"task": "fraud", "institutions": 2, "data.synthetic.customers": 300,
                                "data.synthetic.terminals": 600, "data.drop": ["transaction_id"]})
    data = load_institution(config.data, "inst01", config.seed)
    assert "tx_fraud_scenario" not in data.frame.columns


def test_time_split_is_ordered_with_label_delays_between_windows(files):
    config = _config(files)
    data = load_institution(config.data, "inst01", config.seed)
    split = split_institution(data, config.data, config.seed)
    ts, delay = config.data.time_split, config.data.transactions.delay_days
    train, val, test = (split.train[DAY], split.validation[DAY], split.test[DAY])
    assert test.max() == data.frame[DAY].max()  # test ends on the issuer's last day
    assert (test.max() - test.min() + 1, val.max() - val.min() + 1, train.max() - train.min() + 1) == (
        ts.test_days, ts.validation_days, ts.train_days)
    assert test.min() - val.max() - 1 == delay  # labels of the last validation days are not known yet
    assert val.min() - train.max() - 1 == delay  # the delays' transactions are in no split
    history = data.frame[DAY] < train.min()
    assert history.sum() > 0  # earlier days feed the look-back windows only
    gaps = ((data.frame[DAY] > train.max()) & (data.frame[DAY] < val.min())) | (
        (data.frame[DAY] > val.max()) & (data.frame[DAY] < test.min()))
    assert len(split.train) + len(split.validation) + len(split.test) + history.sum() + gaps.sum() == len(data.frame)


def test_a_fixed_end_date_aligns_issuers(files):
    config = _config(files, **{"data.time_split.end": "2026-03-22"})
    windows = time_windows(config.data, last_day=0)
    assert np.datetime64(windows["test"][1], "D") == np.datetime64("2026-03-22")
    split = split_institution(load_institution(config.data, "inst03", 1), config.data, 1)
    assert str(np.datetime64(int(split.test[DAY].max()), "D")) == "2026-03-22"


def test_too_little_history_is_refused(files):
    config = _config(files, **{"data.time_split.train_days": DAYS})
    data = load_institution(config.data, "inst01", config.seed)
    with pytest.raises(FedriskInputError, match="train window starts on") as err:
        check_history(data, config.data)  # the owner's local check (preflight); a node answers nothing about it
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
    from fedrisk.sources import partition_rows

    owner = partition_rows(pooled, config.data, config.seed)
    assert (pd.Series(owner).groupby(pooled["customer_id"]).nunique() == 1).all()


def test_credit_and_fraud_keys_do_not_mix():
    with pytest.raises(FedriskInputError, match="apply to task fraud only"):
        load_config(None, {"data.time_split": {"train_days": 7}})
    with pytest.raises(FedriskInputError, match="needs data.transactions"):
        load_config(None, {"task": "fraud", "data.transactions": None})


def _load_changed(files, tmp_path, change, **overrides):
    path = tmp_path / "changed.csv"
    change(pd.read_csv(files["inst02"])).to_csv(path, index=False)
    config = _config({**files, "inst02": str(path)}, **overrides)
    return config, load_institution(config.data, "inst02", config.seed)


def test_a_label_derived_column_is_refused_even_when_the_user_drops_other_columns(files, tmp_path):
    with pytest.raises(FedriskInputError, match="determines the target exactly") as err:
        _load_changed(files, tmp_path, lambda f: f, **{"data.drop": ["transaction_id"]})
    assert "'tx_fraud_scenario'" in err.value.one_line()


def test_a_card_number_column_is_refused_as_an_identifier(files, tmp_path):
    with pytest.raises(FedriskInputError, match="card or account number") as err:
        _load_changed(files, tmp_path, lambda f: f.assign(account_ref="ACC-" + f.customer_id.astype(str)))
    assert "'account_ref'" in err.value.one_line()
    # numeric card numbers too, once they would travel as categories
    with pytest.raises(FedriskInputError, match="card or account number"):
        _load_changed(files, tmp_path, lambda f: f.assign(card_no=4_000_000_000_000_000 + 7919 * f.customer_id),
                      **{"data.categorical": ["card_no"]})
    # real categories pass, even those with many values
    shops = lambda f: f.assign(channel=np.where(f.index % 3, "pos", "web"), mcc="m" + (f.terminal_id % 40).astype(str))
    _, data = _load_changed(files, tmp_path, shops)
    assert {"channel", "mcc"} <= set(data.columns.categorical)


def test_a_sparse_column_is_not_mistaken_for_a_label_leak(files, tmp_path):
    def promo(f):
        codes = pd.Series(np.nan, index=f.index, dtype=object)
        legit = f.index[f.tx_fraud == 0][:40]
        codes[legit] = np.resize(["A", "B", "C", "D"], len(legit))
        return f.assign(promo_code=codes)

    _, data = _load_changed(files, tmp_path, promo)
    assert "promo_code" in data.columns.categorical


def test_amount_kept_for_evaluation_when_not_a_feature(files, tmp_path):
    from fedrisk.transaction_features import window_names

    config = _config(files, **{"data.features": window_names([1, 7, 30])})
    data = load_institution(config.data, "inst01", config.seed)
    assert "tx_amount" not in data.columns.features and "tx_amount" in data.frame.columns


def test_timestamps_keep_local_time_and_numbers_are_refused(files, tmp_path):
    local = lambda f: f.assign(tx_datetime=pd.to_datetime(f.tx_datetime).dt.tz_localize("Etc/GMT+5").astype(str))
    _, data = _load_changed(files, tmp_path, local)
    _, naive = _load_changed(files, tmp_path, lambda f: f)
    pd.testing.assert_series_equal(data.frame["tx_during_night"], naive.frame["tx_during_night"])
    with pytest.raises(FedriskInputError, match="timestamps are numbers"):
        _load_changed(files, tmp_path, lambda f: f.assign(tx_datetime=pd.to_datetime(f.tx_datetime).astype("int64") // 10**9))
    # one zone across a daylight-saving change: +01:00 then +02:00, local clock kept
    dst = lambda f: f.assign(tx_datetime=np.where(f.index % 2,
                                                  pd.to_datetime(f.tx_datetime).dt.strftime("%Y-%m-%dT%H:%M:%S+01:00"),
                                                  pd.to_datetime(f.tx_datetime).dt.strftime("%Y-%m-%dT%H:%M:%S+02:00")))
    _, summer = _load_changed(files, tmp_path, dst)
    pd.testing.assert_series_equal(summer.frame["tx_during_night"], naive.frame["tx_during_night"])
    with pytest.raises(FedriskInputError, match="no timestamps"):
        _load_changed(files, tmp_path, lambda f: f.assign(tx_datetime=np.nan))


def test_a_label_delay_of_zero_is_refused():
    with pytest.raises(FedriskInputError, match="delay_days"):
        load_config(None, {"task": "fraud", "data.transactions.delay_days": 0})


def test_task_defaults_are_not_shared_between_loads(tmp_path):
    a = load_config(None, {"task": "fraud"}, work_dir=tmp_path / "a")
    b = load_config(None, {"task": "fraud"}, work_dir=tmp_path / "b")
    assert a.audit.path.startswith(str(tmp_path / "a")) and b.audit.path.startswith(str(tmp_path / "b"))
    assert b.tracking.uri == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"


def test_policy_and_computed_fpr_must_agree():
    with pytest.raises(FedriskInputError, match=r"\(recall_at_fpr_0.01 >= 0.5, block\) names a metric this campaign "
                                                r"does not log \(it logs: .*recall_at_fpr_0.05.*evaluation.max_fpr"):
        load_config(None, {"task": "fraud", "evaluation.max_fpr": 0.05})
    assert load_config(None, {"task": "fraud", "evaluation.max_fpr": 0.05, "gate.enabled": False})
