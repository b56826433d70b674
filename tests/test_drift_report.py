"""The drift report as a validator reads it (issue 21): the console's columns, the institution
that raised a level named and charted, numbers legible on dark cells, everything inlined."""

from __future__ import annotations

from self_contained import self_contained_problems

from fedrisk.drift_report import csi_chart, psi_chart, window_rows, write_report


def _scope(level, psi, auc=None, drop=None, reasons=()):
    return {"rows": 3000, "psi": psi, "bound": {c: 0.01 for c in psi}, "level": level, "reasons": list(reasons),
            "performance": {} if auc is None else {"auc": auc}, "reference_performance": {"auc": 0.75},
            "drops": {} if drop is None else {"auc": drop}}


def _report():
    windows = []
    for k, (inst_level, age) in enumerate([("green", 0.02), ("orange", 0.31)]):
        inst05 = _scope(inst_level, {"score": 0.05, "age": age}, 0.70, 0.0667,
                        [f"CSI age {age:.3f}"] if inst_level != "green" else [])
        windows.append({"label": f"window-{k + 1}", "severity": None, "level": inst_level,
                        "reasons": [f"inst05: CSI age {age:.3f}"] if inst_level != "green" else [], "retrain": False,
                        "missing": {"inst07": "institution inst07, file w.csv, column 'income': missing"} if k else {},
                        "score_counts": [10, 20, 30, 0], "reference_score_counts": [20, 20, 20, 0],
                        "scopes": {"pooled": _scope("green", {"score": 0.004, "age": age / 4, "income": 0.5}, 0.74, 0.0133),
                                   "inst04": _scope("green", {"score": 0.01, "age": 0.01}),
                                   "inst05": inst05}})
    bands = {"yellow": 0.1, "orange": 0.25, "severe": 0.5}
    return {"model": {"name": "fedrisk-credit", "version": "3"}, "reference": {"score_edges": [0.1, 0.2]},
            "levels": {"psi": bands, "csi": bands, "performance": {"metric": "auc", "mode": "relative", "max_drop": 0.05}},
            "retrain": {"summary": "no retraining"}, "windows": windows}


def test_the_page_carries_the_console_s_columns_and_names_who_raised_a_level(tmp_path):
    report = _report()
    rows = window_rows(report)
    assert rows[1]["max CSI (input)"] == "0.500 (income)" and rows[1]["auc (change)"] == "0.7400 (-1.3%)"
    assert rows[1]["not measured"] == ["institution inst07, file w.csv, column 'income': missing"]
    write_report(report, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert self_contained_problems(page) == [] and page.count("<img src='data:image/png") == 4
    for text in ("max CSI (input)", "auc (change)", "0.500 (income)", "0.7400 (-1.3%)", "not measured: institution inst07",
                 "Level of each scope", ">orange; CSI age 0.310<", "Drift report: fedrisk-credit/3"):
        assert text in page, text


def test_the_institution_that_reached_orange_is_charted_by_name_and_dark_cells_print_white():
    report = _report()
    legend = [t.get_text() for t in psi_chart(report).axes[0].get_legend().get_texts()]
    assert "inst05 (reached orange)" in legend and not any("inst04" in t for t in legend)
    texts = {t.get_text(): t.get_color() for t in csi_chart(report).axes[0].texts}
    assert texts["0.50"] == "white" and texts["0.00"] == "black"  # income's 0.50 at the severe band's colour
