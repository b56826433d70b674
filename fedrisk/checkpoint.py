"""The server's state after each completed round, kept where a resumed campaign finds it.

One file per campaign next to the audit log (`checkpoints/<campaign>.pt`), replaced atomically
after every round: the global model and what the strategy knows (rounds done, exclusions,
each institution's spend, the sampler's state). `fedrisk simulate --resume CAMPAIGN` starts
from it; the institutions answer the requests they already answered from their own homes
(`fedrisk.replay`), so nothing done before the interruption is spent again.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedrisk.config import CampaignConfig
from fedrisk.errors import FedriskInputError


@dataclass(frozen=True)
class Checkpoint:
    server_round: int  # the last completed round
    state: dict[str, torch.Tensor]  # the global model after it
    server: dict[str, Any]  # the strategy's own state (JSON)


def checkpoint_path(config: CampaignConfig, campaign: str) -> Path:
    return Path(config.audit.path).resolve().parent / "checkpoints" / f"{campaign}.pt"


def save(config: CampaignConfig, campaign: str, checkpoint: Checkpoint) -> None:
    path = checkpoint_path(config, campaign)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        torch.save({"round": checkpoint.server_round, "state": checkpoint.state,
                    "server": json.dumps(checkpoint.server)}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load(config: CampaignConfig, campaign: str) -> Checkpoint:
    path = checkpoint_path(config, campaign)
    if not path.is_file():
        raise FedriskInputError(f"campaign {campaign} has no checkpoint: it stopped before its first round ended; "
                                "start it again", file=str(path))
    try:
        saved = torch.load(path, weights_only=True)
        return Checkpoint(int(saved["round"]), dict(saved["state"]), json.loads(saved["server"]))
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError) as exc:
        raise FedriskInputError(f"campaign {campaign}'s checkpoint cannot be read ({type(exc).__name__})",
                                file=str(path)) from None


def remove(config: CampaignConfig, campaign: str) -> None:
    """A campaign that ended needs no checkpoint."""
    checkpoint_path(config, campaign).unlink(missing_ok=True)
