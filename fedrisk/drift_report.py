"""The drift report of a monitoring run: charts and an HTML page, drawn from aggregates only."""

from __future__ import annotations

import html
import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fedrisk.drift import SCORE
from fedrisk.report import png_base64
from fedrisk.strict_json import nan_to_null
from fedrisk.warning_levels import LEVELS, POOLED

COLOURS = {"green": "#2e7d32", "yellow": "#f9a825", "orange": "#ef6c00", "red": "#c62828"}


def _bands(ax: Axes, bands: dict[str, float], top: float) -> None:
    edges = [0.0, bands["yellow"], bands["orange"], bands["severe"], max(top, bands["severe"] * 1.2)]
    for level, low, high in zip(LEVELS, edges[:-1], edges[1:]):
        ax.axhspan(low, high, color=COLOURS[level], alpha=0.08)


def psi_chart(report: dict[str, Any]) -> Figure:
    """Score PSI per window, pooled and per institution, on the warning bands."""
    windows = report["windows"]
    labels = [w["label"] for w in windows]
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    values = [w["scopes"][POOLED]["psi"][SCORE] for w in windows]
    institutions = sorted({s for w in windows for s in w["scopes"] if s != POOLED})
    top = float(np.nanmax([*values, 0.3]))
    for name in institutions:
        series = np.array([w["scopes"].get(name, {}).get("psi", {}).get(SCORE, np.nan) for w in windows], dtype=float)
        ax.plot(labels, series, color="grey", lw=0.8, alpha=0.6)
        top = float(np.nanmax([top, *series]))
    ax.plot(labels, values, color="black", lw=2, label="pooled")
    ax.scatter(labels, values, s=80, zorder=3,
               c=[COLOURS[w["scopes"][POOLED]["level"]] for w in windows], edgecolors="black")
    _bands(ax, report["levels"]["psi"], top)
    ax.set_ylim(0, max(top, report["levels"]["psi"]["severe"]) * 1.1)
    ax.set_ylabel("PSI of the score")
    ax.set_title("Score PSI per window (grey: each institution; dots: pooled level)")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def csi_chart(report: dict[str, Any]) -> Figure:
    """Pooled PSI of the score and CSI of every input, window by window."""
    windows = report["windows"]
    columns = [SCORE, *sorted(c for c in windows[0]["scopes"][POOLED]["psi"] if c != SCORE)]
    matrix = np.array([[w["scopes"][POOLED]["psi"][c] for w in windows] for c in columns])
    fig = Figure(figsize=(1.2 * len(windows) + 3, 0.4 * len(columns) + 1.5))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="YlOrRd", vmin=0, vmax=max(report["levels"]["csi"]["severe"], 1e-9),
                      aspect="auto")
    ax.set_xticks(range(len(windows)), [w["label"] for w in windows], rotation=30)
    ax.set_yticks(range(len(columns)), columns)
    for i in range(len(columns)):
        for j in range(len(windows)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="PSI / CSI (pooled)")
    ax.set_title("Stability of the score and of each input")
    fig.tight_layout()
    return fig


def score_chart(report: dict[str, Any]) -> Figure:
    """Share of rows per reference score decile: reference, first and last window."""
    edges = report["reference"]["score_edges"]
    if edges:
        names = [f"< {edges[0]:.3f}"] + [f"{a:.3f}-{b:.3f}" for a, b in pairwise(edges)] + [f">= {edges[-1]:.3f}"]
    else:  # nine tenths of the training scores in the top fine bin: one bin
        names = ["all scores"]
    first, last = report["windows"][0], report["windows"][-1]
    shown = [("reference (training, in the last window's mix)", np.asarray(last["reference_score_counts"], dtype=float))]
    for window in (first, last):
        shown.append((window["label"], np.asarray(window["score_counts"], dtype=float)))
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    width = 0.8 / len(shown)
    for k, (label, counts) in enumerate(shown):
        share = counts[:-1] / max(counts.sum(), 1)  # the last bin is missing: a score never is
        ax.bar(np.arange(len(share)) + k * width, share, width, label=label)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("share of rows")
    ax.set_title("Score distribution on the reference deciles (pooled)")
    ax.legend()
    fig.tight_layout()
    return fig


def performance_chart(report: dict[str, Any]) -> Figure | None:
    """The rule's metric per window against its validation reference and retraining line."""
    rule = report["levels"]["performance"]
    metric = rule["metric"]
    windows = report["windows"]
    labels = [w["label"] for w in windows]
    values = np.array([w["scopes"][POOLED]["performance"].get(metric, np.nan) for w in windows], dtype=float)
    # the validation reference of the institutions that reported, in the window's mix
    reference = np.array([w["scopes"][POOLED]["reference_performance"].get(metric, np.nan) for w in windows],
                         dtype=float)
    if np.all(np.isnan(values)) or np.all(np.isnan(reference)):
        return None
    limit = reference * (1 - rule["max_drop"]) if rule["mode"] == "relative" else reference - rule["max_drop"]
    fig = Figure(figsize=(8, 3.5))
    ax = fig.subplots()
    ax.plot(labels, values, marker="o", color="black", label=f"pooled {metric}")
    ax.plot(labels, reference, color=COLOURS["green"], ls="--", label="validation reference")
    ax.plot(labels, limit, color=COLOURS["orange"], ls="--", label="retraining below")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per window")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _html(report: dict[str, Any], images: dict[str, str]) -> str:
    rows = []
    for w in report["windows"]:
        pooled = w["scopes"][POOLED]
        perf = pooled["performance"].get(report["levels"]["performance"]["metric"])
        rows.append(
            f"<tr><td>{html.escape(w['label'])}</td><td>{pooled['rows']}</td><td>{pooled['psi'][SCORE]:.3f}</td>"
            f"<td>{'' if perf is None else f'{perf:.4f}'}</td>"
            f"<td style='background:{COLOURS[w['level']]};color:white'>{w['level']}</td>"
            f"<td>{html.escape('; '.join(w['reasons']))}</td></tr>"
        )
    model = report["model"]
    pictures = "".join(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{png}'>"
                       for title, png in images.items())  # inlined: the page renders inside MLflow's viewer
    return (
        "<html><head><meta charset='utf-8'><title>fedrisk drift report</title></head><body>"
        f"<h1>Drift report: {html.escape(model['name'])} version {model['version']}</h1>"
        f"<p>{html.escape(report['retrain']['summary'])}</p>"
        "<table border='1' cellpadding='4'><tr><th>window</th><th>rows</th><th>score PSI</th>"
        f"<th>{report['levels']['performance']['metric']}</th><th>level</th><th>why</th></tr>{''.join(rows)}</table>"
        f"{pictures}</body></html>"
    )


def write_report(report: dict[str, Any], folder: Path) -> list[Path]:
    """report.json, the charts as PNG and report.html in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(nan_to_null(report), indent=1))
    charts = {"Score PSI per window": ("psi_by_window.png", psi_chart(report)),
              "PSI and CSI per input": ("csi_by_feature.png", csi_chart(report)),
              "Score distribution shift": ("score_distribution.png", score_chart(report)),
              "Performance": ("performance.png", performance_chart(report))}
    images = {}
    for title, (name, fig) in charts.items():
        if fig is None:
            continue
        fig.savefig(folder / name, dpi=90, bbox_inches="tight")
        images[title] = png_base64(fig)
    (folder / "report.html").write_text(_html(report, images))
    return sorted(folder.iterdir())
