"""Attack a finished campaign whose members are known, and say what the attacks imply.

Run on a simulation (all institutions' rows on this machine), this plays the coordinator
turned attacker, with everything MLflow keeps and the registered model:

- singleton bins: every stored score histogram (the test statistics, the drift reference and
  its validation histograms) is searched for bins that hold one person; a row whose score falls
  in one is claimed as a member, with that bin's label, and where a per-bin score sum matches
  the row's exact score the claim is an exact recovery (issue 14, finding 2);
- stored scores: every number in every artifact and model file is compared with the members'
  exact scores;
- loss threshold (Yeom et al. 2018): a training row's loss is lower than an unseen row's; the
  attack's AUC, members (training rows) against non-members (test rows, never trained on).

Each attack's true and false positive rates give an empirical lower bound on epsilon, as in
Jagielski et al. (2020): for (eps, delta)-DP, TPR <= e^eps FPR + delta, so with Clopper-Pearson
95 % bounds on both rates, eps >= ln((TPR_low - delta) / FPR_high). It treats rows as
independent trials, as one-run audits do: a heuristic lower bound, not a proof, and far below
the accounted epsilon when DP holds.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient
from scipy.stats import binomtest, mannwhitneyu

from fedrisk import run_schema
from fedrisk.config import CampaignConfig
from fedrisk.data import load_institution
from fedrisk.drift import SCORE
from fedrisk.errors import FedriskInputError
from fedrisk.metrics import bin_index
from fedrisk.models import build_model, predict_proba
from fedrisk.splits import split_institution

CONFIDENCE = 0.95
EXACT = 1e-6  # a stored per-bin sum this close to one row's score is that row's score
MAX_MEMBERS = 20_000  # rows per side of the loss attack (a sample beyond)


@dataclass(frozen=True)
class Attack:
    name: str
    target: str  # what was attacked
    members: int
    non_members: int
    true_claims: int  # members claimed (with the right label, for label-revealing attacks)
    false_claims: int  # non-members claimed
    exact_recoveries: int  # members whose exact score and label the release gives away
    auc: float | None  # for scored attacks
    epsilon_lower: float  # 95 % empirical lower bound


def epsilon_lower_bound(true_claims: int, members: int, false_claims: int, non_members: int, delta: float) -> float:
    """The epsilon an attack's rates imply at least (95 % Clopper-Pearson on both rates)."""
    if members == 0 or non_members == 0 or true_claims == 0:
        return 0.0
    tpr_low = binomtest(true_claims, members).proportion_ci(CONFIDENCE, method="exact").low
    fpr_high = binomtest(false_claims, non_members).proportion_ci(CONFIDENCE, method="exact").high
    if tpr_low - delta <= 0 or fpr_high <= 0:
        return 0.0
    return max(0.0, math.log((tpr_low - delta) / fpr_high))


def histogram_attack(name: str, edges: np.ndarray, counts: dict[int, np.ndarray], sums: dict[int, np.ndarray] | None,
                     members: tuple[np.ndarray, np.ndarray], others: tuple[np.ndarray, np.ndarray],
                     delta: float) -> Attack:
    """Claim every row whose score falls in a bin of one person (its label: the class counted).

    `counts`/`sums`: per label (0, 1), per bin, as released; `members`/`others`: (scores, labels).
    """
    total = sum(np.asarray(c, dtype=float) for c in counts.values())
    singleton = np.rint(np.asarray(total[: len(edges) + 1])) == 1
    label_of_bin = np.where(np.asarray(counts[1])[: len(edges) + 1] > np.asarray(counts[0])[: len(edges) + 1], 1, 0)

    def claims(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = bin_index(scores, edges)
        claimed = singleton[b] & (label_of_bin[b] == labels)
        exact = np.zeros(len(scores), dtype=bool)
        if sums is not None:
            bin_sum = sum(np.asarray(s, dtype=float) for s in sums.values())[: len(edges) + 1]
            exact = claimed & (np.abs(bin_sum[b] - scores) <= EXACT)
        return claimed, exact

    hit, exact = claims(*members)
    false, _ = claims(*others)
    return Attack(name, "stored histograms", len(hit), len(false), int(hit.sum()), int(false.sum()), int(exact.sum()),
                  None, epsilon_lower_bound(int(hit.sum()), len(hit), int(false.sum()), len(false), delta))


def loss_attack(member_loss: np.ndarray, other_loss: np.ndarray, delta: float, seed: int = 0) -> Attack:
    """Loss threshold: members have lower loss. The threshold is chosen on one half of the rows
    (the one maximising the bound) and the bound measured on the other half."""
    rng = np.random.default_rng(seed)
    m, o = rng.permutation(member_loss), rng.permutation(other_loss)
    m_fit, m_test = np.array_split(m, 2)
    o_fit, o_test = np.array_split(o, 2)
    best, threshold = -1.0, float(np.median(m_fit))
    for t in np.quantile(np.concatenate([m_fit, o_fit]), np.linspace(0.001, 0.5, 200)):
        eps = epsilon_lower_bound(int((m_fit <= t).sum()), len(m_fit), int((o_fit <= t).sum()), len(o_fit), delta)
        if eps > best:
            best, threshold = eps, float(t)
    tp, fp = int((m_test <= threshold).sum()), int((o_test <= threshold).sum())
    auc = float(mannwhitneyu(-m, -o).statistic / (len(m) * len(o)))  # P(a member's loss is the lower)
    return Attack("loss threshold", "final model", len(m_test), len(o_test), tp, fp, 0, auc,
                  epsilon_lower_bound(tp, len(m_test), fp, len(o_test), delta))


def stored_number_attack(numbers: np.ndarray, scores: np.ndarray) -> Attack:
    """Members whose exact score (a float32) is among the stored numbers."""
    numbers = np.asarray(numbers, dtype=np.float64)
    as_float32 = numbers[np.isfinite(numbers) & (numbers.astype(np.float32).astype(np.float64) == numbers)]
    found = np.isin(np.asarray(scores, dtype=np.float32).astype(np.float64), as_float32[(as_float32 > 0) & (as_float32 < 1)])
    return Attack("stored scores", "every artifact and model file", len(scores), 0, int(found.sum()), 0,
                  int(found.sum()), None, 0.0)


def _numbers(value: Any, out: list[float]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        out.append(float(value))
    elif isinstance(value, dict):
        for item in value.values():
            _numbers(item, out)
    elif isinstance(value, list):
        for item in value:
            _numbers(item, out)


def stored_numbers(folder: Path) -> np.ndarray:
    """Every number in every JSON file under `folder` (artifacts and model files)."""
    out: list[float] = []
    for file in folder.rglob("*.json"):
        try:
            _numbers(json.loads(file.read_text()), out)
        except (ValueError, UnicodeDecodeError):
            continue
    return np.asarray(out, dtype=float)


@dataclass(frozen=True)
class Population:
    """One institution's rows as the campaign split them, scored by the final model."""

    train: tuple[np.ndarray, np.ndarray]  # (scores, labels)
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def _score(model: torch.nn.Module, preprocessor: Any, frame: pd.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray]:
    x = torch.as_tensor(preprocessor.transform(frame))
    return predict_proba(model, x).numpy().astype(np.float32), frame[target].to_numpy(dtype=int)


def _loss(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.clip(scores.astype(float), 1e-7, 1 - 1e-7)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def _sample(pair: tuple[np.ndarray, np.ndarray], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if len(pair[0]) <= n:
        return pair
    keep = rng.choice(len(pair[0]), n, replace=False)
    return pair[0][keep], pair[1][keep]


def _join(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def audit_run(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """Every attack against one campaign run; its members are re-derived from its config."""
    from fedrisk.monitoring import training_config
    from fedrisk.serving import read_model
    from fedrisk.tracking import read_artifact, run_metrics
    from fedrisk.validation import load_statistics

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    config: CampaignConfig = training_config(tracking_uri, run_id)
    if config.data.time_split is not None:
        raise FedriskInputError("the privacy audit covers credit campaigns (a random split of known members)")
    model_uri = run.data.tags.get(run_schema.MODEL_URI)
    if not model_uri:
        raise FedriskInputError(f"run {run_id} logged no model: nothing to attack")
    model = read_model(model_uri, tracking_uri)
    net = build_model(model["spec"], model["preprocessor"].width, 0)
    net.load_state_dict(model["state"])
    institutions = run_schema.institutions_of(run.data.tags)
    snapshot = json.loads(read_artifact(client, run_id, run_schema.LEDGER_ARTIFACT) or "{}")
    deltas = [i["delta"] for i in snapshot.get("institutions", {}).values() if "delta" in i]
    delta = min(deltas) if deltas else config.privacy.delta  # each institution states epsilon at its own delta
    populations = {}
    for name in institutions:
        data = load_institution(config.data, name, config.seed)
        split = split_institution(data, config.data, config.seed)
        populations[name] = Population(*(_score(net, model["preprocessor"], getattr(split, part), data.columns.target)
                                         for part in ("train", "validation", "test")))
    rng = np.random.default_rng(0)
    attacks = []
    stats = load_statistics(client, run_id)
    test = _join([p.test for p in populations.values()])
    train = _join([p.train for p in populations.values()])
    if stats is not None:
        s = stats.stats
        attacks.append(histogram_attack("singleton bins: test statistics", s.edges, {0: s.hist_neg, 1: s.hist_pos},
                                        {0: s.score_sum_neg, 1: s.score_sum_pos}, test,
                                        _sample(train, len(test[0]), rng), delta))
    reference = model["reference"] or {}
    for name, population in populations.items():
        per_institution = reference.get("institutions", {}).get(name, {})
        if SCORE in per_institution:
            edges = np.asarray(reference["columns"][SCORE]["edges"])
            counts = np.asarray(per_institution[SCORE])
            attacks.append(histogram_attack(f"singleton bins: drift reference of {name}", edges,
                                            {0: counts, 1: np.zeros_like(counts)}, None,
                                            (population.train[0], np.zeros(len(population.train[0]), dtype=int)),
                                            (population.test[0], np.zeros(len(population.test[0]), dtype=int)), delta))
        validation = reference.get("validation", {}).get(name)
        if validation is not None and "grid" in reference:
            attacks.append(histogram_attack(f"singleton bins: validation histograms of {name}",
                                            np.asarray(reference["grid"]),
                                            {0: np.asarray(validation["hist_neg"]), 1: np.asarray(validation["hist_pos"])},
                                            None, population.validation, population.test, delta))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(client.download_artifacts(run_id, "", tmp))
        numbers = [stored_numbers(folder)]
        import mlflow.artifacts

        model_folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=f"{tmp}/model",
                                                                tracking_uri=tracking_uri))
        numbers.append(stored_numbers(model_folder))
    metrics = run_metrics(client, run)
    numbers.append(np.asarray(list(metrics.values()), dtype=float))
    attacks.append(stored_number_attack(np.concatenate(numbers), np.concatenate([train[0], test[0]])))
    members, others = _sample(train, MAX_MEMBERS, rng), _sample(test, MAX_MEMBERS, rng)
    attacks.append(loss_attack(_loss(*members), _loss(*others), delta))
    accounted = {name: metrics.get(run_schema.at("epsilon_campaign", name)) for name in institutions}
    return {"run_id": run_id, "delta": delta, "dp": config.privacy.enabled, "accounted_epsilon": accounted,
            "attacks": [asdict(a) for a in attacks]}


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The audit as a table a validator reads."""
    eps = [v for v in result["accounted_epsilon"].values() if v is not None]
    lines = [f"run {result['run_id']}: accounted epsilon {max(eps):.3g} at delta {result['delta']:g}" if eps else
             f"run {result['run_id']}: no epsilon accounted (DP off)",
             f"{'attack':52} {'members':>8} {'claimed':>8} {'false':>8} {'exact':>6} {'AUC':>6} {'eps >=':>7}"]
    for a in result["attacks"]:
        auc = f"{a['auc']:.3f}" if a["auc"] is not None else "-"
        lines.append(f"{a['name']:52} {a['members']:>8} {a['true_claims']:>8} {a['false_claims']:>8} "
                     f"{a['exact_recoveries']:>6} {auc:>6} {a['epsilon_lower']:>7.3f}")
    return lines
