"""Fraud features against the handbook's pandas implementation, and the label delay."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrisk.generators.fraud import generate_issuer
from fedrisk.transaction_features import transaction_features, window_names

WINDOWS = [1, 7, 30]
DELAY = 7


def _handbook_customer(c: pd.DataFrame) -> pd.DataFrame:
    """Le Borgne et al., section 3.4, get_customer_spending_behaviour_features."""
    c = c.sort_values("tx_datetime").set_index("tx_datetime", drop=False)
    for w in WINDOWS:
        total = c["tx_amount"].rolling(f"{w}D").sum()
        count = c["tx_amount"].rolling(f"{w}D").count()
        c[f"customer_nb_tx_{w}d"] = count.to_numpy()
        c[f"customer_avg_amount_{w}d"] = (total / count).to_numpy()
    return c.set_index("row")


def _handbook_terminal(c: pd.DataFrame) -> pd.DataFrame:
    """Le Borgne et al., section 3.4, get_count_risk_rolling_window (delay 7 days)."""
    c = c.sort_values("tx_datetime").set_index("tx_datetime", drop=False)
    frauds_delay = c["tx_fraud"].rolling(f"{DELAY}D").sum()
    count_delay = c["tx_fraud"].rolling(f"{DELAY}D").count()
    for w in WINDOWS:
        frauds = c["tx_fraud"].rolling(f"{DELAY + w}D").sum() - frauds_delay
        count = c["tx_fraud"].rolling(f"{DELAY + w}D").count() - count_delay
        c[f"terminal_nb_tx_{w}d"] = count.to_numpy()
        c[f"terminal_risk_{w}d"] = (frauds / count).fillna(0).to_numpy()
    return c.set_index("row")


@pytest.fixture(scope="module")
def issuer() -> pd.DataFrame:
    return generate_issuer(1, issuers=3, customers=300, terminals=600, days=50, seed=5)


def _features(frame: pd.DataFrame) -> pd.DataFrame:
    return transaction_features(frame["tx_datetime"], frame["customer_id"], frame["terminal_id"],
                                frame["tx_amount"], frame["tx_fraud"], WINDOWS, DELAY)


def test_features_equal_the_handbook_reference(issuer):
    ours = _features(issuer)
    rows = issuer.assign(row=np.arange(len(issuer)))
    customer = rows.groupby("customer_id", group_keys=False)[list(rows.columns)].apply(_handbook_customer).sort_index()
    terminal = rows.groupby("terminal_id", group_keys=False)[list(rows.columns)].apply(_handbook_terminal).sort_index()
    for column in window_names(WINDOWS)[2:]:
        reference = (customer if column.startswith("customer") else terminal)[column].to_numpy()
        np.testing.assert_allclose(ours[column].to_numpy(), reference, rtol=1e-9, err_msg=column)
    when = issuer["tx_datetime"].dt
    assert (ours["tx_during_weekend"] == (when.dayofweek >= 5)).all()
    assert (ours["tx_during_night"] == (when.hour <= 6)).all()


def test_row_order_does_not_matter(issuer):
    shuffled = issuer.sample(frac=1.0, random_state=1)
    pd.testing.assert_frame_equal(_features(shuffled).sort_index(), _features(issuer))


def test_terminal_risk_counts_a_fraud_only_after_the_label_delay():
    t0 = pd.Timestamp("2026-03-02 12:00")
    times = [t0, t0 + pd.Timedelta(days=6, hours=23), t0 + pd.Timedelta(days=7, hours=1)]
    frame = pd.DataFrame({"tx_datetime": times, "customer_id": [1, 2, 3], "terminal_id": [9, 9, 9],
                          "tx_amount": [10.0, 20.0, 30.0], "tx_fraud": [1, 0, 0]})
    risk = _features(frame)["terminal_risk_1d"].tolist()
    # the fraud is not known 6 days 23 hours later, and counts once the 7-day delay has passed
    assert risk == [0.0, 0.0, 1.0]
    assert _features(frame)["terminal_nb_tx_1d"].tolist() == [0.0, 0.0, 1.0]


def test_customer_windows_include_the_current_transaction_only_from_the_past():
    t0 = pd.Timestamp("2026-03-02 12:00")
    frame = pd.DataFrame({"tx_datetime": [t0, t0 + pd.Timedelta(hours=23), t0 + pd.Timedelta(hours=25)],
                          "customer_id": [1, 1, 1], "terminal_id": [1, 2, 3],
                          "tx_amount": [10.0, 20.0, 60.0], "tx_fraud": [0, 0, 0]})
    f = _features(frame)
    assert f["customer_nb_tx_1d"].tolist() == [1.0, 2.0, 2.0]
    assert f["customer_avg_amount_1d"].tolist() == [10.0, 15.0, 40.0]
    assert f["customer_nb_tx_7d"].tolist() == [1.0, 2.0, 3.0]
