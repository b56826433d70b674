"""Local training: both models learn, FedProx pulls toward the global weights, batches are right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedrisk.config import ModelSpec
from fedrisk.models import build_model, predict_proba
from fedrisk.metrics import EvalStats, auc_from_histograms
from fedrisk.training import DPSettings, batch_loader, dp_sampling, train_local


@pytest.fixture(scope="module")
def credit(credit_institution):
    pre, split = credit_institution
    xt = pre.transform(split.train)
    yt = split.train["default"].to_numpy(np.float32)
    xv = pre.transform(split.test)
    yv = split.test["default"].to_numpy()
    return xt, yt, xv, yv


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
@pytest.mark.parametrize("dp", [None, DPSettings(1.0, 1.0)])
def test_models_learn_the_credit_signal(credit, kind, dp):
    xt, yt, xv, yv = credit
    model = build_model(ModelSpec(kind=kind), xt.shape[1], 0)
    train_local(model, xt, yt, epochs=4, batch_size=128, learning_rate=0.5, dp=dp)
    scores = predict_proba(model, torch.as_tensor(xv)).numpy()
    assert roc_auc_score(yv, scores) > 0.72
    stats = EvalStats.from_scores(yv, scores, 1000)
    assert auc_from_histograms(stats.hist_pos, stats.hist_neg) == pytest.approx(roc_auc_score(yv, scores), abs=0.002)


def test_fedprox_pulls_toward_the_global_weights(credit):
    xt, yt, _, _ = credit
    start = build_model(ModelSpec(kind="logistic"), xt.shape[1], 0).state_dict()

    def drift(mu):
        model = build_model(ModelSpec(kind="logistic"), xt.shape[1], 0)
        model.load_state_dict(start)
        out = train_local(model, xt, yt, epochs=2, batch_size=128, learning_rate=0.5,
                          proximal_mu=mu, seed=3).state
        return float(torch.norm(out["0.weight"] - start["0.weight"]))

    assert drift(1.0) < 0.8 * drift(0.0)


def test_batches_are_gathered_whole_and_counted_like_opacus():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10) % 2
    batches = list(batch_loader(x, y, 4, seed=0))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    seen = np.concatenate([b[0][:, 0].numpy() for b in batches])
    assert sorted(seen.tolist()) == x[:, 0].tolist()


@pytest.mark.parametrize("rows,batch", [(10, 4), (10, 50), (23_798, 256), (19_507, 256)])
def test_dp_sampling_counts_like_opacus(rows, batch):
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader, TensorDataset

    loader = DPDataLoader.from_data_loader(DataLoader(TensorDataset(torch.zeros(rows, 1)), batch_size=batch))
    rate, steps = dp_sampling(rows, batch)
    assert steps == len(loader)
    assert rate == 1 / len(loader)  # what PrivacyEngine charges its accountant


def test_model_shapes():
    assert sum(p.numel() for p in build_model(ModelSpec(kind="logistic"), 7, 0).parameters()) == 8
    mlp = build_model(ModelSpec(kind="mlp", hidden=[16, 8]), 7, 0)
    assert sum(p.numel() for p in mlp.parameters()) == 7 * 16 + 16 + 16 * 8 + 8 + 8 + 1
    a = build_model(ModelSpec(kind="mlp"), 7, 5).state_dict()
    b = build_model(ModelSpec(kind="mlp"), 7, 5).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
