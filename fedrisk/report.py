"""The validation report: one self-contained HTML page a validator reads in the MLflow UI.

Plots come from the run's summed statistics only (score histograms by label and group), so
the report shows nothing about any single applicant.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedrisk.fairness import GroupHistograms, fairness_by_attribute  # noqa: E402
from fedrisk.gate import Verdict  # noqa: E402
from fedrisk.metrics import EvalStats, calibration_bands  # noqa: E402


def _png(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _roc_and_ks(stats: EvalStats) -> str:
    tp = np.append(np.cumsum(stats.hist_pos[::-1])[::-1], 0) / max(stats.hist_pos.sum(), 1)
    fp = np.append(np.cumsum(stats.hist_neg[::-1])[::-1], 0) / max(stats.hist_neg.sum(), 1)
    fig, (roc, ks) = plt.subplots(1, 2, figsize=(9, 3.6))
    roc.plot(fp, tp, lw=1.5)
    roc.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    edges = np.linspace(0, 1, len(stats.hist_pos) + 1)
    ks.plot(edges, 1 - tp, label="positives (defaults, frauds)")
    ks.plot(edges, 1 - fp, label="negatives")
    gap = np.argmax(np.abs(tp - fp))
    ks.vlines(edges[gap], 1 - tp[gap], 1 - fp[gap], colors="red", label=f"KS {abs(tp[gap] - fp[gap]):.3f}")
    ks.set(xlabel="predicted probability", ylabel="cumulative share", title="KS")
    ks.legend(fontsize=8)
    return _png(fig)


def _calibration(stats: EvalStats) -> tuple[str, list[dict[str, float]]]:
    bands = calibration_bands(stats.hist_pos, stats.hist_neg, stats.score_sum_pos + stats.score_sum_neg)
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    ax.plot([b["predicted"] for b in bands], [b["observed"] for b in bands], "o-")
    top = max([b["predicted"] for b in bands] + [b["observed"] for b in bands] + [0.05])
    ax.plot([0, top], [0, top], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="predicted rate", ylabel="observed rate", title="Calibration by score band")
    return _png(fig), bands


def _approval(groups: GroupHistograms, threshold: float) -> str:
    attributes = sorted(groups)
    fig, axes = plt.subplots(1, max(len(attributes), 1), figsize=(4 * max(len(attributes), 1), 3.2))
    for ax, attribute in zip(np.atleast_1d(axes), attributes):
        rates = fairness_by_attribute(groups[attribute], threshold)["approval_rate"]
        ax.bar(list(rates), list(rates.values()))
        ax.set(title=f"approval rate by {attribute}", ylim=(0, 1))
    return _png(fig)


PER_INSTITUTION = {
    "credit": {"AUC": "{split}_auc.{name}", "KS": "{split}_ks.{name}",
               "default rate": "{split}_default_rate.{name}",
               "approval gap (sex)": "{split}_approval_rate_difference.sex.{name}",
               "epsilon": "epsilon.{name}"},
    "fraud": {"AUPRC": "{split}_average_precision.{name}", "AUC": "{split}_auc.{name}",
              "recall at fixed FPR": "{split}_{recall_at_fpr}.{name}",
              "recall at budget": "{split}_recall_at_budget.{name}",
              "fraud value caught": "{split}_amount_recall_at_budget.{name}",
              "alerts/day": "{split}_alerts_per_day.{name}", "fraud rate": "{split}_fraud_rate.{name}",
              "epsilon": "epsilon.{name}"},
}


def per_institution_rows(metrics: dict[str, float], task: str, institutions: list[str],
                         split: str = "test") -> list[dict[str, Any]]:
    """The task's headline figures of each institution, NaN where a run lacks one."""
    pooled_recall = [k for k in metrics if k.startswith(f"{split}_recall_at_fpr_")
                     and not any(k.endswith(f".{n}") for n in institutions)]
    recall_at_fpr = pooled_recall[0][len(split) + 1:] if pooled_recall else "recall_at_fpr"
    return [{"institution": name,
             **{label: metrics.get(key.format(split=split, name=name, recall_at_fpr=recall_at_fpr), float("nan"))
                for label, key in PER_INSTITUTION[task].items()}}
            for name in institutions]


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(f'{v:.4f}' if isinstance(v, float) else str(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_report(
    run_id: str,
    verdict: Verdict,
    metrics: dict[str, float],
    tags: dict[str, str],
    institutions: list[str],
    stats: EvalStats | None,
    groups: GroupHistograms | None,
    threshold: float,
    split: str = "test",
) -> str:
    """HTML of the verdict, every rule, the plots and the per-institution figures."""
    colour = {"pass": "#1a7f37", "warn": "#b58100", "block": "#c62828"}[verdict.verdict]
    rules = [
        {"outcome": r.outcome, "metric": r.metric, "scope": r.scope, "rule": f"{r.comparator} {r.threshold:g}",
         "value": "-" if r.value is None else r.value, "where": r.where, "severity": r.severity,
         "why": r.description}
        for r in verdict.results
    ]
    per_institution = per_institution_rows(metrics, tags.get("fedrisk.task", "credit"), institutions, split)
    parts = [
        f"<h1>Validation report</h1><p>run <code>{html.escape(run_id)}</code> &middot; policy "
        f"<b>{html.escape(verdict.policy)}</b></p>",
        f"<h2 style='color:{colour}'>Verdict: {verdict.verdict.upper()}</h2>",
        f"<p>Privacy: {html.escape(tags.get('fedrisk.epsilon', 'no DP'))}</p>",
        "<h3>Rules</h3>", _table(rules),
        f"<h3>Pooled {split} metrics</h3>",
        _table([{k[len(split) + 1:]: v for k, v in sorted(metrics.items())
                 if k.startswith(f"{split}_") and ":" not in k
                 and k.rsplit(".", 1)[-1] not in institutions}]),
        "<h3>Per institution</h3>", _table(per_institution),
    ]
    if stats is not None and stats.examples:  # the final model's test statistics
        parts.append("<h3>Final model on the test rows</h3>")
        calibration_png, bands = _calibration(stats)
        parts += [f"<img src='data:image/png;base64,{_roc_and_ks(stats)}'>",
                  f"<img src='data:image/png;base64,{calibration_png}'>",
                  "<h3>Calibration (Jeffreys test: small p = more defaults than predicted)</h3>",
                  _table(bands)]
    if groups:
        parts.append(f"<h3>Approval (PD &lt; {threshold:g}) by group</h3>")
        parts.append(f"<img src='data:image/png;base64,{_approval(groups, threshold)}'>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{''.join(parts)}</body></html>"
