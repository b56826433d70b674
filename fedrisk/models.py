"""The two model families: logistic regression (a scorecard) and a small MLP."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from fedrisk.config import ModelSpec


def build_model(spec: ModelSpec, input_dim: int, seed: int) -> nn.Module:
    """A model whose output is one logit per row; same seed, same initial weights."""
    torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also queues CUDA seeding, 0.5 ms a call
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


def ablated_probabilities(model: nn.Module, x: torch.Tensor,
                          blocks: Iterable[tuple[slice, torch.Tensor]]) -> Iterator[torch.Tensor]:
    """`predict_proba` of `x` with each block of input columns in turn set to the given values
    (a feature ablated), one tensor per block, in time linear in the inputs' width.

    A model of `build_model` starts with a linear layer: its output is computed once, and each
    block only moves it by (new - old values) times that block's weights; the layers after it do
    not see the width. Recomputing the whole model per block would cost width x width. Other
    models are evaluated in full per block.
    """
    model.eval()
    first = model[0] if isinstance(model, nn.Sequential) and len(model) and isinstance(model[0], nn.Linear) else None
    if first is None:
        for where, values in blocks:
            changed = x.clone()
            changed[:, where] = values
            yield predict_proba(model, changed)
        return
    rest = model[1:]
    with torch.no_grad():  # never around a yield: the caller's grad mode stays its own
        base = first(x)
    for where, values in blocks:
        with torch.no_grad():
            scores = torch.sigmoid(rest(base + (values - x[:, where]) @ first.weight[:, where].T).squeeze(-1))
        yield scores
