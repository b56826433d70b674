"""The two model families: logistic regression (a scorecard) and a small MLP."""

from __future__ import annotations

import torch
from torch import nn

from fedrisk.config import ModelSpec


def build_model(spec: ModelSpec, input_dim: int, seed: int) -> nn.Module:
    """A model whose output is one logit per row; same seed, same initial weights."""
    torch.manual_seed(seed)
    if spec.kind == "logistic":
        return nn.Sequential(nn.Linear(input_dim, 1))
    layers: list[nn.Module] = []
    width = input_dim
    for hidden in spec.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def predict_proba(model: nn.Module, x: torch.Tensor, batch: int = 65_536) -> torch.Tensor:
    """Probability of the positive class, computed without gradients in large batches."""
    model.eval()
    with torch.no_grad():
        parts = [torch.sigmoid(model(x[i : i + batch]).squeeze(-1)) for i in range(0, len(x), batch)]
    return torch.cat(parts) if parts else torch.zeros(0)
