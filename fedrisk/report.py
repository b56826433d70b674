"""The validation report: one self-contained HTML page a validator reads in the MLflow UI.

Plots come from the run's summed statistics only (score histograms by label and group), so
the report shows nothing about any single applicant.
"""

from __future__ import annotations

import base64
import html
import io
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from fedrisk import run_schema
from fedrisk.display import display
from fedrisk.fairness import GroupHistograms, fairness_by_attribute, group_edges
from fedrisk.gate import Verdict

if TYPE_CHECKING:
    from fedrisk.validation import StoredStatistics
from fedrisk.evaluation import smallest_group
from fedrisk.metrics import EvalStats, bin_bounds, calibration_bands, operating_points


def png_base64(fig: Figure) -> str:
    """A chart as base64 PNG, to inline in a page that must render on its own (MLflow's artifact viewer)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


POSITIVES = {"credit": "defaults", "fraud": "frauds"}


def roc_ks_chart(stats: EvalStats, task: str) -> str:
    return png_base64(roc_ks_figure(stats, task))


def roc_ks_figure(stats: EvalStats, task: str) -> Figure:
    """ROC and KS of the final model; the positives named as the task names them."""
    tp, fp = operating_points(stats.hist_pos, stats.hist_neg)
    tp, fp = tp / max(tp[0], 1.0), fp / max(fp[0], 1.0)
    fig = Figure(figsize=(9, 3.6))
    roc, ks = fig.subplots(1, 2)
    roc.plot(fp, tp, lw=1.5)
    roc.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    edges = np.append(bin_bounds(stats.edges)[0], 1.0)
    ks.plot(edges, 1 - tp, label=POSITIVES[task])
    ks.plot(edges, 1 - fp, label=f"no {POSITIVES[task][:-1]}")
    gap = np.argmax(np.abs(tp - fp))
    ks.vlines(edges[gap], 1 - tp[gap], 1 - fp[gap], colors="red", label=f"KS {abs(tp[gap] - fp[gap]):.3f}")
    ks.set(xlabel="predicted probability", ylabel="cumulative share", title="KS")
    ks.legend(fontsize=8)
    return fig


def calibration_chart(stats: EvalStats) -> tuple[str, list[dict[str, float]]]:
    bands = calibration_bands(stats.hist_pos, stats.hist_neg, stats.score_sum_pos + stats.score_sum_neg, stats.edges)
    fig = Figure(figsize=(4.5, 3.6))
    ax = fig.subplots()
    ax.plot([b["predicted"] for b in bands], [b["observed"] for b in bands], "o-")
    top = max([b["predicted"] for b in bands] + [b["observed"] for b in bands] + [0.05])
    ax.plot([0, top], [0, top], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="predicted rate", ylabel="observed rate", title="Calibration by score band")
    return png_base64(fig), bands


VERDICT_COLOURS = {"pass": "#1a7f37", "warn": "#b58100", "block": "#c62828"}
MECHANISM = re.compile(r"^epsilon_([a-z_]+)\.")


def anchor(title: str) -> str:
    """The id of a report section, for the table of contents."""
    return "s-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def summary_block(verdict: str | None, policy: str | None, rules: list[dict[str, Any]], metrics: dict[str, float],
                  tags: dict[str, str], split: str, sections: list[str]) -> str:
    """What a validator needs first, on top of every report: the verdict and the rules that
    decided it, the model and its alias, the date, the headline figures with their intervals, ε
    at its δ per mechanism, the calibration's status, and where the rest is."""
    def rule(r: dict[str, Any]) -> str:
        return f"{r['metric']} {r['comparator']} {r['threshold']:g}: {display(r.get('value'))}"

    def with_interval(name: str) -> str:
        key = run_schema.split_metric(split, name)
        if key not in metrics:
            return "-"
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        return display(metrics[key]) + (f" [{display(low)}, {display(high)}]" if low is not None else "")

    mechanisms: dict[str, float] = {}
    for key, value in metrics.items():
        found = MECHANISM.match(key)
        if found and found.group(1) not in ("campaign", "final", "max"):
            mechanisms[found.group(1)] = max(mechanisms.get(found.group(1), 0.0), value)
    calibration = metrics.get(run_schema.split_metric(split, "calibration_p"))
    rows = {
        "model": f"{tags.get(run_schema.GATE_MODEL_VERSION, 'not registered')} (alias "
                 f"{tags.get(run_schema.GATE_ALIAS, '-')})",
        "report date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "broken rules": "; ".join(rule(r) for r in rules if r.get("outcome") in ("block", "warn", "missing")) or "none",
        "unresolved rules": "; ".join(rule(r) for r in rules if r.get("outcome") in ("unresolved", "not evaluated"))
                            or "none",
        f"AUC ({split}, 95 % interval)": with_interval("auc"),
        f"KS ({split})": with_interval("ks"),
        "Gini": with_interval("gini"),
        "privacy": tags.get(run_schema.EPSILON, "no DP"),
        "epsilon per mechanism (max over institutions)": "; ".join(
            f"{m}: {display(v)}" for m, v in sorted(mechanisms.items())) or "-",
        "calibration": "-" if calibration is None else (
            f"FAILS: a score band defaults more often than predicted (calibration_p {display(calibration)})"
            if calibration < 0.01 else f"no band beyond chance (calibration_p {display(calibration)})"),
    }
    colour = VERDICT_COLOURS.get(verdict or "", "#555")
    toc = "".join(f"<li><a href='#{anchor(t)}'>{html.escape(t)}</a></li>" for t in sections)
    return (f"<div id='summary'><h2 style='color:{colour}'>Verdict: {html.escape((verdict or 'none').upper())} "
            f"(policy {html.escape(policy or '-')})</h2>{html_table([{'item': k, 'value': v} for k, v in rows.items()])}"
            f"<p>Contents:</p><ul>{toc}</ul></div>")


def calibration_rows(bands: list[dict[str, float]], level: float = 0.01) -> str:
    """The calibration table, the bands that default more often than predicted beyond chance
    (Jeffreys p below `level` over the number of bands) marked in red: what `calibration_p` judges."""
    if not bands:
        return "<p>none</p>"
    cut = level / len(bands)
    head = "".join(f"<th>{k}</th>" for k in (*bands[0], "finding"))
    body = "".join(
        ("<tr style='background:#fde0dc'>" if b["jeffreys_p"] < cut else "<tr>")
        + "".join(f"<td>{html.escape(display(v))}</td>" for v in b.values())
        + f"<td>{'more defaults than predicted' if b['jeffreys_p'] < cut else '-'}</td></tr>" for b in bands)
    return f"<table><tr>{head}</tr>{body}</table>"


def approval_chart(groups: GroupHistograms, threshold: float, edges: np.ndarray, noise: float = 0.0) -> str:
    attributes = sorted(groups)
    fig = Figure(figsize=(4 * max(len(attributes), 1), 3.2))
    axes = fig.subplots(1, max(len(attributes), 1))
    for ax, attribute in zip(np.atleast_1d(axes), attributes):
        minimum = smallest_group(noise, len(edges) + 1)
        rates = fairness_by_attribute(groups[attribute], threshold, edges, minimum)["approval_rate"]
        ax.bar(list(rates), list(rates.values()))
        ax.set(title=f"approval rate by {attribute}", ylim=(0, 1))
    return png_base64(fig)


def group_rows(groups: GroupHistograms, threshold: float, edges: np.ndarray, noise: float = 0.0) -> list[dict[str, Any]]:
    """Each protected group's size, approval rate, TPR and FPR (approval among those who repaid and
    who defaulted) and AUC: the rates the fairness gaps are differences of."""
    minimum = smallest_group(noise, len(edges) + 1)
    rows = []
    for attribute, by_group in sorted(groups.items()):
        found = fairness_by_attribute(by_group, threshold, edges, minimum)
        rows += [{"attribute": attribute, "group": group, "rows": round(size),
                  "approval rate": found["approval_rate"][group], "TPR (approved | repaid)": found["approved_repaid"][group],
                  "FPR (approved | defaulted)": found["approved_defaulted"][group], "AUC": found["auc"][group]}
                 for group, size in found["groups"].items()]
    return rows


def importance_rows(metrics: dict[str, float]) -> list[dict[str, Any]]:
    """AUC lost with each input blanked (`evaluation.importance`), largest first."""
    prefix = run_schema.importance_metric("")
    found = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
    return [{"input": k, "AUC lost when blanked": v} for k, v in sorted(found.items(), key=lambda kv: -kv[1])]


def champion_rows(metrics: dict[str, float], institutions: list[str], champion: dict[str, float],
                  champion_institutions: list[str], split: str) -> list[dict[str, Any]]:
    """The pooled figures both runs logged, side by side with the change: what promotion would trade."""
    mine, theirs = run_schema.of_split(metrics, split, institutions), run_schema.of_split(champion, split, champion_institutions)
    keys = [k for k in mine if k in theirs and not k.endswith(run_schema.INTERVAL_SUFFIXES) and ":" not in k]
    return [{"metric": k, "this run": mine[k], "champion": theirs[k], "change": mine[k] - theirs[k]} for k in keys]


# The task's headline figures of each institution: label -> metric (None: its epsilon).
PER_INSTITUTION: dict[str, dict[str, str | None]] = {
    "credit": {"AUC": "auc", "KS": "ks", "default rate": "default_rate",
               "approval gap (sex)": run_schema.fairness_metric("approval_rate_difference", "sex"), "epsilon": None},
    "fraud": {"AUPRC": "average_precision", "AUC": "auc", "recall at fixed FPR": "recall_at_fpr",
              "recall at budget": "recall_at_budget", "fraud value caught": "amount_recall_at_budget",
              "alerts/day": "alerts_per_day", "fraud rate": "fraud_rate", "epsilon": None},
}


def per_institution_rows(metrics: dict[str, float], task: str, institutions: list[str],
                         split: str = run_schema.TEST) -> list[dict[str, Any]]:
    """The task's headline figures of each institution, NaN where a run lacks one."""
    pooled = run_schema.of_split(metrics, split, institutions)
    recall = next((k for k in pooled if k.startswith("recall_at_fpr_")), "recall_at_fpr")

    def name_of(metric: str | None, institution: str) -> str:
        if metric is None:
            return run_schema.at("epsilon", institution)
        return run_schema.split_metric(split, recall if metric == "recall_at_fpr" else metric, institution)

    return [{"institution": name, **{label: metrics.get(name_of(metric, name), float("nan"))
                                     for label, metric in PER_INSTITUTION[task].items()}}
            for name in institutions]


def aggregation_rows(tags: dict[str, str], excluded: dict[str, Any]) -> list[dict[str, str]]:
    """How updates were combined, any poisoning drill, and every institution left out and why
    (from the run's list of exclusions, one row each: not from a tag MLflow cuts)."""
    rows = [{"what": "aggregation", "detail": tags.get(run_schema.ROBUST, "-")}]
    if run_schema.DRILL in tags:
        rows.append({"what": "poisoning drill (not a production campaign)", "detail": tags[run_schema.DRILL]})
    for name, entry in sorted(excluded.items()):
        entry = entry if isinstance(entry, dict) else {"reason": entry}
        rows.append({"what": f"excluded ({entry.get('kind', '-')}, round {entry.get('round', '-')})",
                     "detail": str(entry.get("reason", name))})
    return rows


def html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(display(v))}</td>" for v in r.values()) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_report(
    run_id: str,
    verdict: Verdict,
    metrics: dict[str, float],
    tags: dict[str, str],
    institutions: list[str],
    stored: StoredStatistics | None,
    split: str = "test",
    excluded: dict[str, Any] | None = None,
    champion: tuple[str, dict[str, float], list[str]] | None = None,
) -> str:
    """HTML of the verdict, every rule, the plots and the per-institution figures, the summary on top."""
    rules = [
        {"outcome": r.outcome, "metric": r.metric, "scope": r.scope, "rule": f"{r.comparator} {r.threshold:g}",
         "value": "-" if r.value is None else r.value,
         "95 % interval": "-" if r.interval is None else f"{r.interval[0]:.4f} to {r.interval[1]:.4f}",
         "where": r.where, "severity": r.severity,
         "why": r.description + (f" ({r.note})" if r.note else "")}
        for r in verdict.results
    ]
    per_institution = per_institution_rows(metrics, tags.get(run_schema.TASK, "credit"), institutions, split)
    sections: list[tuple[str, str]] = [
        ("Rules", html_table(rules)),
        ("Aggregation and exclusions", html_table(aggregation_rows(tags, excluded or {}))),
        (f"Pooled {split} metrics", html_table([{k: v for k, v in run_schema.of_split(metrics, split, institutions)
                                                 .items() if ":" not in k}])),
        ("Per institution", html_table(per_institution)),
    ]
    if champion is not None:  # (its name/version, metrics, institutions)
        sections.append((f"Against the champion {champion[0]}",
                         html_table(champion_rows(metrics, institutions, champion[1], champion[2], split))))
    if importance := importance_rows(metrics):
        sections.append(("Feature importance (validation)", html_table(importance)))
    if stored is not None and stored.stats.examples:  # the final model's test statistics
        stats = stored.stats
        calibration_png, bands = calibration_chart(stats)
        roc_ks_png = roc_ks_chart(stats, tags.get(run_schema.TASK, "credit"))
        sections += [
            ("Final model on the test rows", f"<img src='data:image/png;base64,{roc_ks_png}'>"
                                             f"<img src='data:image/png;base64,{calibration_png}'>"),
            ("Calibration (Jeffreys test: small p = more defaults than predicted)", calibration_rows(bands)),
        ]
        if stored.groups:
            chart = approval_chart(stored.groups, stored.threshold, group_edges(stats.edges, stored.threshold), stored.noise)
            rows = group_rows(stored.groups, stored.threshold, group_edges(stats.edges, stored.threshold), stored.noise)
            sections.append((f"Approval (PD < {stored.threshold:g}) by group",
                             f"<img src='data:image/png;base64,{chart}'>{html_table(rows)}"))
    summary = summary_block(verdict.verdict, verdict.policy, verdict.to_dict()["results"], metrics, tags, split,
                            [title for title, _ in sections])
    parts = [f"<h1>Validation report</h1><p>run <code>{html.escape(run_id)}</code></p>", summary,
             *(f"<h3 id='{anchor(title)}'>{html.escape(title)}</h3>{body}" for title, body in sections)]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{''.join(parts)}</body></html>"
