"""Where an institution's rows come from: the built-in generators, its own file, a column
naming the institution, or (for simulation) a seeded split of one file.

Each function returns one institution's raw rows only; checks and features come later.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedrisk.config import DataSpec, Drift, check_institution_name
from fedrisk.errors import FedriskInputError
from fedrisk.generators import credit, fraud


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_table(path: str | Path, institution: str | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file, failing with the institution and file named."""
    file = Path(path)
    if not file.exists():
        raise FedriskInputError("data file not found", institution=institution, file=str(file))
    if not file.is_file():
        raise FedriskInputError("not a file", institution=institution, file=str(file))
    suffix = file.suffix.lower()
    try:
        if suffix in {".csv", ".txt"}:
            return pd.read_csv(file)
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(file)
    except Exception as exc:  # pandas raises many types for unreadable files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FedriskInputError(
            f"cannot read file: {reason}", institution=institution, file=str(file)
        ) from None
    raise FedriskInputError(
        f"unsupported file type '{suffix}' (use .csv or .parquet)",
        institution=institution,
        file=str(file),
    )


def institution_names(spec: DataSpec) -> list[str]:
    """The consortium's members, in the order that maps them to simulation partitions."""
    if spec.source == "synthetic":
        return credit.institution_names(spec.synthetic.institutions)
    if spec.files is not None:
        return sorted(spec.files)
    if spec.partition is not None:
        return credit.institution_names(spec.partition.institutions)
    assert spec.path is not None and spec.institution_column is not None
    frame = read_table(spec.path)
    if spec.institution_column not in frame.columns:
        raise FedriskInputError(
            "institution column missing", file=spec.path, column=spec.institution_column
        )
    values = frame[spec.institution_column]
    if values.isna().any():
        raise FedriskInputError(
            f"{int(values.isna().sum())} rows name no institution",
            file=spec.path,
            column=spec.institution_column,
        )
    names = sorted(values.astype(str).unique())
    for name in names:  # a value of the data: never quoted, never a folder
        try:
            check_institution_name(name, quote=False)
        except FedriskInputError as err:
            raise FedriskInputError(err.detail, file=spec.path, column=spec.institution_column) from None
    return names


def partition_rows(frame: pd.DataFrame, spec: DataSpec, seed: int) -> np.ndarray:
    """Partition index of each row; Dirichlet per class gives size and label skew."""
    assert spec.partition is not None
    k = spec.partition.institutions
    rng = np.random.default_rng([seed, 30_011])
    owner = np.empty(len(frame), dtype=int)
    if spec.transactions is not None:  # a customer's transactions stay with one issuer
        ids = spec.transactions.customer
        if ids not in frame.columns:
            raise FedriskInputError("customer column missing", file=spec.path, column=ids)
        codes, uniques = pd.factorize(frame[ids])
        if (codes < 0).any():
            raise FedriskInputError(f"{int((codes < 0).sum())} rows name no customer",
                                    file=spec.path, column=ids)
        shares = (np.full(k, 1.0 / k) if spec.partition.method == "iid"
                  else rng.dirichlet(np.full(k, spec.partition.alpha)))
        customer_owner = np.minimum(np.searchsorted(np.cumsum(shares), rng.random(len(uniques))), k - 1)
        return customer_owner[codes]
    if spec.partition.method == "iid":
        order = rng.permutation(len(frame))
        owner[order] = np.arange(len(frame)) % k
        return owner
    labels = frame[spec.target].to_numpy()
    for value in pd.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == value))
        shares = rng.dirichlet(np.full(k, spec.partition.alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
        for part, chunk in enumerate(np.split(rows, cuts)):
            owner[chunk] = part
    return owner


def _drift_params(spec: DataSpec) -> dict[str, Any]:
    """A later or shifted window is other data: it gets its own fingerprint (and ledger)."""
    drift = spec.synthetic.drift
    return {} if drift == Drift() else {"drift": drift.model_dump()}


def raw_frame(spec: DataSpec, name: str, names: list[str], seed: int) -> tuple[pd.DataFrame, str, str]:
    """(rows, source description, fingerprint) of one institution, before checks."""
    if spec.source == "synthetic" and spec.transactions is not None:
        syn = spec.synthetic
        params = {"generator": "fraud", "index": names.index(name), "institutions": syn.institutions,
                  "customers": syn.customers, "terminals": syn.terminals, "days": syn.days, "seed": seed,
                  **_drift_params(spec)}
        frame = fraud.generate_issuer(names.index(name), syn.institutions, syn.customers,
                                      syn.terminals, syn.days, seed, syn.drift.scenario, syn.drift.severity,
                                      syn.drift.stream, syn.drift.start_day).drop(columns=fraud.LABEL_DERIVED)
        fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        return frame, "built-in generator", fingerprint
    if spec.source == "synthetic":
        syn = spec.synthetic
        index = names.index(name)
        params = {
            "generator": "credit",
            "index": index,
            "institutions": syn.institutions,
            "rows": syn.rows,
            "seed": seed,
            "group_bias": syn.group_bias,
            **_drift_params(spec),
        }
        frame = credit.generate_institution(index, syn.institutions, syn.rows, seed, syn.group_bias,
                                            syn.drift.scenario, syn.drift.severity, syn.drift.stream)
        fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        return frame, "built-in generator", fingerprint
    if spec.files is not None:
        path = spec.files[name]
        return read_table(path, name), path, _sha256_file(Path(path))
    assert spec.path is not None
    frame = read_table(spec.path, name)
    base = _sha256_file(Path(spec.path))
    if spec.institution_column is not None:
        if spec.institution_column not in frame.columns:
            raise FedriskInputError(
                "institution column missing", institution=name, file=spec.path,
                column=spec.institution_column,
            )
        mine = frame[frame[spec.institution_column].astype(str) == name]
        mine = mine.drop(columns=[spec.institution_column])
        fingerprint = hashlib.sha256(f"{base}:{name}".encode()).hexdigest()
        return mine.reset_index(drop=True), spec.path, fingerprint
    assert spec.partition is not None
    if spec.target not in frame.columns:
        raise FedriskInputError("target column missing", institution=name, file=spec.path,
                                column=spec.target)
    if frame[spec.target].isna().any():  # rows without a label cannot be dealt to anyone
        raise FedriskInputError(
            f"target has {int(frame[spec.target].isna().sum())} missing values",
            institution=name, file=spec.path, column=spec.target,
        )
    owner = partition_rows(frame, spec, seed)
    mine = frame[owner == names.index(name)].reset_index(drop=True)
    part = spec.partition.model_dump_json()
    fingerprint = hashlib.sha256(f"{base}:{name}:{part}:{seed}".encode()).hexdigest()
    return mine, spec.path, fingerprint


