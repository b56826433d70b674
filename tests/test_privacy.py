"""DP calibration and the privacy ledger, against Opacus's own accountant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedrisk.config import ModelSpec
from fedrisk.errors import BudgetExhaustedError, FedriskInputError
from fedrisk.models import build_model
from fedrisk.privacy import (
    EPSILON_TOLERANCE,
    PrivacyLedger,
    calibrate_noise_multiplier,
    epsilon_spent,
)
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
    ledger = PrivacyLedger.open(tmp_path, "inst01", "e" * 64)
    for rnd in (1, 2):
        res = train_local(model, x, y, epochs=1, batch_size=200, learning_rate=0.1, dp=DPSettings(1.0, 1.0))
        assert res.spend == [(1.0, 0.1, 10)]
        ledger.record("c1", rnd, res.spend, 1e-5)
    assert ledger.spent(1e-5) == pytest.approx(epsilon_spent([(1.0, 0.1, 20)], 1e-5), rel=1e-9)


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


def test_ledger_persists_and_refuses(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, "inst01", "f" * 64)
    sigma = ledger.plan("c1", 2.0, 1e-5, 0.05, 100, 2)
    assert ledger.plan("c1", 2.0, 1e-5, 0.05, 100, 2) == sigma  # calibrated once per campaign
    for rnd in (1, 2):
        ledger.authorise("c1", rnd, sigma, 0.05, 100, 2.0, 1e-5)
        ledger.record("c1", rnd, [(sigma, 0.05, 100)], 1e-5)
    reopened = PrivacyLedger.open(tmp_path, "inst01", "f" * 64)
    spent = reopened.spent(1e-5)
    assert spent == pytest.approx(epsilon_spent([(sigma, 0.05, 200)], 1e-5))
    assert spent <= 2.0  # never above the budget ...
    assert 2.0 - spent <= EPSILON_TOLERANCE  # ... and the planned rounds use it up
    # A third round of the same campaign would exceed the budget: refused and recorded.
    with pytest.raises(BudgetExhaustedError, match="exceed"):
        reopened.authorise("c1", 3, sigma, 0.05, 100, 2.0, 1e-5)
    # A second campaign on the same data starts from what was spent: nothing left.
    with pytest.raises(BudgetExhaustedError):
        reopened.plan("c2", 2.0, 1e-5, 0.05, 100, 2)
    again = PrivacyLedger.open(tmp_path, "inst01", "f" * 64)
    assert [r["round"] for r in again.refusals] == [3, 0]
    assert again.refusals[0]["campaign"] == "c1"


def test_second_campaign_gets_the_budget_left(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, "inst02", "a" * 64)
    sigma = ledger.plan("c1", 2.0, 1e-5, 0.05, 100, 1)
    ledger.record("c1", 1, [(sigma, 0.05, 100)], 1e-5)  # spends 2.0 of a 4.0 budget below
    second = ledger.plan("c2", 4.0, 1e-5, 0.05, 100, 1)
    total = epsilon_spent([(sigma, 0.05, 100), (second, 0.05, 100)], 1e-5)
    assert total <= 4.0
    assert ledger.plans["c2"]["epsilon_before"] == pytest.approx(ledger.spent(1e-5))


def test_cached_epsilon_equals_rdp_accountant_on_mixed_history():
    history = [(1.1, 0.02, 500), (0.8, 0.05, 120), (1.1, 0.02, 250), (3.0, 0.5, 7)]
    accountant = RDPAccountant()
    accountant.history = list(history)
    for delta in (1e-5, 1e-7):
        assert epsilon_spent(history, delta) == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)


def test_concurrent_campaigns_do_not_overwrite_each_other(tmp_path):
    one = PrivacyLedger.open(tmp_path, "inst03", "b" * 64)
    two = PrivacyLedger.open(tmp_path, "inst03", "b" * 64)  # opened before one writes
    one.record("c1", 1, [(1.0, 0.01, 100)], 1e-5)
    two.record("c2", 1, [(1.0, 0.01, 100)], 1e-5)
    again = PrivacyLedger.open(tmp_path, "inst03", "b" * 64)
    assert sum(n for _, _, n in again.history) == 200
    assert again.spent(1e-5) == pytest.approx(epsilon_spent([(1.0, 0.01, 200)], 1e-5))


def test_reused_campaign_id_with_other_settings_is_refused(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, "inst04", "c" * 64)
    ledger.plan("c1", 3.0, 1e-5, 0.05, 100, 2)
    with pytest.raises(FedriskInputError, match="already planned"):
        ledger.plan("c1", 3.0, 1e-5, 0.05, 100, 5)


def test_unreadable_ledger_is_an_input_error(tmp_path):
    (tmp_path / ("inst05-" + "d" * 16 + ".json")).write_text("{}")
    with pytest.raises(FedriskInputError, match="ledger is unreadable"):
        PrivacyLedger.open(tmp_path, "inst05", "d" * 64)


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
