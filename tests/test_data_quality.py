"""Data-quality scorecard: counts against pandas on known defects, the card from them, one row
moving each count by at most one (what the noise is calibrated to), and what leaves noised."""

from __future__ import annotations

import os
from datetime import date

import numpy as np
import pandas as pd
import pytest

from fedrisk import data_quality as dq
from fedrisk.config import load_config
from fedrisk.data import load_institution, quality_card
from fedrisk.errors import FedriskInputError
from fedrisk.generators.credit import generate_institution

COLUMNS = ["age", "income", "region", "default"]
TODAY = date(2026, 11, 23)


def _frame(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.integers(18, 90, n).astype(float), "income": rng.uniform(1e4, 1e5, n),
                         "region": rng.choice(["north", "south"], n), "default": (rng.random(n) < 0.2).astype(int)})


def _measure(frame, ranges=None, categories=None, dates=None, newest=None, basis="generated"):
    return dq.measure(frame, COLUMNS, "default", frame["default"].to_numpy(), ranges or {}, categories or {}, dates,
                      TODAY, 365, newest, basis)


def _card(counts, band=(0.02, 0.5), max_age=365):
    return dq.scorecard(counts, 90.0, band, TODAY, max_age)


def test_the_counts_are_pandas_counts_of_known_defects():
    frame = _frame()
    frame.loc[:99, "age"] = np.nan
    frame.loc[:49, "region"] = None
    frame.loc[100:109, "age"] = 150.0
    frame.loc[200:229, "region"] = "atlantis"
    repeated = pd.concat([frame, frame.iloc[300:340]], ignore_index=True)  # 40 exact repeats
    conflict = frame.iloc[400:410].copy()
    conflict["default"] = 1 - conflict["default"]  # the same applicants with the other label
    data = pd.concat([repeated, conflict], ignore_index=True)
    counts = _measure(data, {"age": (18, 100)}, {"region": ["north", "south"]})
    assert counts["missing"] == data[COLUMNS].isna().sum().astype(float).to_dict()
    assert counts["invalid"] == {"age": float((data["age"] > 100).sum()),
                                 "region": float((~data["region"].dropna().isin(["north", "south"])).sum())}
    assert counts["duplicates"] == float(data.duplicated().sum()) == 40
    distinct = data.drop_duplicates()
    by_inputs = distinct.groupby(["age", "income", "region"], dropna=False)["default"].nunique()
    assert (counts["patterns"], counts["conflicting"]) == (len(by_inputs), float((by_inputs > 1).sum())) == (1000, 10)
    assert counts["positives"] == data["default"].sum() and counts["rows"] == len(data)


def test_the_card_scores_each_dimension_and_names_the_weakest():
    frame = _frame()
    frame.loc[:199, "age"] = np.nan  # 200 of 4520 cells, 200 of 1130 in column age
    frame = pd.concat([frame, frame.iloc[200:330]], ignore_index=True)  # 130 repeats
    card = _card(_measure(frame))
    dims = card["dimensions"]
    # completeness weighs the worst column: 200 of 1130 ages missing, not 200 of 4520 cells
    assert dims["completeness"]["score"] == round(100 * (1 - 200 / 1130), 2)
    assert dims["duplicates"]["score"] == round(100 * (1 - 130 / 1130), 2)
    assert card["weakest"] == "completeness" and not card["passed"] and card["score"] == 82.3
    reason = dq.exclusion_reason("inst03", "inst03.csv", card)
    assert reason.startswith("institution inst03, file inst03.csv: data quality 82.30 below 90 (completeness: 200 of "
                             "4520 cells missing; most in 'age' (18% of rows)")


def test_forty_percent_missing_in_one_input_scores_below_ninety():
    frame = _frame()
    frame.loc[:399, "income"] = np.nan
    card = _card(_measure(frame))
    assert card["dimensions"]["completeness"]["score"] == 60.0 and not card["passed"]


def test_noise_on_many_complete_columns_does_not_make_the_worst_one_look_incomplete():
    """The worst of 2,000 noised zero counts sits about 3.9 noise deviations up: it is discounted."""
    frame = pd.concat([_frame(3000)] + [pd.DataFrame({f"x{i}": np.ones(3000) for i in range(2000)})], axis=1)
    columns = [*COLUMNS, *(f"x{i}" for i in range(2000))]
    counts = dq.measure(frame, columns, "default", frame["default"].to_numpy(), {}, {}, None, TODAY, 365, None, "g")
    passed = [dq.scorecard(dq.release(counts, 30.0, np.random.default_rng(i)), 90.0, (0.02, 0.5), TODAY, 365)
              for i in range(50)]
    assert all(card["passed"] for card in passed)
    assert np.mean([card["dimensions"]["completeness"]["score"] for card in passed]) > 99.0
    frame.loc[:899, "x7"] = np.nan  # 30 % of one input missing is still seen through the noise
    counts = dq.measure(frame, columns, "default", frame["default"].to_numpy(), {}, {}, None, TODAY, 365, None, "g")
    assert not dq.scorecard(dq.release(counts, 30.0, np.random.default_rng(0)), 90.0, (0.02, 0.5), TODAY, 365)["passed"]


def test_an_extreme_number_is_counted_once_per_row_and_shown():
    frame = _frame()
    frame.loc[3, "income"] = 1e308
    frame.loc[4, ["income", "age"]] = -1e300
    counts = _measure(frame)
    assert counts["extreme"] == 2.0
    card = _card(counts)
    assert card["dimensions"]["validity"]["score"] == round(100 * (1 - 2 / 1000), 2)
    assert "2 rows with a number beyond +/-1e+15" in card["dimensions"]["validity"]["detail"]
    ruled = _measure(frame, {"income": (0, None)})  # an open range does not make 1e308 plausible
    assert ruled["extreme"] == 2.0 and ruled["invalid"]["income"] == 1.0


@pytest.mark.parametrize("positives, expected", [(20, 100.0), (1, 50.0), (70, 60.0), (0, 0.0)])
def test_class_balance_scores_the_distance_to_the_expected_band(positives, expected):
    counts = {**_measure(_frame(100)), "positives": float(positives)}
    assert _card(counts)["dimensions"]["class_balance"]["score"] == pytest.approx(expected)


def test_freshness_from_a_file_date_or_dated_rows():
    frame = _frame()
    old = _card(_measure(frame, newest=date(2025, 5, 25), basis="file modification date"), max_age=180)
    assert old["dimensions"]["freshness"]["score"] == pytest.approx(100 * 180 / 547, abs=0.01)
    ahead = _card(_measure(frame, newest=date(2027, 6, 1), basis="file"), max_age=30)
    assert "AFTER" in ahead["dimensions"]["freshness"]["detail"]
    dated = pd.Series(pd.date_range("2024-01-01", periods=len(frame), freq="h"))
    counts = _measure(frame, dates=dated, basis="column d")
    assert counts["fresh"] == 0.0 and _card(counts)["dimensions"]["freshness"]["score"] == 0.0
    recent = pd.Series(pd.date_range("2026-06-01", periods=len(frame), freq="h"))
    assert _card(_measure(frame, dates=recent, basis="column d"))["dimensions"]["freshness"]["score"] == 100.0


def test_one_row_moves_every_count_by_at_most_one():
    """The release's noise is calibrated to this: each count is one block of sensitivity 1."""
    rng = np.random.default_rng(3)
    frame = _frame(400)
    frame.loc[rng.choice(400, 60, replace=False), "income"] = np.nan
    frame = pd.concat([frame, frame.iloc[:30]], ignore_index=True)
    base = _measure(frame, {"age": (20, 80)}, {"region": ["north"]})
    for row in [frame.iloc[[0]], frame.iloc[[0]].assign(default=lambda f: 1 - f["default"]),
                frame.iloc[[5]].assign(age=np.nan, region=None), frame.iloc[[7]].assign(age=150.0, region="x")]:
        more = _measure(pd.concat([frame, row], ignore_index=True), {"age": (20, 80)}, {"region": ["north"]})
        for key in ("rows", "duplicates", "patterns", "conflicting", "positives"):
            assert abs(more[key] - base[key]) <= 1, key
        for key in ("missing", "invalid"):
            assert max(abs(more[key][c] - base[key][c]) for c in base[key]) <= 1, key
    assert dq.blocks(base) == 6 + len(COLUMNS) + 2


def test_what_leaves_is_noised_as_planned():
    counts = _measure(_frame())
    draws = [dq.release(counts, 10.0, np.random.default_rng(i)) for i in range(400)]
    errors = np.array([d["duplicates"] - counts["duplicates"] for d in draws])
    # 400 draws of N(0, 10): mean within 4 standard errors (2.0), sd within 10 % of 10
    assert abs(errors.mean()) < 2.0 and 9.0 < errors.std() < 11.0
    assert all(d["noise"] == 10.0 for d in draws)
    card = _card(draws[0])
    assert "about" in card["dimensions"]["duplicates"]["detail"]  # counts as released, never exact


def test_the_built_in_data_score_100_and_a_corrupted_file_scores_low(tmp_path):
    config = load_config(None, {"data.synthetic.rows": 6000, "institutions": 3}, work_dir=tmp_path)
    card = quality_card(config.data, load_institution(config.data, "inst02", config.seed).quality)
    assert card["score"] == 100.0 and card["passed"]
    clean = generate_institution(0, 3, 6000, 42)
    bad = clean.copy()
    bad.loc[:300, "income"] = np.nan
    bad.loc[301:700, "age"] = 250.0
    bad = pd.concat([bad, bad.iloc[:400]], ignore_index=True)
    config = _files_config(tmp_path, {"inst01": clean, "inst02": bad}, ranges={"age": [18, 100]},
                           categories={"region": ["capital", "north", "south", "east", "west"]})
    good = quality_card(config.data, load_institution(config.data, "inst01", config.seed).quality)
    counts = load_institution(config.data, "inst02", config.seed).quality
    poor = quality_card(config.data, counts)
    assert good["passed"] and good["score"] == 100.0
    assert counts["duplicates"] == 400 and counts["invalid"]["age"] == int((bad["age"] > 100).sum())
    assert sum(counts["missing"].values()) == int(bad.drop(columns="customer_id").isna().sum().sum())
    assert not poor["passed"] and poor["weakest"] in ("completeness", "validity", "duplicates")
    assert all(poor["dimensions"][d]["score"] < 90 for d in ("completeness", "validity", "duplicates"))
    assert "file modification date" in poor["dimensions"]["freshness"]["detail"]


def _files_config(tmp_path, frames: dict[str, pd.DataFrame], **quality):
    files = {}
    for name, frame in frames.items():
        files[name] = str(tmp_path / f"{name}.csv")
        frame.to_csv(files[name], index=False)
    return load_config(None, {"data.source": "files", "data.files": files, "data.quality": quality}, work_dir=tmp_path)


def test_freshness_comes_from_a_date_column_or_the_file_date(tmp_path):
    frame = generate_institution(0, 3, 3000, 42)
    frame["application_date"] = pd.date_range("2025-01-01", periods=len(frame), freq="h").strftime("%Y-%m-%d")
    config = _files_config(tmp_path, {"inst01": frame, "inst02": frame.iloc[:500]}, date_column="application_date",
                           as_of="2026-11-23", max_age_days=365)
    data = load_institution(config.data, "inst01", config.seed)
    assert data.quality["fresh"] == 0 and quality_card(config.data, data.quality)["dimensions"]["freshness"]["score"] == 0
    assert "application_date" not in data.columns.features  # the date dates a row; it predicts nothing
    config = _files_config(tmp_path, {"inst01": frame, "inst02": frame.iloc[:500]}, date_column="application_date",
                           as_of="2025-03-01", max_age_days=365)
    assert load_institution(config.data, "inst01", config.seed).quality["fresh"] == int(
        (pd.to_datetime(frame["application_date"]) <= "2025-03-02").sum())
    os.utime(tmp_path / "inst02.csv", (0, date(2026, 1, 1).toordinal()))  # mtime is ignored with a date column
    frame.loc[5, "application_date"] = "not a date"
    config = _files_config(tmp_path, {"inst01": frame, "inst02": frame.iloc[:500]}, date_column="application_date")
    with pytest.raises(FedriskInputError,
                       match=r"institution inst01, file .*inst01.csv, column 'application_date': values that are not"):
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
    assert dq.measure(frame, ["grade", "flag"], "flag", np.zeros(5), {}, {"grade": [1, 2, "3"], "flag": ["true", "false"]},
                      None, TODAY, 30, None, "generated")["invalid"] == {"grade": 1.0, "flag": 0.0}


def test_a_score_just_below_the_minimum_fails_even_if_it_rounds_to_it():
    counts = {**_measure(_frame(100_000)), "duplicates": 10_000.4}  # 89.9996
    card = _card(counts)
    assert card["score"] == 90.0 and not card["passed"]


def test_replayed_rows_with_new_ids_and_relabelled_rows_are_caught(tmp_path):
    frame = generate_institution(0, 3, 3000, 42)
    replay = frame.iloc[:100].copy()
    replay["customer_id"] = [f"new-{i}" for i in range(100)]  # renumbered by the extract
    relabelled = frame.iloc[100:150].copy()
    relabelled["customer_id"] = [f"re-{i}" for i in range(50)]
    relabelled["default"] = 1 - relabelled["default"]
    config = _files_config(tmp_path, {"inst01": pd.concat([frame, replay, relabelled]), "inst02": frame})
    counts = load_institution(config.data, "inst01", config.seed).quality
    assert counts["duplicates"] == 100 and counts["conflicting"] == 50


def test_dates_across_a_daylight_saving_change_and_epoch_numbers(tmp_path):
    frame = generate_institution(0, 3, 3000, 42)
    frame["applied"] = np.where(np.arange(len(frame)) % 2, "2026-03-20T10:00:00+01:00", "2026-04-20T10:00:00+02:00")
    config = _files_config(tmp_path, {"inst01": frame, "inst02": frame}, date_column="applied", as_of="2026-05-20",
                           max_age_days=45)
    counts = load_institution(config.data, "inst01", config.seed).quality
    assert counts["fresh"] == (np.arange(len(frame)) % 2 == 0).sum()  # April (local dates) within 45 days; March not
    frame["applied"] = 1_700_000_000
    config = _files_config(tmp_path, {"inst01": frame, "inst02": frame}, date_column="applied")
    with pytest.raises(FedriskInputError, match="column 'applied': numbers, not dates"):
        load_institution(config.data, "inst01", config.seed)


def test_noise_alone_does_not_fail_a_small_institution_with_good_data():
    """A 330-row lender's positives noised with a standard deviation of 56 can read as a rate of
    0 %: it fails only if even two noise deviations in its favour leave it below the minimum."""
    counts = _measure(_frame(330))
    noisy = {**dq.release(counts, 56.0, np.random.default_rng(0)), "positives": 0.0}
    card = _card(noisy)
    assert card["dimensions"]["class_balance"]["score"] == 0.0 and card["passed"]
    broken = {**dq.release({**counts, "duplicates": 150.0}, 1.0, np.random.default_rng(0))}
    assert not _card(broken)["passed"]  # a real defect, well beyond the noise, still fails


def test_a_column_ruled_twice_counts_a_row_once():
    """Second review, finding 6: a range and a category rule on one column counted a row twice
    in one cell (sensitivity 2 where the noise assumes 1)."""
    frame = _frame(200)
    frame.loc[:9, "age"] = 150.0
    counts = _measure(frame, {"age": (18, 100)}, {"age": [float(a) for a in range(18, 101)]})
    assert counts["invalid"] == {"age": 10.0}


def test_noise_alone_excludes_none_of_thousands_of_small_lenders():
    """A thousand-institution consortium of 1,000-row lenders (noise 57 a count, the built-in
    generator's 1,000-row credit file): with 2 noise deviations in each count's favour one good
    lender in ~1,000 failed on noise alone (seen at 1,000 institutions). The card's benefit covers
    the largest of its counts' noises: no good lender of 20,000 draws fails, and a real defect in
    most of the rows still does."""
    frame = generate_institution(3, 1000, 1_000_000, equal_sizes=True)  # what inst0004 loads
    config = load_config(None, {"data.synthetic.institutions": 1000, "data.synthetic.rows": 1_000_000,
                                "data.synthetic.sizes": "equal"})
    data = load_institution(config.data, "inst0004", 42)
    counts = data.quality
    assert dq.blocks(counts) > 20 and len(frame) == counts["rows"] == 1000
    rng = np.random.default_rng(7)
    failed = sum(not quality_card(config.data, dq.release(counts, 57.0, rng))["passed"] for _ in range(20_000))
    assert failed == 0
    broken = {**counts, "extreme": 600.0}  # 60 % of the rows hold a number beyond 1e15
    assert np.mean([not quality_card(config.data, dq.release(broken, 57.0, rng))["passed"] for _ in range(200)]) > 0.99


def test_half_an_input_missing_still_fails_a_small_lender():
    """The card's benefit for the largest of its counts' noises must not be counted twice: the
    worst column already discounts the largest of its columns' noises. A 1,000-row lender with
    half of one input missing fails under noise 57 (it passed when both were applied)."""
    config = load_config(None, {"data.synthetic.institutions": 1000, "data.synthetic.rows": 1_000_000,
                                "data.synthetic.sizes": "equal"})
    counts = load_institution(config.data, "inst0004", 42).quality
    assert counts["rows"] == 1000
    column = next(iter(counts["missing"]))
    broken = {**counts, "missing": {**counts["missing"], column: 0.5 * counts["rows"]}}
    failed = [not quality_card(config.data, dq.release(broken, 57.0, np.random.default_rng(i)))["passed"]
              for i in range(200)]
    assert np.mean(failed) > 0.95
