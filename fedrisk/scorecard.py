"""A logistic PD model as a points scorecard, with reason codes per applicant.

Points follow the industry convention: score = offset + factor * ln(good:bad odds), with
factor = PDO / ln 2 and offset fixed so that `base_odds` scores `base_score`. A logistic
model's log-odds are a sum over features, so each feature contributes its own points. Bands
of numeric features are in standard deviations around the federated mean (the shared
preprocessing), so the scorecard uses no one's raw data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from fedrisk.preprocessing import Preprocessor

Z_EDGES = [-1.5, -0.5, 0.5, 1.5]  # band edges in standard deviations
Z_MIDS = [-2.0, -1.0, 0.0, 1.0, 2.0]  # points of each band are taken at its middle


@dataclass(frozen=True)
class Scorecard:
    base_score: float
    base_odds: float
    pdo: float
    factor: float
    offset: float
    intercept_points: float
    preprocessor: Preprocessor
    weights: np.ndarray  # per model input (after preprocessing)

    def points_table(self) -> pd.DataFrame:
        """Points per feature band (numeric) or level (categorical)."""
        rows = []
        pre = self.preprocessor
        for j, column in enumerate(pre.numeric):
            edges = [pre.means[j] + z * pre.scales[j] for z in Z_EDGES]
            labels = [f"< {edges[0]:.4g}"] + [f"[{a:.4g}, {b:.4g})" for a, b in zip(edges, edges[1:])] + [f">= {edges[-1]:.4g}"]
            for label, z in zip(labels, Z_MIDS):
                rows.append({"feature": column, "band": label, "points": -self.factor * self.weights[j] * z})
        start = len(pre.numeric)
        for column, vocab in zip(pre.categorical, pre.vocabularies):
            for k, level in enumerate(vocab):
                rows.append({"feature": column, "band": level, "points": -self.factor * self.weights[start + k]})
            start += len(vocab)
        return pd.DataFrame(rows)

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Exact points of each feature for each applicant (no banding)."""
        x = self.preprocessor.transform(frame)
        parts = -self.factor * x * self.weights
        out = {}
        for j, column in enumerate(self.preprocessor.numeric):
            out[column] = parts[:, j]
        start = len(self.preprocessor.numeric)
        for column, vocab in zip(self.preprocessor.categorical, self.preprocessor.vocabularies):
            out[column] = parts[:, start : start + len(vocab)].sum(axis=1)
            start += len(vocab)
        return pd.DataFrame(out, index=frame.index)

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        return self.intercept_points + self.contributions(frame).sum(axis=1).to_numpy()

    def pd_from_score(self, score: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp((np.asarray(score) - self.offset) / self.factor))

    def reason_codes(self, frame: pd.DataFrame, top: int = 3) -> pd.DataFrame:
        """The features that cost each applicant most points against the best attainable."""
        points = self.contributions(frame)
        table = self.points_table()
        best = table.groupby("feature")["points"].max()
        lost = best[points.columns].to_numpy() - points.to_numpy()
        top = min(top, points.shape[1])
        order = np.argsort(-lost, axis=1)[:, :top]
        names = np.asarray(points.columns)[order]
        return pd.DataFrame({f"reason_{i + 1}": names[:, i] for i in range(top)}, index=frame.index)


def build_scorecard(
    state: dict[str, torch.Tensor],
    preprocessor: Preprocessor,
    base_score: float = 600.0,
    base_odds: float = 50.0,
    pdo: float = 20.0,
) -> Scorecard:
    """Scorecard of a logistic model's weights; other models have no additive form."""
    if set(state) != {"0.weight", "0.bias"}:
        raise ValueError("a points scorecard needs a logistic model (model.kind: logistic)")
    weights = state["0.weight"].detach().numpy().reshape(-1).astype(float)
    bias = float(state["0.bias"].detach().numpy().reshape(-1)[0])
    factor = pdo / math.log(2)
    offset = base_score - factor * math.log(base_odds)
    return Scorecard(base_score, base_odds, pdo, factor, offset, offset - factor * bias,
                     preprocessor, weights)
