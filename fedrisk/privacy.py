"""Privacy accounting: one accountant, Opacus's RDP, for every mechanism fedrisk runs.

Every release is a Gaussian mechanism, possibly Poisson-subsampled and repeated: DP-SGD
(sample rate q < 1, many steps) or a histogram or sum of clipped contributions (q = 1, one
step). Its noise multiplier is the noise standard deviation over the L2 sensitivity, so each
is charged as (noise multiplier, sample rate, steps), the triple Opacus's RDP accountant
composes. Curves of Renyi DP over `ORDERS` add up across releases; epsilon at delta comes from
the summed curve (`epsilon_from_rdp`), as `RDPAccountant.get_epsilon` computes it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from fedrisk.errors import BudgetExhaustedError

History = list[tuple[float, float, int]]
ORDERS = tuple(RDPAccountant.DEFAULT_ALPHAS)
DEFAULT_MAX_NOISE_MULTIPLIER = 20.0
EPSILON_TOLERANCE = 0.01  # calibration stops within this much below the target


@lru_cache(maxsize=4096)
def rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    return np.asarray(rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                               orders=list(ORDERS)))


def rdp_curve(history: Sequence[Sequence[float]]) -> np.ndarray:
    """Renyi DP over `ORDERS` of releases (noise multiplier, sample rate, steps), composed."""
    curve = np.zeros(len(ORDERS))
    for sigma, rate, steps in history:
        if int(steps):
            curve = curve + int(steps) * rdp_per_step(float(sigma), float(rate))
    return curve


def epsilon_from_rdp(curve: np.ndarray, delta: float) -> float:
    """Epsilon at `delta` of a Renyi DP curve (Opacus's conversion)."""
    if not np.any(curve):
        return 0.0
    with warnings.catch_warnings():
        # Bisection probes tiny noise, where the bound is loose at the largest order: expected.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(ORDERS), rdp=curve, delta=delta)
    return float(eps)


def epsilon_spent(history: Sequence[Sequence[float]], delta: float) -> float:
    """Epsilon of a whole history under the RDP accountant, at `delta`.

    The same sum `RDPAccountant.get_epsilon` forms (RDP is linear in the steps), with the
    per-step RDP of each (noise, rate) pair cached: a ledger asks for it every round.
    """
    return epsilon_from_rdp(rdp_curve(history), delta)


def smallest_noise(epsilon_of: Callable[[float], float], target: float, max_noise_multiplier: float,
                   tolerance: float = EPSILON_TOLERANCE, precision: float = 1e-3) -> float | None:
    """The smallest noise multiplier whose epsilon stays <= target; None when even
    `max_noise_multiplier` overspends. Bisection, as Opacus's `get_noise_multiplier`, stopped
    once epsilon is within `tolerance` below the target, and in any case once the noise is known
    to `precision` (relative): an epsilon that no noise can lower (the other releases already
    spend it) must not stop the search at the first noise that fits."""
    low, high = 0.0, min(10.0, max_noise_multiplier)
    while epsilon_of(high) > target:
        if high >= max_noise_multiplier:
            return None
        low, high = high, min(2 * high, max_noise_multiplier)
    floor = epsilon_of(max_noise_multiplier)  # what the other releases spend whatever this noise
    while high - low > precision * high:
        eps_high = epsilon_of(high)
        if target - eps_high <= tolerance and eps_high - floor > tolerance:
            break  # this release itself spends up to the target: close enough
        mid = (low + high) / 2
        if epsilon_of(mid) > target:
            low = mid
        else:
            high = mid
    return high


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

    Needing more noise than `max_noise_multiplier` means the budget left is too small to learn
    anything, and counts as spent.
    """
    prior = rdp_curve(prior_history)
    spent = epsilon_from_rdp(prior, delta)
    if spent >= target_epsilon:
        raise BudgetExhaustedError(f"privacy budget spent: epsilon {spent:.3f} of {target_epsilon:g} at delta {delta:g}")
    sigma = smallest_noise(lambda s: epsilon_from_rdp(prior + rdp_curve([(s, sample_rate, steps)]), delta),
                           target_epsilon, max_noise_multiplier, epsilon_tolerance)
    if sigma is None:
        raise BudgetExhaustedError(
            f"privacy budget left ({target_epsilon - spent:.3g} of {target_epsilon:g}) cannot pay for {steps} more "
            f"steps at sample rate {sample_rate:.4g} with a noise multiplier up to {max_noise_multiplier:g}")
    return sigma


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
                "at any noise multiplier up to 1000") from None
    spent = institution_epsilon(noise_multiplier, rounds, delta)
    if spent > target_epsilon:
        raise BudgetExhaustedError(
            f"privacy.institution_level.noise_multiplier {noise_multiplier:g} spends epsilon {spent:.3f} over "
            f"{rounds} rounds at delta {delta:g}, above target_epsilon {target_epsilon:g}")
    return noise_multiplier


def institution_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Institution-level epsilon after `rounds` releases (sample rate 1, RDP accountant)."""
    return epsilon_spent([(noise_multiplier, 1.0, rounds)], delta)
