"""The institution's privacy ledger: persistent, keyed by the institution, plans before charges,
campaigns that add up even when they run at once, a cap only two approvers can raise."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedrisk.errors import BudgetExhaustedError, FedriskInputError
from fedrisk.ledger import PrivacyLedger, Release, campaign_epsilon
from fedrisk.privacy import epsilon_from_rdp

DELTA = 1e-6
SGD = Release("train", "dp_sgd", 1.0, 0.01, 500)
STATS = Release("train", "preprocessing", 5.0)
TEST = Release("test", "evaluation", 2.0)


def _ledger(tmp_path, cap=6.0, name="inst01"):
    return PrivacyLedger.open(tmp_path / "ledger.json", name, cap, DELTA)


def test_a_release_is_charged_as_opacus_counts_it(tmp_path):
    ledger = _ledger(tmp_path)
    ledger.plan("c1", [SGD], 6.0, {})
    ledger.charge("c1", SGD)
    reference = RDPAccountant()
    reference.history = [(SGD.noise_multiplier, SGD.sample_rate, SGD.steps)]
    assert ledger.spent() == pytest.approx(reference.get_epsilon(DELTA), rel=1e-9)


def test_releases_on_disjoint_parts_cost_their_maximum_and_on_one_part_their_sum():
    """Parallel composition: a row is in one part, so it pays for its part's releases only."""
    one_part = campaign_epsilon([SGD, STATS], DELTA)
    sgd_alone = campaign_epsilon([SGD], DELTA)
    assert one_part > sgd_alone
    parallel = campaign_epsilon([SGD, TEST], DELTA)
    sequential = campaign_epsilon([SGD, Release("train", "evaluation", 2.0)], DELTA)
    assert max(sgd_alone, campaign_epsilon([TEST], DELTA)) <= parallel < sequential
    both = np.maximum(SGD.rdp(), TEST.rdp())  # the pointwise maximum of the two parts' curves
    assert parallel == pytest.approx(epsilon_from_rdp(both, DELTA))


def test_the_ledger_survives_a_reopen_and_reports_each_mechanism(tmp_path):
    ledger = _ledger(tmp_path)
    ledger.plan("c1", [SGD, STATS, TEST], 6.0, {"fingerprint": "abc"})
    for release in (SGD, STATS, TEST):
        ledger.charge("c1", release)
    again = _ledger(tmp_path)
    summary = again.summary("c1")
    assert set(summary["by_mechanism"]) == {"dp_sgd", "preprocessing", "evaluation"}
    assert summary["by_mechanism"]["dp_sgd"] == pytest.approx(campaign_epsilon([SGD], DELTA))
    assert summary["campaign"] == pytest.approx(campaign_epsilon([SGD, STATS, TEST], DELTA))
    assert summary["lifetime"] == summary["campaign"] <= 6.0


def test_a_release_outside_the_plan_is_refused_and_recorded(tmp_path):
    ledger = _ledger(tmp_path)
    ledger.plan("c1", [STATS], 6.0, {})
    ledger.charge("c1", STATS)
    with pytest.raises(BudgetExhaustedError, match="outside campaign c1's plan"):
        ledger.charge("c1", STATS)  # a second release of what was planned once
    with pytest.raises(BudgetExhaustedError):
        ledger.charge("c2", STATS)  # a campaign that never planned
    assert len(_ledger(tmp_path).refusals) == 2 and len(_ledger(tmp_path).charges) == 1


def test_a_campaign_beyond_the_cap_is_refused_with_what_is_left(tmp_path):
    ledger = _ledger(tmp_path, cap=2.0)
    heavy = Release("train", "dp_sgd", 0.6, 0.05, 2000)
    with pytest.raises(BudgetExhaustedError, match=r"institution inst01: privacy budget left \(2 of 2"):
        ledger.plan("c1", [heavy], 2.0, {})
    assert not _ledger(tmp_path).plans


def test_replanning_a_campaign_with_other_settings_is_refused(tmp_path):
    ledger = _ledger(tmp_path)
    ledger.plan("c1", [SGD], 6.0, {})
    ledger.plan("c1", [SGD], 6.0, {})  # the same plan again (a restarted node) is the same reservation
    with pytest.raises(FedriskInputError, match="already planned"):
        ledger.plan("c1", [Release("train", "dp_sgd", 0.5, 0.01, 500)], 6.0, {})


def test_a_ledger_is_one_institutions(tmp_path):
    _ledger(tmp_path).plan("c1", [SGD], 6.0, {})
    with pytest.raises(FedriskInputError, match="belongs to institution inst01"):
        _ledger(tmp_path, name="inst02")


def test_a_policy_can_lower_the_cap_never_raise_it(tmp_path):
    _ledger(tmp_path, cap=3.0).plan("c1", [STATS], 3.0, {})
    assert _ledger(tmp_path, cap=10.0).effective_cap(10.0) == 3.0
    assert _ledger(tmp_path, cap=10.0).effective_cap(2.0) == 2.0


def test_a_corrupt_ledger_stops_everything(tmp_path):
    (tmp_path / "ledger.json").write_text("{not json")
    with pytest.raises(FedriskInputError, match="unreadable; restore it from backup"):
        _ledger(tmp_path)


def _plan_in_process(args):
    path, campaign = args
    from fedrisk.ledger import PrivacyLedger, Release

    ledger = PrivacyLedger.open(path, "inst01", 3.0, 1e-6)
    try:
        ledger.plan(campaign, [Release("train", "dp_sgd", 2.0, 0.05, 250)], 3.0, {})
        return "planned"
    except BudgetExhaustedError:
        return "refused"


def _charge_in_process(args):
    path, campaign, index = args
    from fedrisk.ledger import PrivacyLedger, Release

    PrivacyLedger.open(path, "inst01", 100.0, 1e-6).charge(campaign, Release("train", "bounds", 50.0 + index))


def test_concurrent_campaigns_add_up(tmp_path):
    """Two campaigns that each fit the cap alone, planned at the same moment by two processes:
    one is reserved, the other refused; and charges from many processes are all kept."""
    path = tmp_path / "ledger.json"
    alone = PrivacyLedger.open(tmp_path / "alone.json", "inst01", 3.0, 1e-6)
    alone.plan("c0", [Release("train", "dp_sgd", 2.0, 0.05, 250)], 3.0, {})  # one fits the cap
    with pytest.raises(BudgetExhaustedError):  # two in sequence do not
        alone.plan("c1", [Release("train", "dp_sgd", 2.0, 0.05, 250)], 3.0, {})
    with multiprocessing.get_context("fork").Pool(4) as pool:
        outcomes = pool.map(_plan_in_process, [(path, f"c{i}") for i in range(4)])
    assert sorted(outcomes) == ["planned", "refused", "refused", "refused"]
    shared = tmp_path / "many.json"
    releases = [Release("train", "bounds", 50.0 + i) for i in range(12)]
    PrivacyLedger.open(shared, "inst01", 100.0, DELTA).plan("c", releases, 100.0, {})
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_charge_in_process, [(shared, "c", i) for i in range(12)])
    assert len(json.loads(shared.read_text())["charges"]) == 12


def test_a_policy_cannot_move_the_ledger_away_from_its_spend(tmp_path):
    from fedrisk.guard import ledger_path, load_policy

    policy = load_policy(tmp_path, "inst01")
    PrivacyLedger.open(ledger_path(tmp_path, policy, "inst01"), "inst01", 6.0, DELTA).plan("c1", [SGD], 6.0, {})
    moved = policy.model_copy(update={"ledger": str(tmp_path / "elsewhere" / "ledger.json")})
    with pytest.raises(FedriskInputError, match="moves the privacy ledger"):
        ledger_path(tmp_path, moved, "inst01")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "ledger.json").rename(tmp_path / "elsewhere" / "ledger.json")  # moved with its history: fine
    assert PrivacyLedger.open(ledger_path(tmp_path, moved, "inst01"), "inst01", 6.0, DELTA).plans

