"""The global model as an MLflow pyfunc: input columns in, probability of the positive class out.

The preprocessing travels with the weights, so a validator can score a DataFrame with
`mlflow.pyfunc.load_model(uri).predict(frame)`: a credit model's raw columns, a fraud model's
look-back features. Raw rows of both tasks, card transactions included: `fedrisk score`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from fedrisk.columns import canonical_name
from fedrisk.config import ModelSpec
from fedrisk.models import build_model, predict_proba
from fedrisk.preprocessing import Preprocessor

# The fraud inputs an issuer computes from its history (`fedrisk.transaction_features`,
# `fedrisk.consortium_features`): never columns of a raw transaction.
ENGINEERED = re.compile(r"^(tx_during_(weekend|night)|(consortium_)?terminal_(nb_tx|risk)_\d+d"
                        r"|customer_(nb_tx|avg_amount)_\d+d)$")


class RiskModel(mlflow.pyfunc.PythonModel):
    """Loads preprocessing + torch weights saved by `save_model_files`."""

    def load_context(self, context: Any) -> None:
        meta = json.loads(Path(context.artifacts["model_spec"]).read_text())
        self.preprocessor = Preprocessor.from_json(
            Path(context.artifacts["preprocessor"]).read_text()
        )
        self.model = build_model(ModelSpec(**meta["model"]), self.preprocessor.width, 0)
        self.model.load_state_dict(torch.load(context.artifacts["weights"], weights_only=True))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> np.ndarray:
        """Per row of `model_input` (raw columns, names in any case), the probability of default for a
        credit model, of fraud for a card-fraud model (whose inputs are engineered: `fedrisk score`)."""
        model_input = model_input.rename(columns=lambda c: canonical_name(str(c)))
        try:
            x = self.preprocessor.transform(model_input)
        except KeyError as err:
            missing = [c for c in self.preprocessor.input_columns if c not in model_input.columns]
            if any(ENGINEERED.match(c) for c in missing):  # a fraud model given raw transactions
                raise ValueError(f"{err.args[0]}: this fraud model's inputs are look-back features computed from "
                                 "the issuer's history; score raw transactions with `fedrisk score MODEL_URI DATA "
                                 "--history FILE`") from None
            raise ValueError(err.args[0]) from None
        return predict_proba(self.model, torch.as_tensor(x)).numpy()


def save_model_files(
    folder: Path, state: dict[str, torch.Tensor], preprocessor: Preprocessor, spec: ModelSpec,
    reference: dict[str, Any] | None = None, transactions: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The model's files; `reference` (drift deciles and validation metrics) travels with it, and
    for fraud `transactions`, what `fedrisk score` needs to compute the look-back features
    (`fedrisk.scoring.transaction_spec`)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "weights": folder / "weights.pt",
        "preprocessor": folder / "preprocessor.json",
        "model_spec": folder / "model_spec.json",
    }
    torch.save(state, paths["weights"])
    paths["preprocessor"].write_text(preprocessor.to_json())
    paths["model_spec"].write_text(json.dumps({"model": spec.model_dump()}))
    if reference is not None:
        paths["reference"] = folder / "reference.json"
        paths["reference"].write_text(json.dumps(reference))
    if transactions is not None:
        paths["transactions"] = folder / "transactions.json"
        paths["transactions"].write_text(json.dumps(transactions))
    return {k: str(v) for k, v in paths.items()}


@contextmanager
def _downloaded(model_uri: str, tracking_uri: str | None) -> Iterator[Path]:
    """A logged model's files, by any MLflow URI, looked up in `tracking_uri` (default: the current one)."""
    import tempfile

    import mlflow.artifacts

    previous = mlflow.get_tracking_uri()
    if tracking_uri:  # a logged model's id (models:/m-...) is looked up in the current store
        mlflow.set_tracking_uri(tracking_uri)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=tmp, tracking_uri=tracking_uri, registry_uri=tracking_uri))
    finally:
        mlflow.set_tracking_uri(previous)


def read_model(model_uri: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Weights, preprocessing, model spec and drift reference (None if absent) of a logged
    fedrisk model, by any MLflow URI, looked up in `tracking_uri` (default: the current one)."""
    with _downloaded(model_uri, tracking_uri) as root:
        return _read_files(root / "artifacts")


def model_digest(model_uri: str, tracking_uri: str | None = None) -> str:
    """SHA-256 over every file of a logged model (names and bytes): what an approval vouches for."""
    digest = hashlib.sha256()
    with _downloaded(model_uri, tracking_uri) as root:
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            name = file.relative_to(root).as_posix().encode()
            digest.update(len(name).to_bytes(8, "big") + name)
            data = file.read_bytes()
            digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def _read_files(root: Path) -> dict[str, Any]:
    reference, transactions = root / "reference.json", root / "transactions.json"
    return {
        "state": torch.load(root / "weights.pt", weights_only=True),
        "preprocessor": Preprocessor.from_json((root / "preprocessor.json").read_text()),
        "spec": ModelSpec(**json.loads((root / "model_spec.json").read_text())["model"]),
        "reference": json.loads(reference.read_text()) if reference.is_file() else None,
        "transactions": json.loads(transactions.read_text()) if transactions.is_file() else None,
    }


def load_model_files(model_uri: str, tracking_uri: str | None = None) -> tuple[dict[str, torch.Tensor], Preprocessor, ModelSpec]:
    """Weights, preprocessing and model spec of a logged fedrisk model."""
    model = read_model(model_uri, tracking_uri)
    return model["state"], model["preprocessor"], model["spec"]


def load_reference(model_uri: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The drift reference stored with a fedrisk model."""
    reference = read_model(model_uri, tracking_uri)["reference"]
    if reference is None:
        raise FileNotFoundError(f"model {model_uri} carries no drift reference (logged before monitoring existed)")
    return reference
