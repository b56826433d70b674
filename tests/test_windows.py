"""Loading a monitoring window: only the model's columns are checked, labels may be missing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrisk.config import load_config
from fedrisk.data import load_window
from fedrisk.errors import FedriskInputError
from fedrisk.generators import credit, fraud
from fedrisk.monitor_config import load_monitor_config

NUMERIC = ["age", "income"]


def _credit_files(tmp_path, frame: pd.DataFrame) -> tuple:
    path = tmp_path / "a.csv"
    frame.to_csv(path, index=False)
    return load_config(None, {"data.source": "files", "data.files": {"inst01": str(path)}}).data, str(path)


def test_credit_window_with_unknown_outcomes_and_single_class(tmp_path):
    frame = credit.generate_institution(0, 2, 2000, 42, stream=4)
    frame.loc[frame.index[:300], "default"] = np.nan
    frame.loc[frame.index[300:], "default"] = 0  # a window without a default is still a window
    spec, path = _credit_files(tmp_path, frame)
    rows, labels, source = load_window(spec, "inst01", 42, NUMERIC, ["region"], 7)
    assert len(rows) == len(frame) and source == path
    assert np.isnan(labels).sum() == 300 and np.nansum(labels) == 0


def test_credit_window_errors_name_institution_file_and_column(tmp_path):
    frame = credit.generate_institution(0, 2, 2000, 42, stream=4)
    spec, path = _credit_files(tmp_path, frame.drop(columns=["income"]))
    with pytest.raises(FedriskInputError, match=f"institution inst01, file {path}, column 'income': model input column missing"):
        load_window(spec, "inst01", 42, NUMERIC, [], 7)
    spec, _ = _credit_files(tmp_path, frame.assign(income=pd.Timestamp("2026-01-01")))
    frame_dt = frame.assign(income=pd.Timestamp("2026-01-01"))
    frame_dt.to_parquet(tmp_path / "a.parquet")
    spec = load_config(None, {"data.source": "files", "data.files": {"inst01": str(tmp_path / "a.parquet")}}).data
    with pytest.raises(FedriskInputError, match="column 'income': numeric column holds datetime64"):
        load_window(spec, "inst01", 42, NUMERIC, [], 7)
    spec, _ = _credit_files(tmp_path, frame.assign(default=frame["default"].map({0: "no", 1: "yes"})))
    with pytest.raises(FedriskInputError, match="column 'default': target is not binary"):
        load_window(spec, "inst01", 42, NUMERIC, [], 7)
    with pytest.raises(FedriskInputError, match="institution inst02: no file for this window"):
        load_window(spec, "inst02", 42, NUMERIC, [], 7)


def test_fraud_window_labels_may_lack_only_within_the_label_delay(tmp_path):
    tx = fraud.generate_issuer(0, 2, 400, 800, 60, 42).drop(columns=fraud.LABEL_DERIVED)
    newest = tx["tx_datetime"] > tx["tx_datetime"].max() - pd.Timedelta(days=3)
    tx.loc[newest, "tx_fraud"] = np.nan
    path = tmp_path / "t.csv"
    tx.to_csv(path, index=False)
    spec = load_config(None, {"task": "fraud", "data.source": "files", "data.files": {"inst01": str(path)}}).data
    rows, labels, _ = load_window(spec, "inst01", 42, ["tx_amount", "terminal_risk_7d"], [], 7)
    assert np.isnan(labels).sum() == newest.sum() and (~np.isnan(labels)).sum() > 0
    tx.loc[tx.index[:5], "tx_fraud"] = np.nan
    tx.to_csv(path, index=False)
    with pytest.raises(FedriskInputError, match="target has 5 missing values older than the 7-day label delay"):
        load_window(spec, "inst01", 42, ["tx_amount"], [], 7)
    short = fraud.generate_issuer(0, 2, 400, 800, 30, 42).drop(columns=fraud.LABEL_DERIVED)
    short.to_csv(path, index=False)
    with pytest.raises(FedriskInputError, match="days of history before the 7-day window; the look-back features need 37"):
        load_window(spec, "inst01", 42, ["tx_amount"], [], 7)


def test_monitor_config_refuses_bad_windows(tmp_path):
    with pytest.raises(FedriskInputError, match="windows.files.0.a"):
        load_monitor_config(None, {"windows.source": "files", "windows.files": [{"a": 3}]}, work_dir=tmp_path)
    with pytest.raises(FedriskInputError, match="at least one institution"):
        load_monitor_config(None, {"windows.source": "files", "windows.files": [{}]}, work_dir=tmp_path)
    with pytest.raises(FedriskInputError, match="must be distinct"):
        load_monitor_config(None, {"windows.names": ["a", "a", "b", "c", "d", "e"]}, work_dir=tmp_path)
    config = load_monitor_config(None, {"windows.source": "files", "windows.files": [{"a": "x.csv"}],
                                        "windows.names": ["2026-06-30"]}, work_dir=tmp_path)
    assert config.windows.names == ["2026-06-30"] and config.windows.files == [{"a": str(tmp_path / "x.csv")}]
