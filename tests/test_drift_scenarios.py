"""The generators' drift scenarios: later windows with controlled, growing shifts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from fedrisk.config import load_config
from fedrisk.drift import psi
from fedrisk.generators import credit, fraud


def _credit(severity: float, drift: str, stream: int = 1, rows: int = 20_000) -> pd.DataFrame:
    return pd.concat([credit.generate_institution(i, 3, rows, 42, 0.0, drift, severity, stream) for i in range(3)])


def _psi(reference: np.ndarray, window: np.ndarray) -> float:
    edges = np.quantile(reference, np.arange(1, 10) / 10)
    return psi(np.bincount(np.searchsorted(edges, reference, side="right"), minlength=10),
               np.bincount(np.searchsorted(edges, window, side="right"), minlength=10))


def test_training_data_are_unchanged_by_the_drift_arguments():
    plain = credit.generate_institution(1, 3, 9000, 42)
    pd.testing.assert_frame_equal(plain, credit.generate_institution(1, 3, 9000, 42, 0.0, "none", 0.0, 0))
    pd.testing.assert_frame_equal(fraud.generate_issuer(0, 2, 300, 600, 40, 7),
                                  fraud.generate_issuer(0, 2, 300, 600, 40, 7, "none", 0.0, 0, 0))


def test_a_later_window_without_drift_has_new_rows_from_the_same_population():
    base, later = _credit(0.0, "none", 0), _credit(0.0, "none", 3)
    assert not base["income"].head(50).equals(later["income"].head(50))
    assert _psi(np.log(base["income"].to_numpy()), np.log(later["income"].to_numpy())) < 0.01
    assert later["default"].mean() == pytest.approx(base["default"].mean(), abs=0.015)


def test_population_shift_grows_with_severity_and_keeps_the_default_law():
    base = _credit(0.0, "none", 0)
    risk = credit.true_pd(base)
    shifts = [_psi(risk, credit.true_pd(_credit(s, "population_shift"))) for s in (0.25, 0.5, 1.0)]
    assert shifts[0] < shifts[1] < shifts[2] and shifts[2] > 0.25
    window = _credit(1.0, "population_shift")
    assert window["age"].mean() < base["age"].mean() - 5 and window["income"].median() < base["income"].median()
    # labels still follow the old law: the oracle ranks them as well as before
    assert roc_auc_score(window["default"], credit.true_pd(window)) == pytest.approx(
        roc_auc_score(base["default"], risk), abs=0.03)


def test_downturn_raises_default_rates_and_degrades_the_old_ranking():
    base = _credit(0.0, "none", 0)
    rates, aucs = [], []
    for severity in (0.0, 0.5, 1.0):
        window = _credit(severity, "downturn")
        rates.append(window["default"].mean())
        aucs.append(roc_auc_score(window["default"], credit.true_pd(window)))  # the pre-downturn law
    assert rates[0] < rates[1] < rates[2] and rates[2] > 1.5 * base["default"].mean()
    assert aucs[0] > aucs[1] > aucs[2] and (aucs[0] - aucs[2]) / aucs[0] > 0.05
    assert (window["employment_type"] == "unemployed").mean() > (base["employment_type"] == "unemployed").mean()


def test_new_fraud_pattern_adds_night_takeovers_in_proportion_to_severity():
    shares = []
    for severity in (0.0, 1.0, 2.0):
        frame = pd.concat([fraud.generate_issuer(i, 2, 2000, 4000, 30, 42, "new_fraud_pattern", severity, 1)
                           for i in range(2)])
        takeover = frame["tx_fraud_scenario"] == 4
        shares.append(takeover.mean())
        if severity:
            assert frame.loc[takeover, "tx_fraud"].eq(1).all()
            assert frame.loc[takeover, "tx_datetime"].dt.hour.max() < 5
            assert frame.loc[takeover, "tx_amount"].max() < fraud.LARGE_AMOUNT * 2
    assert shares[0] == 0 and 0 < shares[1] < shares[2]
    assert shares[2] / shares[1] == pytest.approx(2.0, rel=0.35)


def test_fraud_population_shift_raises_spending():
    base = fraud.generate_issuer(0, 2, 2000, 4000, 30, 42, stream=1)
    shifted = fraud.generate_issuer(0, 2, 2000, 4000, 30, 42, "population_shift", 1.0, 1)
    assert len(shifted) > 1.3 * len(base)
    assert shifted["tx_amount"].median() > 1.3 * base["tx_amount"].median()


def test_scenarios_belong_to_their_task():
    with pytest.raises(Exception, match="not a credit scenario"):
        load_config(None, {"data.synthetic.drift.scenario": "new_fraud_pattern"})
    with pytest.raises(Exception, match="not a fraud scenario"):
        load_config(None, {"task": "fraud", "data.synthetic.drift.scenario": "downturn"})


def test_each_fraud_window_has_its_own_compromises_and_the_same_cardholders():
    one, two = fraud.build_world(2, 2000, 4000, 44, 42, 1), fraud.build_world(2, 2000, 4000, 44, 42, 2)
    np.testing.assert_array_equal(one.customer_xy, two.customer_xy)
    stolen = [set(np.flatnonzero(w.card_compromised.any(axis=1))) for w in (one, two)]
    assert stolen[0] and stolen[1] and len(stolen[0] & stolen[1]) < 0.5 * len(stolen[0])
