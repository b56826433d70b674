"""`fedrisk score MODEL DATA [--history FILE] --out scores.csv`: raw rows in, probabilities out.

One path for both tasks (`fedrisk.scoring`): credit applicants score alone; card transactions
get their look-back features from the issuer's own history first. The output holds the row
number (or the `--id` column) and the probability, and no other column of the data.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from fedrisk import model_names
from fedrisk.columns import canonical_name
from fedrisk.errors import FedriskInputError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("score", help="score raw rows with a logged model: credit applicants, or card transactions "
                                     "with their history")
    p.add_argument("model", help=f"{model_names.HELP}, an MLflow model URI, or a model folder")
    p.add_argument("data", help="CSV or Parquet of raw rows (fraud: raw transactions)")
    p.add_argument("--history", help="fraud: the issuer's earlier transactions, with their labels, for the look-back "
                                     "features (default: DATA's first days are the history of the rest)")
    p.add_argument("--table", help="fraud with consortium features: the summed terminal table the issuer's node kept "
                                   "(its home's shared_tables/<campaign>.npy)")
    p.add_argument("--sketch-key", dest="sketch_key", help="fraud with consortium features: the consortium's sketch "
                                                           "key file")
    p.add_argument("--id", dest="id_column", help="a column of DATA naming each row in the output (default: its row "
                                                  "number, from 0)")
    p.add_argument("--out", default="scores.csv")
    p.add_argument("--tracking-uri", dest="tracking_uri", default="sqlite:///mlflow.db",
                   help="the MLflow store of the model (default: sqlite:///mlflow.db, in the current folder)")
    p.set_defaults(func=run)


def load(model_uri: str, tracking_uri: str) -> dict[str, Any]:
    """A logged fedrisk model by name, URI or folder; an unknown one is one line."""
    from fedrisk.serving import read_model

    model_uri = model_names.model_uri(model_uri)

    store = Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None
    if store is not None and not store.is_file():
        if model_uri.split(":", 1)[0] in {"models", "runs"}:
            raise FedriskInputError(f"no MLflow store at {store}: give the store that holds the model with "
                                    "--tracking-uri")
        tracking_uri = None  # a model folder: no store is read (and none is created)
    try:
        return read_model(model_uri, tracking_uri)
    except FedriskInputError:
        raise
    except Exception as exc:  # MLflow raises several types for an unknown model
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FedriskInputError(f"cannot load model {model_uri}: {reason}") from None


def _table(path: str) -> np.ndarray:
    file = Path(path)
    if not file.is_file():
        raise FedriskInputError("no such file", file=path)
    try:
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FedriskInputError(f"not a terminal table (.npy): {str(exc).splitlines()[0]}", file=path) from None


def _sketch_key(path: str) -> bytes:
    from fedrisk.consortium_features import load_key

    if not Path(path).is_file():
        raise FedriskInputError("no such file (the consortium's sketch key)", file=path)
    return load_key(Path(path))


def _column(data: Any, name: str, file: str) -> str:
    """The data's column `--id` names, in any case and spacing (as fedrisk matches column names)."""
    if canonical_name(name) not in data.columns:
        raise FedriskInputError("--id names no column of the data", file=file, column=name)
    return canonical_name(name)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from fedrisk.config import absolute_tracking_uri
    from fedrisk.scoring import Inputs, consortium_needs, score
    from fedrisk.sources import read_table

    out = Path(args.out)
    given = [f for f in (args.data, args.history, args.table, args.sketch_key) if f]
    if any(out.resolve() == Path(f).resolve() for f in given):
        raise FedriskInputError("--out names an input file", file=args.out)
    model = load(args.model, absolute_tracking_uri(args.tracking_uri, Path.cwd()))
    if (args.table or args.sketch_key) and consortium_needs(model) is None:
        raise FedriskInputError("--table and --sketch-key apply to fraud models with consortium features; "
                                f"model {args.model} has none")
    data = read_table(args.data)
    id_column = _column(data, args.id_column, args.data) if args.id_column is not None else None
    inputs = Inputs(data.reset_index(drop=True), args.data,
                    read_table(args.history) if args.history else None, args.history,
                    _table(args.table) if args.table else None, args.table,
                    _sketch_key(args.sketch_key) if args.sketch_key else None)
    scores = score(model, inputs)
    rows = scores.index.to_numpy()
    name, ids = (args.id_column, inputs.data[id_column].to_numpy()[rows]) if id_column else ("row", rows)
    pd.DataFrame({name: ids, "probability": scores.to_numpy()}).to_csv(out, index=False)
    if model.get("transactions") is None:
        print(f"{len(scores)} rows scored; written to {out}")
        return 0
    earlier = len(data) - len(scores)
    history = f", with {len(inputs.history)} earlier transactions of {args.history} as history" if args.history else ""
    own = f", the {earlier} earlier ones of {args.data} used as history only" if earlier else ""
    print(f"{len(scores)} transactions scored{history}{own}; written to {out}")
    return 0
