"""Wide files: feature importance scores each ablated feature in time linear in the columns
(`fedrisk.models.ablated_probabilities`), with the scores the whole model gives on the ablated rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrisk.columns import Columns
from fedrisk.config import ModelSpec
from fedrisk.generators import credit
from fedrisk.metrics import logit_edges, score_histograms
from fedrisk.models import ablated_probabilities, build_model, predict_proba
from fedrisk.preprocessing import exact_preprocessor

COLUMNS = Columns(numeric=list(credit.NUMERIC_FEATURES), categorical=list(credit.CATEGORICAL_FEATURES),
                  protected=list(credit.PROTECTED), target=credit.TARGET)


@pytest.fixture(scope="module")
def rows():
    frame = credit.generate_institution(0, 2, 3000, seed=5).drop(columns=["customer_id"])
    rng = np.random.default_rng(1)
    frame.loc[rng.random(len(frame)) < 0.1, "income"] = np.nan  # imputed values already in the rows
    frame.loc[rng.random(len(frame)) < 0.1, "region"] = None
    return frame, exact_preprocessor([frame], COLUMNS)


def test_blanked_column_is_the_imputed_row_on_its_own_block(rows):
    frame, pre = rows
    x = pre.transform(frame)
    slices = pre.output_slices()
    assert sum(s.stop - s.start for s in slices.values()) == pre.width
    for column in pre.input_columns:
        blanked = frame.copy()
        blanked[column] = np.nan
        expected = x.copy()
        expected[:, slices[column]] = pre.imputed_row()[slices[column]]
        np.testing.assert_array_equal(pre.transform(blanked), expected)


@pytest.mark.parametrize("spec", [ModelSpec(kind="mlp", hidden=[32]), ModelSpec(kind="logistic"),
                                  ModelSpec(kind="mlp", hidden=[16, 8])])
def test_ablated_scores_are_the_whole_models(rows, spec):
    frame, pre = rows
    model = build_model(spec, pre.width, 3)
    with torch.no_grad():
        for weight in model.parameters():
            weight.mul_(3.0)  # scores spread over the grid
    x = torch.as_tensor(pre.transform(frame))
    imputed = torch.as_tensor(pre.imputed_row())
    slices = pre.output_slices()
    fast = ablated_probabilities(model, x, ((slices[c], imputed[slices[c]]) for c in pre.input_columns))
    y, grid = frame[credit.TARGET].to_numpy(), logit_edges(50)
    for column, scores in zip(pre.input_columns, fast, strict=True):
        blanked = frame.copy()
        blanked[column] = np.nan
        whole = predict_proba(model, torch.as_tensor(pre.transform(blanked))).numpy()
        np.testing.assert_allclose(scores.numpy(), whole, atol=1e-6)
        for mine, theirs in zip(score_histograms(y, scores.numpy(), grid), score_histograms(y, whole, grid),
                                strict=True):
            assert np.abs(mine - theirs).sum() <= 2  # a score on a bin edge may move by a rounding


def test_other_models_are_scored_whole():
    model = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(4, 1))
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))
    (scores,) = ablated_probabilities(model, x, [(slice(1, 3), torch.zeros(2))])
    changed = x.clone()
    changed[:, 1:3] = 0.0
    np.testing.assert_allclose(scores.numpy(), predict_proba(model, changed).numpy())
