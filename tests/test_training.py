"""Local training: both models learn, FedProx pulls toward the global weights, batches are right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedrisk.config import ModelSpec
from fedrisk.metrics import EvalStats, auc_from_histograms, uniform_edges
from fedrisk.models import build_model, predict_proba
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
    stats = EvalStats.from_scores(yv, scores, uniform_edges(1000))
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


def test_weighted_loss_equals_sklearn_weighted_log_loss():
    from sklearn.metrics import log_loss

    from fedrisk.training import loss_function

    rng = np.random.default_rng(0)
    logits = torch.as_tensor(rng.normal(size=200))
    y = torch.as_tensor((rng.random(200) < 0.1).astype(float))
    p = torch.sigmoid(logits).numpy()
    weights = np.where(y.numpy() == 1, 5.0, 1.0)
    ours = float(loss_function(5.0)(logits, y))
    # BCE-with-pos_weight averages over rows; log_loss over weights
    reference = log_loss(y.numpy(), p, sample_weight=weights) * weights.sum() / len(y)
    assert ours == pytest.approx(reference, rel=1e-9)


def test_focal_loss_follows_lin_et_al():
    from fedrisk.training import loss_function

    logits = torch.tensor([2.0, -1.0, 0.3, -3.0])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    p = torch.sigmoid(logits)
    p_t = torch.where(y == 1, p, 1 - p)
    alpha = torch.where(y == 1, torch.tensor(4.0), torch.tensor(1.0))
    reference = (-alpha * (1 - p_t) ** 2 * torch.log(p_t)).mean()  # FL(p_t) = -(1 - p_t)^g log(p_t)
    assert float(loss_function(4.0, 2.0)(logits, y)) == pytest.approx(float(reference), rel=1e-6)
    # gamma 0 is plain (weighted) cross-entropy
    assert float(loss_function(4.0, 0.0)(logits, y)) == pytest.approx(float((-alpha * torch.log(p_t)).mean()), rel=1e-6)


def test_dp_training_with_class_weights_learns_an_imbalanced_signal():
    rng = np.random.default_rng(1)
    n = 6000
    y = (rng.random(n) < 0.02).astype(np.float32)
    x = (rng.normal(size=(n, 3)) + 1.5 * y[:, None]).astype(np.float32)
    model = build_model(ModelSpec(kind="logistic"), 3, 0)
    train_local(model, x, y, epochs=2, batch_size=128, learning_rate=0.5,
                dp=DPSettings(1.0, 1.0), positive_weight=10.0, focal_gamma=1.0)
    scores = predict_proba(model, torch.as_tensor(x)).numpy()
    assert roc_auc_score(y, scores) > 0.9  # Bayes AUC: Phi(1.5 * sqrt(3) / sqrt(2)) = 0.97
