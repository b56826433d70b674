"""The institution's guard: its own policy, checked on every message before any data are read.

Each institution has a home folder that only it controls, holding its policy (`policy.yaml`),
its privacy ledger and the lineage of the data it has released from. In a deployment the
SuperNode's node config names it (`home`); in a simulation it is
`$FEDRISK_HOME/institutions/<name>` (default `~/.fedrisk`), never the working directory, so
running from another folder finds the same ledger. A missing policy is created from the
shipped strict default (`fedrisk/defaults/institution_policy.yaml`).

`check_request` compares what a campaign asks with the policy: DP off, more epsilon than
allowed, a delta the institution does not account at, more histogram bins than allowed, a
column it never uses, a message type it does not answer. A breach is refused with one line
naming the rule (`PolicyRefused`); the server excludes the institution and goes on.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from fedrisk.config import CampaignConfig, StrictModel, format_validation_error
from fedrisk.errors import FedriskInputError, PolicyRefused

DEFAULT_POLICY = Path(__file__).resolve().parent / "defaults" / "institution_policy.yaml"
POLICY_FILE = "policy.yaml"
HOME_ENV = "FEDRISK_HOME"
REFERENCE_BINS = 200  # the drift reference's fine score grid (fixed by fedrisk, not by a campaign)


class PrivacyRules(StrictModel):
    lifetime_epsilon: float = Field(gt=0.0, description="cap for the institution's customers, for life")
    delta: float = Field(gt=0.0, lt=1.0, description="every epsilon of this institution is at this delta")
    max_campaign_epsilon: float = Field(gt=0.0, description="what one campaign or monitoring run may spend")
    require_dp: bool = True
    statistics_share: tuple[float, float] = Field(description="accepted share of a campaign's epsilon for statistics")

    @model_validator(mode="after")
    def _ordered(self) -> PrivacyRules:
        low, high = self.statistics_share
        if not 0.0 < low <= high < 1.0:
            raise ValueError("privacy.statistics_share must be [low, high] with 0 < low <= high < 1")
        if self.max_campaign_epsilon > self.lifetime_epsilon:
            raise ValueError("privacy.max_campaign_epsilon cannot exceed privacy.lifetime_epsilon")
        return self


class ReleaseRules(StrictModel):
    min_count: int = Field(ge=1, description="no exact count below this leaves")
    max_bins: int = Field(ge=10, description="no histogram with more bins leaves")


class InstitutionPolicy(StrictModel):
    privacy: PrivacyRules
    release: ReleaseRules
    never_use: list[str] = Field(default_factory=list, description="columns never shared nor used (any case)")
    messages: list[str] = Field(description="message types the institution answers")
    ledger: str = Field("ledger.json", description="its privacy ledger, relative to the policy's folder")


def homes_root() -> Path:
    """Where simulated institutions keep their homes: `$FEDRISK_HOME/institutions`."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".fedrisk").expanduser().resolve() / "institutions"


def institution_home(name: str, node_config: dict[str, Any]) -> Path:
    """The institution's own folder: the node config's `home`, else its simulated home."""
    if "home" in node_config:
        home = Path(str(node_config["home"]))
        if not home.is_absolute():
            raise FedriskInputError("node config home must be an absolute path", institution=name, file=str(home))
        return home
    return homes_root() / name


def load_policy(home: Path, name: str) -> InstitutionPolicy:
    """The institution's policy; the shipped strict default is written there first if it has none."""
    file = home / POLICY_FILE
    if not file.exists():
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEFAULT_POLICY, file)
    try:
        raw = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise FedriskInputError("institution policy is not readable YAML", institution=name, file=str(file)) from None
    try:
        return InstitutionPolicy.model_validate(raw or {})
    except ValidationError as err:
        raise FedriskInputError(format_validation_error(err, "institution policy"), institution=name,
                                file=str(file)) from None


def ledger_path(home: Path, policy: InstitutionPolicy) -> Path:
    path = Path(policy.ledger)
    return path if path.is_absolute() else home / path


def _refuse(name: str, rule: str, why: str) -> PolicyRefused:
    return PolicyRefused(f"refused by its policy ({rule}): {why}", institution=name)


def check_request(policy: InstitutionPolicy, config: CampaignConfig, message_type: str, name: str,
                  *, monitoring: bool = False) -> None:
    """Refuse, before any data are read, a request the institution's policy does not allow."""
    if message_type not in policy.messages:
        raise _refuse(name, "messages", f"it does not answer {message_type} messages")
    rules, privacy = policy.privacy, config.privacy
    if rules.require_dp and not privacy.enabled:
        raise _refuse(name, "privacy.require_dp", "the campaign asks for privacy.enabled false")
    if privacy.enabled:
        asked = privacy.monitoring_epsilon if monitoring else privacy.target_epsilon
        key = "privacy.monitoring_epsilon" if monitoring else "privacy.target_epsilon"
        if asked > rules.max_campaign_epsilon:
            raise _refuse(name, "privacy.max_campaign_epsilon",
                          f"the campaign asks {key} {asked:g}, above {rules.max_campaign_epsilon:g}")
        if rules.delta > privacy.delta:
            raise _refuse(name, "privacy.delta", f"it states epsilon at delta {rules.delta:g}, above the "
                                                 f"campaign's privacy.delta {privacy.delta:g}")
        low, high = rules.statistics_share
        if not low <= privacy.statistics_share <= high:
            raise _refuse(name, "privacy.statistics_share",
                          f"the campaign asks privacy.statistics_share {privacy.statistics_share:g}, outside "
                          f"[{low:g}, {high:g}]")
    bins = max(config.evaluation.bins, REFERENCE_BINS)
    if bins > policy.release.max_bins:
        raise _refuse(name, "release.max_bins", f"the campaign asks evaluation.bins {config.evaluation.bins}, "
                                                f"above {policy.release.max_bins}")
    never = {c.casefold() for c in policy.never_use}
    data = config.data
    asked_columns = [*(data.features or []), *(data.categorical or []), *data.protected, data.target]
    for column in asked_columns:
        if column.casefold() in never:
            raise _refuse(name, "never_use", f"the campaign asks for column '{column}'")


def never_used(policy: InstitutionPolicy, columns: list[str]) -> list[str]:
    """The file's columns the institution never uses, whatever their case."""
    never = {c.casefold() for c in policy.never_use}
    return [c for c in columns if c.casefold() in never]
