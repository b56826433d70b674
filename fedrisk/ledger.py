"""One privacy ledger per institution, for life: every release it makes is charged here.

The ledger belongs to the institution's customer population, not to a file: it lives in the
institution's home (`fedrisk.guard`), is keyed by nothing but the institution, and records the
data's fingerprint as lineage only, so no re-encoding, reordering or re-saving of the data
resets it. Its cap and delta are fixed when it is created from the institution's policy; a
policy edit can lower them, never raise them: raising the cap takes two approvers
(`raise_cap`, recorded in the audit log).

Accounting (one accountant, RDP, `fedrisk.privacy`): a campaign's releases each touch one
part of the institution's rows (train, validation, test, a monitoring window). The parts are
disjoint, a row's part being a function of the row alone (`fedrisk.splits`), so a customer's
loss in one campaign is that of its own part: the campaign costs the pointwise maximum over
parts of their composed RDP curves. Campaigns compose by adding their curves. A campaign plans
its releases before its first one and reserves them (two campaigns at once cannot together
exceed the cap); each release is then charged against the plan, and one outside it is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrisk.errors import BudgetExhaustedError, FedriskInputError
from fedrisk.privacy import ORDERS, epsilon_from_rdp, rdp_per_step

VERSION = 2


@dataclass(frozen=True)
class Release:
    """One use of the data: a Gaussian mechanism, possibly Poisson-subsampled and repeated."""

    part: str  # the rows it touches: train, validation, test, window:<label>
    mechanism: str  # bounds, preprocessing, dp_sgd, drift_reference, evaluation, importance, monitoring
    noise_multiplier: float  # noise standard deviation / L2 sensitivity
    sample_rate: float = 1.0
    steps: int = 1
    delta: float = 0.0  # added to delta outright (the threshold of a partition selection)

    def rdp(self) -> np.ndarray:
        return self.steps * rdp_per_step(self.noise_multiplier, self.sample_rate)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Release:
        return cls(**{k: raw[k] for k in ("part", "mechanism", "noise_multiplier", "sample_rate", "steps", "delta")})


def parts_curve(releases: list[Release]) -> tuple[np.ndarray, float]:
    """(RDP curve, additive delta) of one campaign: the worst of its parts."""
    curves: dict[str, np.ndarray] = {}
    deltas: dict[str, float] = {}
    for release in releases:
        curves[release.part] = curves.get(release.part, np.zeros(len(ORDERS))) + release.rdp()
        deltas[release.part] = deltas.get(release.part, 0.0) + release.delta
    if not curves:
        return np.zeros(len(ORDERS)), 0.0
    return np.max(np.stack(list(curves.values())), axis=0), max(deltas.values())


def campaign_epsilon(releases: list[Release], delta: float, prior: tuple[np.ndarray, float] | None = None) -> float:
    """Epsilon at `delta` of a campaign's releases, composed after `prior` (curve, delta)."""
    curve, extra = parts_curve(releases)
    if prior is not None:
        curve, extra = curve + prior[0], extra + prior[1]
    return epsilon_from_rdp(curve, delta - extra) if delta > extra else float("inf")


@dataclass
class Transaction:
    changed: bool = True  # False: nothing to write


class PrivacyLedger:
    """What one institution's customers have spent, across campaigns and monitoring runs."""

    def __init__(self, path: Path, institution: str, cap: float, delta: float) -> None:
        self.path = path
        self.institution = institution
        self.cap = cap
        self.delta = delta
        self.charges: list[dict[str, Any]] = []
        self.plans: dict[str, dict[str, Any]] = {}
        self.refusals: list[dict[str, Any]] = []
        self.cap_changes: list[dict[str, Any]] = []
        self.voided: list[dict[str, Any]] = []  # charges of releases that never left (`void_pending`)

    # -- persistence ------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, institution: str, cap: float, delta: float) -> PrivacyLedger:
        """The institution's ledger; a new one takes its cap and delta from the policy."""
        ledger = cls(path, institution, cap, delta)
        ledger._reload()
        ledger.delta = min(ledger.delta, delta)  # a policy may lower its delta, never raise it
        return ledger

    def state_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "institution": self.institution, "accountant": "rdp", "cap": self.cap,
                "delta": self.delta, "charges": self.charges, "plans": self.plans, "refusals": self.refusals,
                "cap_changes": self.cap_changes, "voided": self.voided}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if saved.get("version") != VERSION or saved.get("accountant") != "rdp":
            raise ValueError("not a ledger of this version")
        if saved["institution"] != self.institution:
            raise FedriskInputError(f"the ledger here belongs to institution {saved['institution']}",
                                    institution=self.institution, file=str(self.path))
        self.cap, self.delta = float(saved["cap"]), float(saved["delta"])
        self.charges, self.plans = list(saved["charges"]), dict(saved["plans"])
        self.refusals, self.cap_changes = list(saved["refusals"]), list(saved["cap_changes"])
        self.voided = list(saved.get("voided", []))

    def _reload(self) -> None:
        if not self.path.exists():
            return
        try:
            self.load_state_dict(json.loads(self.path.read_text()))
        except FedriskInputError:
            raise
        except (OSError, ValueError, KeyError, TypeError):
            raise FedriskInputError("privacy ledger is unreadable; restore it from backup (never delete it)",
                                    institution=self.institution, file=str(self.path)) from None

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Exclusive lock, fresh read, change, atomic write: concurrent campaigns add up. The
        body may say it changed nothing (`Transaction.changed`): every message of a campaign
        opens a few, and writing the whole ledger is most of what they cost."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._reload()
                txn = Transaction()
                yield txn
                if txn.changed or not self.path.exists():
                    tmp = self.path.with_name(self.path.name + ".tmp")
                    tmp.write_text(json.dumps(self.state_dict(), indent=1))
                    os.replace(tmp, self.path)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- accounting -------------------------------------------------------------------------

    def _releases(self, campaign: str) -> list[Release]:
        """A campaign's reserved releases, or what it charged where it charged more (never, by design)."""
        planned = [Release.from_dict(r) for r in self.plans.get(campaign, {}).get("releases", [])]
        charged = [Release.from_dict(c) for c in self.charges if c["campaign"] == campaign]
        if not planned:
            return charged
        over = Counter(charged) - Counter(planned)
        return planned + list(over.elements())

    def campaigns(self) -> list[str]:
        return sorted(set(self.plans) | {c["campaign"] for c in self.charges})

    def lifetime(self, exclude: str | None = None) -> tuple[np.ndarray, float]:
        """(RDP curve, additive delta) of every campaign (reservations included), composed."""
        curve, extra = np.zeros(len(ORDERS)), 0.0
        for campaign in self.campaigns():
            if campaign != exclude:
                c, d = parts_curve(self._releases(campaign))
                curve, extra = curve + c, extra + d
        return curve, extra

    def epsilon(self, delta: float | None = None) -> float:
        """The institution's lifetime epsilon (reservations included), at its delta."""
        curve, extra = self.lifetime()
        delta = self.delta if delta is None else delta
        return epsilon_from_rdp(curve, delta - extra) if delta > extra else float("inf")

    def spent(self, mechanism: str | None = None, campaign: str | None = None) -> float:
        """Epsilon of what was charged (a mechanism's or a campaign's alone, if named), at the ledger's delta."""
        curve, extra = np.zeros(len(ORDERS)), 0.0
        for name in self.campaigns():
            if campaign is not None and name != campaign:
                continue
            mine = [Release.from_dict(c) for c in self.charges if c["campaign"] == name
                    and (mechanism is None or c["mechanism"] == mechanism)]
            c, d = parts_curve(mine)
            curve, extra = curve + c, extra + d
        return epsilon_from_rdp(curve, self.delta - extra) if self.delta > extra else float("inf")

    def effective_cap(self, policy_cap: float) -> float:
        return min(self.cap, policy_cap)

    def plan(self, campaign: str, releases: list[Release], cap: float, details: dict[str, Any],
             exact: bool = False) -> None:
        """Reserve a campaign's releases; refused (and recorded) when they would exceed the cap.

        `exact`: a campaign without DP, which the institution's policy allowed: recorded as what
        it is (infinite epsilon, for life), never refused here.
        """
        with self.transaction() as txn:
            if campaign in self.plans:
                if [Release.from_dict(r) for r in self.plans[campaign]["releases"]] != releases:
                    raise FedriskInputError(f"campaign id {campaign} was already planned with other privacy settings; "
                                            "use a new campaign id", institution=self.institution)
                txn.changed = False
                return
            prior = self.lifetime()
            after = campaign_epsilon(releases, self.delta, prior)
            if after > self.effective_cap(cap) * (1 + 1e-9) and not exact:
                before = epsilon_from_rdp(prior[0], self.delta - prior[1]) if self.delta > prior[1] else float("inf")
                reason = (f"privacy budget left ({max(self.effective_cap(cap) - before, 0):.3g} of "
                          f"{self.effective_cap(cap):g} at delta {self.delta:g}) cannot pay for this campaign "
                          f"(epsilon {campaign_epsilon(releases, self.delta):.3g})")
                self._refusal(campaign, 0, reason)
                refused: Exception = BudgetExhaustedError(reason, institution=self.institution)
            else:
                self.plans[campaign] = {"releases": [asdict(r) for r in releases], "time": time.time(), **details}
                return
        raise refused

    def charge(self, campaign: str, release: Release, server_round: int = 0, key: str | None = None) -> float:
        """Charge one release of a planned campaign; returns the lifetime epsilon after it. With
        `key` (`fedrisk.replay`), the charge stays pending until its release is kept (`settle`)."""
        with self.transaction():
            planned = Counter(Release.from_dict(r) for r in self.plans.get(campaign, {}).get("releases", []))
            charged = Counter(Release.from_dict(c) for c in self.charges if c["campaign"] == campaign)
            if charged[release] >= planned[release]:
                reason = (f"a {release.mechanism} release on the {release.part} rows outside campaign {campaign}'s "
                          "plan would exceed the privacy budget")
                self._refusal(campaign, server_round, reason)
                refused = BudgetExhaustedError(reason, institution=self.institution)
            else:
                self.charges.append({"campaign": campaign, "round": server_round, "time": time.time(), **asdict(release),
                                     **({"release_key": key, "pending": True} if key else {})})
                return self.epsilon()
        raise refused

    def settle(self, key: str) -> None:
        """The releases charged under `key` are kept: they may leave, and their charges stand for good."""
        with self.transaction() as txn:
            txn.changed = False
            for charge in self.charges:
                if charge.get("release_key") == key and charge.pop("pending", None) is not None:
                    txn.changed = True

    def void_pending(self, key: str) -> None:
        """Charges under `key` still pending belong to a computation that died before its release
        was kept, hence before it could leave: nobody saw that output, so computing it again
        spends the same charge (moved to `voided`, with the time)."""
        with self.transaction() as txn:
            stale = [c for c in self.charges if c.get("release_key") == key and c.get("pending")]
            txn.changed = bool(stale)
            if stale:
                self.charges = [c for c in self.charges if not (c.get("release_key") == key and c.get("pending"))]
                self.voided += [{**c, "voided": time.time()} for c in stale]

    def _refusal(self, campaign: str, server_round: int, reason: str) -> None:
        self.refusals.append({"campaign": campaign, "round": server_round, "reason": reason, "time": time.time()})

    def raise_cap(self, epsilon: float, approvers: list[str], justification: str, audit_entry: str) -> None:
        """A higher lifetime cap, decided by two approvers and recorded in the audit log first."""
        with self.transaction():
            if epsilon <= self.cap:
                raise FedriskInputError(f"the cap is {self.cap:g} already; a raise must go above it",
                                        institution=self.institution)
            self.cap_changes.append({"from": self.cap, "to": epsilon, "approvers": approvers,
                                     "justification": justification, "audit_entry": audit_entry, "time": time.time()})
            self.cap = epsilon

    def summary(self, campaign: str | None = None) -> dict[str, Any]:
        """Epsilon per mechanism (each alone), the campaign's, and the lifetime total, at the ledger's delta."""
        mechanisms = sorted({c["mechanism"] for c in self.charges if campaign is None or c["campaign"] == campaign})
        return {"accountant": "rdp", "delta": self.delta, "cap": self.cap,
                "by_mechanism": {m: self.spent(m, campaign) for m in mechanisms},
                "campaign": self.spent(campaign=campaign) if campaign else None,
                "lifetime": self.spent()}
