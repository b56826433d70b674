"""`fedrisk audit privacy`: the attacks, checked on inputs where their answer is known, then run
against real campaigns: a non-private one they break, a private one they do not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import write_policies
from local_grid import LocalGrid
from scipy.stats import beta, norm
from sklearn.metrics import roc_auc_score

from clients.client_app import app as client_app
from fedrisk.cli import main
from fedrisk.config import load_config
from fedrisk.launcher import campaign_outcome
from fedrisk.metrics import EvalStats
from fedrisk.privacy_audit import audit_run, epsilon_lower_bound, histogram_attack, loss_attack, stored_number_attack
from server.campaign import run_campaign


def test_the_epsilon_bound_is_clopper_pearson_on_both_rates():
    n = 1000  # every member claimed, no non-member: the best a finite test can show
    tpr_low, fpr_high = beta.ppf(0.025, n, 1), beta.ppf(0.975, 1, n)
    assert epsilon_lower_bound(n, n, 0, n, 0.0) == pytest.approx(math.log(tpr_low / fpr_high))
    assert epsilon_lower_bound(500, 1000, 500, 1000, 1e-6) == 0.0  # guessing shows nothing
    assert epsilon_lower_bound(0, 1000, 0, 1000, 1e-6) == 0.0


def test_the_loss_attack_measures_the_separation_it_is_given():
    rng = np.random.default_rng(0)
    gap = 1.0  # member losses N(0, 1), others N(1, 1): AUC = Phi(1 / sqrt 2)
    attack = loss_attack(rng.normal(0, 1, 20_000), rng.normal(gap, 1, 20_000), 1e-6)
    assert attack.auc == pytest.approx(norm.cdf(gap / math.sqrt(2)), abs=0.01)
    members, others = np.random.default_rng(1).normal(0, 1, 500), np.random.default_rng(2).normal(0.5, 1, 500)
    labels = np.r_[np.ones(500), np.zeros(500)]
    assert loss_attack(members, others, 1e-6).auc == pytest.approx(roc_auc_score(labels, -np.r_[members, others]))
    same = loss_attack(rng.normal(0, 1, 20_000), rng.normal(0, 1, 20_000), 1e-6)
    assert same.auc == pytest.approx(0.5, abs=0.01) and same.epsilon_lower == 0.0


def test_a_bin_of_one_person_gives_them_away_unless_it_is_noised():
    edges = np.array([0.2, 0.5, 0.9])
    members = (np.array([0.1, 0.12, 0.3, 0.95], dtype=np.float32), np.array([0, 0, 0, 1]))
    others = (np.array([0.15, 0.31], dtype=np.float32), np.array([0, 0]))
    exact = EvalStats.from_scores(members[1], members[0], edges)
    counts, sums = {0: exact.hist_neg, 1: exact.hist_pos}, {0: exact.score_sum_neg, 1: exact.score_sum_pos}
    attack = histogram_attack("exact", edges, counts, sums, members, others, 1e-6)
    assert (attack.true_claims, attack.exact_recoveries, attack.false_claims) == (2, 2, 1)  # 0.3 and 0.95 exactly
    rng = np.random.default_rng(1)
    noised = {k: v + rng.normal(0, 3.0, len(v)) for k, v in sums.items()}
    assert histogram_attack("noised", edges, counts, noised, members, others, 1e-6).exact_recoveries == 0


def test_stored_scores_are_found_only_as_they_are():
    scores = np.array([0.25, 0.123456789], dtype=np.float32)
    assert stored_number_attack(np.array([float(scores[1]), 7.0]), scores).exact_recoveries == 1
    assert stored_number_attack(np.array([float(scores[1]) + 1e-9]), scores).exact_recoveries == 0


def _campaign(tmp_path, campaign, **extra):
    config = load_config(None, {"institutions": 3, "rounds": 2, "data.synthetic.rows": 9000, "training.batch_size": 128,
                                "evaluation.bins": 199, "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                                "audit.path": str(tmp_path / "audit.jsonl"), **extra}, work_dir=tmp_path)
    run_campaign(LocalGrid.simulation(client_app, 3), config, campaign)
    return config, campaign_outcome(config, campaign)


def _by_name(result):
    return {a["name"]: a for a in result["attacks"]}


@pytest.mark.slow  # seconds of end-to-end work: the full suite runs it
def test_the_audit_breaks_a_campaign_without_dp_and_not_the_default(tmp_path, capsys, monkeypatch):
    """Without DP, exact histograms at 199 bins hold single applicants at the top of the score
    range: the attack recovers them exactly. With DP (the default), nothing is recovered."""
    names = ["inst01", "inst02", "inst03"]
    write_policies(names, **{"privacy.require_dp": False})
    config, open_run = _campaign(tmp_path, "open", **{"privacy.enabled": False})
    broken = _by_name(audit_run(config.tracking.uri, open_run.run_id))
    assert broken["singleton bins: test statistics"]["exact_recoveries"] > 0
    assert broken["stored scores"]["exact_recoveries"] > 0
    monkeypatch.setenv("FEDRISK_HOME", str(tmp_path / "other-homes"))  # those customers' budget is gone for life
    config, private = _campaign(tmp_path, "private")
    result = audit_run(config.tracking.uri, private.run_id)
    assert all(a["exact_recoveries"] == 0 for a in result["attacks"])
    assert max(result["accounted_epsilon"].values()) <= 3.0 + 1e-9
    assert main(["audit", "privacy", private.run_id, "--tracking-uri", config.tracking.uri,
                 "--out", str(tmp_path / "audit.json")]) == 0
    out = capsys.readouterr().out
    assert "loss threshold" in out and "accounted epsilon 3 at delta 1e-06" in out
