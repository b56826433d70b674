"""The scorecard reproduces the logistic model exactly, and reason codes point at the cause."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrisk.config import ModelSpec
from fedrisk.models import build_model, predict_proba
from fedrisk.scorecard import build_scorecard
from fedrisk.training import train_local


@pytest.fixture(scope="module")
def trained(credit_institution):
    pre, split = credit_institution
    model = build_model(ModelSpec(kind="logistic"), pre.width, 0)
    train_local(model, pre.transform(split.train), split.train["default"].to_numpy(np.float32),
                epochs=5, batch_size=128, learning_rate=0.5)
    return model, pre, split.test


def test_score_maps_back_to_the_models_pd(trained):
    model, pre, test = trained
    card = build_scorecard(model.state_dict(), pre)
    pd_model = predict_proba(model, torch.as_tensor(pre.transform(test))).numpy()
    assert card.pd_from_score(card.score(test)) == pytest.approx(pd_model, abs=1e-5)
    # 600 points at 50:1 and 20 points to double the odds
    assert card.pd_from_score(600.0) == pytest.approx(1 / 51)
    assert card.pd_from_score(620.0) == pytest.approx(1 / 101)
    assert card.factor == pytest.approx(20 / math.log(2))


def test_points_table_covers_every_feature(trained):
    model, pre, _ = trained
    table = build_scorecard(model.state_dict(), pre).points_table()
    assert set(table["feature"]) == set(pre.input_columns)
    assert len(table[table["feature"] == "income"]) == 5
    assert set(table[table["feature"] == "region"]["band"]) == set(pre.vocabularies[pre.categorical.index("region")])
    # more utilisation, fewer points (higher risk)
    util = table[table["feature"] == "credit_utilisation"]["points"].to_numpy()
    assert np.all(np.diff(util) < 0)


def test_reason_codes_name_the_driver(trained):
    model, pre, test = trained
    card = build_scorecard(model.state_dict(), pre)
    risky = test.head(20).copy()
    risky["past_delinquencies"] = 12
    codes = card.reason_codes(risky)
    assert (codes["reason_1"] == "past_delinquencies").all()


def test_mlp_has_no_scorecard():
    model = build_model(ModelSpec(kind="mlp"), 4, 0)
    with pytest.raises(ValueError, match="logistic"):
        build_scorecard(model.state_dict(), None)
