"""The built-in credit consortium generator: deterministic, non-IID, labels from true_pd."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from fedrisk.generators import credit


@pytest.fixture(scope="module")
def default_consortium() -> dict[str, pd.DataFrame]:
    return credit.generate_consortium(5, 60_000, 42)


@pytest.fixture(scope="module")
def default_pooled(default_consortium) -> pd.DataFrame:
    return pd.concat(default_consortium.values(), ignore_index=True)


# ---------------------------------------------------------------- determinism


def test_same_arguments_give_identical_frames():
    a = credit.generate_institution(1, 4, 5000, seed=7)
    b = credit.generate_institution(1, 4, 5000, seed=7)
    pd.testing.assert_frame_equal(a, b)
    ca = credit.generate_consortium(3, 4000, seed=3, group_bias=0.5)
    cb = credit.generate_consortium(3, 4000, seed=3, group_bias=0.5)
    assert list(ca) == list(cb)
    for name in ca:
        pd.testing.assert_frame_equal(ca[name], cb[name])


def test_different_seed_gives_different_frame():
    a = credit.generate_institution(0, 4, 5000, seed=7)
    b = credit.generate_institution(0, 4, 5000, seed=8)
    assert not a.equals(b)
    assert not np.allclose(a["income"].to_numpy()[:100], b["income"].to_numpy()[:100])


def test_one_institution_alone_equals_it_inside_the_consortium():
    consortium = credit.generate_consortium(4, 6000, seed=11)
    for index, name in enumerate(credit.institution_names(4)):
        alone = credit.generate_institution(index, 4, 6000, seed=11)
        pd.testing.assert_frame_equal(alone, consortium[name])


def test_institution_index_outside_range_raises():
    with pytest.raises(ValueError):
        credit.generate_institution(5, 5, 6000)
    with pytest.raises(ValueError):
        credit.generate_institution(-1, 5, 6000)


def test_institution_names_are_zero_padded_and_sortable():
    names = credit.institution_names(12)
    assert names[0] == "inst01" and names[-1] == "inst12"
    assert names == sorted(names)
    assert list(credit.generate_consortium(3, 3000)) == credit.institution_names(3)


# ---------------------------------------------------------------- non-IID consortium


def test_institutions_have_unequal_sizes_first_largest(default_consortium):
    sizes = [len(frame) for frame in default_consortium.values()]
    assert sizes[0] == max(sizes)
    assert len(set(sizes)) == len(sizes)
    assert sizes == sorted(sizes, reverse=True)
    assert sizes == credit.institution_sizes(5, 60_000, 42)
    assert abs(sum(sizes) - 60_000) <= 5


def test_institutions_differ_in_default_rate(default_consortium):
    rates = [frame["default"].mean() for frame in default_consortium.values()]
    assert max(rates) - min(rates) > 0.03


def test_pooled_default_rate_about_twenty_percent(default_pooled):
    rate = default_pooled["default"].mean()
    assert 0.18 <= rate <= 0.22


# ---------------------------------------------------------------- ground truth


def test_labels_follow_true_pd(default_pooled):
    pd_true = credit.true_pd(default_pooled)
    assert np.all((pd_true > 0) & (pd_true < 1))
    assert abs(pd_true.mean() - default_pooled["default"].mean()) < 0.01


def test_oracle_auc_about_080(default_pooled):
    auc = roc_auc_score(default_pooled["default"], credit.true_pd(default_pooled))
    assert 0.78 <= auc <= 0.82


def test_labels_are_binary_ints(default_pooled):
    assert set(default_pooled["default"].unique()) == {0, 1}
    assert pd.api.types.is_integer_dtype(default_pooled["default"])


# ---------------------------------------------------------------- group bias


def _by_sex(consortium: dict[str, pd.DataFrame]) -> pd.DataFrame:
    pooled = pd.concat(consortium.values(), ignore_index=True)
    return pooled.groupby("sex").agg(rate=("default", "mean"), income=("income", "mean"))


def test_group_bias_disadvantages_sex_f():
    biased = _by_sex(credit.generate_consortium(5, 30_000, 42, group_bias=1.0))
    assert biased.loc["F", "rate"] - biased.loc["M", "rate"] > 0.05
    assert biased.loc["F", "income"] < biased.loc["M", "income"]


def test_no_group_bias_keeps_sexes_equal():
    fair = _by_sex(credit.generate_consortium(5, 30_000, 42, group_bias=0.0))
    assert abs(fair.loc["F", "rate"] - fair.loc["M", "rate"]) < 0.02


def test_group_bias_leaves_sex_m_unchanged():
    fair = credit.generate_institution(0, 3, 6000, 5, group_bias=0.0)
    biased = credit.generate_institution(0, 3, 6000, 5, group_bias=1.0)
    male = fair["sex"] == "M"
    assert (biased["sex"] == fair["sex"]).all()
    pd.testing.assert_series_equal(fair.loc[male, "income"], biased.loc[male, "income"])


# ---------------------------------------------------------------- columns


def test_columns_present():
    frame = credit.generate_institution(0, 3, 3000, 1)
    for column in [
        "customer_id",
        *credit.NUMERIC_FEATURES,
        *credit.CATEGORICAL_FEATURES,
        *credit.PROTECTED,
        credit.TARGET,
    ]:
        assert column in frame.columns
    assert set(frame["sex"].unique()) <= set(credit.SEXES)
    assert set(frame["age_band"].unique()) <= set(credit.AGE_BANDS)
    assert frame["customer_id"].is_unique
    assert not frame[credit.NUMERIC_FEATURES].isna().any().any()
    for column in credit.NUMERIC_FEATURES:
        assert pd.api.types.is_numeric_dtype(frame[column])


def test_age_band_matches_age():
    frame = credit.generate_institution(1, 3, 3000, 1)
    young = frame["age"] < 30
    old = frame["age"] >= 50
    assert (frame.loc[young, "age_band"] == "18-29").all()
    assert (frame.loc[old, "age_band"] == "50+").all()
    assert (frame.loc[~young & ~old, "age_band"] == "30-49").all()


def test_equal_sizes_split_the_rows_evenly_and_keep_skewed_fingerprints():
    """Equal sizes are other data (another fingerprint); the skewed default keeps the fingerprint
    its institutions' ledgers already know (fedrisk 64a1fff's, for inst01 of three)."""
    from fedrisk.config import load_config
    from fedrisk.sources import raw_frame

    assert credit.institution_sizes(1000, 1_000_000, 42, equal=True) == [1000] * 1000
    assert len(credit.generate_institution(7, 1000, 1_000_000, equal_sizes=True)) == 1000
    names = ["inst01", "inst02", "inst03"]
    skewed = load_config(None, {"data.synthetic.institutions": 3})
    equal = load_config(None, {"data.synthetic.institutions": 3, "data.synthetic.sizes": "equal"})
    assert raw_frame(skewed.data, "inst01", names, 42)[2] == \
        "dc88eaa55e97cdddbf3d5bc2721a42c5a1bc7e67eae532c4d9ba94da95fc9053"
    assert raw_frame(equal.data, "inst01", names, 42)[2] != raw_frame(skewed.data, "inst01", names, 42)[2]
