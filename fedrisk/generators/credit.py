"""Built-in credit consortium: unequal institutions, non-IID features, known ground truth.

Every institution's rows come from its own seeded stream, so a client can generate its own
partition without touching anyone else's. Labels are Bernoulli draws from `true_pd`, a fixed
logistic model of the raw features, so the best achievable AUC is the AUC of `true_pd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

EMPLOYMENT = ["salaried", "self_employed", "contract", "unemployed", "retired"]
PURPOSE = ["home", "auto", "personal", "education", "debt_consolidation", "business"]
REGIONS = ["capital", "north", "south", "east", "west"]
SEXES = ["F", "M"]
AGE_BANDS = ["18-29", "30-49", "50+"]

NUMERIC_FEATURES = [
    "age",
    "income",
    "employment_years",
    "debt_to_income",
    "credit_utilisation",
    "credit_history_years",
    "past_delinquencies",
    "open_accounts",
    "loan_amount",
]
CATEGORICAL_FEATURES = ["employment_type", "region", "loan_purpose"]
PROTECTED = ["sex", "age_band"]
TARGET = "default"
# The data spec of the generated columns, for the data-quality scorecard's validity checks.
RANGES = {"age": (18, 100), "income": (0, None), "employment_years": (0, 82), "debt_to_income": (0, 1),
          "credit_utilisation": (0, 1), "credit_history_years": (0, 82), "past_delinquencies": (0, None),
          "open_accounts": (0, None), "loan_amount": (0, None)}
CATEGORIES = {"employment_type": EMPLOYMENT, "region": REGIONS, "loan_purpose": PURPOSE, "sex": SEXES,
              "age_band": AGE_BANDS}

_EMPLOYMENT_EFFECT = dict(zip(EMPLOYMENT, [0.0, 0.30, 0.45, 1.10, 0.10]))
_PURPOSE_EFFECT = dict(zip(PURPOSE, [-0.35, -0.10, 0.20, 0.05, 0.30, 0.45]))
_REGION_EFFECT = dict(zip(REGIONS, [-0.10, 0.05, 0.15, 0.0, -0.05]))
# Chosen so that the default consortium's overall default rate is close to 20 %.
_INTERCEPT = -2.26
DRIFT_SCENARIOS = ("population_shift", "downturn")
DOWNTURN_SHOCK = 1.5  # extra default logit of a borrower hit by an unobserved shock, per unit of severity


@dataclass(frozen=True)
class InstitutionProfile:
    """What makes one institution's portfolio differ from the others' (non-IID)."""

    name: str
    share: float
    income_scale: float
    risk_appetite: float  # >0: more leveraged, subprime-leaning customers
    home_region: int
    regional_focus: float  # probability mass on the home region
    mean_age: float


def institution_names(n: int) -> list[str]:
    width = max(2, len(str(n)))
    return [f"inst{i + 1:0{width}d}" for i in range(n)]


def institution_shares(n: int, equal: bool = False) -> np.ndarray:
    """A large institution first, then smaller ones: shares proportional to 1/rank^1.1 (or equal:
    a network of similar small lenders, as a scale test wants)."""
    weights = np.ones(n) if equal else 1.0 / np.arange(1, n + 1) ** 1.1
    return weights / weights.sum()


@lru_cache(maxsize=16)
def consortium_profiles(n_institutions: int, seed: int, equal: bool = False) -> tuple[InstitutionProfile, ...]:
    """A large national bank first, then smaller regional lenders of decreasing size. Cached: each
    of a thousand institutions' nodes asks for its own."""
    rng = np.random.default_rng([seed, 10_007])
    shares = institution_shares(n_institutions, equal)
    profiles = []
    for i, name in enumerate(institution_names(n_institutions)):
        national = i == 0
        profiles.append(
            InstitutionProfile(
                name=name,
                share=float(shares[i]),
                income_scale=1.0 if national else float(rng.uniform(0.75, 1.15)),
                risk_appetite=0.0 if national else float(rng.uniform(-0.3, 0.9)),
                home_region=int(rng.integers(len(REGIONS))),
                regional_focus=0.2 if national else float(rng.uniform(0.4, 0.8)),
                mean_age=float(rng.uniform(36, 50)),
            )
        )
    return tuple(profiles)


def institution_sizes(n_institutions: int, total_rows: int, seed: int, equal: bool = False) -> list[int]:
    profiles = consortium_profiles(n_institutions, seed, equal)
    sizes = [max(50, int(round(p.share * total_rows))) for p in profiles]
    return sizes


def true_pd(frame: pd.DataFrame, group_bias: float = 0.0, downturn: float = 0.0,
            shock: np.ndarray | float = 0.0) -> np.ndarray:
    """Ground-truth probability of default of each row (the oracle the labels come from).

    `downturn` > 0 raises default rates and changes who defaults: the capital region's
    industries shed jobs, contract and self-employed workers and business loans are hit
    hardest, so a model trained before the downturn ranks applicants less well. `shock` is
    the extra logit of unobserved job losses (per row).
    """
    income_k = frame["income"].to_numpy() / 1000.0
    util = frame["credit_utilisation"].to_numpy()
    age = frame["age"].to_numpy()
    logit = (
        _INTERCEPT
        - 0.8 * np.log(income_k / 40.0)
        + 3.4 * (frame["debt_to_income"].to_numpy() - 0.35)
        + 2.8 * (util - 0.4)
        + 2.0 * np.clip(util - 0.85, 0.0, None)
        + 0.6 * np.minimum(frame["past_delinquencies"].to_numpy(), 6)
        - 0.015 * (frame["credit_history_years"].to_numpy() - 10.0)
        - 0.02 * (frame["employment_years"].to_numpy() - 5.0)
        + 0.004 * ((age - 45.0) / 5.0) ** 2
        + 0.05 * (frame["open_accounts"].to_numpy() - 5.0)
        + 0.35 * np.log(frame["loan_amount"].to_numpy() / frame["income"].to_numpy() / 0.3)
        + frame["employment_type"].map(_EMPLOYMENT_EFFECT).to_numpy(dtype=float)
        + frame["loan_purpose"].map(_PURPOSE_EFFECT).to_numpy(dtype=float)
        + frame["region"].map(_REGION_EFFECT).to_numpy(dtype=float)
    )
    if group_bias:
        logit = logit + group_bias * (frame["sex"].to_numpy() == "F")
    if downturn:
        employment = frame["employment_type"].to_numpy()
        logit = logit + downturn * (
            0.2
            + 1.8 * (frame["region"].to_numpy() == "capital")
            + 1.2 * np.isin(employment, ["contract", "self_employed"])
            + 1.2 * (frame["loan_purpose"].to_numpy() == "business")
        )
    return 1.0 / (1.0 + np.exp(-(logit + shock)))


def generate_institution(
    index: int,
    n_institutions: int = 5,
    total_rows: int = 60_000,
    seed: int = 42,
    group_bias: float = 0.0,
    drift: str = "none",
    severity: float = 0.0,
    stream: int = 0,
    equal_sizes: bool = False,
) -> pd.DataFrame:
    """Rows of one institution, deterministic in its arguments.

    `group_bias` > 0 injects historical bias against sex 'F': their labels carry an extra
    logit of `group_bias`, and their recorded income is lowered, a proxy the model can learn.
    `stream` k > 0 draws new applicants of the same institutions (a later window), and
    `drift` shifts them by `severity` (1: a strong shift): `population_shift` brings
    younger, poorer, more indebted applicants whose defaults follow the same law;
    `downturn` raises default rates and changes who defaults (see `true_pd`), with more
    unemployment.
    """
    if not 0 <= index < n_institutions:
        raise ValueError(f"institution index {index} outside 0..{n_institutions - 1}")
    if drift not in ("none", *DRIFT_SCENARIOS):
        raise ValueError(f"unknown credit drift scenario '{drift}' (known: {', '.join(DRIFT_SCENARIOS)})")
    profile = consortium_profiles(n_institutions, seed, equal_sizes)[index]
    n = institution_sizes(n_institutions, total_rows, seed, equal_sizes)[index]
    rng = np.random.default_rng([seed, index, 20_011, *([stream] if stream else [])])
    risk = profile.risk_appetite
    shift = severity if drift == "population_shift" else 0.0
    downturn = severity if drift == "downturn" else 0.0

    age = np.clip(rng.normal(profile.mean_age - 10.0 * shift, 12.0, n), 18, 85).round()
    sex = rng.choice(SEXES, n)
    region_p = np.full(len(REGIONS), (1 - profile.regional_focus) / (len(REGIONS) - 1))
    region_p[profile.home_region] = profile.regional_focus
    region = rng.choice(REGIONS, n, p=region_p)
    emp_p = np.array([0.62, 0.12, 0.12, 0.05, 0.09]) + np.array([-0.1, 0.02, 0.05, 0.03, 0.0]) * risk
    emp_p = emp_p + np.array([-0.08, 0.0, 0.02, 0.06, 0.0]) * downturn
    emp_p = np.clip(emp_p, 0.01, None)
    employment = rng.choice(EMPLOYMENT, n, p=emp_p / emp_p.sum())
    employment = np.where(age >= 67, "retired", employment)
    employment_years = np.where(
        np.isin(employment, ["unemployed"]),
        0.0,
        np.minimum(rng.gamma(2.0, 3.5, n), np.maximum(age - 18, 0)),
    ).round(1)
    region_income = np.array([1.25, 1.0, 0.85, 0.95, 1.0])[
        pd.Index(REGIONS).get_indexer(region)
    ]
    income = (
        np.exp(rng.normal(np.log(42_000), 0.45, n))
        * region_income
        * profile.income_scale
        * np.where(employment == "unemployed", 0.45, 1.0)
        * np.exp(-0.3 * shift)
    )
    if group_bias:
        income = income * np.where(sex == "F", np.exp(-0.35 * group_bias), 1.0)
    income = income.round(-2).clip(6_000, None)
    dti = rng.beta(2.2 + 0.6 * risk + 1.2 * shift, 4.0, n).round(3)
    util = rng.beta(1.6 + 0.5 * risk + 1.0 * shift, 2.4, n).round(3)
    history = np.clip(age - 18 - rng.gamma(2.0, 2.0, n), 0, None).round(1)
    delinquencies = rng.poisson(0.35 + 0.35 * max(risk, 0.0) + 0.5 * util, n)
    open_accounts = rng.poisson(3.0 + 2.5 * util + 0.04 * np.clip(age - 25, 0, None), n)
    purpose = rng.choice(PURPOSE, n, p=[0.22, 0.2, 0.22, 0.06, 0.2, 0.1])
    loan = (income * rng.lognormal(np.log(0.3), 0.5, n)).round(-2).clip(500, None)
    age_band = np.select([age < 30, age < 50], AGE_BANDS[:2], AGE_BANDS[2])

    frame = pd.DataFrame(
        {
            "customer_id": [f"{profile.name}-{i:07d}" for i in range(n)],
            "age": age,
            "income": income,
            "employment_type": employment,
            "employment_years": employment_years,
            "debt_to_income": dti,
            "credit_utilisation": util,
            "credit_history_years": history,
            "past_delinquencies": delinquencies,
            "open_accounts": open_accounts,
            "loan_amount": loan,
            "loan_purpose": purpose,
            "region": region,
            "sex": sex,
            "age_band": age_band,
        }
    )
    if downturn:  # job losses no application form shows: a third of borrowers take a shock
        shock = downturn * DOWNTURN_SHOCK * (rng.random(n) < 1 / 3)
        pd_true = true_pd(frame, group_bias, downturn, shock)
    else:
        pd_true = true_pd(frame, group_bias)
    frame[TARGET] = (rng.random(n) < pd_true).astype(int)
    return frame


def generate_consortium(
    n_institutions: int = 5, total_rows: int = 60_000, seed: int = 42, group_bias: float = 0.0
) -> dict[str, pd.DataFrame]:
    names = institution_names(n_institutions)
    return {
        names[i]: generate_institution(i, n_institutions, total_rows, seed, group_bias)
        for i in range(n_institutions)
    }
