"""Where an institution's rows come from: the built-in generators, its own file, a column
naming the institution, or (for simulation) a seeded split of one file.

Each function returns one institution's raw rows only; checks and features come later.
"""

from __future__ import annotations

import codecs
import csv
import errno
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedrisk.columns import canonical_name, mixed_scripts
from fedrisk.config import DataSpec, Drift, check_institution_name
from fedrisk.errors import FedriskInputError
from fedrisk.generators import credit, fraud


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


CSV_SUFFIXES = {".csv", ".txt"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
# a one-column header holding one of these is a file written with another separator
OTHER_SEPARATORS = {";": "semicolon", "\t": "tab", "|": "'|'"}
BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),  # before UTF-16: same first bytes
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


def canonical_columns(names: list[object], where: dict[str, str | None]) -> list[str]:
    """The canonical names of a header; two columns of one name, in any spelling, are refused:
    pandas would silently keep both (renaming one "a.1") and either could be taken for the other."""
    seen: dict[str, str] = {}
    out = []
    for position, name in enumerate(names, start=1):
        key = canonical_name(name)
        scripts = mixed_scripts(key)
        if scripts:  # a look-alike of another column's name (Cyrillic 'е' in 'sеx'): never guessed at
            raise FedriskInputError(f"the name mixes {' and '.join(s.title() for s in scripts)} letters (a look-alike?): "
                                    "write it in one alphabet", column=str(name), **where)
        if not key:
            raise FedriskInputError(f"column {position} has no name (a row index saved with the rows? "
                                    "save the file without it)", **where)
        if key in seen:
            first = seen[key]
            reason = ("appears twice in the header" if first == str(name) else
                      f"same name as column '{first}' (column names ignore case and surrounding spaces)")
            raise FedriskInputError(reason, column=str(name), **where)
        seen[key] = str(name)
        out.append(key)
    return out


def _encoding(file: Path) -> str:
    """UTF-16 or UTF-32 when the file starts with their byte-order mark, else UTF-8 (its BOM, if
    any, dropped: Excel's "CSV UTF-8" writes one)."""
    with file.open("rb") as handle:
        start = handle.read(4)
    return next((name for bom, name in BOMS if start.startswith(bom)), "utf-8-sig")


def _blank(row: list[str]) -> bool:
    """An empty or whitespace-only line: pandas skips it too (",," is a row)."""
    return len(row) <= 1 and not (row and row[0].strip())


def _csv_header(file: Path, encoding: str, where: dict[str, str | None]) -> list[str]:
    """The header as written, after one pass over the rows: pandas would silently fill a short
    row with missing values, and shift a long one into an index when it is the first."""
    with file.open(newline="", encoding=encoding) as handle:
        reader = csv.reader(handle)
        header = next((row for row in reader if not _blank(row)), None)
        if header is None:
            raise FedriskInputError("empty file (only blank lines)", **where)
        if len(header) == 1:
            for separator, label in OTHER_SEPARATORS.items():
                if separator in header[0]:
                    raise FedriskInputError(
                        f"the header is one column holding {label}s: a {label}-separated file? fedrisk reads "
                        "comma-separated CSV: save it with ',' between fields and '.' as the decimal mark", **where)
        rows = 0
        for row in reader:
            if _blank(row):
                continue
            if len(row) != len(header):
                raise FedriskInputError(f"line {reader.line_num} has {len(row)} fields, the header has "
                                        f"{len(header)}", **where)
            rows += 1
    if rows == 0:
        raise FedriskInputError("no rows (a header only)", **where)
    return header


def _read_csv(file: Path, where: dict[str, str | None]) -> pd.DataFrame:
    encoding = _encoding(file)
    try:
        header = _csv_header(file, encoding, where)
    except UnicodeDecodeError:
        shown = "UTF-8" if encoding == "utf-8-sig" else encoding.upper()
        raise FedriskInputError(f"not {shown} text: save it as CSV UTF-8", **where) from None
    except csv.Error as exc:
        raise FedriskInputError(f"cannot read file: {exc}", **where) from None
    columns = canonical_columns(header, where)  # before pandas: it would rename a duplicate
    frame = pd.read_csv(file, encoding=encoding)
    if len(frame.columns) != len(columns):  # the two parsers disagree: refuse, never guess
        raise FedriskInputError(f"cannot read file: {len(frame.columns)} columns read, the header has "
                                f"{len(columns)}", **where)
    frame.columns = columns
    return frame


def _read_parquet(file: Path, where: dict[str, str | None]) -> pd.DataFrame:
    import pyarrow.parquet as pq

    canonical_columns(pq.read_schema(file).names, where)  # pyarrow fails obscurely on a duplicate
    frame = pd.read_parquet(file)
    frame.columns = canonical_columns(list(frame.columns), where)
    for column in frame.columns:
        values = frame[column]
        if values.dtype == np.float16:  # pandas cannot group or index half floats
            frame[column] = values.astype(np.float32)
        elif values.dtype == object and values.map(lambda v: isinstance(v, (list, tuple, dict, set, np.ndarray))).any():
            raise FedriskInputError("holds lists or records, not one value per row", column=str(column), **where)
    if len(frame) == 0:
        raise FedriskInputError("no rows", **where)
    return frame


def _check_path(file: Path, where: dict[str, str | None]) -> None:
    """A path that is not a readable, non-empty file, said in words (Python's own errors vary)."""
    try:
        _check_file(file, where)
    except OSError as exc:  # a folder on the way that may not be read, say
        raise FedriskInputError(f"cannot read file: {exc.strerror or type(exc).__name__}", **where) from None


def _check_file(file: Path, where: dict[str, str | None]) -> None:
    if file.is_symlink() and not file.exists():
        try:
            file.stat()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FedriskInputError("a symbolic link that loops", **where) from None
        raise FedriskInputError("a symbolic link to a missing file", **where)
    if not file.exists():
        raise FedriskInputError("data file not found", **where)
    if not file.is_file():
        raise FedriskInputError("not a file", **where)
    if file.stat().st_size == 0:
        raise FedriskInputError("empty file (0 bytes)", **where)


def read_table(path: str | Path, institution: str | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file, failing in one line naming the institution and file.

    Column names come back canonical (`canonical_name`: case-folded, stripped), so a config's
    names match whatever case the file uses; the rows are checked before pandas reads them."""
    file = Path(path)
    where: dict[str, str | None] = {"institution": institution, "file": str(file)}
    _check_path(file, where)
    suffix = file.suffix.lower()
    if suffix not in CSV_SUFFIXES | PARQUET_SUFFIXES:
        raise FedriskInputError(f"unsupported file type '{suffix}' (use .csv or .parquet)", **where)
    try:
        return _read_csv(file, where) if suffix in CSV_SUFFIXES else _read_parquet(file, where)
    except FedriskInputError:
        raise
    except Exception as exc:  # pandas and pyarrow raise many types for unreadable files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FedriskInputError(f"cannot read file: {reason}", **where) from None


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
            **({"sizes": "equal"} if syn.sizes == "equal" else {}),  # skewed consortia keep their fingerprints
        }
        frame = credit.generate_institution(index, syn.institutions, syn.rows, seed, syn.group_bias,
                                            syn.drift.scenario, syn.drift.severity, syn.drift.stream,
                                            equal_sizes=syn.sizes == "equal")
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


