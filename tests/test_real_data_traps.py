"""Traps met on real credit and transaction files (issue 16): each reproduced first, then fixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrisk.config import CampaignConfig, DataSpec, load_config
from fedrisk.data import load_institution
from fedrisk.errors import FedriskInputError
from fedrisk.gate import apply_policy
from fedrisk.generators import credit
from fedrisk.policy import Policy, Rule

SEED = 3


def _files(tmp_path: Path, frames: dict[str, pd.DataFrame]) -> dict[str, str]:
    out = {}
    for name, frame in frames.items():
        path = tmp_path / f"{name}.csv"
        frame.to_csv(path, index=False)
        out[name] = str(path)
    return out


@pytest.fixture(scope="module")
def upper_frame() -> pd.DataFrame:
    """A credit file as banks write them: upper-case headers."""
    frame = credit.generate_institution(0, 3, 3000, SEED)
    return frame.rename(columns=str.upper)


# ------------------------------------------------------------ trap 1: column names in any case


def test_config_column_names_are_canonical_whatever_their_case():
    spec = DataSpec(target="DEFAULT", protected=["SEX", " Age_Band "], drop=["CUSTOMER_ID", "Transaction_ID"],
                    features=["Income", "LOAN_amount"], categorical=["INCOME"],
                    quality={"ranges": {"INCOME": [0, None]}, "date_column": "Applied_On"})
    assert spec.target == "default"
    assert spec.protected == ["sex", "age_band"]
    assert spec.drop == ["customer_id", "transaction_id"]
    assert spec.features == ["income", "loan_amount"]
    assert spec.categorical == ["income"]
    assert list(spec.quality.ranges) == ["income"]
    assert spec.quality.date_column == "applied_on"


def test_a_column_named_twice_in_other_case_is_refused():
    with pytest.raises(ValueError, match="'sex' is listed twice"):
        DataSpec(protected=["sex", "SEX"])


def test_upper_case_file_and_config_load_with_canonical_names(tmp_path, upper_frame):
    files = _files(tmp_path, {"bank": upper_frame})
    spec = DataSpec(source="files", files=files, target="DEFAULT", protected=["SEX", "AGE_BAND"])
    data = load_institution(spec, "bank", SEED)
    assert data.columns.protected == ["sex", "age_band"]
    assert data.columns.target == "default"
    assert "customer_id" not in data.columns.features  # the default drop list matches CUSTOMER_ID
    assert {"sex", "age_band", "default"} <= set(data.frame.columns)


def test_lower_case_config_matches_upper_case_file(tmp_path, upper_frame):
    files = _files(tmp_path, {"bank": upper_frame})
    data = load_institution(DataSpec(source="files", files=files), "bank", SEED)
    assert data.columns.protected == ["sex", "age_band"]


def test_policy_metric_names_are_canonical():
    rule = Rule(metric="Approval_Rate_Difference.SEX", comparator="<=", threshold=0.05, severity="block")
    assert rule.metric == "approval_rate_difference.sex"


def _gate_file(tmp_path: Path, metric: str) -> str:
    path = tmp_path / "gate.yaml"
    path.write_text("name: mine\ntask: credit\nrules:\n"
                    f"  - {{metric: auc, comparator: '>=', threshold: 0.7, severity: block}}\n"
                    f"  - {{metric: {metric}, comparator: '<=', threshold: 0.05, severity: block}}\n")
    return str(path)


def test_a_rule_on_an_attribute_the_campaign_does_not_protect_is_a_config_error(tmp_path):
    with pytest.raises(FedriskInputError) as err:
        load_config(None, {"gate.policy": _gate_file(tmp_path, "approval_rate_difference.gender"),
                           "data.protected": ["SEX"]})
    line = err.value.one_line()
    assert "rule 2" in line and "approval_rate_difference.gender" in line and "data.protected" in line


def test_the_shipped_policy_refuses_a_campaign_without_its_attributes():
    with pytest.raises(FedriskInputError, match="age_band"):
        load_config(None, {"data.protected": ["sex"]})


def test_a_rule_on_a_protected_attribute_in_any_case_loads(tmp_path):
    config = load_config(None, {"gate.policy": _gate_file(tmp_path, "approval_rate_difference.SEX"),
                                "data.protected": ["Sex"]})
    assert config.data.protected == ["sex"]


def test_a_metric_missing_at_gate_time_is_reported_missing():
    policy = Policy(name="p", rules=[Rule(metric="auc", comparator=">=", threshold=0.7, severity="block"),
                                     Rule(metric="approval_rate_difference.sex", comparator="<=", threshold=0.05,
                                          severity="block")])
    verdict = apply_policy(policy, {"test_auc": 0.8}, ["a", "b"])
    missing = verdict.results[1]
    assert missing.outcome == "missing" and missing.value is None
    assert verdict.verdict == "block"  # still fails closed
    assert "MISSING" in verdict.summary_lines()[1] and "not in the run" in verdict.summary_lines()[1]


def test_campaign_config_round_trips_canonical_names():
    config = CampaignConfig.model_validate({"data": {"protected": ["SEX"], "target": "Default"}})
    assert CampaignConfig.model_validate_json(config.model_dump_json()) == config


# ------------------------------------------------------------ trap 2: identifiers are never inputs


def _credit(rows: int = 3000) -> pd.DataFrame:
    return credit.generate_institution(0, 3, rows, SEED).drop(columns=["customer_id"])


def _refused(tmp_path: Path, frame: pd.DataFrame, column: str, **spec) -> str:
    files = _files(tmp_path, {"bank": frame})
    with pytest.raises(FedriskInputError) as err:
        load_institution(DataSpec(source="files", files=files, **spec), "bank", SEED)
    assert err.value.column == column and err.value.institution == "bank"
    line = err.value.one_line()
    assert "\n" not in line and "data.drop" in line
    return line


def test_a_numeric_row_id_is_refused(tmp_path):
    frame = _credit()
    frame.insert(0, "ID", range(1, len(frame) + 1))
    assert "row" in _refused(tmp_path, frame, "id")


def test_a_numeric_national_id_is_refused(tmp_path):
    frame = _credit()
    frame["national_id_no"] = np.random.default_rng(1).choice(10**9, len(frame), replace=False) + 10**8
    _refused(tmp_path, frame, "national_id_no")


def test_a_running_application_number_with_repeats_is_refused(tmp_path):
    frame = _credit()
    frame["ref_seq"] = np.arange(len(frame)) // 2 * 7 + 1_000
    assert "sequence" in _refused(tmp_path, frame, "ref_seq")


def test_a_numeric_id_listed_in_features_is_the_users_choice(tmp_path):
    frame = _credit()
    frame["id"] = range(len(frame))
    files = _files(tmp_path, {"bank": frame})
    data = load_institution(DataSpec(source="files", files=files, features=["id", "income", "age"]), "bank", SEED)
    assert "id" in data.columns.numeric


@pytest.mark.parametrize("column,make", [
    ("email", lambda i: f"customer.{i}@example.com"),
    ("tel", lambda i: f"+44 20 {7000 + i:04d} {i % 1000:04d}"),
    ("card_no", lambda i: f"4111 {i:04d} {i % 97:04d} {i % 89:04d}"),
])
def test_text_identifiers_are_refused_even_when_values_repeat(tmp_path, column, make):
    frame = _credit()
    frame[column] = [make(i // 4) for i in range(len(frame))]  # four rows per customer: 25 % distinct
    assert "shaped like" in _refused(tmp_path, frame, column)


def test_ordinary_columns_are_not_identifiers(tmp_path):
    frame = _credit()
    frame["applied_on"] = pd.date_range("2024-01-01", periods=len(frame), freq="h").strftime("%Y-%m-%d")
    frame["branch"] = np.random.default_rng(2).choice(["North", "South", "East"], len(frame))
    files = _files(tmp_path, {"bank": frame})
    data = load_institution(DataSpec(source="files", files=files, drop=["applied_on"]), "bank", SEED)
    assert "branch" in data.columns.categorical and "income" in data.columns.numeric


def test_upper_case_transaction_id_is_dropped_by_the_default_list(tmp_path):
    from fedrisk.generators import fraud
    frame = fraud.generate_issuer(0, 3, 300, 200, 40, SEED, "none", 0.0, 0, 0).drop(columns=fraud.LABEL_DERIVED)
    files = _files(tmp_path, {"bank": frame.rename(columns=str.upper)})
    config = load_config(None, {"task": "fraud", "data.source": "files", "data.files": files})
    data = load_institution(config.data, "bank", SEED)
    assert "transaction_id" not in data.columns.features


def test_a_numeric_card_number_repeated_per_customer_is_refused(tmp_path):
    from fedrisk.generators import fraud
    frame = fraud.generate_issuer(0, 3, 300, 200, 40, SEED, "none", 0.0, 0, 0).drop(columns=fraud.LABEL_DERIVED)
    frame["card_no"] = frame["customer_id"] * 7919 + 4_000_000_000_000_000
    files = _files(tmp_path, {"bank": frame})
    config = load_config(None, {"task": "fraud", "data.source": "files", "data.files": files})
    with pytest.raises(FedriskInputError) as err:
        load_institution(config.data, "bank", SEED)
    assert err.value.column == "card_no"


def test_a_phone_number_repeated_per_customer_is_refused_by_name_or_length(tmp_path):
    frame = _credit()
    owner = np.arange(len(frame)) // 3
    frame["mobile"] = 447_700_000_000 + owner
    _refused(tmp_path, frame, "mobile")
    frame = frame.rename(columns={"mobile": "contact"})
    assert "phone, card or account number" in _refused(tmp_path, frame, "contact")


# ------------------------------------------------------------ trap 4: freshness from the data's own dates


def _dated(frame: pd.DataFrame, start: str) -> pd.DataFrame:
    out = frame.copy()
    out["applied_on"] = pd.date_range(start, periods=len(out), freq="h").strftime("%Y-%m-%d")
    return out


def test_a_date_column_is_detected_and_used_for_freshness(tmp_path):
    from fedrisk.data import quality_card
    files = _files(tmp_path, {"bank": _dated(_credit(), "2005-04-01")})  # written today, dated 2005
    spec = DataSpec(source="files", files=files)
    data = load_institution(spec, "bank", SEED)
    assert "applied_on" not in data.columns.features
    assert data.quality["basis"] == "column applied_on (detected)"
    card = quality_card(spec, data.quality)
    assert card["dimensions"]["freshness"]["score"] == 0.0 and not card["passed"]
    from fedrisk.data_quality import exclusion_reason
    reason = exclusion_reason("bank", files["bank"], card)
    assert "data.quality.as_of" in reason and "data.quality.max_age_days" in reason
    then = DataSpec(source="files", files=files, quality={"as_of": "2005-12-31"})
    assert quality_card(then, load_institution(then, "bank", SEED).quality)["passed"]


def test_the_file_date_is_a_last_resort_and_says_so(tmp_path):
    from fedrisk.data import quality_card
    files = _files(tmp_path, {"bank": _credit()})
    spec = DataSpec(source="files", files=files)
    card = quality_card(spec, load_institution(spec, "bank", SEED).quality)
    detail = card["dimensions"]["freshness"]["detail"]
    assert "file modification date" in detail and "data.quality.date_column" in detail


def test_a_date_of_birth_is_never_the_records_date_nor_an_input(tmp_path):
    frame = _dated(_credit(), "2025-01-01")
    frame["date_of_birth"] = pd.date_range("1950-01-01", periods=len(frame), freq="D").strftime("%d/%m/%Y")
    files = _files(tmp_path, {"bank": frame})
    with pytest.raises(FedriskInputError) as err:
        load_institution(DataSpec(source="files", files=files), "bank", SEED)
    assert err.value.column == "date_of_birth" and "data.drop" in err.value.one_line()
    data = load_institution(DataSpec(source="files", files=files, drop=["date_of_birth"]), "bank", SEED)
    assert data.quality["basis"] == "column applied_on (detected)"


def test_two_record_dates_are_not_guessed_between(tmp_path):
    frame = _dated(_credit(), "2025-01-01")
    frame["decided_on"] = frame["applied_on"]
    files = _files(tmp_path, {"bank": frame})
    with pytest.raises(FedriskInputError, match="data.quality.date_column"):
        load_institution(DataSpec(source="files", files=files), "bank", SEED)
    data = load_institution(DataSpec(source="files", files=files, drop=["decided_on"],
                                     quality={"date_column": "applied_on"}), "bank", SEED)
    assert data.quality["basis"] == "column applied_on"


def test_amounts_in_whole_units_are_not_identifiers(tmp_path):
    """A bill amount distinct on nearly every row of a small file is still an amount (negatives, wide spread)."""
    from fedrisk.identifiers import numeric_identifier
    amounts = pd.Series(np.random.default_rng(0).normal(50_000, 500_000, 3000).round())
    assert amounts.nunique() / len(amounts) > 0.98 and numeric_identifier(amounts, "bill_amt1") is None
    assert numeric_identifier(amounts.abs() + 1, "bill_amt1") is None  # positive, but spread like an amount


def test_a_rule_on_a_metric_the_task_does_not_log_is_a_config_error(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("name: typo\nrules:\n  - {metric: aucc, comparator: '>=', threshold: 0.7, severity: block}\n")
    with pytest.raises(FedriskInputError, match=r"rule 1 \(aucc >= 0.7, block\) names a metric this campaign"):
        load_config(None, {"gate.policy": str(path)})
    path.write_text("name: f\nrules:\n  - {metric: precision_top30_per_day, comparator: '>=', threshold: 0.1, "
                    "severity: block}\n")
    with pytest.raises(FedriskInputError, match="precision_top30_per_day"):  # a fraud metric judging credit
        load_config(None, {"gate.policy": str(path), "data.protected": []})


def test_the_metrics_a_rule_may_name_are_those_a_run_logs():
    """`task_metrics` against the pinned names of real runs (tests/data/run_names.json)."""
    import json

    from fedrisk.run_schema import task_metrics
    pinned = json.loads((Path(__file__).parent / "data" / "run_names.json").read_text())
    params = {"credit": {"threshold": 0.2, "max_fpr": 0.1, "k": 30}, "fraud": {"threshold": 0.2, "max_fpr": 0.01, "k": 30}}
    for task, names in pinned.items():
        logged = {m[len("test_"):].replace(".<institution>", "") for m in names["metrics"] if m.startswith("test_")}
        pooled = {m for m in logged if "." not in m.replace("_0.", "_0") and not m.endswith("_noise_sd")}
        assert task_metrics(task, **params[task]) == pooled


# ------------------------------------------------------------ found by an adversarial review of the above


def _load(tmp_path: Path, frame: pd.DataFrame, suffix: str = ".csv", **spec):
    path = tmp_path / f"bank{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    return load_institution(DataSpec(source="files", files={"bank": str(path)}, **spec), "bank", SEED)


def _small(rows: int = 1000) -> pd.DataFrame:
    return _credit(2 * rows).head(rows).reset_index(drop=True)


RNG = np.random.default_rng(11)
IDENTIFIERS = {  # column -> values (1,000 rows): each must be refused as an input
    "customer id": lambda n: RNG.choice(RNG.choice(9_000_000, 500, replace=False) + 1_000_000, n),
    "cif": lambda n: RNG.choice(RNG.choice(9_000_000, 500, replace=False) + 1_000_000, n),
    "loan.id": lambda n: np.arange(n) + 5_000_000,
    "ref": lambda n: np.where(RNG.random(n) < 0.06, 1_234_567, RNG.choice(9_000_000, n, replace=False) + 1_000_000),
    "x": lambda n: RNG.choice(RNG.choice(900_000_000, 300, replace=False) + 100_000_000, n),  # 9-digit phones
    "birthdate": lambda n: RNG.integers(1950, 2000, n) * 10_000 + RNG.integers(1, 13, n) * 100 + RNG.integers(1, 28, n),
}
TEXT_DATES = {
    "issue_d": lambda n: RNG.choice(["Jan-2018", "Feb-2018", "Mar-2018", "Dec-2017"], n),
    "app_date_us": lambda n: [f"{m}/{d}/18" for m, d in zip(RNG.integers(1, 13, n), RNG.integers(1, 29, n))],
    "app_date_text": lambda n: [f"{d} March 2018" for d in RNG.integers(1, 29, n)],
}


@pytest.mark.parametrize("column", sorted(IDENTIFIERS))
def test_more_identifiers_and_dates_are_refused(tmp_path, column):
    frame = _small()
    frame[column] = IDENTIFIERS[column](len(frame))
    with pytest.raises(FedriskInputError) as err:
        _load(tmp_path, frame)
    assert err.value.column == column, err.value.one_line()


@pytest.mark.parametrize("column", sorted(TEXT_DATES))
def test_dates_in_any_common_writing_are_the_records_date_not_an_input(tmp_path, column):
    frame = _small()
    frame[column] = TEXT_DATES[column](len(frame))
    data = _load(tmp_path, frame, quality={"as_of": "2018-06-30"})
    assert column not in data.columns.features and data.quality["basis"] == f"column {column} (detected)"
    frame["decided"] = frame[column]  # a second date: not guessed between, and never an input
    with pytest.raises(FedriskInputError, match="2 date columns"):
        _load(tmp_path, frame)


def _rupiah(n: int) -> np.ndarray:
    return np.exp(RNG.uniform(np.log(1e6), np.log(1e9), n)).round()


ORDINARY = {  # column -> values (1,000 rows): each must load as an input
    "loan_amount_idr": _rupiah,
    "income_idr": lambda n: (_rupiah(n) / 1000).round() * 1000,
    "phone_calls": lambda n: RNG.integers(0, 60, n),
    "branch_id": lambda n: RNG.integers(1, 41, n),
    "credit_score": lambda n: RNG.integers(300, 851, n),
    "balance": lambda n: np.sort(RNG.integers(0, 10**6, n)),
    "loan_term": lambda n: RNG.choice([12, 24, 36, 60], n),
    "year": lambda n: RNG.integers(2015, 2025, n),
    "days_id_publish": lambda n: RNG.integers(-6000, 0, n),
}


@pytest.mark.parametrize("column", sorted(ORDINARY))
def test_ordinary_risk_columns_stay_inputs(tmp_path, column):
    frame = _small()
    frame[column] = ORDINARY[column](len(frame))
    assert column in _load(tmp_path, frame).columns.features


def test_group_rules_keep_the_groups_spelling():
    rule = Rule(metric="Approval_Rate.SEX:F", comparator=">=", threshold=0.3, severity="block")
    assert rule.metric == "approval_rate.sex:F"
    policy = Policy(name="p", rules=[rule])
    assert apply_policy(policy, {"test_approval_rate.sex:F": 0.4}, ["a"]).verdict == "pass"


def test_a_look_alike_header_is_refused(tmp_path):
    frame = _small().rename(columns={"sex": "s\u0435x"})  # Cyrillic e
    with pytest.raises(FedriskInputError, match="mixes Cyrillic and Latin letters"):
        _load(tmp_path, frame)


@pytest.mark.parametrize("values", [[np.array([1, 2])] * 1000, np.ones(1000, dtype=np.float16)])
def test_odd_parquet_columns_are_one_line_or_read(tmp_path, values):
    frame = _small()
    frame["odd"] = list(values) if isinstance(values, list) else values
    try:
        data = _load(tmp_path, frame, ".parquet")
    except FedriskInputError as err:
        assert err.column == "odd" and "\n" not in err.one_line()
    else:
        assert "odd" in data.columns.features


def test_inspect_survives_the_largest_double_and_proposes_the_real_target(tmp_path):
    frame = _small()
    frame["income"] = frame["income"].astype(float)
    frame.loc[3, "income"] = 1.7976931348623157e308
    frame["prior_default"] = (RNG.random(len(frame)) < 0.1).astype(int)
    frame["code_gender"] = frame["sex"]
    frame = frame.drop(columns=["sex"])
    frame["delinq_2yrs"] = RNG.integers(0, 5, len(frame))
    path = tmp_path / "bank.csv"
    frame.to_csv(path, index=False)
    from fedrisk.inspection import inspect_file
    proposal, text = inspect_file(str(path))
    assert proposal.spec["target"] == "default" and "prior_default" in text.split("target:")[1].splitlines()[0]
    assert "code_gender" in proposal.spec["protected"]
    assert "delinq_2yrs" not in proposal.spec["categorical"]
    assert proposal.spec["quality"]["ranges"]["income"][1] <= 1e15


def test_a_rule_may_judge_the_bound_of_an_interval(tmp_path):
    path = tmp_path / "bounds.yaml"
    path.write_text("name: b\nrules:\n  - {metric: auc_ci_low, comparator: '>=', threshold: 0.7, severity: block}\n"
                    "  - {metric: approval_rate_difference.sex_ci_high, comparator: '<=', threshold: 0.05, "
                    "severity: block}\n")
    assert load_config(None, {"gate.policy": str(path), "data.protected": ["sex"]}).gate.policy == str(path)
