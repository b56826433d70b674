"""Which customer population an institution's data are: a sketch of its rows, kept as lineage.

The ledger is keyed by the institution, never by data, so re-encoding a file cannot reset a
budget. One way around remains where one person holds every institution's data (a
simulation): run the same rows under another institution's name. Each home therefore keeps a
bottom-k sketch of its rows' hashes (order, format, line endings and column order do not
change it; a few changed values barely do), and an institution whose rows mostly are another
institution's is refused, naming whose budget they spend.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fedrisk.errors import FedriskInputError

SKETCH_SIZE = 1024
IDENTIFIERS = ("customer_id", "name", "national_id", "phone", "card_number")  # fedrisk's usual identifier names
SAME_POPULATION = 0.5  # estimated share of shared rows (Jaccard) from which two datasets are one population
LINEAGE_FILE = "lineage.json"


def canonical_rows(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The rows as values, whatever file carried them: columns by name, numbers as floats, text stripped."""
    ordered = sorted(columns, key=str.casefold)
    out = {}
    for column in ordered:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numbers = values.to_numpy(dtype=float)
            with np.errstate(over="ignore", invalid="ignore"):  # 1e308 * 1e9 overflows: such values stay as read
                rounded = np.round(numbers, 9)
            out[column.casefold()] = np.where(np.isfinite(rounded), rounded, numbers)
        else:
            out[column.casefold()] = values.astype("string").str.strip()
    return pd.DataFrame(out)


def population_columns(frame: pd.DataFrame, institution_column: str | None = None) -> list[str]:
    """The columns a sketch covers: every column of the rows as read but the usual identifiers
    and the institution's name; never what a campaign lists (features, drops), which would let a
    campaign choose the sketch."""
    skip = {*IDENTIFIERS, (institution_column or "").casefold()}
    return [c for c in frame.columns if str(c).casefold() not in skip]


def row_hashes(frame: pd.DataFrame, columns: list[str], key: str = "fedrisk-lineage0") -> np.ndarray:
    """A 64-bit hash of every row's canonical values (`key`: 16 characters)."""
    return pd.util.hash_pandas_object(canonical_rows(frame, columns), index=False, hash_key=key).to_numpy()


def sketch(frame: pd.DataFrame, columns: list[str]) -> list[int]:
    """The `SKETCH_SIZE` smallest distinct row hashes: a bottom-k sketch of the row set."""
    return [int(h) for h in np.unique(row_hashes(frame, columns))[:SKETCH_SIZE]]


def similarity(a: list[int], b: list[int]) -> float:
    """Estimated Jaccard similarity of two row sets from their bottom-k sketches."""
    if not a or not b:
        return 0.0
    union = np.unique(np.concatenate([a, b]))[:SKETCH_SIZE]
    return float((np.isin(union, a) & np.isin(union, b)).sum() / len(union))


def record(home: Path, fingerprint: str, rows: list[int]) -> None:
    """Keep the sketch of data this institution released from (lineage only, never a key)."""
    file = home / LINEAGE_FILE
    known = json.loads(file.read_text()) if file.exists() else {}
    if fingerprint not in known:
        known[fingerprint] = {"sketch": rows, "time": time.time()}
        home.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.name + ".tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(file)


_SIBLINGS: dict[Path, tuple[tuple[int, int, int], list[np.ndarray]]] = {}


def _sketches(file: Path) -> list[np.ndarray]:
    """The sketches a sibling home keeps, parsed once per version of its file (a simulation's node
    process admits a thousand institutions, each checked against every other)."""
    try:
        info = file.stat()
        stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        if file not in _SIBLINGS or _SIBLINGS[file][0] != stamp:
            entries = json.loads(file.read_text())
            _SIBLINGS[file] = (stamp, [np.asarray(e.get("sketch", []), dtype=np.uint64) for e in entries.values()])
    except (OSError, ValueError, TypeError, AttributeError, OverflowError):
        return []
    return _SIBLINGS[file][1]


def check_population(home: Path, name: str, rows: list[int], source: str) -> None:
    """Refuse data whose rows are mostly another institution's (its home is a sibling of this one)."""
    mine = np.asarray(rows, dtype=np.uint64)
    for other in sorted(home.parent.glob(f"*/{LINEAGE_FILE}")):
        if other.parent == home:
            continue
        for theirs in _sketches(other):
            # the estimate counts rows of both among the union's smallest (at least the larger sketch):
            # fewer common hashes than half the larger sketch cannot reach SAME_POPULATION
            if len(theirs) == 0 or np.isin(theirs, mine).sum() < SAME_POPULATION * max(len(mine), len(theirs)):
                continue
            shared = similarity(rows, [int(h) for h in theirs])
            if shared >= SAME_POPULATION:
                raise FedriskInputError(
                    f"about {shared:.0%} of these rows are institution {other.parent.name}'s, whose privacy ledger "
                    f"they spend: run them as {other.parent.name}", institution=name, file=source)
