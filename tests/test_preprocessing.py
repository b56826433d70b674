"""Federated preprocessing: without noise, summed statistics give exactly the pooled (winsorised)
preprocessing; with the DP noise an institution adds, within the error that noise explains."""

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
from fedrisk.mechanisms import grid_bounds, noised, partition_threshold, select_partitions
from fedrisk.preprocessing import (
    TAIL_ROWS,
    Bounds,
    Preprocessor,
    bounds_from_counts,
    exact_preprocessor,
    fit_preprocessor,
    local_bounds,
    local_statistics,
    merge_statistics,
    missing_counts,
    schema,
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


def _bounds(frames, columns=COLUMNS) -> dict[str, Bounds]:
    return bounds_from_counts({c: sum(local_bounds(f, columns)[c] for f in frames) for c in columns.numeric}, 0.0)


@pytest.fixture(scope="module")
def bounds(institutions) -> dict[str, Bounds]:
    return _bounds(list(institutions.values()))


@pytest.fixture(scope="module")
def stats(institutions, bounds) -> dict[str, dict]:
    return {name: local_statistics(frame, COLUMNS, bounds) for name, frame in institutions.items()}


@pytest.fixture(scope="module")
def preprocessor(stats, bounds) -> Preprocessor:
    return fit_preprocessor(merge_statistics(list(stats.values())), schema(COLUMNS), bounds)


# ---------------------------------------------------------------- federated == pooled


def test_federated_preprocessing_equals_pooled(institutions, pooled, stats, preprocessor, bounds):
    """Without noise: the pooled mean and standard deviation of the values winsorised at the
    federated bounds; the bounds bracket every grid cell holding at least TAIL_ROWS values."""
    assert pooled["income"].isna().sum() > 0 and pooled["region"].isna().sum() > 0
    assert preprocessor.numeric == sorted(COLUMNS.numeric)  # sorted: file order never matters
    assert preprocessor.categorical == sorted(COLUMNS.categorical)
    step = 10 ** 0.2  # the log grid's ratio between edges
    for column, mean, scale in zip(preprocessor.numeric, preprocessor.means, preprocessor.scales):
        values = pooled[column].to_numpy(dtype=float)
        b = bounds[column]
        cells = local_bounds(pooled, COLUMNS)[column][:-1]
        held = np.flatnonzero(cells >= TAIL_ROWS)
        inside = values[(values >= grid_bounds(int(held[0]))[0]) & (values < grid_bounds(int(held[-1]))[1])]
        assert b.lower <= inside.min() and b.upper >= inside.max(), column  # nothing held is clipped
        assert b.lower >= np.nanmin(values) / step - 1e-12 or b.lower <= 0, column  # nor wider than a step
        assert b.upper <= max(np.nanmax(values), 1e-4) * step * (1 + 1e-12), column
        clipped = np.clip(values, b.lower, b.upper)
        assert mean == pytest.approx(np.nanmean(clipped), rel=1e-9), column
        assert scale == pytest.approx(np.nanstd(clipped, ddof=0), rel=1e-7), column
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
        assert set(missing) == set(COLUMNS.features) | set(COLUMNS.protected)
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
    income = merged["numeric"]["income"]
    assert income["count"] + income["missing"] == len(pooled)
    assert income["missing"] == int(pooled["income"].isna().sum())
    region = merged["categories"]["region"]
    assert region["missing"] == int(pooled["region"].isna().sum())
    assert region["counts"] == {
        str(k): int(v) for k, v in pooled["region"].value_counts().items()
    }


def test_merge_order_does_not_change_result(stats, bounds):
    parts = list(stats.values())
    a = fit_preprocessor(merge_statistics(parts), schema(COLUMNS), bounds)
    b = fit_preprocessor(merge_statistics(parts[::-1]), schema(COLUMNS), bounds)
    assert a.vocabularies == b.vocabularies and a.modes == b.modes
    np.testing.assert_allclose(a.means, b.means, rtol=1e-12)
    np.testing.assert_allclose(a.scales, b.scales, rtol=1e-9)


def test_local_statistics_hold_only_aggregates_a_row_moves_by_at_most_one(institutions, bounds):
    frame = next(iter(institutions.values()))
    stats = local_statistics(frame, COLUMNS, bounds)
    assert set(stats) == {"numeric", "categories"}
    for entry in stats["numeric"].values():
        assert set(entry) == {"count", "sum", "sumsq", "missing"}
    for entry in stats["categories"].values():
        assert set(entry) == {"counts", "missing"}
    # sensitivity: adding any one row, however extreme, moves each sum by at most 1
    extreme = frame.iloc[[0]].assign(income=1e308, age=-1e308)
    more = local_statistics(pd.concat([frame, extreme]), COLUMNS, bounds)
    for column in COLUMNS.numeric:
        for key in ("sum", "sumsq", "count", "missing"):
            assert abs(more["numeric"][column][key] - stats["numeric"][column][key]) <= 1.0 + 1e-9, (column, key)


def test_one_extreme_value_moves_nothing_beyond_its_clipped_share(institutions):
    """A 1e308 typed by mistake at one institution: bounds, means and inputs stay finite and sane."""
    frames = [f.copy() for f in institutions.values()]
    frames[2].loc[frames[2].index[0], "income"] = 1e308
    pre = exact_preprocessor(frames, COLUMNS)
    sane = exact_preprocessor(list(institutions.values()), COLUMNS)
    income = pre.numeric.index("income")
    assert pre.upper[income] == sane.upper[income]
    assert pre.means[income] == pytest.approx(sane.means[income], rel=1e-3)
    assert np.isfinite(pre.transform(frames[2])).all()
    assert abs(pre.transform(frames[2])[0, income]) < 10  # winsorised, not 1e300 standard deviations


def test_noised_statistics_stay_within_the_error_their_noise_explains(institutions, pooled, bounds):
    """Each institution adds Gaussian noise z per cell to its clipped, scaled sums: the mean's
    error is at most ~4 z sqrt(k) half-ranges over the pooled count; vocabularies keep common values."""
    z = 40.0
    rng = np.random.default_rng(5)
    parts = []
    for frame in institutions.values():
        exact = local_statistics(frame, COLUMNS, bounds)
        parts.append({"numeric": {c: {k: float(noised(v, z, rng)) for k, v in s.items()}
                                  for c, s in exact["numeric"].items()},
                      "categories": {c: {"counts": select_partitions(s["counts"], z, partition_threshold(z, 1e-9, 20),
                                                                       rng),
                                         "missing": float(noised(s["missing"], z, rng))}
                                     for c, s in exact["categories"].items()}})
    pre = fit_preprocessor(merge_statistics(parts), schema(COLUMNS), bounds)
    for column, mean in zip(pre.numeric, pre.means):
        b = bounds[column]
        clipped = np.clip(pooled[column].to_numpy(dtype=float), b.lower, b.upper)
        allowed = 4 * z * np.sqrt(len(institutions)) * (b.upper - b.lower) / 2 / np.isfinite(clipped).sum()
        assert abs(mean - np.nanmean(clipped)) <= allowed + 1e-9, column
    assert "capital" in pre.vocabularies[pre.categorical.index("region")]


def test_partition_selection_never_releases_a_value_held_by_a_few_customers():
    """E-mail addresses, three applications each: with the noise a campaign uses (z = 40), none of
    2,000 clears the threshold, while a value held by 2,000 rows always does."""
    counts = {f"customer{i}@example.com": 3.0 for i in range(2000)} | {"common": 2000.0}
    threshold = partition_threshold(40.0, 1e-8, 20)
    assert threshold > 200
    released = select_partitions(counts, 40.0, threshold)
    assert list(released) == ["common"]


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
    pre = exact_preprocessor([frame], cols)
    assert pre.scales == [1.0]
    assert np.all(pre.transform(frame)[:, 0] == 0.0)


def test_json_round_trip(preprocessor, pooled):
    text = preprocessor.to_json()
    again = Preprocessor.from_json(text)
    assert again == preprocessor
    np.testing.assert_array_equal(again.transform(pooled), preprocessor.transform(pooled))


# ---------------------------------------------------------------- schema errors


def test_merge_statistics_rejects_nothing():
    with pytest.raises(ValueError):
        merge_statistics([])


def test_fit_rejects_column_without_values():
    frame = pd.DataFrame({"x": [np.nan, np.nan], "y": [0, 1]})
    cols = Columns(["x"], [], [], "y")
    with pytest.raises(FedriskInputError, match="'x'"):
        exact_preprocessor([frame], cols)


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
    pre = exact_preprocessor([d.frame for d in loaded], loaded[0].columns)
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
    assert schema(Columns(["a", "b"], [], [], "y")) == schema(Columns(["b", "a"], [], [], "y"))
    assert exact_preprocessor([frame, frame[["b", "a", "y"]]], Columns(["b", "a"], [], [], "y")).numeric == ["a", "b"]
