"""What one hostile institution can do to a campaign, and what the defences hold.

Ten institutions of the built-in credit consortium (default campaign, DP on); one of them (the
third largest, ~11 % of the rows, by default) runs a poisoning drill (`drill:` in the config):
its update scaled x10 and x100, its sign flipped, trained on flipped labels, its example count
inflated x10, its weights NaN, or its rows of sex F all labelled as defaults; or three
institutions each lose their reply in 30 % of the rounds (as after the round's timeout). Each scenario
runs without any defence (FedAvg as claimed: no weight cap, no norm bound, no exclusion) and
with each defence asked for (`default` = fedrisk's defaults); the same seeds for every cell.
Reported: the final model's exact test AUC and approval-rate gap by sex (PD < threshold approves),
computed here from every institution's test rows (the simulation holds them all; a campaign
releases only noised histograms), each against the clean campaign without defence of the same
seed, averaged over the seeds; and who was excluded. A second clean campaign per seed shows how
much two campaigns differ without any attack: the statistics and evaluation noise is drawn from
the operating system's generator, never seeded. Writes docs/robustness.md.

    python experiments/robustness.py [--seeds 42 7 11] [--defences none default fedtrimmedavg]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from fairlearn.metrics import demographic_parity_difference
from homes import fresh_homes  # experiments/homes.py
from mlflow.tracking import MlflowClient
from report_file import markdown_table, write_report  # experiments/report_file.py
from sklearn.metrics import roc_auc_score

from fedrisk.config import load_config
from fedrisk.data import load_institution
from fedrisk.errors import FedriskInputError
from fedrisk.launcher import simulate
from fedrisk.models import build_model, predict_proba
from fedrisk.serving import load_model_files
from fedrisk.sources import institution_names
from fedrisk.splits import split_institution

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
INSTITUTIONS = 10
SCENARIOS: dict[str, dict] = {
    "clean": {},
    "clean again": {},
    "scale x10": {"attack": "scale", "factor": 10.0},
    "scale x100": {"attack": "scale", "factor": 100.0},
    "sign flip": {"attack": "sign_flip"},
    "label flip": {"attack": "label_flip"},
    "count x10": {"attack": "inflate_count", "factor": 10.0},
    "NaN weights": {"attack": "nan"},
    "sex F relabelled": {"attack": "group_relabel", "group": "sex=F"},
    "3 drop out": {"attack": "dropout", "institution": ["inst02", "inst05", "inst08"], "rate": 0.3},
}
DEFENCES: dict[str, dict] = {
    "none": {"training.robust.cap_weights": False, "training.robust.norm_bound": None,
             "training.robust.flag_rounds": 0},
    "default": {},
    "fedtrimmedavg": {"training.strategy": "fedtrimmedavg", "training.min_institutions": 3},
    "fedmedian": {"training.strategy": "fedmedian", "training.min_institutions": 3},
    "multikrum": {"training.strategy": "multikrum", "training.min_institutions": 5},
}
GAP = "test_approval_rate_difference.sex"


def exact_metrics(config, model_uri: str) -> dict[str, float]:
    """AUC and the sex approval-rate gap of the final model on every institution's test rows."""
    state, preprocessor, spec = load_model_files(model_uri, config.tracking.uri)
    model = build_model(spec, preprocessor.width, 0)
    model.load_state_dict(state)
    frames = [split_institution(load_institution(config.data, name, config.seed), config.data, config.seed).test
              for name in institution_names(config.data)]
    test = pd.concat(frames, ignore_index=True)
    scores = predict_proba(model, torch.as_tensor(preprocessor.transform(test))).numpy()
    approved = scores < config.evaluation.threshold
    return {"auc": float(roc_auc_score(test["default"], scores)),
            "gap": float(demographic_parity_difference(test["default"], approved, sensitive_features=test["sex"]))}


def flag_counts(config, run_id: str, attacker: str) -> dict[str, float]:
    """The lowest cosine any honest institution showed in any round, and how many of the honest
    institutions' updates were flagged (never 3 rounds in a row, or they would be excluded)."""
    client = MlflowClient(config.tracking.uri)
    metrics = client.get_run(run_id).data.metrics
    honest = [k for k in metrics if k.startswith("update_cosine.") and not k.endswith("." + attacker)]
    values = [m.value for k in honest for m in client.get_metric_history(run_id, k)]
    entries = [json.loads(line) for line in Path(config.audit.path).read_text().splitlines()]
    flags = [e["details"] for e in entries if e["event"] == "update_flagged"]
    return {"honest_min_cosine": min(values, default=float("nan")),
            "honest_flags": sum(f["institution"] != attacker for f in flags)}


def campaign(seed: int, scenario: str, defence: str, attacker: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fedrisk-robust-"))
    fresh_homes()
    overrides = {"seed": seed, "data.synthetic.institutions": INSTITUTIONS,
                 "tracking_uri": f"sqlite:///{work}/mlflow.db", **DEFENCES[defence]}
    if SCENARIOS[scenario]:
        overrides["drill"] = {"institution": attacker, **SCENARIOS[scenario]}
    config = load_config(None, overrides, work_dir=work)
    start = time.perf_counter()
    try:
        outcome = simulate(config)
    except FedriskInputError as err:
        return {"status": f"refused: {err.one_line()}", "auc": float("nan"), "gap": float("nan"), "excluded": "",
                "honest_min_cosine": float("nan"), "honest_flags": 0}
    excluded = outcome.tags.get("fedrisk.excluded", "")
    row = {"status": outcome.status, "excluded": excluded, "seconds": time.perf_counter() - start,
           **exact_metrics(config, outcome.tags["fedrisk.model_uri"]), **flag_counts(config, outcome.run_id, attacker)}
    print(f"seed {seed} {scenario:18s} {defence:14s} {row['status']:10s} AUC {row['auc']:.4f} gap {row['gap']:.4f} "
          f"{row['seconds']:.0f} s {excluded[:80]}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 11])
    parser.add_argument("--defences", nargs="+", default=["none", "default"], choices=list(DEFENCES))
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--attacker", default="inst03")
    parser.add_argument("--out", default="docs/robustness.md")
    args = parser.parse_args()
    scenarios = ["clean", *[s for s in args.scenarios if s != "clean"]]
    defences = ["none", *[d for d in args.defences if d != "none"]]
    results = {(seed, s, d): campaign(seed, s, d, args.attacker)
               for seed in args.seeds for s in scenarios for d in defences}
    rows = []
    for s in scenarios:
        for d in defences:
            cells = [results[(seed, s, d)] for seed in args.seeds]
            clean = [results[(seed, "clean", "none")] for seed in args.seeds]
            done = [(c, b) for c, b in zip(cells, clean, strict=True) if c["status"] == "completed"]
            loss = [b["auc"] - c["auc"] for c, b in done]
            moved = [abs(c["gap"] - b["gap"]) for c, b in done]
            rows.append({
                "scenario": s, "defence": d, "completed": f"{len(done)}/{len(cells)}",
                "test AUC": statistics.mean(c["auc"] for c, _ in done) if done else float("nan"),
                "AUC loss": statistics.mean(loss) if loss else float("nan"),
                "worst loss": max(loss) if loss else float("nan"),
                "sex gap": statistics.mean(c["gap"] for c, _ in done) if done else float("nan"),
                "gap moved": statistics.mean(moved) if moved else float("nan"),
                "attacker excluded": sum(args.attacker + ":" in c["excluded"] for c in cells),
                "others excluded": sum(c["excluded"].count("institution ") - c["excluded"].count(
                    f"institution {args.attacker}:") for c in cells),
                "honest updates flagged": sum(c["honest_flags"] for c in cells),
                "lowest honest cosine": min((c["honest_min_cosine"] for c in cells), default=float("nan")),
            })
    lines = [
        "# One hostile institution: what it does, what the defences hold",
        "",
        f"`python experiments/robustness.py --seeds {' '.join(map(str, args.seeds))} --defences "
        f"{' '.join(defences)}`: {INSTITUTIONS} institutions of the built-in credit consortium, the default "
        f"campaign (DP on, 8 rounds); {args.attacker} attacks. Loss and gap movement are against the clean "
        "campaign without defence of the same seed, averaged over the seeds; 'worst loss' is the largest of "
        "the seeds. 'none' is FedAvg on the updates as sent (no weight cap, no norm bound, no exclusion); "
        "'default' is fedrisk's default (`training.robust`).",
        "",
        markdown_table(rows),
        "",
        f"Measured {time.strftime('%Y-%m-%d')}, {len(results)} campaigns, "
        f"{sum(r.get('seconds', 0) for r in results.values()) / 60:.0f} min.",
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
