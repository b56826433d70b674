"""What a campaign releases from an institution, and with how much noise: its privacy plan.

Everything that leaves an institution is a Gaussian release of clipped contributions, in
blocks: one row changes each block by at most 1 in L2 norm (one cell of a histogram, one
clipped value of a sum), so a release of b blocks with noise z per cell has sensitivity
sqrt(b) and noise multiplier z / sqrt(b). The plan lists them by the rows they touch:

- every row: `quality` (the data-quality counts, `fedrisk.data_quality`), one release per part;
- every row of the shared table's calendar (fraud, `consortium_features`): `shared_counts`, the
  terminal table (`fedrisk.consortium_features`), one release per part (rows between the parts
  pay it alone, less than any part);
- train rows: `size` (the training rows' count, once per version of the data and split: every
  plan is calibrated on it, never on the exact count; its own ledger entry), `bounds` (a
  histogram of each numeric column on a fixed log grid: clipping bounds and decile edges),
  `preprocessing` (clipped counts, sums and sums of squares; category counts with partition
  selection), `dp_sgd`, and `drift_reference` (the final model's score and the inputs on the
  reference bins);
- validation rows: `evaluation` (score histograms and score sums, by protected group; for
  fraud, the amounts and top-k counts), each round if `evaluation.every_round`, and once at
  the end; `importance` (a histogram per ablated feature, at `IMPORTANCE_NOISE` times the noise);
- test rows: `evaluation` once.

Calibration (`plan_campaign`): the statistics get `privacy.statistics_share` of the campaign's
epsilon, each part alone, and the shared terminal table `privacy.shared_counts_share`; DP-SGD
the largest share that keeps the campaign within its epsilon and the institution within its
lifetime cap; credit's validation and test as much as fits under the same two limits (they are
other rows, so they cost the campaign nothing beyond its worst part; for fraud, the rows of a
time window, see docs/privacy.md on linked transactions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedrisk.config import CampaignConfig
from fedrisk.consortium_features import SENSITIVITY_BLOCKS
from fedrisk.errors import BudgetExhaustedError
from fedrisk.ledger import PrivacyLedger, Release, campaign_epsilon, parts_curve
from fedrisk.privacy import smallest_noise
from fedrisk.training import dp_sampling

IMPORTANCE_NOISE = 3.0  # importance histograms get this many times the validation noise per cell
PARTITION_DELTA_SHARE = 0.01  # of the institution's delta, per campaign, for partition selection
MAX_STATISTICS_NOISE = 1e4
PARTS = ("train", "validation", "test")
SIZE_NOISE = 40.0  # noise of the released training-row count (epsilon about 0.13 at delta 1e-6)


@dataclass(frozen=True)
class Shape:
    """What the plan depends on at an institution: its rows and the campaign's columns."""

    train_rows: int
    numeric: int
    categorical: int
    protected: int
    fraud: bool
    quality: int = 0  # blocks of the data-quality counts (`fedrisk.data_quality.blocks`)
    shared: int = 0  # numeric inputs from the consortium's shared table (no bounds release of their own)

    @property
    def features(self) -> int:
        return self.numeric + self.categorical

    @property
    def evaluation_blocks(self) -> int:
        """Score histogram (by label), score sums, one histogram per protected attribute;
        fraud: amounts of frauds per bin, and the top-k hits and alerts (two cells)."""
        return 2 + self.protected + (3 if self.fraud else 0)

    @property
    def statistics_blocks(self) -> dict[str, int]:
        return {"bounds": self.numeric - self.shared, "preprocessing": 3 * self.numeric + self.categorical + self.protected,
                "drift_reference": 1 + self.numeric + self.categorical}


@dataclass(frozen=True)
class CampaignPlan:
    """Noise per cell of each kind of release, and the releases themselves (what the ledger reserves)."""

    statistics: float  # noise per cell of bounds, preprocessing and reference releases
    dp_sgd: float  # DP-SGD noise multiplier
    sample_rate: float
    steps_per_round: int
    validation: float  # noise per cell of an evaluation release on the validation rows
    test: float
    partition_delta: float  # per categorical or protected column
    releases: tuple[Release, ...]
    epsilon: float  # the campaign's, at the institution's delta
    shared_counts: float = 0.0  # noise per cell of the shared terminal table (0: none planned, or exact)

    def release(self, mechanism: str, part: str) -> Release:
        for release in self.releases:
            if release.mechanism == mechanism and release.part == part:
                return release
        raise KeyError(f"no {mechanism} release on the {part} rows in the plan")

    def cell_noise(self, mechanism: str, part: str) -> float:
        """Noise standard deviation per cell (per unit of a block) of a planned release."""
        if mechanism == "dp_sgd":
            return self.dp_sgd
        if mechanism in ("bounds", "preprocessing", "drift_reference"):
            return self.statistics
        if mechanism == "shared_counts":
            return self.shared_counts
        scale = IMPORTANCE_NOISE if mechanism == "importance" else 1.0
        return scale * (self.validation if part == "validation" else self.test)


def evaluation_release(shape: Shape, part: str, noise: float) -> Release:
    return Release(part, "evaluation", _blocks(noise, shape.evaluation_blocks))


def importance_release(shape: Shape, noise: float) -> Release:
    return Release("validation", "importance", _blocks(IMPORTANCE_NOISE * noise, shape.features))


def sgd_release(shape: Shape, noise_multiplier: float, sample_rate: float, steps: int) -> Release:
    return Release("train", "dp_sgd", noise_multiplier, sample_rate, steps)


def _blocks(noise: float, blocks: int) -> float:
    """The noise multiplier of a release of `blocks` unit blocks with `noise` per cell."""
    return noise / math.sqrt(max(blocks, 1))


def statistics_release(shape: Shape, mechanism: str, noise: float, partition_delta: float) -> Release:
    delta = partition_delta * (shape.categorical + shape.protected) if mechanism == "preprocessing" else 0.0
    return Release("train", mechanism, _blocks(noise, shape.statistics_blocks[mechanism]), delta=delta)


def shared_counts_releases(noise: float) -> list[Release]:
    """The shared terminal table: one transaction, one cell of each of its two counts (sensitivity
    sqrt 2), on whichever part the transaction is in."""
    return [Release(part, "shared_counts", _blocks(noise, SENSITIVITY_BLOCKS)) for part in PARTS]


def quality_releases(shape: Shape, noise: float) -> list[Release]:
    """The data-quality counts: of every row as read, so one release on each part."""
    return [Release(part, "quality", _blocks(noise, shape.quality)) for part in PARTS] if shape.quality else []


def _statistics(shape: Shape, noise: float, partition_delta: float) -> list[Release]:
    return [*(statistics_release(shape, mechanism, noise, partition_delta) for mechanism in shape.statistics_blocks),
            *quality_releases(shape, noise)]


def _evaluation(shape: Shape, config: CampaignConfig, part: str, noise: float) -> list[Release]:
    releases = (config.training.rounds + 1) if part == "validation" and config.evaluation.every_round else 1
    out = [evaluation_release(shape, part, noise)] * releases
    if part == "validation" and config.evaluation.importance and shape.features:
        out.append(importance_release(shape, noise))
    return out


def plan_campaign(config: CampaignConfig, shape: Shape, ledger: PrivacyLedger, campaign: str,
                  max_campaign_epsilon: float, cap: float, inherited: tuple[Release, ...] = ()) -> CampaignPlan:
    """Calibrate every release of a campaign at one institution (see the module's docstring).
    `inherited`: releases made for this campaign under another ledger entry (the row count, when
    this campaign is the first on the data): they count within its epsilon."""
    plan = _calibrate(config, shape, ledger, campaign, max_campaign_epsilon, cap, inherited)
    assert plan is not None
    return plan


def check_campaign_fits(config: CampaignConfig, shape: Shape, ledger: PrivacyLedger, campaign: str,
                        max_campaign_epsilon: float, cap: float) -> None:
    """Raise as `plan_campaign` would when the campaign does not fit, without calibrating
    DP-SGD's noise: a preflight of a thousand institutions (each calibration asks Opacus's RDP
    for ~15 noise multipliers, 13 ms each)."""
    _calibrate(config, shape, ledger, campaign, max_campaign_epsilon, cap, (), check_only=True)


def _calibrate(config: CampaignConfig, shape: Shape, ledger: PrivacyLedger, campaign: str,
               max_campaign_epsilon: float, cap: float, inherited: tuple[Release, ...],
               check_only: bool = False) -> CampaignPlan | None:
    pv, tr = config.privacy, config.training
    limit = min(pv.target_epsilon, max_campaign_epsilon)
    delta, cap = ledger.delta, ledger.effective_cap(cap)
    prior = ledger.lifetime(exclude=campaign)
    before = parts_curve(list(inherited))  # composed with every part: another ledger entry
    partition_delta = PARTITION_DELTA_SHARE * delta / max(shape.categorical + shape.protected, 1)

    def within(releases: list[Release]) -> float:
        """Limit-scaled epsilon: <= limit when the campaign and the lifetime both fit."""
        return max(campaign_epsilon(releases, delta, before), campaign_epsilon(releases, delta, prior) - cap + limit)

    statistics = smallest_noise(lambda z: campaign_epsilon(_statistics(shape, z, partition_delta), delta, before),
                                pv.statistics_share * limit, MAX_STATISTICS_NOISE)
    if statistics is None:
        raise BudgetExhaustedError(f"privacy.statistics_share {pv.statistics_share:g} of epsilon {limit:g} cannot pay "
                                   "for the campaign's statistics")
    stats = _statistics(shape, statistics, partition_delta)
    shared = 0.0
    if shape.shared:
        found = smallest_noise(lambda z: campaign_epsilon(shared_counts_releases(z), delta, before),
                               pv.shared_counts_share * limit, MAX_STATISTICS_NOISE)
        if found is None:
            raise BudgetExhaustedError(f"privacy.shared_counts_share {pv.shared_counts_share:g} of epsilon {limit:g} "
                                       "cannot pay for the shared terminal table")
        shared = found
        stats += shared_counts_releases(shared)
    rate, per_epoch = dp_sampling(shape.train_rows, tr.batch_size)
    steps = per_epoch * tr.local_epochs

    def sgd(sigma: float) -> list[Release]:
        return [sgd_release(shape, sigma, rate, steps)] * tr.rounds

    if check_only:
        sigma = pv.max_noise_multiplier if within(stats + sgd(pv.max_noise_multiplier)) <= limit else None
    else:
        sigma = smallest_noise(lambda s: within(stats + sgd(s)), limit, pv.max_noise_multiplier)
    if sigma is None:
        left = max(cap - campaign_epsilon([], delta, prior), 0.0)
        raise BudgetExhaustedError(  # no steps nor sample rate: both follow from the rows
            f"privacy budget left ({left:.3g} of {cap:g} at delta {delta:g}) cannot pay for {tr.rounds} rounds of "
            f"DP-SGD with a noise multiplier up to {pv.max_noise_multiplier:g}")
    if check_only:
        return None
    releases = stats + sgd(sigma)
    noise = {}
    for part in ("validation", "test"):  # other rows: as much as fits
        found = smallest_noise(lambda z, part=part, done=releases: within(done + _evaluation(shape, config, part, z)),
                               limit,
                               MAX_STATISTICS_NOISE)
        if found is None:  # pragma: no cover - infinite noise always fits: the train part already does
            raise BudgetExhaustedError(f"the {part} releases do not fit the campaign's epsilon {limit:g}")
        noise[part] = found
        releases += _evaluation(shape, config, part, found)
    return CampaignPlan(statistics, sigma, rate, steps, noise["validation"], noise["test"], partition_delta,
                        tuple(releases), campaign_epsilon(releases, delta, before), shared)


def exact_plan(config: CampaignConfig, shape: Shape) -> CampaignPlan:
    """A campaign without DP (only where the institution's policy allows it): nothing is noised,
    and the ledger records every release as what it is, infinitely costly."""
    rate, per_epoch = dp_sampling(shape.train_rows, config.training.batch_size)
    steps = per_epoch * config.training.local_epochs
    releases = [*_statistics(shape, 0.0, 0.0), *(shared_counts_releases(0.0) if shape.shared else []),
                *[sgd_release(shape, 0.0, rate, steps)] * config.training.rounds,
                *_evaluation(shape, config, "validation", 0.0), *_evaluation(shape, config, "test", 0.0)]
    return CampaignPlan(0.0, 0.0, rate, steps, 0.0, 0.0, 0.0, tuple(releases), float("inf"))


def window_blocks(shape: Shape, labelled: bool = True) -> int:
    """A monitoring window: the score and every input on the reference bins, and when labelled
    the score histogram and sums."""
    return 1 + shape.features + (2 if labelled else 0)


def plan_monitoring(epsilon: float, shape: Shape, windows: int, ledger: PrivacyLedger, run: str,
                    max_campaign_epsilon: float, cap: float,
                    shared_share: float = 0.0) -> tuple[float, tuple[Release, ...], float]:
    """Noise per cell of each window's release, the releases, and the noise of each window's shared
    terminal table (fraud with consortium features: `shared_share` of the epsilon, 0 otherwise).
    Windows are other rows, each its own part; a window's table counts its own stream's rows (the
    window and its look-back), on the window's part."""
    limit = min(epsilon, max_campaign_epsilon)
    delta, cap = ledger.delta, ledger.effective_cap(cap)
    prior = ledger.lifetime(exclude=run)
    blocks = window_blocks(shape)
    table = 0.0
    if shape.shared:
        found = smallest_noise(lambda z: campaign_epsilon(shared_counts_releases(z)[:1], delta), shared_share * limit,
                               MAX_STATISTICS_NOISE)
        if found is None:
            raise BudgetExhaustedError(f"privacy.shared_counts_share {shared_share:g} of monitoring epsilon "
                                       f"{limit:g} cannot pay for the windows' shared terminal tables")
        table = found

    def releases(z: float) -> list[Release]:
        out = []
        for i in range(windows):
            out.append(Release(f"window:{i + 1}", "monitoring", _blocks(z, blocks)))
            if shape.shared:
                out.append(Release(f"window:{i + 1}", "shared_counts", _blocks(table, SENSITIVITY_BLOCKS)))
        return out

    noise = smallest_noise(lambda z: max(campaign_epsilon(releases(z), delta),
                                         campaign_epsilon(releases(z), delta, prior) - cap + limit),
                           limit, MAX_STATISTICS_NOISE)
    if noise is None:
        left = max(cap - campaign_epsilon([], delta, prior), 0.0)
        raise BudgetExhaustedError(f"privacy budget left ({left:.3g} of {cap:g} at delta {delta:g}) cannot pay for "
                                   f"monitoring at epsilon {limit:g}")
    return noise, tuple(releases(noise)), table
