"""`fedrisk inspect`: one institution's file profiled where it is, and a data spec proposed.

Every choice comes with its reason, so the user reviews a proposal rather than trusting a
guess: the target and its base rate, identifiers to drop, integer codes to treat as
categories, protected attributes and the gate rules they activate, the record's date, plausible
ranges (rounded out to powers of ten, so that no customer's value is written down) and, for
fraud, which columns make a transaction. Nothing leaves the machine; the spec is YAML that
`fedrisk simulate` reads as a campaign config once the other institutions' files are added.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fedrisk.checks import LEAK_CHECK_VALUES
from fedrisk.config import TransactionSpec
from fedrisk.data_quality import PLAUSIBLE
from fedrisk.identifiers import numeric_identifier, text_identifier, whole_numbers
from fedrisk.policy import DEFAULT_POLICIES, load_policy
from fedrisk.profile import PERSONAL_DATE, date_columns, is_date_column, record_date_column
from fedrisk.sources import read_table

TARGET_NAMES = re.compile(r"default|target|label|fraud|bad|outcome|churn|class|^y$|arrears|delinq")
EXACT_TARGETS = re.compile(r"^(default|target|label|y|bad|outcome|is_fraud|fraud|tx_fraud|class|default[._ ]payment"
                           r"[._ ]next[._ ]month)$")
EARLIER = re.compile(r"prior|prev|past|hist|flag|ever|last")  # an earlier event, not the outcome to predict
PROTECTED_NAMES = {  # column-name pattern -> the canonical attribute the shipped policy may judge
    "sex": re.compile(r"(^|[^a-z])(sex|gender)([^a-z]|$)"), "age_band": re.compile(r"^age_?(band|group|bucket|range)$"),
    "marital_status": re.compile(r"marital|marriage"), "race": re.compile(r"race|ethnic"),
    "religion": re.compile(r"religio"), "nationality": re.compile(r"nationality|citizenship"),
}
AGE = re.compile(r"^age(_years)?$")
COUNT_NAMES = re.compile(r"(^|[^a-z])(n|nb|num|number|count|cnt|total|open|past|years?|yrs|months?|mths|days?|age|"
                         r"times|dependents?|children|accounts?|acc|delinq\w*|inq\w*|pub|rec|mort|loans?|cards?|"
                         r"products?|held)([^a-z]|$)")
MAX_CODES = 12  # whole numbers with this many distinct values or fewer may be codes
FRAUD_ROLES = {"customer": re.compile(r"customer|card|account|client|pan"),
               "terminal": re.compile(r"terminal|merchant|pos|store|shop|atm"),
               "amount": re.compile(r"amount|amt|value|sum")}


@dataclass
class Proposal:
    """A data spec with the reason for each choice (`notes`, by key path)."""

    task: str
    spec: dict = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _binary(values: pd.Series) -> float | None:
    """The positive rate of a 0/1 (or true/false) column without gaps, else None."""
    if values.isna().any():
        return None
    if pd.api.types.is_bool_dtype(values):
        return float(values.mean())
    if pd.api.types.is_numeric_dtype(values) and set(pd.unique(values)) <= {0, 1} and values.nunique() == 2:
        return float(values.mean())
    return None


def _target(frame: pd.DataFrame, task: str) -> tuple[str | None, str]:
    """The outcome column: a 0/1 column, by name (an exact target name first, an earlier event's
    flag last), with its base rate and the other candidates named."""
    rates = {c: r for c in frame.columns if (r := _binary(frame[c])) is not None}
    if not rates:
        single = [c for c in frame.columns if TARGET_NAMES.search(c) and frame[c].nunique() == 1]
        return None, (f"'{single[0]}' holds one class only: a target needs both 0 and 1" if single else
                      "no 0/1 column: the target must be coded 0/1 (1 = default or fraud)")

    def rank(column: str) -> tuple[int, int]:
        return (bool(EXACT_TARGETS.match(column)), bool(TARGET_NAMES.search(column)) and not EARLIER.search(column))

    chosen = max(rates, key=rank)
    others = ", ".join(f"{c} ({rates[c]:.1%})" for c in rates if c != chosen)
    return chosen, (f"0/1 column, {rates[chosen]:.1%} positive" + (f"; other 0/1 columns: {others} (check which is "
                                                                   "the outcome to predict)" if others else ""))


def _plausible(values: pd.Series) -> list[float | None]:
    """An open range rounded out to powers of ten: plausible, and no customer's value."""
    numbers = values.to_numpy(dtype=float)
    numbers = np.clip(numbers[np.isfinite(numbers)], -PLAUSIBLE, PLAUSIBLE)  # a 1.8e308 sentinel is no bound
    if not len(numbers):
        return [None, None]

    def out(x: float) -> float:
        bound = 0.0 if x == 0 else math.copysign(10.0 ** math.ceil(math.log10(abs(x))), x)
        return int(bound) if abs(bound) >= 1 else bound

    low, high = float(numbers.min()), float(numbers.max())
    return [0 if low >= 0 else out(low), out(high) if high > 0 else 0]


def _gate_rules(task: str) -> dict[str, list[str]]:
    """The shipped policy's rules per protected attribute."""
    out: dict[str, list[str]] = {}
    for rule in load_policy(DEFAULT_POLICIES[task], task).rules:
        base, _, attribute = rule.metric.partition(".")
        if attribute:
            out.setdefault(attribute, []).append(f"{rule.metric} {rule.comparator} {rule.threshold:g} ({rule.severity})")
    return out


def _fraud_roles(frame: pd.DataFrame, skip: set[str], proposal: Proposal) -> set[str]:
    """timestamp, customer, terminal and amount columns of a transaction file."""
    tx: dict[str, str] = {}
    stamps = [c for c in date_columns(frame, skip) if not PERSONAL_DATE.search(c)]
    if stamps:
        tx["timestamp"] = stamps[0]
        proposal.notes["data.transactions.timestamp"] = "dates and times of each transaction"
    for role, pattern in FRAUD_ROLES.items():
        found = [c for c in frame.columns if c not in skip and c not in tx.values() and pattern.search(c)
                 and (role != "amount" or pd.api.types.is_numeric_dtype(frame[c]))]
        if found:
            tx[role] = found[0]
            proposal.notes[f"data.transactions.{role}"] = (
                f"{frame[found[0]].nunique()} distinct ids; used for look-back windows, never leaves" if role != "amount"
                else "numeric amounts")
    defaults = TransactionSpec()
    for role in ("timestamp", "customer", "terminal", "amount"):
        if role not in tx:
            proposal.warnings.append(f"no {role} column recognised: set data.transactions.{role}")
    proposal.spec["transactions"] = {r: tx.get(r, getattr(defaults, r)) for r in ("timestamp", "customer", "terminal",
                                                                                  "amount")}
    return set(tx.values())


def propose(frame: pd.DataFrame, file: str, task: str | None = None) -> Proposal:
    """The proposed data spec of one institution's rows (column names as `read_table` gives them)."""
    if task is None:
        stamped = any(is_date_column(frame[c]) and frame[c].astype(str).str.contains(":").mean() > 0.5
                      for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c]))
        task = "fraud" if stamped and any(FRAUD_ROLES["terminal"].search(c) for c in frame.columns) else "credit"
    proposal = Proposal(task)
    spec = proposal.spec
    spec["source"] = "files"
    spec["files"] = {Path(file).stem.casefold(): str(Path(file).resolve())}
    proposal.notes["data.files"] = "this institution; add one line per institution (name: file)"
    target, why = _target(frame, task)
    if target is None:
        proposal.warnings.append(why)
    else:
        spec["target"] = target
        proposal.notes["data.target"] = why
    used = {target} if target else set()
    if task == "fraud":
        used |= _fraud_roles(frame, used, proposal)

    drop: dict[str, str] = {}
    protected: dict[str, str] = {}
    categorical: dict[str, str] = {}
    ranges: dict[str, list[float | None]] = {}
    rules = _gate_rules(task)
    for column in frame.columns:
        if column in used:
            continue
        values = frame[column]
        attribute = next((a for a, p in PROTECTED_NAMES.items() if p.search(column)), None)
        if attribute is not None and task == "credit":
            judged = rules.get(column)
            protected[column] = ("protected attribute, never a model input; shipped gate rules: " + "; ".join(judged)
                                 if judged else f"protected attribute ({attribute}), never a model input; the shipped "
                                 "gate has no rule on it" + (f" (its rules name '{attribute}': rename the column or "
                                                             "write a policy)" if attribute in rules else ""))
            continue
        if is_date_column(values):
            if PERSONAL_DATE.search(column):
                drop[column] = "a date of birth: personal data, never an input (derive an age band if needed)"
            continue
        reason = (numeric_identifier(values, column) if pd.api.types.is_numeric_dtype(values)
                  else text_identifier(values))
        present = values.dropna()
        if reason is None and not pd.api.types.is_numeric_dtype(values) and len(present) >= 20 \
                and present.nunique() > 0.5 * len(present):
            reason = f"{present.nunique()} distinct values in {len(present)} rows: looks like an identifier"
        if reason is None and target and values.nunique(dropna=False) <= LEAK_CHECK_VALUES and len(frame) >= 200 \
                and frame.groupby(values.to_numpy(), dropna=False)[target].nunique().max() == 1:
            reason = "determines the target exactly: a label leak (e.g. written after the outcome)"
        if reason:
            drop[column] = reason
            continue
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            codes = values.nunique()
            if whole_numbers(values) and codes <= MAX_CODES and not COUNT_NAMES.search(column):
                categorical[column] = (f"{codes} distinct whole numbers: codes naming classes? kept as categories; "
                                       "move to numeric (delete here) if they count or measure something")
            else:
                ranges[column] = _plausible(values)
            if task == "credit" and AGE.match(column) and "age_band" not in frame.columns:
                proposal.warnings.append(
                    f"'{column}' is numeric: the shipped credit gate watches approval_rate_difference.age_band; add "
                    "an age_band column (e.g. <30, 30-49, 50+) to every file, or give gate.policy a policy without it")
        else:
            categorical[column] = f"text, {values.nunique()} distinct values"

    if task == "credit":
        found = record_date_column(frame, used | set(drop))
        if found:
            spec.setdefault("quality", {})["date_column"] = found
            proposal.notes["data.quality.date_column"] = "the record's date: freshness is judged on it"
        else:
            proposal.notes["data.quality"] = ("no single record date found: freshness falls back on the file's "
                                              "modification date; name one in date_column")
        spec["protected"] = list(protected)
        for column, reason in protected.items():
            proposal.notes[f"data.protected.{column}"] = reason
        for attribute in rules:
            if attribute not in protected:
                proposal.warnings.append(f"the shipped {task} gate judges '{attribute}', which this file lacks: "
                                         "add the column, or give gate.policy a policy without those rules")
    spec["drop"] = list(drop)
    for column, reason in drop.items():
        proposal.notes[f"data.drop.{column}"] = reason
    spec["categorical"] = list(categorical)
    for column, reason in categorical.items():
        proposal.notes[f"data.categorical.{column}"] = reason
    if ranges:
        spec.setdefault("quality", {})["ranges"] = ranges
        proposal.notes["data.quality.ranges"] = ("plausible ranges: observed values rounded out to powers of ten; "
                                                 "narrow them to what your data dictionary allows")
    return proposal


def render(proposal: Proposal, file: str, rows: int, columns: int) -> str:
    """The proposal as commented YAML: each choice with its reason."""
    lines = [f"# fedrisk inspect of {file} ({rows} rows, {columns} columns): a proposal, read every line.",
             "# Nothing of the file left this machine; no value of a customer is written here.",
             *(f"# WARNING: {w}" for w in proposal.warnings),
             f"task: {proposal.task}", "data:"]
    _lines(proposal.spec, "data", 1, proposal.notes, lines)
    return "\n".join(lines) + "\n"


def _lines(node: dict, path: str, depth: int, notes: dict[str, str], out: list[str]) -> None:
    pad = "  " * depth
    for key, value in node.items():
        here = f"{path}.{key}"
        note = f"  # {notes[here]}" if here in notes else ""
        if isinstance(value, dict) and value:
            out.append(f"{pad}{_scalar(key)}:{note}")
            _lines(value, here, depth + 1, notes, out)
        elif isinstance(value, list) and value and not all(isinstance(v, (int, float, type(None))) for v in value):
            out.append(f"{pad}{_scalar(key)}:{note}")
            for item in value:
                why = notes.get(f"{here}.{item}")
                out.append(f"{pad}  - {_scalar(item)}" + (f"  # {why}" if why else ""))
        else:
            out.append(f"{pad}{_scalar(key)}: {_scalar(value)}{note}")


def _scalar(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def inspect_file(path: str, task: str | None = None) -> tuple[Proposal, str]:
    """Read one institution's file (as training would) and propose its data spec."""
    frame = read_table(path)
    proposal = propose(frame, path, task)
    return proposal, render(proposal, str(Path(path).resolve()), len(frame), frame.shape[1])
