"""Train, validation and test rows inside one institution: by seed for credit, by time for fraud."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedrisk.columns import DAY
from fedrisk.config import DataSpec
from fedrisk.consortium_features import Calendar, calendar
from fedrisk.data import InstitutionData
from fedrisk.errors import FedriskInputError
from fedrisk.generators import fraud
from fedrisk.lineage import row_hashes


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


def split_institution(data: InstitutionData, spec: DataSpec, seed: int) -> Split:
    """Train, validation and test rows inside one institution (by time for fraud).

    A credit row's part is a function of the row alone (a keyed hash of its values), not of the
    other rows: adding or removing a customer moves no one else, so the parts are disjoint in
    the sense DP needs, and a release about validation rows costs the training rows nothing
    (`fedrisk.ledger`).
    """
    if spec.time_split is not None:
        return split_by_time(data, spec)
    frame = data.frame
    u = row_hashes(frame, list(frame.columns), key=f"{seed % 10**16:016d}") / 2.0**64
    parts = {"validation": u < spec.validation_fraction,
             "test": (u >= spec.validation_fraction) & (u < spec.validation_fraction + spec.test_fraction)}
    parts["train"] = ~(parts["validation"] | parts["test"])
    return _parts(data, {key: parts[key] for key in ("train", "validation", "test")})


def _parts(data: InstitutionData, rows: dict[str, np.ndarray]) -> Split:
    """The split; only an empty training part is refused here. Whether each part holds both
    classes is a question about the data a campaign must not ask a node for free: the local
    check (`check_split`) answers it to the data's owner; at a node, a part without one class
    gives noised metrics of nothing."""
    if not rows["train"].any():
        raise FedriskInputError("no training rows in the campaign's split", institution=data.name, file=data.source)
    return Split(**{key: data.frame[mask].reset_index(drop=True) for key, mask in rows.items()})


def check_split(data: InstitutionData, split: Split) -> None:
    """Each part holds both classes (run where the data's owner reads the answer: preflight)."""
    for key, frame in vars(split).items():
        y = frame[data.columns.target].to_numpy()
        if len(frame) == 0 or len(np.unique(y)) < 2:
            raise FedriskInputError(f"the {key} part holds {len(frame)} rows and {int(y.sum())} positives: both "
                                    "classes needed", institution=data.name, file=data.source,
                                    column=data.columns.target)


def time_windows(spec: DataSpec, last_day: int) -> dict[str, tuple[int, int]]:
    """First and last day (inclusive, days since 1970) of train, validation and test.

    Test ends on `time_split.end` (or the issuer's last day). A label delay separates train
    from validation and validation from test: a model (and its alert threshold) can only
    use frauds already known when it goes live.
    """
    ts, tx = spec.time_split, spec.transactions
    assert ts is not None and tx is not None
    end = (int(np.datetime64(ts.end, "D").astype(np.int64)) if ts.end is not None else last_day)
    test = (end - ts.test_days + 1, end)
    validation = (test[0] - tx.delay_days - ts.validation_days, test[0] - tx.delay_days - 1)
    train_end = validation[0] - tx.delay_days - 1
    return {"train": (train_end - ts.train_days + 1, train_end), "validation": validation, "test": test}


def _shared_end(spec: DataSpec) -> int:
    """The last day of the data every issuer's table follows: `time_split.end`, or the built-in
    simulator's last day; never an issuer's own dates."""
    ts = spec.time_split
    assert ts is not None
    if ts.end is not None:
        return int(np.datetime64(ts.end, "D").astype(np.int64))
    if spec.source == "synthetic":
        synthetic = spec.synthetic
        start = int(np.datetime64(fraud.START.date(), "D").astype(np.int64))
        return start + synthetic.drift.start_day + synthetic.days - 1
    raise FedriskInputError("data.transactions.consortium_features needs data.time_split.end")


def table_calendar(spec: DataSpec) -> Calendar:
    """The shared terminal table's calendar for a campaign, the same at every issuer: from the
    train window's look-back to the test window's end."""
    tx = spec.transactions
    assert tx is not None
    windows = time_windows(spec, _shared_end(spec))
    return calendar(windows["train"][0], windows["test"][1], tx.windows_days, tx.delay_days, tx.sketch_cell_days)


def window_calendar(spec: DataSpec, window_days: int) -> Calendar:
    """The shared table's calendar for a monitoring window of the built-in simulator (a window
    from files has no calendar the issuers share)."""
    tx = spec.transactions
    assert tx is not None
    if spec.source != "synthetic":
        raise FedriskInputError("monitoring a model with consortium features needs windows of the built-in "
                                "simulator: windows from files have no shared calendar (retrain with "
                                "data.transactions.consortium_features: false to monitor them)")
    synthetic = spec.synthetic  # the window's own stream ends here, whatever the training's time_split.end
    end = int(np.datetime64(fraud.START.date(), "D").astype(np.int64)) + synthetic.drift.start_day + synthetic.days - 1
    return calendar(end - window_days + 1, end, tx.windows_days, tx.delay_days, tx.sketch_cell_days)


def split_by_time(data: InstitutionData, spec: DataSpec) -> Split:
    """Train, (delay), validation, (delay), test windows: never a random split for fraud."""
    frame = data.frame
    days = frame[DAY].to_numpy()
    windows = time_windows(spec, int(days.max()))
    return _parts(data, {key: (days >= first) & (days <= last) for key, (first, last) in windows.items()})


def check_history(data: InstitutionData, spec: DataSpec) -> None:
    """Fraud: the data reach back to the train window's first day (a local check, as `check_split`)."""
    days = data.frame[DAY].to_numpy()
    windows = time_windows(spec, int(days.max()))
    if days.min() > windows["train"][0]:
        first, start = np.datetime64(int(days.min()), "D"), np.datetime64(windows["train"][0], "D")
        raise FedriskInputError(f"data start on {first}, but the train window starts on {start}: shorten "
                                "data.time_split or give more history", institution=data.name, file=data.source,
                                column=spec.transactions.timestamp if spec.transactions else None)
