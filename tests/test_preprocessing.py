"""Federated preprocessing: summed statistics give exactly the pooled preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrisk.columns import Columns
from fedrisk.config import DataSpec
from fedrisk.data import load_institution
from fedrisk.errors import FedriskInputError
from fedrisk.generators import credit
from fedrisk.preprocessing import (
    Preprocessor,
    fit_preprocessor,
    local_statistics,
    merge_statistics,
    missing_counts,
)

COLUMNS = Columns(
    numeric=list(credit.NUMERIC_FEATURES),
    categorical=list(credit.CATEGORICAL_FEATURES),
    protected=list(credit.PROTECTED),
    target=credit.TARGET,
)
# Different missing rates per institution, so a per-institution average of means would differ.
INCOME_MISSING = [0.0, 0.05, 0.20, 0.40]
REGION_MISSING = [0.30, 0.0, 0.10, 0.02]


@pytest.fixture(scope="module")
def institutions() -> dict[str, pd.DataFrame]:
    consortium = credit.generate_consortium(4, 6000, seed=13)
    rng = np.random.default_rng(99)
    out = {}
    for i, (name, frame) in enumerate(consortium.items()):
        frame = frame.drop(columns=["customer_id"]).copy()
        frame.loc[rng.random(len(frame)) < INCOME_MISSING[i], "income"] = np.nan
        frame.loc[rng.random(len(frame)) < REGION_MISSING[i], "region"] = None
        out[name] = frame
    return out


@pytest.fixture(scope="module")
def pooled(institutions) -> pd.DataFrame:
    return pd.concat(institutions.values(), ignore_index=True)


@pytest.fixture(scope="module")
def stats(institutions) -> dict[str, dict]:
    return {name: local_statistics(frame, COLUMNS) for name, frame in institutions.items()}


@pytest.fixture(scope="module")
def preprocessor(stats) -> Preprocessor:
    return fit_preprocessor(merge_statistics(list(stats.values())))


# ---------------------------------------------------------------- federated == pooled


def test_federated_preprocessing_equals_pooled(institutions, pooled, stats, preprocessor):
    assert pooled["income"].isna().sum() > 0 and pooled["region"].isna().sum() > 0
    assert preprocessor.numeric == sorted(COLUMNS.numeric)  # sorted: file order never matters
    assert preprocessor.categorical == sorted(COLUMNS.categorical)
    for column, mean, scale in zip(preprocessor.numeric, preprocessor.means, preprocessor.scales):
        values = pooled[column].to_numpy(dtype=float)
        assert mean == pytest.approx(np.nanmean(values), rel=1e-9), column
        assert scale == pytest.approx(np.nanstd(values, ddof=0), rel=1e-7), column
    for column, vocab, mode in zip(
        preprocessor.categorical, preprocessor.vocabularies, preprocessor.modes
    ):
        series = pooled[column]
        assert vocab == sorted(series.dropna().astype(str).unique()), column
        counts = series.dropna().value_counts()
        assert counts[mode] == counts.max(), column
        assert mode == sorted(series.mode(dropna=True).astype(str))[0], column
    # Missing counts per institution equal what each institution actually holds.
    for name, frame in institutions.items():
        missing = missing_counts(stats[name])
        assert set(missing) == set(COLUMNS.features)
        for column in COLUMNS.features:
            assert missing[column] == int(frame[column].isna().sum()), (name, column)
    assert [missing_counts(stats[n])["income"] > 0 for n in institutions] == [
        False, True, True, True
    ]


def test_federated_mean_is_not_the_mean_of_means(institutions, preprocessor):
    """Sanity: the institutions really differ, so equality above is not a coincidence."""
    means = [frame["income"].mean() for frame in institutions.values()]
    income = preprocessor.means[preprocessor.numeric.index("income")]
    assert abs(np.mean(means) - income) > 1e-3 * income


def test_merge_statistics_sums_counts(stats, pooled):
    merged = merge_statistics(list(stats.values()))
    assert merged["rows"] == len(pooled)
    income = merged["numeric"]["income"]
    assert income["count"] + income["missing"] == len(pooled)
    assert income["missing"] == int(pooled["income"].isna().sum())
    region = merged["categorical"]["region"]
    assert region["missing"] == int(pooled["region"].isna().sum())
    assert region["counts"] == {
        str(k): int(v) for k, v in pooled["region"].value_counts().items()
    }


def test_merge_order_does_not_change_result(stats):
    parts = list(stats.values())
    a = fit_preprocessor(merge_statistics(parts))
    b = fit_preprocessor(merge_statistics(parts[::-1]))
    assert a.vocabularies == b.vocabularies and a.modes == b.modes
    np.testing.assert_allclose(a.means, b.means, rtol=1e-12)
    np.testing.assert_allclose(a.scales, b.scales, rtol=1e-9)


def test_local_statistics_hold_only_aggregates(institutions):
    frame = next(iter(institutions.values()))
    stats = local_statistics(frame, COLUMNS)
    assert set(stats) == {"rows", "numeric", "categorical", "schema"}
    for entry in stats["numeric"].values():
        assert set(entry) == {"count", "sum", "sumsq", "missing"}
    for entry in stats["categorical"].values():
        assert set(entry) == {"counts", "missing"}


# ---------------------------------------------------------------- transform


def test_transform_standardises_and_imputes(pooled, preprocessor):
    matrix = preprocessor.transform(pooled)
    assert matrix.dtype == np.float32
    assert matrix.shape == (len(pooled), len(preprocessor.output_names))
    assert preprocessor.width == len(preprocessor.output_names)
    assert not np.isnan(matrix).any()
    n_num = len(preprocessor.numeric)
    numeric = matrix[:, :n_num].astype(float)
    present = ~pooled[preprocessor.numeric].isna().to_numpy()
    for j, column in enumerate(preprocessor.numeric):
        values = numeric[present[:, j], j]
        assert values.mean() == pytest.approx(0.0, abs=1e-5), column
        assert values.std() == pytest.approx(1.0, abs=1e-5), column
    # Missing income -> federated mean -> exactly 0 after standardising.
    income = preprocessor.numeric.index("income")
    assert np.all(numeric[~present[:, income], income] == 0.0)
    # One-hot blocks: one 1 per row for every category (missing -> mode).
    start = n_num
    for column, vocab, mode in zip(
        preprocessor.categorical, preprocessor.vocabularies, preprocessor.modes
    ):
        block = matrix[:, start : start + len(vocab)]
        assert np.all(block.sum(axis=1) == 1.0), column
        missing = pooled[column].isna().to_numpy()
        if missing.any():
            assert np.all(block[missing, vocab.index(mode)] == 1.0)
        observed = ~missing
        chosen = np.asarray(vocab)[block[observed].argmax(axis=1)]
        np.testing.assert_array_equal(chosen, pooled.loc[observed, column].astype(str))
        start += len(vocab)
    assert start == matrix.shape[1]


def test_output_names_layout(preprocessor):
    names = preprocessor.output_names
    assert names[: len(preprocessor.numeric)] == preprocessor.numeric
    assert "region=capital" in names
    assert names.count("region=capital") == 1
    assert preprocessor.input_columns == sorted(COLUMNS.numeric) + sorted(COLUMNS.categorical)


def _one_row_frame(pooled: pd.DataFrame, **values) -> pd.DataFrame:
    row = pooled.iloc[[0]].copy().reset_index(drop=True)
    for column, value in values.items():
        row[column] = row[column].astype(object)
        row.loc[0, column] = value
    return row


def _block(preprocessor: Preprocessor, matrix: np.ndarray, column: str) -> np.ndarray:
    start = len(preprocessor.numeric)
    for name, vocab in zip(preprocessor.categorical, preprocessor.vocabularies):
        if name == column:
            return matrix[:, start : start + len(vocab)]
        start += len(vocab)
    raise AssertionError(column)


def test_missing_category_takes_mode(pooled, preprocessor):
    matrix = preprocessor.transform(_one_row_frame(pooled, region=None))
    block = _block(preprocessor, matrix, "region")
    vocab = preprocessor.vocabularies[preprocessor.categorical.index("region")]
    mode = preprocessor.modes[preprocessor.categorical.index("region")]
    expected = np.zeros(len(vocab), dtype=np.float32)
    expected[vocab.index(mode)] = 1.0
    np.testing.assert_array_equal(block[0], expected)


def test_unseen_category_is_all_zero(pooled, preprocessor):
    matrix = preprocessor.transform(_one_row_frame(pooled, region="atlantis"))
    assert np.all(_block(preprocessor, matrix, "region") == 0.0)
    assert matrix.shape[1] == preprocessor.width


def test_missing_numeric_becomes_zero(pooled, preprocessor):
    matrix = preprocessor.transform(_one_row_frame(pooled, age=np.nan))
    assert matrix[0, preprocessor.numeric.index("age")] == 0.0


def test_transform_ignores_extra_columns_and_order(pooled, preprocessor):
    reordered = pooled[list(reversed(pooled.columns))].assign(extra=1)
    np.testing.assert_array_equal(
        preprocessor.transform(reordered), preprocessor.transform(pooled)
    )


def test_transform_missing_column_raises_key_error(pooled, preprocessor):
    with pytest.raises(KeyError, match="loan_purpose"):
        preprocessor.transform(pooled.drop(columns=["loan_purpose"]))
    with pytest.raises(KeyError, match="income"):
        preprocessor.transform(pooled.drop(columns=["income"]))


def test_constant_column_gets_unit_scale():
    frame = pd.DataFrame({"x": [3.0, 3.0, 3.0], "c": ["a", "a", "b"], "y": [0, 1, 0]})
    cols = Columns(["x"], ["c"], [], "y")
    pre = fit_preprocessor(merge_statistics([local_statistics(frame, cols)]))
    assert pre.scales == [1.0]
    assert np.all(pre.transform(frame)[:, 0] == 0.0)


def test_json_round_trip(preprocessor, pooled):
    text = preprocessor.to_json()
    again = Preprocessor.from_json(text)
    assert again == preprocessor
    np.testing.assert_array_equal(again.transform(pooled), preprocessor.transform(pooled))


# ---------------------------------------------------------------- schema errors


def test_merge_statistics_rejects_different_schemas(institutions):
    frames = list(institutions.values())
    other = Columns(COLUMNS.numeric[:-1], COLUMNS.categorical, COLUMNS.protected, COLUMNS.target)
    parts = [local_statistics(frames[0], COLUMNS), local_statistics(frames[1], other)]
    with pytest.raises(ValueError, match="schema"):
        merge_statistics(parts)


def test_merge_statistics_rejects_nothing():
    with pytest.raises(ValueError):
        merge_statistics([])


def test_fit_rejects_column_without_values():
    frame = pd.DataFrame({"x": [np.nan, np.nan], "y": [0, 1]})
    cols = Columns(["x"], [], [], "y")
    with pytest.raises(FedriskInputError, match="'x'"):
        fit_preprocessor(merge_statistics([local_statistics(frame, cols)]))


# ---------------------------------------------------------------- through the loader


def test_integer_coded_category_encodes_the_same_at_every_institution(tmp_path: Path):
    """A category listed in `categorical` must not split into '1' and '1.0'.

    One institution's file has a gap in the integer-coded column, so pandas reads that
    column as float; the same branch code must still map to the same one-hot column.
    """
    consortium = credit.generate_consortium(2, 4000, 3)
    files = {}
    for i, (name, frame) in enumerate(consortium.items()):
        frame = frame.assign(branch=np.arange(len(frame)) % 3 + 1)
        if i == 1:
            frame.loc[:5, "branch"] = np.nan
        path = tmp_path / f"{name}.csv"
        frame.to_csv(path, index=False)
        files[name] = str(path)
    spec = DataSpec(
        source="files", files=files, categorical=[*credit.CATEGORICAL_FEATURES, "branch"]
    )
    loaded = [load_institution(spec, name, 0) for name in files]
    pre = fit_preprocessor(merge_statistics([local_statistics(d.frame, d.columns) for d in loaded]))
    vocab = pre.vocabularies[pre.categorical.index("branch")]
    assert len(vocab) == 3, vocab
    block_a = _block(pre, pre.transform(loaded[0].frame.iloc[[0]]), "branch")
    row = loaded[1].frame.index[loaded[1].frame["branch"].notna()][0]
    code_b = loaded[1].frame.loc[row, "branch"]
    block_b = _block(pre, pre.transform(loaded[1].frame.loc[[row]]), "branch")
    code_a = loaded[0].frame.loc[0, "branch"]
    assert float(code_a) == float(code_b)
    np.testing.assert_array_equal(block_a, block_b)


def test_column_order_does_not_matter():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 7.0], "y": [0, 1, 0]})
    one = local_statistics(frame, Columns(["a", "b"], [], [], "y"))
    two = local_statistics(frame[["b", "a", "y"]], Columns(["b", "a"], [], [], "y"))
    assert fit_preprocessor(merge_statistics([one, two])).numeric == ["a", "b"]
