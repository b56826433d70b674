"""Privacy accounting: noise calibration and a per-institution ledger persisted on disk.

One accountant (Opacus's RDP accountant) both calibrates the noise and reports epsilon. Its
history, a list of (noise multiplier, sample rate, steps), is what the ledger stores, so a new
`PrivacyEngine` each round, or a new campaign on the same data, starts from what was spent.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from fedrisk.errors import BudgetExhaustedError, FedriskInputError

History = list[tuple[float, float, int]]
DEFAULT_MAX_NOISE_MULTIPLIER = 20.0
EPSILON_TOLERANCE = 0.01  # calibration stops within this much below the target


@lru_cache(maxsize=256)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    return np.asarray(
        rdp_analysis.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
        )
    )


def epsilon_spent(history: Sequence[Sequence[float]], delta: float) -> float:
    """Epsilon of a whole history under the RDP accountant, at `delta`.

    The same sum `RDPAccountant.get_epsilon` forms (RDP is linear in the steps), with the
    per-step RDP of each (noise, rate) pair cached: a ledger asks for it every round.
    """
    if not history:
        return 0.0
    rdp = sum(int(n) * _rdp_per_step(float(s), float(q)) for s, q, n in history)
    with warnings.catch_warnings():
        # Bisection probes tiny noise, where the bound is loose at the largest order: expected.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        eps, _ = rdp_analysis.get_privacy_spent(
            orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
        )
    return float(eps)


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior_history: Sequence[Sequence[float]] = (),
    epsilon_tolerance: float = EPSILON_TOLERANCE,
    max_noise_multiplier: float = DEFAULT_MAX_NOISE_MULTIPLIER,
) -> float:
    """Smallest noise (to the tolerance) such that prior spend + `steps` stays <= target.

    Same bisection as `opacus.accountants.utils.get_noise_multiplier`, but composed with what
    the institution already spent. Needing more noise than `max_noise_multiplier` means the
    budget left is too small to learn anything, and counts as spent.
    """
    prior = list(prior_history)
    spent = epsilon_spent(prior, delta)
    if spent >= target_epsilon:
        raise BudgetExhaustedError(
            f"privacy budget spent: epsilon {spent:.3f} of {target_epsilon:g} at delta {delta:g}"
        )

    def eps(sigma: float) -> float:
        return epsilon_spent(prior + [(sigma, sample_rate, steps)], delta)

    low, high = 0.0, min(10.0, max_noise_multiplier)
    while eps(high) > target_epsilon:
        low, high = high, min(2 * high, max_noise_multiplier)
        if low >= max_noise_multiplier:
            raise BudgetExhaustedError(
                f"privacy budget left ({target_epsilon - spent:.3g} of {target_epsilon:g}) "
                f"cannot pay for {steps} more steps at sample rate {sample_rate:.4g} with a noise "
                f"multiplier up to {max_noise_multiplier:g}"
            )
    while target_epsilon - eps(high) > epsilon_tolerance:
        mid = (low + high) / 2
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high


def institution_noise_multiplier(
    target_epsilon: float, delta: float, rounds: int, noise_multiplier: float | None = None
) -> float:
    """Noise multiplier of institution-level DP for a campaign, checked against its budget.

    One Gaussian release of the clipped average per round, every institution in every round:
    sample rate 1 (no amplification by sampling claimed), accounted like the record level.
    """
    if noise_multiplier is None:
        try:
            return calibrate_noise_multiplier(target_epsilon, delta, 1.0, rounds, max_noise_multiplier=1000.0)
        except BudgetExhaustedError:
            raise BudgetExhaustedError(
                f"privacy.institution_level.target_epsilon {target_epsilon:g} cannot pay for {rounds} rounds "
                "at any noise multiplier up to 1000"
            ) from None
    spent = institution_epsilon(noise_multiplier, rounds, delta)
    if spent > target_epsilon:
        raise BudgetExhaustedError(
            f"privacy.institution_level.noise_multiplier {noise_multiplier:g} spends epsilon {spent:.3f} over "
            f"{rounds} rounds at delta {delta:g}, above target_epsilon {target_epsilon:g}"
        )
    return noise_multiplier


def institution_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Institution-level epsilon after `rounds` releases (sample rate 1, RDP accountant)."""
    return epsilon_spent([(noise_multiplier, 1.0, rounds)], delta)


@dataclass
class PrivacyLedger:
    """What one institution's data has spent, across rounds and campaigns.

    Every change re-reads the file under an exclusive lock and appends to it, so campaigns
    running at once on the same data cannot overwrite each other's spend.
    """

    path: Path
    institution: str
    fingerprint: str
    accountant: str = "rdp"
    history: History = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, ledger_dir: str | Path, institution: str, fingerprint: str) -> PrivacyLedger:
        path = Path(ledger_dir) / f"{institution}-{fingerprint[:16]}.json"
        ledger = cls(path=path, institution=institution, fingerprint=fingerprint)
        ledger._reload()
        return ledger

    def _reload(self) -> None:
        if not self.path.is_file():
            return
        try:
            saved = json.loads(self.path.read_text())
            self.history = [(float(s), float(q), int(n)) for s, q, n in saved["history"]]
            self.rounds, self.refusals = saved["rounds"], saved["refusals"]
            self.plans, self.accountant = saved["plans"], saved["accountant"]
        except (ValueError, KeyError, TypeError):
            raise FedriskInputError(
                "privacy ledger is unreadable; restore it from backup (never delete it)",
                institution=self.institution, file=str(self.path),
            ) from None

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Exclusive lock, fresh read, change, atomic write."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._reload()
                yield
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.to_dict(), indent=1))
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def spent(self, delta: float) -> float:
        return epsilon_spent(self.history, delta)

    def to_dict(self) -> dict[str, Any]:
        return {
            "institution": self.institution,
            "fingerprint": self.fingerprint,
            "accountant": self.accountant,
            "history": [list(h) for h in self.history],
            "rounds": self.rounds,
            "refusals": self.refusals,
            "plans": self.plans,
        }

    def plan(
        self,
        campaign: str,
        target_epsilon: float,
        delta: float,
        sample_rate: float,
        steps_per_round: int,
        rounds: int,
        max_noise_multiplier: float = DEFAULT_MAX_NOISE_MULTIPLIER,
    ) -> float:
        """Noise multiplier of this campaign, calibrated once on the budget left."""
        settings = {
            "sample_rate": sample_rate,
            "steps_per_round": steps_per_round,
            "rounds": rounds,
            "target_epsilon": target_epsilon,
            "delta": delta,
        }
        with self._transaction():
            if campaign in self.plans:
                known = self.plans[campaign]
                if any(known[k] != v for k, v in settings.items()):
                    raise FedriskInputError(
                        f"campaign id {campaign} was already planned with other privacy "
                        "settings; use a new campaign id", institution=self.institution,
                    )
                return float(known["noise_multiplier"])
            try:
                sigma = calibrate_noise_multiplier(
                    target_epsilon, delta, sample_rate, steps_per_round * rounds, self.history,
                    max_noise_multiplier=max_noise_multiplier,
                )
            except BudgetExhaustedError as err:
                self._refusal(campaign, 0, err.detail)
                refused = BudgetExhaustedError(err.detail, institution=self.institution)
            else:
                self.plans[campaign] = {
                    **settings, "noise_multiplier": sigma, "epsilon_before": self.spent(delta)
                }
                return sigma
        raise refused

    def authorise(
        self, campaign: str, server_round: int, sigma: float, sample_rate: float, steps: int,
        target_epsilon: float, delta: float,
    ) -> float:
        """Epsilon after this round, or a recorded refusal if it would exceed the budget."""
        with self._transaction():
            after = epsilon_spent(self.history + [(sigma, sample_rate, steps)], delta)
            if after <= target_epsilon * (1 + 1e-9):
                return after
            reason = (
                f"round would exceed the privacy budget: epsilon {after:.3f} > "
                f"{target_epsilon:g} at delta {delta:g} (spent {self.spent(delta):.3f})"
            )
            self._refusal(campaign, server_round, reason)
        raise BudgetExhaustedError(reason, institution=self.institution)

    def _refusal(self, campaign: str, server_round: int, reason: str) -> None:
        self.refusals.append(
            {"campaign": campaign, "round": server_round, "reason": reason, "time": time.time()}
        )

    def record(
        self, campaign: str, server_round: int, spend: History, delta: float
    ) -> float:
        """Append what a round spent, as (noise multiplier, sample rate, steps); return epsilon."""
        with self._transaction():
            self.history += [(float(s), float(q), int(n)) for s, q, n in spend]
            epsilon = self.spent(delta)
            self.rounds.append(
                {"campaign": campaign, "round": server_round, "epsilon": epsilon, "delta": delta,
                 "time": time.time()}
            )
        return epsilon
