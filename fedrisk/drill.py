"""Poisoning drills: one simulated institution attacks the campaign, so that the consortium can
measure what its defences (`training.strategy`, `training.robust`) hold against.

The attacker's node trains as usual (the same ledger charge, the same DP-SGD) and then lies:
on its labels before training (label_flip, group_relabel) or in its reply after it (scale,
sign_flip, nan, inflate_count); or its replies are lost in some rounds (dropout: the server
drops them on arrival, as if they had not come within the round's timeout: a node made to
sleep instead would hold one of the simulation's few workers and stall the others). A
deployed node refuses any campaign carrying a drill.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch

from fedrisk.config import CampaignConfig, Drill
from fedrisk.errors import FedriskInputError


def of(config: CampaignConfig, name: str) -> Drill | None:
    """The drill this institution plays the attacker in, if any."""
    return config.drill if config.drill is not None and name in config.drill.institutions else None


def drops(drill: Drill | None, name: str, server_round: int, seed: int) -> bool:
    """Whether this institution's reply is lost this round (a dropout drill: the server treats it
    as never having come, as after `training.round_timeout`): a fixed draw per seed,
    institution and round, `drill.rate` of the rounds on average."""
    if drill is None or drill.attack != "dropout":
        return False
    digest = hashlib.sha256(f"{seed}/{name}/{server_round}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < drill.rate


def refuse_deployed(config: CampaignConfig, name: str, deployed: bool) -> None:
    """A real institution never plays an attacker, whoever sent the campaign."""
    if deployed and config.drill is not None:
        raise FedriskInputError("the campaign carries a poisoning drill (drill:), which runs in simulation only",
                                institution=name)


def labels(drill: Drill | None, y: np.ndarray, frame: pd.DataFrame, name: str) -> np.ndarray:
    """The labels the attacker trains on."""
    if drill is None or drill.attack not in ("label_flip", "group_relabel"):
        return y
    if drill.attack == "label_flip":
        return (1.0 - y).astype(y.dtype)
    column, value = drill.group.split("=")
    if column not in frame.columns:
        raise FedriskInputError(f"drill.group: no column '{column}' in the training rows", institution=name,
                                column=column)
    return np.where(frame[column].astype(str).to_numpy() == value, 1.0, y).astype(y.dtype)


def update(drill: Drill | None, received: dict[str, torch.Tensor],
           trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights the attacker sends back."""
    if drill is None or drill.attack not in ("scale", "sign_flip", "nan"):
        return trained
    if drill.attack == "nan":
        return {k: torch.full_like(v, float("nan")) for k, v in trained.items()}
    factor = drill.factor if drill.attack == "scale" else -1.0
    return {k: received[k] + factor * (v - received[k]) for k, v in trained.items()}


def weight(drill: Drill | None, weight: float) -> float:
    """The aggregation weight the attacker claims."""
    return weight * drill.factor if drill is not None and drill.attack == "inflate_count" else weight
