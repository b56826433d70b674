"""The transaction simulator: Le Borgne et al.'s design, extended to a consortium of issuers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrisk.generators import fraud

SMALL = {"issuers": 4, "customers": 1200, "terminals": 2400, "days": 70, "seed": 3}


@pytest.fixture(scope="module")
def consortium() -> pd.DataFrame:
    return fraud.generate_consortium(**SMALL)


@pytest.fixture(scope="module")
def world() -> fraud.World:
    return fraud.build_world(SMALL["issuers"], SMALL["customers"], SMALL["terminals"], SMALL["days"], SMALL["seed"])


def test_seeded_and_each_issuer_generated_alone(consortium):
    again = fraud.generate_issuer(2, **{k: v for k, v in SMALL.items() if k != "issuers"}, issuers=4)
    mine = consortium[consortium.issuer == "inst03"].drop(columns="issuer").reset_index(drop=True)
    pd.testing.assert_frame_equal(again, mine)
    other = fraud.generate_issuer(2, 4, 1200, 2400, 70, seed=4)
    assert not other["tx_amount"].head(100).equals(again["tx_amount"].head(100))


def test_default_fraud_rate_is_within_the_stated_range():
    rate = fraud.generate_consortium(seed=1)["tx_fraud"].mean()
    assert 0.005 <= rate <= 0.01  # the "about 0.5-1 %"


def test_fraud_rate_does_not_depend_on_scale(consortium):
    """Rates are fractions of customers and terminals, so a 4x larger world has the same rate."""
    large = fraud.generate_consortium(4, 4800, 9600, 70, seed=3)
    small_rate, large_rate = consortium["tx_fraud"].mean(), large["tx_fraud"].mean()
    # binomial standard error of the small world's rate, doubled for the two samples
    se = np.sqrt(small_rate * (1 - small_rate) / len(consortium))
    assert abs(small_rate - large_rate) < 6 * se + 0.1 * large_rate


def test_the_three_scenarios_follow_the_handbook(consortium, world):
    s = consortium["tx_fraud_scenario"]
    assert set(s.unique()) == {0, 1, 2, 3}
    assert (consortium["tx_fraud"] == (s > 0)).all()
    day = (consortium["tx_datetime"] - fraud.START).dt.days.to_numpy()
    on_bad_terminal = world.terminal_compromised[consortium["terminal_id"], day]
    stolen = world.card_compromised[consortium["customer_id"], day]
    # scenario 2: every transaction on a compromised terminal, unless a stolen card's fraud
    assert (s[on_bad_terminal] >= 2).all()
    assert (s[~on_bad_terminal] != 2).all()
    # scenario 3: only on stolen cards, about a third of their transactions, at 5x the amount
    assert stolen[s == 3].all()
    share = (s[stolen] == 3).mean()
    assert abs(share - fraud.CARD_SHARE) < 4 * np.sqrt(fraud.CARD_SHARE * (1 - fraud.CARD_SHARE) / stolen.sum())
    # scenario 1: large amounts, the rest is legitimate
    assert (consortium.loc[s == 1, "tx_amount"] > fraud.LARGE_AMOUNT).all()
    assert (consortium.loc[s == 0, "tx_amount"] <= fraud.LARGE_AMOUNT).all()


def test_scenario_windows_last_28_and_14_days(world):
    starts = np.zeros((1, 40), dtype=bool)
    starts[0, 5] = True
    assert np.flatnonzero(fraud._window(starts, fraud.TERMINAL_DAYS)[0]).tolist() == list(range(5, 33))
    assert np.flatnonzero(fraud._window(starts, fraud.CARD_DAYS)[0]).tolist() == list(range(5, 19))


def test_issuers_have_own_customers_unequal_sizes_shared_terminals(consortium):
    owners = consortium.groupby("customer_id")["issuer"].nunique()
    assert (owners == 1).all()  # a card belongs to one issuer
    sizes = consortium["issuer"].value_counts().sort_index()
    assert sizes.is_monotonic_decreasing and sizes.iloc[0] > 2 * sizes.iloc[-1]
    terminals = consortium.groupby("terminal_id")["issuer"].nunique()
    assert terminals.mean() > 1.5  # most terminals serve several issuers' customers
    # a compromised terminal's frauds hit several issuers: why federating pays
    hit = consortium[consortium.tx_fraud_scenario == 2].groupby("terminal_id")["issuer"].nunique()
    assert (hit > 1).mean() > 0.5


def test_card_theft_frequency_differs_by_issuer(world):
    active = world.card_compromised.mean(axis=1)
    by_issuer = [active[world.issuer == i].mean() for i in range(SMALL["issuers"])]
    assert np.all(np.diff(by_issuer) > 0)  # issuer_card_risk rises from 0.5x to 1.5x


def test_customers_pay_only_within_their_radius(consortium, world):
    sample = consortium.sample(2000, random_state=0)
    distance = np.linalg.norm(world.customer_xy[sample.customer_id] - world.terminal_xy[sample.terminal_id], axis=1)
    assert (distance <= fraud.RADIUS).all()


def test_weekly_and_daily_patterns(consortium):
    when = consortium["tx_datetime"]
    days_of_each_weekday = when.dt.normalize().drop_duplicates().dt.dayofweek.value_counts().sort_index()
    per_weekday = when.dt.dayofweek.value_counts().sort_index() / days_of_each_weekday
    assert per_weekday[5] > per_weekday[0] > per_weekday[6]  # busy Saturday, quiet Sunday
    hours = when.dt.hour
    assert (hours.between(10, 14)).mean() > 2 * (hours <= 4).mean()  # days busier than nights
    assert consortium.groupby("issuer")["tx_datetime"].apply(lambda t: t.is_monotonic_increasing).all()
