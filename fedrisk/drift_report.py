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
        raised = [w["scopes"][name]["level"] for w in windows if name in w["scopes"]]
        worst = max(raised, key=LEVELS.index, default="green")
        if LEVELS.index(worst) >= LEVELS.index("orange"):  # named: the reader looks for who raised it
            ax.plot(labels, series, lw=1.2, marker=".", label=f"{name} (reached {worst})")
        else:
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
            dark = matrix[i, j] > 0.6 * image.norm.vmax  # YlOrRd's upper range: white reads, black does not
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
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


def window_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per window, the pooled scope's measures as the console prints them and the page shows them."""
    rule = report["levels"]["performance"]
    metric = rule["metric"]
    rows = []
    for window in report["windows"]:
        pooled = window["scopes"][POOLED]
        csi = {c: v for c, v in pooled["psi"].items() if c != SCORE and v is not None}
        top = max(csi, key=csi.get) if csi else None
        perf, drop = pooled["performance"].get(metric), pooled["drops"].get(metric)
        change = "" if drop is None else f" ({-drop:+.1%})" if rule["mode"] == "relative" else f" ({-drop:+.4f})"
        rows.append({"window": window["label"], "rows": pooled["rows"],
                     "score PSI": "-" if pooled["psi"][SCORE] is None else f"{pooled['psi'][SCORE]:.3f}",
                     "max CSI (input)": f"{csi[top]:.3f} ({top})" if top else "-",
                     f"{metric} (change)": "no labels (2 classes)" if perf is None else f"{perf:.4f}{change}",
                     "level": window["level"], "why": window["reasons"],
                     "not measured": list(window["missing"].values())})
    return rows


def _level_cell(level: str, text: str = "") -> str:
    ink = "black" if level == "yellow" else "white"
    return f"<td style='background:{COLOURS[level]};color:{ink}'>{html.escape(text or level)}</td>"


def _html(report: dict[str, Any], images: dict[str, str]) -> str:
    rows = window_rows(report)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0] if k != "not measured") if rows else ""
    body = "".join(
        "<tr>" + "".join(_level_cell(v) if k == "level" else f"<td>{html.escape(str(v) if k != 'why' else '; '.join(v))}</td>"
                         for k, v in row.items() if k != "not measured") + "</tr>"
        + "".join(f"<tr><td></td><td colspan='6'>not measured: {html.escape(m)}</td></tr>" for m in row["not measured"])
        for row in rows)
    # every scope's level per window, with its first reason: the institution that raised a level is named
    windows = report["windows"]
    scopes = [POOLED, *sorted({s for w in windows for s in w["scopes"] if s != POOLED})]
    levels = "".join(
        f"<tr><td>{html.escape(scope)}</td>" + "".join(
            _level_cell(w["scopes"][scope]["level"], "; ".join([w["scopes"][scope]["level"], *w["scopes"][scope]["reasons"][:1]]))
            if scope in w["scopes"] else "<td>-</td>" for w in windows) + "</tr>"
        for scope in scopes)
    model = report["model"]
    pictures = "".join(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{png}'>"
                       for title, png in images.items())  # inlined: the page renders inside MLflow's viewer
    return (
        "<html><head><meta charset='utf-8'><title>fedrisk drift report</title></head><body>"
        f"<h1>Drift report: {html.escape(model['name'])}/{model['version']}</h1>"
        f"<p>{html.escape(report['retrain']['summary'])}</p>"
        f"<h2>Windows (pooled)</h2><table border='1' cellpadding='4'><tr>{head}</tr>{body}</table>"
        "<h2>Level of each scope</h2><table border='1' cellpadding='4'><tr><th>scope</th>"
        + "".join(f"<th>{html.escape(w['label'])}</th>" for w in windows) + f"</tr>{levels}</table>"
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
