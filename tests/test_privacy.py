"""DP calibration and the privacy ledger, against Opacus's own accountant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedrisk.config import ModelSpec
from fedrisk.errors import BudgetExhaustedError
from fedrisk.ledger import PrivacyLedger, Release
from fedrisk.models import build_model
from fedrisk.privacy import EPSILON_TOLERANCE, calibrate_noise_multiplier, epsilon_spent
from fedrisk.training import DPSettings, dp_sampling, train_local


def test_published_vector_rdp():
    # q = 0.04, sigma = 1.5, 2250 steps, delta = 1e-5 -> epsilon 7.329 under RDP.
    assert epsilon_spent([(1.5, 0.04, 2250)], 1e-5) == pytest.approx(7.329, abs=5e-4)


@pytest.mark.parametrize("target,q,steps", [(1.0, 0.01, 1000), (3.0, 0.02, 300), (8.0, 0.1, 50)])
def test_calibration_matches_opacus_and_stays_below_target(target, q, steps):
    ours = calibrate_noise_multiplier(target, 1e-5, q, steps)
    theirs = get_noise_multiplier(
        target_epsilon=target, target_delta=1e-5, sample_rate=q, steps=steps, accountant="rdp"
    )
    assert ours == pytest.approx(theirs, rel=0.02)
    reached = epsilon_spent([(ours, q, steps)], 1e-5)
    assert reached <= target
    assert target - reached <= EPSILON_TOLERANCE


def test_calibration_composes_with_prior_spend():
    prior = [(1.2, 0.05, 200)]
    before = epsilon_spent(prior, 1e-5)
    sigma = calibrate_noise_multiplier(4.0, 1e-5, 0.05, 200, prior)
    after = epsilon_spent(prior + [(sigma, 0.05, 200)], 1e-5)
    assert before < after <= 4.0
    fresh = calibrate_noise_multiplier(4.0, 1e-5, 0.05, 200)
    assert sigma > fresh  # less budget left -> more noise


def test_calibration_refuses_spent_budget():
    with pytest.raises(BudgetExhaustedError, match="budget spent"):
        calibrate_noise_multiplier(1.0, 1e-5, 0.1, 10, [(0.5, 0.1, 1000)])


def _xy(n=2000, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-x[:, 0]))).astype(np.float32)
    return x, y


def test_training_epsilon_equals_opacus_accountant():
    x, y = _xy()
    model = build_model(ModelSpec(kind="mlp", hidden=[8]), x.shape[1], 0)
    rate, per_epoch = dp_sampling(len(x), 100)
    sigma = calibrate_noise_multiplier(2.0, 1e-5, rate, 2 * per_epoch)
    res = train_local(model, x, y, epochs=2, batch_size=100, learning_rate=0.1,
                      dp=DPSettings(sigma, 1.0))
    assert res.steps == 2 * per_epoch
    assert res.spend == [(sigma, rate, 2 * per_epoch)]  # what Opacus did, and the ledger is charged
    reference = RDPAccountant()
    for _ in range(res.steps):
        reference.step(noise_multiplier=sigma, sample_rate=rate)
    assert epsilon_spent(res.spend, 1e-5) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert epsilon_spent(res.spend, 1e-5) <= 2.0


def test_a_fresh_engine_per_round_charges_only_its_round(tmp_path):
    """Each round's PrivacyEngine reports its own steps; the ledger composes the rounds."""
    x, y = _xy()
    model = build_model(ModelSpec(kind="logistic"), x.shape[1], 0)
    ledger = PrivacyLedger.open(tmp_path / "ledger.json", "inst01", 10.0, 1e-5)
    release = Release("train", "dp_sgd", 1.0, 0.1, 10)
    ledger.plan("c1", [release, release], 10.0, {})
    for rnd in (1, 2):
        res = train_local(model, x, y, epochs=1, batch_size=200, learning_rate=0.1, dp=DPSettings(1.0, 1.0))
        assert res.spend == [(release.noise_multiplier, release.sample_rate, release.steps)]
        ledger.charge("c1", release, rnd)
    assert ledger.spent() == pytest.approx(epsilon_spent([(1.0, 0.1, 20)], 1e-5), rel=1e-9)


def test_dp_clips_and_adds_noise():
    """With huge noise the DP update is far from the non-private one; with none, close."""
    x, y = _xy()
    start = build_model(ModelSpec(kind="logistic"), x.shape[1], 0).state_dict()

    def run(dp):
        model = build_model(ModelSpec(kind="logistic"), x.shape[1], 0)
        model.load_state_dict(start)
        return train_local(model, x, y, epochs=1, batch_size=200, learning_rate=0.1, dp=dp, seed=1).state

    plain = run(None)
    noisy = run(DPSettings(500.0, 1.0))
    quiet = run(DPSettings(1e-6, 100.0))
    gap_noisy = torch.norm(noisy["0.weight"] - plain["0.weight"])
    gap_quiet = torch.norm(quiet["0.weight"] - plain["0.weight"])
    assert gap_noisy > 10 * gap_quiet


def test_cached_epsilon_equals_rdp_accountant_on_mixed_history():
    history = [(1.1, 0.02, 500), (0.8, 0.05, 120), (1.1, 0.02, 250), (3.0, 0.5, 7)]
    accountant = RDPAccountant()
    accountant.history = list(history)
    for delta in (1e-5, 1e-7):
        assert epsilon_spent(history, delta) == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)


def test_the_gaussian_mechanism_is_charged_as_opacus_counts_it():
    """A histogram or sum release (sample rate 1, one step): RDP alpha / (2 z^2), as in theory."""
    from fedrisk.privacy import ORDERS, rdp_curve

    assert rdp_curve([(2.0, 1.0, 1)]) == pytest.approx(np.asarray(ORDERS) / 8.0)
    assert np.isinf(rdp_curve([(0.0, 1.0, 1)])).all()  # no noise: no bound at all


def test_the_search_does_not_stop_on_what_other_releases_spend():
    """When other releases already spend the target, any noise of this one looks 'close enough';
    the search must still find the smallest noise that keeps within it."""
    from fedrisk.privacy import epsilon_from_rdp, rdp_curve, smallest_noise

    other = rdp_curve([(1.0, 0.05, 300)])  # spends about 2.99 at delta 1e-5 alone
    target = epsilon_from_rdp(other, 1e-5) + 0.005

    def worst(z: float) -> float:  # another part: the pointwise maximum of the two curves
        return epsilon_from_rdp(np.maximum(other, rdp_curve([(z, 1.0, 1)])), 1e-5)

    found = smallest_noise(worst, target, 1e4)
    assert worst(found) <= target
    assert worst(found * 0.95) > target  # not much more noise than needed
    assert found < 5.0  # the first noise that fit (10) would have wasted half the budget


def test_dp_noise_is_not_replayable_from_the_seed():
    x, y = _xy()
    start = build_model(ModelSpec(kind="logistic"), x.shape[1], 0).state_dict()
    states = []
    for _ in range(2):
        model = build_model(ModelSpec(kind="logistic"), x.shape[1], 0)
        model.load_state_dict(start)
        states.append(train_local(model, x, y, epochs=1, batch_size=200, learning_rate=0.1,
                                  dp=DPSettings(1.0, 1.0), seed=1234).state)
    assert not torch.equal(states[0]["0.weight"], states[1]["0.weight"])
