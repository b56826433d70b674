"""Fresh institution homes for an experiment's campaigns, and the policies they run under.

A campaign spends its institutions' privacy budgets for life, in their homes (policy and
ledger, `fedrisk.guard`): in a simulation `$FEDRISK_HOME/institutions/<name>`. Each experiment
run therefore points FEDRISK_HOME at a new temporary folder before a campaign that needs
unspent budgets (the Flower simulation's ClientApps, the SuperNodes of a local federation and
`fedrisk` subprocesses read it from the environment). An experiment that asks more than the
shipped default policy allows (a non-DP baseline, a larger epsilon, more histogram bins) writes
the institutions' own policies first, as each institution would.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from fedrisk.guard import DEFAULT_POLICY, HOME_ENV, InstitutionPolicy, homes_root, update_policy

NO_DP = {"privacy.require_dp": False}  # what a non-DP baseline needs of each institution's policy


def default_policy() -> InstitutionPolicy:
    """The shipped default policy, which every fresh home starts from (e.g. the delta at which
    institutions state their epsilon)."""
    return InstitutionPolicy.model_validate(yaml.safe_load(DEFAULT_POLICY.read_text()))


def fresh_homes(institutions: Iterable[str] = (), changes: dict[str, Any] | None = None,
                prefix: str = "fedrisk-homes-") -> Path:
    """Point FEDRISK_HOME at a new, empty folder (every budget unspent) and return it; with
    `changes` (dotted policy keys, e.g. {"privacy.require_dp": False}), write each named
    institution's policy: the shipped default with those changes, validated."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ[HOME_ENV] = str(root)
    if changes:
        for name in institutions:
            update_policy(homes_root() / name, name, changes)
    return root
