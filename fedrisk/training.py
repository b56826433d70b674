"""Local training of one institution, with record-level DP through Opacus's PrivacyEngine.

DP-SGD here is Opacus's: Poisson sampling (DPDataLoader), per-sample clipping and Gaussian
noise (DPOptimizer). What the optimizer did (noise, sample rate, steps) is read from the
engine's accountant after training and charged to the institution's ledger, the one
accountant that composes every release (`fedrisk.privacy`). The dataset hands out whole batches by index
(`__getitems__`), so neither path pays for per-row Python collation.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader, Dataset


class TensorBatches(Dataset):
    """Rows of (x, y) tensors; `__getitems__` gathers a batch with one index operation."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.x[index], self.y[index]


def _as_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def batch_loader(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorBatches(torch.as_tensor(x), torch.as_tensor(y, dtype=torch.float32)),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=_as_batch,
        generator=generator,
    )


@dataclass(frozen=True)
class DPSettings:
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float | None = None  # Poisson rate, 1/steps; None: from the rows (`dp_sampling`)


@dataclass
class TrainResult:
    state: dict[str, torch.Tensor]
    examples: int
    steps: int
    mean_loss: float
    seconds: float
    spend: list[tuple[float, float, int]] = field(default_factory=list)  # (noise, sample rate, steps) by Opacus


def dp_sampling(rows: int, batch_size: int) -> tuple[float, int]:
    """(sample rate the accountant is charged, steps per epoch), exactly as Opacus counts.

    Opacus samples each row with probability 1/k (k batches of the plain loader), runs
    int(1/(1/k)) steps, which is k-1 for some k, and charges the accountant 1/steps; the steps
    here are a number Opacus's loader reproduces from that rate.
    """
    batches = math.ceil(rows / min(batch_size, rows))
    steps = int(1 / (1 / batches))
    while int(1 / (1 / steps)) != steps:  # Opacus's loader runs int(1 / rate) steps: a fixed point
        steps -= 1
    return 1.0 / steps, steps


def loss_function(positive_weight: float = 1.0, focal_gamma: float = 0.0) -> Callable:
    """Binary cross-entropy, optionally class-weighted and focal (Lin et al. 2017).

    Both act on each row's loss before Opacus clips per-row gradients, so the privacy
    guarantee is unchanged: clipping bounds every row's influence whatever its weight.
    """
    weight = torch.tensor([positive_weight])
    if focal_gamma == 0.0:
        return nn.BCEWithLogitsLoss(pos_weight=weight)

    def focal(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        bce = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        p = torch.sigmoid(logits)
        p_true = y * p + (1 - y) * (1 - p)
        row_weight = 1 + (positive_weight - 1) * y
        return (row_weight * (1 - p_true) ** focal_gamma * bce).mean()

    return focal


def secure_generator() -> torch.Generator:
    """A generator seeded from the OS: DP noise and sampling must not be reproducible."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float = 0.0,
    dp: DPSettings | None = None,
    proximal_mu: float = 0.0,
    seed: int = 0,
    positive_weight: float = 1.0,
    focal_gamma: float = 0.0,
) -> TrainResult:
    """Train `model` in place from its current weights; DP when `dp` is given.

    FedProx's proximal term is applied as a separate step after each optimiser step; it
    does not touch the data, so it costs no privacy and needs no per-sample gradient.
    `seed` fixes initialisation and non-private shuffling only: with DP, noise and Poisson
    sampling come from the OS's randomness, so no one holding the config can replay them.
    """
    torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also queues CUDA seeding, 0.5 ms a call
    loader = batch_loader(x, y, min(batch_size, len(x)), seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    global_params = [p.detach().clone() for p in model.parameters()]
    trained = model
    engine = None
    if dp is not None:
        # Poisson sampling at the planned rate (from the institution's released row count, so
        # that neither the rate nor the steps reveal the exact one), from the OS's randomness
        rate = dp.sample_rate if dp.sample_rate is not None else dp_sampling(len(x), batch_size)[0]
        loader = DPDataLoader(loader.dataset, sample_rate=rate, collate_fn=_as_batch, generator=secure_generator())
        engine = PrivacyEngine(accountant="rdp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # secure-RNG and empty-batch notices
            trained, optimizer, loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=dp.noise_multiplier,
                max_grad_norm=dp.max_grad_norm,
                poisson_sampling=False,  # the loader samples already
                noise_generator=secure_generator(),
            )
    criterion = loss_function(positive_weight, focal_gamma)
    trained.train()
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Opacus' backward hooks fire on module outputs because inputs need no gradient.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        steps, loss_total = _epochs(trained, model, optimizer, loader, criterion, epochs,
                                    learning_rate, proximal_mu, global_params)
    seconds = time.perf_counter() - start
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = TrainResult(state, len(x), steps, loss_total / max(steps, 1), seconds)
    if engine is not None:
        result.spend = [tuple(h) for h in engine.accountant.history]  # type: ignore[misc]
        if hasattr(trained, "_close"):
            trained._close()
    return result


def _epochs(
    trained: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    criterion: Callable,
    epochs: int,
    learning_rate: float,
    proximal_mu: float,
    anchors: list[torch.Tensor],
) -> tuple[int, float]:
    steps, loss_total = 0, 0.0
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            if len(xb) == 0:  # an empty Poisson batch still takes a (noise-only) step
                loss = trained(xb).sum() * 0.0
            else:
                loss = criterion(trained(xb).squeeze(-1), yb)
            loss.backward()
            optimizer.step()
            if proximal_mu > 0:
                with torch.no_grad():
                    for param, anchor in zip(model.parameters(), anchors):
                        param.sub_(learning_rate * proximal_mu * (param - anchor))
            steps += 1
            loss_total += float(loss.detach())
    return steps, loss_total
