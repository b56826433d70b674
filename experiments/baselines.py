"""What the experiments' local baselines share with a campaign, computed without DP noise.

The baselines (pure local training, a model on pooled rows, an issuer alone) run on rows held
in one process, but must be prepared and scored as a campaign would:

- `exact_preprocessor`: the federated preprocessing steps (`fedrisk.preprocessing`): clipping
  bounds from the summed log-grid counts, then clipped sums and category counts, then the
  preprocessor;
- `campaign_grid`: the evaluation grid the server reads from the final model's scores on its
  training rows, counted on the drift reference's fine grid (`fedrisk.metrics.evaluation_grid`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedrisk.columns import Columns
from fedrisk.drift import bin_counts
from fedrisk.guard import REFERENCE_BINS
from fedrisk.metrics import evaluation_grid, logit_edges
from fedrisk.preprocessing import (
    Preprocessor,
    bounds_from_counts,
    fit_preprocessor,
    local_bounds,
    local_statistics,
    merge_statistics,
    schema,
)


def exact_preprocessor(frames: list[pd.DataFrame], columns: Columns) -> Preprocessor:
    """The shared preprocessing of the institutions whose training rows are `frames`, noise-free."""
    counts = [local_bounds(frame, columns) for frame in frames]
    bounds = bounds_from_counts({column: sum(part[column] for part in counts) for column in counts[0]}, 0.0)
    merged = merge_statistics([local_statistics(frame, columns, bounds) for frame in frames])
    return fit_preprocessor(merged, schema(columns), bounds)


def campaign_grid(training_scores: np.ndarray, bins: int, threshold: float | None) -> np.ndarray:
    """The evaluation grid of a model whose scores on its training rows are `training_scores`."""
    fine = logit_edges(REFERENCE_BINS)
    return evaluation_grid(bin_counts(training_scores, fine.tolist()), fine, bins, threshold)
