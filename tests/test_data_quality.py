"""Data-quality scorecard: each dimension against counts made independently, on known defects."""

from __future__ import annotations

import os
from datetime import date

import numpy as np
import pandas as pd
import pytest

from fedrisk import data_quality as dq
from fedrisk.config import load_config
from fedrisk.data import load_institution
from fedrisk.errors import FedriskInputError
from fedrisk.generators.credit import generate_institution


def _frame(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.integers(18, 90, n).astype(float), "income": rng.uniform(1e4, 1e5, n),
                         "region": rng.choice(["north", "south"], n), "default": (rng.random(n) < 0.2).astype(int)})


def test_completeness_is_the_share_of_cells_present():
    frame = _frame()
    frame.loc[:99, "age"] = np.nan
    frame.loc[:49, "region"] = None
    card = dq.completeness(frame, ["age", "income", "region", "default"])
    assert card["failed"] == 150 and card["checked"] == 4000
    assert card["score"] == pytest.approx(100 * frame.notna().to_numpy().mean())
    assert "most in 'age' (100)" in card["detail"]


def test_validity_counts_values_outside_ranges_and_categories():
    frame = _frame()
    frame.loc[:9, "age"] = 150.0   # above the range
    frame.loc[10:14, "age"] = 17.0  # below it
    frame.loc[20:21, "age"] = np.nan  # missing: completeness' business, not validity's
    frame.loc[:29, "region"] = "atlantis"
    card = dq.validity(frame, {"age": (18, 100), "income": (0, None)}, {"region": ["north", "south"]})
    present = frame["age"].notna().sum() + frame["income"].notna().sum() + frame["region"].notna().sum()
    expected_bad = int(((frame["age"] < 18) | (frame["age"] > 100)).sum()
                       + (~frame["region"].isin(["north", "south"])).sum())
    assert (card["failed"], card["checked"]) == (expected_bad, present) == (45, 2998)
    assert card["score"] == pytest.approx(100 * (1 - 45 / 2998))
    assert "most in 'region' (30)" in card["detail"]
    assert dq.validity(frame, {}, {})["score"] == 100.0  # no rules, nothing to fail


def test_duplicates_and_label_conflicts_are_counted_like_pandas():
    frame = _frame()
    repeated = pd.concat([frame, frame.iloc[:40]], ignore_index=True)  # 40 exact repeats
    conflict = frame.iloc[100:110].copy()
    conflict["default"] = 1 - conflict["default"]  # the same applicants with the other label
    data = pd.concat([repeated, conflict], ignore_index=True)
    dup = dq.duplicates(data)
    assert dup["failed"] == int(data.duplicated().sum()) == 40
    assert dup["score"] == pytest.approx(100 * (1 - 40 / len(data)))
    labels = dq.label_sanity(data, "default")
    distinct = data.drop_duplicates()
    reference = int(distinct.groupby(["age", "income", "region"])["default"].transform("nunique").gt(1).sum())
    assert labels["failed"] == reference == 20
    assert labels["score"] == pytest.approx(100 * (1 - 20 / len(data)))


def test_class_balance_scores_the_distance_to_the_expected_band():
    inside = dq.class_balance(np.r_[np.ones(20), np.zeros(80)], (0.02, 0.5))
    below = dq.class_balance(np.r_[np.ones(1), np.zeros(99)], (0.02, 0.5))
    above = dq.class_balance(np.r_[np.ones(70), np.zeros(30)], (0.02, 0.5))
    assert inside["score"] == 100.0
    assert below["score"] == pytest.approx(50.0)  # 1 % against a floor of 2 %
    assert above["score"] == pytest.approx(60.0)  # 30 % negatives against a floor of 50 %
    assert dq.class_balance(np.zeros(100), (0.02, 0.5))["score"] == 0.0


def test_freshness_halves_when_the_data_are_twice_as_old_as_allowed():
    assert dq.freshness(date(2026, 10, 1), "timestamps", date(2026, 11, 1), 90)["score"] == 100.0
    old = dq.freshness(date(2026, 1, 1), "timestamps", date(2026, 12, 27), 180)
    assert old["score"] == pytest.approx(100 * 180 / 360) and "360 days" in old["detail"]


def test_the_score_is_the_weakest_dimension_and_says_why():
    frame = _frame()
    frame.loc[:199, "age"] = np.nan  # 200 of 4520 cells: completeness 95.6
    frame = pd.concat([frame, frame.iloc[200:330]], ignore_index=True)  # 130 repeats: duplicates 88.5
    dims = {"completeness": dq.completeness(frame, list(frame.columns)), "validity": dq.validity(frame, {}, {}),
            "duplicates": dq.duplicates(frame), "label_sanity": dq.label_sanity(frame, "default"),
            "class_balance": dq.class_balance(frame["default"].to_numpy(), (0.02, 0.5)),
            "freshness": dq.freshness(None, "generated", date.today(), 30)}
    card = dq.scorecard(dims, len(frame), 90.0)
    assert card["weakest"] == "duplicates" and not card["passed"]
    assert card["score"] == round(100 * (1 - 130 / 1130), 2)
    reason = dq.exclusion_reason("inst03", "inst03.csv", card)
    assert reason.startswith("institution inst03, file inst03.csv: data quality 88.50 below 90 (duplicates: 130 of 1130")


def _files_config(tmp_path, frames: dict[str, pd.DataFrame], **quality):
    files = {}
    for name, frame in frames.items():
        files[name] = str(tmp_path / f"{name}.csv")
        frame.to_csv(files[name], index=False)
    return load_config(None, {"data.source": "files", "data.files": files, "data.quality": quality}, work_dir=tmp_path)


def test_the_built_in_data_score_100_and_a_corrupted_file_scores_low(tmp_path):
    config = load_config(None, {"data.synthetic.rows": 6000, "institutions": 3}, work_dir=tmp_path)
    card = load_institution(config.data, "inst02", config.seed).quality
    assert card["score"] == 100.0 and card["passed"]
    clean = generate_institution(0, 3, 6000, 42)
    bad = clean.copy()
    bad.loc[:300, "income"] = np.nan
    bad.loc[301:700, "age"] = 250.0
    bad = pd.concat([bad, bad.iloc[:400]], ignore_index=True)
    config = _files_config(tmp_path, {"inst01": clean, "inst02": bad}, ranges={"age": [18, 100]},
                           categories={"region": ["capital", "north", "south", "east", "west"]})
    good = load_institution(config.data, "inst01", config.seed).quality
    poor = load_institution(config.data, "inst02", config.seed).quality
    assert good["passed"] and good["score"] == 100.0
    dims = poor["dimensions"]
    assert dims["duplicates"]["failed"] == 400
    assert dims["validity"]["failed"] == int((bad["age"] > 100).sum())
    assert dims["completeness"]["failed"] == int(bad.drop(columns="customer_id").isna().sum().sum())
    assert not poor["passed"] and poor["weakest"] == "duplicates"
    assert dims["freshness"]["detail"].startswith("newest record") and "file modification date" in dims["freshness"]["detail"]


def test_freshness_comes_from_a_date_column_or_the_file_date(tmp_path):
    frame = generate_institution(0, 3, 3000, 42)
    frame["application_date"] = pd.date_range("2025-01-01", periods=len(frame), freq="h").strftime("%Y-%m-%d")
    config = _files_config(tmp_path, {"inst01": frame, "inst02": frame.iloc[:500]}, date_column="application_date",
                           as_of="2026-11-23", max_age_days=365)
    data = load_institution(config.data, "inst01", config.seed)
    newest = pd.Timestamp(frame["application_date"].max()).date()
    assert data.quality["dimensions"]["freshness"]["score"] == pytest.approx(
        min(100.0, 100 * 365 / (date(2026, 11, 23) - newest).days), abs=0.01)
    assert "application_date" not in data.columns.features  # the date dates a row; it predicts nothing
    os.utime(tmp_path / "inst02.csv", (0, date(2026, 1, 1).toordinal()))  # mtime is ignored with a date column
    frame.loc[5, "application_date"] = "not a date"
    config = _files_config(tmp_path, {"inst01": frame, "inst02": frame.iloc[:500]}, date_column="application_date")
    with pytest.raises(FedriskInputError,
                       match=r"institution inst01, file .*inst01.csv, column 'application_date': 1 values are not dates"):
        load_institution(config.data, "inst01", config.seed)


def test_a_rule_on_a_column_the_data_lack_names_institution_file_and_column(tmp_path):
    frame = generate_institution(0, 3, 3000, 42)
    config = _files_config(tmp_path, {"inst01": frame, "inst02": frame}, ranges={"salary": [0, None]})
    with pytest.raises(FedriskInputError, match=r"institution inst01, file .*inst01.csv, column 'salary'"):
        load_institution(config.data, "inst01", config.seed)


def test_quality_settings_are_checked_on_load(tmp_path):
    with pytest.raises(FedriskInputError, match="positive_rate"):
        load_config(None, {"data.quality.positive_rate": [0.5, 0.1]}, work_dir=tmp_path)
    with pytest.raises(FedriskInputError, match="ranges.age"):
        load_config(None, {"data.quality.ranges": {"age": [100, 18]}}, work_dir=tmp_path)
    with pytest.raises(FedriskInputError, match="date_column is for credit"):
        load_config(None, {"task": "fraud", "data.quality.date_column": "tx_datetime"}, work_dir=tmp_path)


def test_numbers_and_booleans_match_their_allowed_categories():
    frame = pd.DataFrame({"grade": [1.0, 2.0, np.nan, 3.0, 9.0], "flag": [True, False, True, True, False]})
    card = dq.validity(frame, {}, {"grade": [1, 2, "3"], "flag": ["true", "false"]})
    assert (card["failed"], card["checked"]) == (1, 9)  # only the 9 is outside


def test_a_record_dated_after_as_of_is_not_fresh():
    card = dq.freshness(date(2027, 6, 1), "column d", date(2026, 11, 23), 30)
    assert card["score"] == pytest.approx(100 * 30 / 190) and "AFTER" in card["detail"]
    assert dq.freshness(date(2026, 11, 24), "column d", date(2026, 11, 23), 30)["score"] == 100.0  # time zones


def test_a_score_just_below_the_minimum_fails_even_if_it_rounds_to_it():
    dims = {d: {"score": 100.0, "failed": 0, "checked": 1, "detail": ""} for d in dq.DIMENSIONS}
    dims["duplicates"]["score"] = 89.996
    card = dq.scorecard(dims, 10, 90.0)
    assert card["score"] == 90.0 and not card["passed"]


def test_replayed_rows_with_new_ids_and_relabelled_rows_are_caught(tmp_path):
    frame = generate_institution(0, 3, 3000, 42)
    replay = frame.iloc[:100].copy()
    replay["customer_id"] = [f"new-{i}" for i in range(100)]  # renumbered by the extract
    relabelled = frame.iloc[100:150].copy()
    relabelled["customer_id"] = [f"re-{i}" for i in range(50)]
    relabelled["default"] = 1 - relabelled["default"]
    config = _files_config(tmp_path, {"inst01": pd.concat([frame, replay, relabelled]), "inst02": frame})
    dims = load_institution(config.data, "inst01", config.seed).quality["dimensions"]
    assert dims["duplicates"]["failed"] == 100 and dims["label_sanity"]["failed"] == 100


def test_dates_across_a_daylight_saving_change_and_epoch_numbers(tmp_path):
    frame = generate_institution(0, 3, 3000, 42)
    frame["applied"] = np.where(np.arange(len(frame)) % 2, "2026-03-20T10:00:00+01:00", "2026-04-20T10:00:00+02:00")
    config = _files_config(tmp_path, {"inst01": frame, "inst02": frame}, date_column="applied", as_of="2026-05-20",
                           max_age_days=365)
    card = load_institution(config.data, "inst01", config.seed).quality["dimensions"]["freshness"]
    assert card["score"] == 100.0 and "2026-04-20" in card["detail"]
    frame["applied"] = 1_700_000_000
    config = _files_config(tmp_path, {"inst01": frame, "inst02": frame}, date_column="applied")
    with pytest.raises(FedriskInputError, match="column 'applied': numbers, not dates"):
        load_institution(config.data, "inst01", config.seed)
