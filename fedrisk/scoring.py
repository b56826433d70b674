"""Raw rows in, probabilities out, for both tasks: what `fedrisk score` runs.

Credit: each applicant alone, its raw columns through the model's preprocessing (the pyfunc's
path). Fraud: a transaction's inputs look back in time (`fedrisk.transaction_features`): the
customer's spending and the terminal's known frauds over the model's windows, shifted back by
its label delay; with consortium features, the consortium's counts at the terminal's bucket of
the campaign's summed table (`fedrisk.consortium_features`). They are computed here from the
issuer's own history with the code training used (`fedrisk.checks.engineer_transactions`),
under the transaction spec stored with the model (`transaction_spec`, `transactions.json`).

It runs where the issuer's data are and sends nothing anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrisk.checks import engineer_transactions, local_timestamps
from fedrisk.columns import DAY, TERMINAL
from fedrisk.config import CampaignConfig, DataSpec, TransactionSpec
from fedrisk.consortium_features import Calendar, check_table, consortium_features, feature_names, kept_table
from fedrisk.errors import FedriskInputError
from fedrisk.models import build_model, predict_proba
from fedrisk.preprocessing import Preprocessor
from fedrisk.serving import ENGINEERED
from fedrisk.transaction_features import window_names

SPEC_FORMAT = 1
SECONDS_A_DAY = 86_400


def transaction_spec(config: CampaignConfig, campaign: str) -> dict[str, Any] | None:
    """What scoring a fraud model's raw transactions needs, stored with the model: the
    transaction columns, windows, label delay and sketch width, the target (the history's
    labels), and with consortium features the campaign's table calendar and where each node
    keeps its table. None for credit: an applicant scores alone."""
    from fedrisk.splits import table_calendar

    tx = config.data.transactions
    if tx is None:
        return None
    spec: dict[str, Any] = {"format": SPEC_FORMAT, "target": config.data.target,
                            "transactions": tx.model_dump(mode="json")}
    if config.consortium_features:
        cal = table_calendar(config.data)
        spec["consortium"] = {"campaign": campaign, "table": kept_table(campaign),
                              "calendar": {"first_day": cal.first_day, "cell_days": cal.cell_days,
                                           "cells": cal.cells}}
    return spec


@dataclass(frozen=True)
class Inputs:
    """The rows to score, and for fraud what their look-back reads: earlier transactions, and
    for consortium features the node's kept table and the consortium's sketch key."""

    data: pd.DataFrame
    data_file: str = "DATA"
    history: pd.DataFrame | None = None
    history_file: str | None = None
    table: np.ndarray | None = field(default=None, repr=False)
    table_file: str | None = None
    sketch_key: bytes | None = field(default=None, repr=False)


def consortium_needs(model: dict[str, Any]) -> dict[str, Any] | None:
    """The stored table settings of a model whose inputs include the consortium's columns."""
    spec = model.get("transactions")
    if spec is None:
        return None
    shared = set(feature_names(spec["transactions"]["windows_days"]))
    if not shared & set(model["preprocessor"].numeric):
        return None
    if "consortium" not in spec:
        raise FedriskInputError("the model has consortium columns but stored no table calendar: retrain it")
    return spec["consortium"]


def score(model: dict[str, Any], inputs: Inputs) -> pd.Series:
    """Probability of the positive class of each scored row of `inputs.data`, indexed by its row
    number there (0 first). Credit: every row. Fraud: every row of `data` when `history` is
    given, else the rows after the first `max(windows) + delay` days (the earlier ones are
    their history). `model` is `fedrisk.serving.read_model`'s."""
    preprocessor: Preprocessor = model["preprocessor"]
    if model.get("transactions") is None:
        frame, rows = _rows_alone(inputs)
    else:
        frame, rows = _transactions(model, inputs)
    x = preprocessor.transform(_model_inputs(frame, preprocessor, inputs.data_file, model.get("transactions")))
    network = build_model(model["spec"], preprocessor.width, 0)
    network.load_state_dict(model["state"])
    return pd.Series(predict_proba(network, torch.as_tensor(x)).numpy(), index=rows, name="probability")


def _rows_alone(inputs: Inputs) -> tuple[pd.DataFrame, np.ndarray]:
    if inputs.history is not None:
        raise FedriskInputError("--history applies to fraud models: this model scores each row alone")
    if inputs.table is not None or inputs.sketch_key is not None:
        raise FedriskInputError("--table and --sketch-key apply to fraud models with consortium features")
    return inputs.data, np.arange(len(inputs.data))


def _model_inputs(frame: pd.DataFrame, preprocessor: Preprocessor, file: str,
                  transactions: dict[str, Any] | None) -> pd.DataFrame:
    """The model's input columns, present and numeric where they must be; one line otherwise."""
    for column in preprocessor.input_columns:
        if column not in frame.columns:
            if transactions is None and ENGINEERED.match(column):
                raise FedriskInputError(
                    "a look-back feature of a fraud model that carries no transaction spec (logged before "
                    "`fedrisk score`): give the engineered columns, or retrain it to score raw transactions",
                    file=file, column=column)
            raise FedriskInputError("model input column missing", file=file, column=column)
    frame = frame.copy()
    for column in preprocessor.numeric:
        values = frame[column]
        if pd.api.types.is_datetime64_any_dtype(values) or pd.api.types.is_timedelta64_dtype(values):
            raise FedriskInputError(f"numeric column holds {values.dtype} values", file=file, column=column)
        numbers = pd.to_numeric(values, errors="coerce")
        bad = int((numbers.isna() & values.notna()).sum())
        if bad:
            raise FedriskInputError(f"numeric column has {bad} non-numeric values", file=file, column=column)
        frame[column] = numbers.astype(float)
    return frame


@dataclass(frozen=True)
class _Part:
    frame: pd.DataFrame  # timestamps parsed, unknown labels as 0
    known: np.ndarray  # the label is known
    file: str


def _part(frame: pd.DataFrame, spec: DataSpec, file: str, history: bool) -> _Part:
    """One file's transactions, checked as training checks them; labels may be missing (the
    newest ones are not known yet), except that a history needs its target column."""
    tx, target = spec.transactions, spec.target
    assert tx is not None
    if len(frame) == 0:
        raise FedriskInputError("no rows", file=file)
    for column, kind in [(tx.timestamp, "timestamp"), (tx.customer, "customer id"),
                         (tx.terminal, "terminal id"), (tx.amount, "amount")]:
        if column not in frame.columns:
            raise FedriskInputError(f"{kind} column missing", file=file, column=column)
    if target not in frame.columns:
        if history:
            raise FedriskInputError("target column missing: the terminal-risk features count the history's "
                                    "known frauds", file=file, column=target)
        frame = frame.assign(**{target: np.nan})
    known = frame[target].notna().to_numpy()
    when = local_timestamps(frame[tx.timestamp], "", file, tx.timestamp)
    if when.isna().any():
        raise FedriskInputError(f"{int(when.isna().sum())} values are missing or not timestamps",
                                file=file, column=tx.timestamp)
    frame = frame.assign(**{tx.timestamp: when, target: frame[target].where(known, 0)})
    engineer_transactions(frame, spec, "", file, both_classes=False)  # ids, amounts, labels: one line each
    return _Part(frame, known, file)


def _transactions(model: dict[str, Any], inputs: Inputs) -> tuple[pd.DataFrame, np.ndarray]:
    stored = model["transactions"]
    tx = TransactionSpec(**stored["transactions"])
    spec = DataSpec(target=stored["target"], transactions=tx, protected=[], drop=[])
    needs = consortium_needs(model)
    table, cal = _consortium_table(needs, inputs, tx) if needs is not None else (None, None)
    if needs is None and (inputs.table is not None or inputs.sketch_key is not None):
        raise FedriskInputError("--table and --sketch-key apply to models with consortium features; this one has none")

    computed = {tx.amount, *window_names(tx.windows_days), *feature_names(tx.windows_days)}
    for column in model["preprocessor"].input_columns:  # the others are DATA's own, never the history's
        if column not in computed and column not in inputs.data.columns:
            raise FedriskInputError("model input column missing", file=inputs.data_file, column=column)
    data = _part(inputs.data, spec, inputs.data_file, history=False)
    parts = [data]
    if inputs.history is not None:
        history = _part(inputs.history, spec, inputs.history_file or "--history", history=True)
        _refuse_twice(history, data, tx)
        parts = [history, data]
    mixed = [c for c in (tx.customer, tx.terminal) if len({str(p.frame[c].dtype) for p in parts}) > 1]
    if mixed:  # 17 in one file, "17" in the other: one id (as the terminal buckets read them)
        parts = [_Part(p.frame.astype(dict.fromkeys(mixed, str)), p.known, p.file) for p in parts]
    combined = pd.concat([p.frame for p in parts], ignore_index=True)
    known = np.concatenate([p.known for p in parts])
    first_data = len(combined) - len(data.frame)
    engineered = engineer_transactions(combined, spec, "", inputs.data_file, both_classes=False,
                                       sketch_key=inputs.sketch_key if needs is not None else None)

    days = engineered[DAY].to_numpy()
    look_back = max(tx.windows_days) + tx.delay_days
    if inputs.history is not None:
        scored = np.arange(len(combined)) >= first_data
        before = int(days[scored].min() - days.min())
        if before < look_back:
            raise FedriskInputError(
                f"{before} days of history before the first transaction scored; the look-back features need "
                f"{look_back} (the {max(tx.windows_days)}-day window and the {tx.delay_days}-day label delay)",
                file=inputs.history_file)
    else:
        scored = days >= days.min() + look_back
        if not scored.any():
            span = int(days.max() - days.min()) + 1
            raise FedriskInputError(
                f"transactions of {span} day{'s' * (span != 1)}: the look-back features need {look_back} "
                "days of history before the first transaction scored; give the earlier transactions with --history",
                file=inputs.data_file)
    seconds = combined[tx.timestamp].to_numpy(dtype="datetime64[s]").astype(np.int64)
    _refuse_unknown_labels(seconds, known, scored, tx, spec.target, parts, first_data)

    frame = engineered[scored].reset_index(drop=True)
    if needs is not None:
        assert table is not None and cal is not None
        _refuse_outside(frame[DAY].to_numpy(), cal, tx, needs, inputs.table_file)
        features = consortium_features(table, cal, frame[DAY].to_numpy(), frame[TERMINAL].to_numpy(),
                                       tx.windows_days, tx.delay_days)
        frame[list(features.columns)] = features.to_numpy()
    return frame, np.flatnonzero(scored) - first_data


def _consortium_table(needs: dict[str, Any], inputs: Inputs, tx: TransactionSpec) -> tuple[np.ndarray, Calendar]:
    if inputs.table is None:
        raise FedriskInputError(
            f"the model reads the consortium's terminal table: give the table your node kept for campaign "
            f"{needs['campaign']} with --table (INSTITUTION_HOME/{needs['table']})")
    if inputs.sketch_key is None:
        raise FedriskInputError("the model reads the consortium's terminal table by terminal bucket: give the "
                                "consortium's sketch key (the file your node reads) with --sketch-key")
    cal = Calendar(**needs["calendar"])
    try:
        return check_table(inputs.table, cal, tx.sketch_width), cal
    except FedriskInputError as err:
        raise FedriskInputError(err.detail, file=inputs.table_file) from None


def _keys(part: _Part, tx: TransactionSpec) -> pd.DataFrame:
    frame = part.frame
    return pd.DataFrame({"t": frame[tx.timestamp], "c": frame[tx.customer].astype(str),
                         "m": frame[tx.terminal].astype(str),
                         "a": pd.to_numeric(frame[tx.amount], errors="coerce").astype(float)})


def _refuse_twice(history: _Part, data: _Part, tx: TransactionSpec) -> None:
    """A transaction in both files would count twice in every look-back."""
    both = _keys(data, tx).merge(_keys(history, tx).drop_duplicates(), on=["t", "c", "m", "a"], how="inner")
    if len(both):
        raise FedriskInputError(f"{len(both)} transactions are also in --history: give each transaction once "
                                "(the earlier ones in --history, or all in DATA without --history)", file=data.file)


def _refuse_unknown_labels(seconds: np.ndarray, known: np.ndarray, scored: np.ndarray, tx: TransactionSpec,
                           target: str, parts: list[_Part], first_data: int) -> None:
    """A label the terminal risk of a scored transaction reads (a transaction in (t - delay -
    window, t - delay]) must be known: a missing one would count as no fraud."""
    if known.all():
        return
    times = np.sort(seconds[scored])
    start = np.searchsorted(times, seconds + tx.delay_days * SECONDS_A_DAY, side="left")  # first t >= s + delay
    limit = seconds + (tx.delay_days + max(tx.windows_days)) * SECONDS_A_DAY
    read = (start < len(times)) & (times[np.minimum(start, len(times) - 1)] < limit)
    needed = ~known & read
    if needed.any():
        file = parts[-1].file if np.flatnonzero(needed)[0] >= first_data else parts[0].file
        raise FedriskInputError(
            f"{int(needed.sum())} transactions older than the {tx.delay_days}-day label delay have no label: the "
            "terminal-risk features count the frauds known by then (give their target values)", file=file,
            column=target)


def _refuse_outside(days: np.ndarray, cal: Calendar, tx: TransactionSpec, needs: dict[str, Any],
                    table_file: str | None) -> None:
    """Every scored transaction's consortium windows inside the table's calendar: outside it the
    table has no counts (they would read as none, or as stale ones)."""
    newest = (days - tx.delay_days - 1 - cal.first_day + 1) // cal.cell_days  # cells known: [0, newest)
    span = math.ceil(max(tx.windows_days) / cal.cell_days)
    late, early = int((newest > cal.cells).sum()), int((newest - span < 0).sum())
    if late:
        covered = np.datetime64(int(cal.last_day + tx.delay_days + cal.cell_days), "D")
        raise FedriskInputError(
            f"{late} transactions are later than the consortium's table of campaign {needs['campaign']} covers "
            f"(transactions up to {covered}): their look-back needs a newer table", file=table_file)
    if early:
        raise FedriskInputError(
            f"{early} transactions look back before the consortium's table of campaign {needs['campaign']} starts "
            f"({np.datetime64(int(cal.first_day), 'D')})", file=table_file)
