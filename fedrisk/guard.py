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
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from fedrisk.config import CampaignConfig, StrictModel, check_institution_name, format_validation_error
from fedrisk.errors import FedriskInputError, PolicyRefused
from fedrisk.preprocessing import Preprocessor
from fedrisk.strict_yaml import load_yaml, yaml_reason

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
    max_bins: int = Field(ge=REFERENCE_BINS, description="no histogram with more bins leaves (at least fedrisk's "
                                                         "drift reference grid)")
    shared_counts_in_clear: bool = Field(False, description="a deployed node sends its (noised) terminal table to the "
                                                            "server without secure aggregation")


class InstitutionPolicy(StrictModel):
    privacy: PrivacyRules
    release: ReleaseRules
    never_use: list[str] = Field(default_factory=list, description="columns never shared nor used (any case)")
    label_delay_days: int | None = Field(None, ge=0, le=365, description="fraud: days until this issuer knows a "
                                                                           "fraud (null: not stated)")
    messages: list[str] = Field(description="message types the institution answers")
    ledger: str = Field("ledger.json", description="its privacy ledger, relative to the policy's folder")


def homes_root() -> Path:
    """Where simulated institutions keep their homes: `$FEDRISK_HOME/institutions`."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".fedrisk").expanduser().resolve() / "institutions"


def institution_home(name: str, node_config: dict[str, Any]) -> Path:
    """The institution's own folder: the node config's `home`, else its simulated home."""
    check_institution_name(name)
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
        return _parsed_policy(file.read_text(), name, str(file))
    except (OSError, UnicodeDecodeError):
        raise FedriskInputError("institution policy is not readable YAML", institution=name, file=str(file)) from None


@lru_cache(maxsize=4096)
def _parsed_policy(text: str, name: str, file: str) -> InstitutionPolicy:
    """A policy's text, parsed and checked once per process: the file is read on every message
    (the institution may tighten it between two), the YAML parsed only when it changed."""
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        raise FedriskInputError(yaml_reason(exc, "institution policy is not readable YAML"), institution=name,
                                file=file) from None
    try:
        return InstitutionPolicy.model_validate(raw or {})
    except ValidationError as err:
        raise FedriskInputError(format_validation_error(err, "institution policy"), institution=name,
                                file=file) from None


LEDGER_POINTER = "ledger.where"


SECRET_FILE = "secret.key"


def home_secret(home: Path) -> bytes:
    """The institution's own secret (32 random bytes, created once, readable by it alone): it keys
    what identifies its data outside, so no one holding a candidate file can test it."""
    file = home / SECRET_FILE
    if not file.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
    return file.read_bytes()


def update_policy(home: Path, name: str, changes: dict[str, Any]) -> InstitutionPolicy:
    """The institution's own edit of its policy (dotted keys), validated before it is written."""
    current = yaml.safe_load((home / POLICY_FILE).read_text()) if (home / POLICY_FILE).exists() else None
    raw = current or yaml.safe_load(DEFAULT_POLICY.read_text())
    for key, value in changes.items():
        node = raw
        *path, last = key.split(".")
        for part in path:
            if not isinstance(node.get(part), dict):
                raise FedriskInputError(f"institution policy has no key {key}", institution=name)
            node = node[part]
        if last not in node:
            raise FedriskInputError(f"institution policy has no key {key}", institution=name)
        node[last] = value
    try:
        policy = InstitutionPolicy.model_validate(raw)
    except ValidationError as err:
        raise FedriskInputError(format_validation_error(err, "institution policy"), institution=name) from None
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / (POLICY_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
    tmp.replace(home / POLICY_FILE)
    return policy


def ledger_path(home: Path, policy: InstitutionPolicy, name: str = "") -> Path:
    """Where the institution's ledger is. The home remembers it: a policy that names another
    place while the old ledger is still there would start an empty ledger, and is refused."""
    path = Path(policy.ledger)
    path = (path if path.is_absolute() else home / path).resolve()
    pointer = home / LEDGER_POINTER
    known = Path(pointer.read_text().strip()) if pointer.is_file() else None
    if known is not None and known != path and known.exists() and not path.exists():
        raise FedriskInputError(f"the policy moves the privacy ledger from {known} to {path}: move the file there "
                                "first (a ledger is never restarted)", institution=name or None, file=str(home / POLICY_FILE))
    if known != path:
        home.mkdir(parents=True, exist_ok=True)
        pointer.write_text(f"{path}\n")
    return path


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
    if config.evaluation.bins + 1 > policy.release.max_bins:  # + 1: the operating threshold is an edge too
        raise _refuse(name, "release.max_bins", f"the campaign asks evaluation.bins {config.evaluation.bins} (and "
                                                f"a threshold edge), above {policy.release.max_bins}")
    tx = config.data.transactions
    if tx is not None and policy.label_delay_days is not None and tx.delay_days < policy.label_delay_days:
        raise _refuse(name, "label_delay_days", f"the campaign's data.transactions.delay_days {tx.delay_days} is "
                                                f"shorter than its label delay {policy.label_delay_days}: its newest "
                                                "frauds are not known yet")
    never = {c.casefold() for c in policy.never_use}
    data = config.data
    asked_columns = [*(data.features or []), *(data.categorical or []), *data.protected, data.target]
    for column in asked_columns:
        if column.casefold() in never:
            raise _refuse(name, "never_use", f"the campaign asks for column '{column}'")


def check_histograms(policy: InstitutionPolicy, grid: Any, edges: dict[str, list[float]] | None, name: str) -> None:
    """Refuse a request whose own grids (not only what its config says) have too many bins
    (inner edges: k edges make k + 1 bins)."""
    sizes = {"grid": len(grid) + 1} if grid is not None else {}
    sizes.update({f"edges of {column}": len(e) + 1 for column, e in (edges or {}).items()})
    for what, bins in sizes.items():
        if bins > policy.release.max_bins:
            raise _refuse(name, "release.max_bins", f"the request's {what} has {bins} bins, above {policy.release.max_bins}")


def check_delta(config: CampaignConfig, name: str, rows: int, delta: float, file: str | None = None) -> None:
    """Both deltas below 1/rows: the campaign's (the largest it accepts) and the institution's own."""
    if config.privacy.enabled and config.privacy.delta >= 1.0 / rows:
        raise FedriskInputError(f"privacy.delta {config.privacy.delta:g} is not below 1/rows = {1.0 / rows:.3g} of "
                                "its training rows", institution=name, file=file)
    if config.privacy.enabled and delta >= 1.0 / rows:
        raise FedriskInputError(f"the institution's delta {delta:g} is not below 1/rows = {1.0 / rows:.3g}: its "
                                "policy must state a smaller privacy.delta", institution=name, file=file)


def check_shared(preprocessor: Preprocessor, policy: InstitutionPolicy, config: CampaignConfig, name: str,
                 features: tuple[list[str], list[str]] | None = None) -> None:
    """A request's shared preprocessing, checked before the node uses it: its inputs are the
    institution's features (`features`: numeric and categorical, for a campaign's messages; for
    a monitoring window, at least never a refused, protected, target or dropped column), every
    vocabulary fits the policy's bins, and its numbers are finite with lower below upper (a
    scaling that amplified one row would break the releases' sensitivity)."""
    def refuse(why: str, column: str | None = None) -> FedriskInputError:
        return PolicyRefused(f"refused the request's shared preprocessing: {why}", institution=name, column=column)

    if features is not None:
        for kind, mine, theirs in (("numeric", features[0], preprocessor.numeric),
                                   ("categorical", features[1], preprocessor.categorical)):
            for column in sorted(set(mine) ^ set(theirs)):
                raise refuse(f"its {kind} inputs are not this institution's features", column)
    never = {c.casefold() for c in [*policy.never_use, *config.data.drop, *config.data.protected, config.data.target]}
    for column in preprocessor.input_columns:
        if column.casefold() in never:
            raise refuse("an input it may not use", column)
    for column, vocabulary in zip(preprocessor.categorical, preprocessor.vocabularies, strict=True):
        if len(vocabulary) + 2 > policy.release.max_bins:  # + values unseen, + missing
            raise refuse(f"{len(vocabulary)} categories, above the policy's max_bins", column)
    for i, column in enumerate(preprocessor.numeric):
        low, high, scale = preprocessor.lower[i], preprocessor.upper[i], preprocessor.scales[i]
        if not (np.isfinite(low) and np.isfinite(high) and low < high and np.isfinite(preprocessor.means[i])
                and np.isfinite(scale) and scale > 0):
            raise refuse("bounds or scale that are not finite", column)


def never_used(policy: InstitutionPolicy, columns: list[str]) -> list[str]:
    """The file's columns the institution never uses, whatever their case."""
    never = {c.casefold() for c in policy.never_use}
    return [c for c in columns if c.casefold() in never]
