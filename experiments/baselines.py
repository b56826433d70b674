"""What the experiments' local baselines share with a campaign, computed without DP noise.

The baselines (pure local training, a model on pooled rows, an issuer alone) run on rows held
in one process, but must be prepared and scored as a campaign would: prepared by
`fedrisk.preprocessing.exact_preprocessor` (the campaign's steps without noise) and scored on
`campaign_grid`, the evaluation grid the server reads from the final model's scores on its
training rows, counted on the drift reference's fine grid, with the score's deciles among its
edges (`fedrisk.metrics.evaluation_grid`).
"""

from __future__ import annotations

import numpy as np

from fedrisk.drift import bin_counts, decile_edges
from fedrisk.guard import REFERENCE_BINS
from fedrisk.metrics import evaluation_grid, logit_edges


def campaign_grid(training_scores: np.ndarray, bins: int, threshold: float | None) -> np.ndarray:
    """The evaluation grid of a model whose scores on its training rows are `training_scores`."""
    fine = logit_edges(REFERENCE_BINS)
    counts = bin_counts(training_scores, fine.tolist())  # its last entry counts missing scores
    return evaluation_grid(counts, fine, bins, threshold, keep=decile_edges(counts, fine, 0.0))
