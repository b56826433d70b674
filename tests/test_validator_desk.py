"""What a validator opens (issue 21): pages that render inside MLflow, values as people write
them, commands that never leave an empty store behind."""

from __future__ import annotations

import pytest


def test_the_report_check_catches_what_does_not_render_in_mlflow():
    from self_contained import self_contained_problems

    assert self_contained_problems("<h1>A</h1><p>x</p><h2>B</h2><img src='data:image/png;base64,AA=='>") == []
    assert self_contained_problems("<h2>Score PSI per window</h2><img src='psi_by_window.png'>") == [
        "image not inlined: src='psi_by_window.png'"]
    assert self_contained_problems("<h2>Performance</h2><h2>Next</h2><p>x</p>") == ["empty section: Performance"]
    assert self_contained_problems("<h2>Method</h2><h3>training</h3><table></table>") == []  # content in subsections
    assert self_contained_problems("<h2>A</h2><h3>b</h3>") == ["empty section: b"]


def test_report_values_read_as_a_person_writes_them():
    """Found by a validator's review (issue 21): `delta 0.0000`, `4217.0000`, `False`, `['fedrisk-credit/1']`."""
    from fedrisk.display import display
    from fedrisk.report import html_table

    assert [display(v) for v in (1e-05, 4217.0, 4217, 0.78123, 1.0, 0.0, None, False, True, ["fedrisk-credit/1"],
                                 {"inst01": 3.0, "inst02": 2.5}, float("nan"))] == [
        "1.00e-05", "4,217", "4,217", "0.7812", "1.0000", "0.0000", "-", "no", "yes", "fedrisk-credit/1",
        "inst01: 3; inst02: 2.5000", "-"]  # 1.0 and 0.0 stay metrics (an AUC of 1); 3.0 is a whole number
    page = html_table([{"delta": 1e-06, "rows": 4217.0, "override": False}])
    assert "1.00e-06" in page and "4,217" in page and ">no<" in page and "False" not in page


@pytest.mark.parametrize("command", [["report", "0" * 32], ["validate", "0" * 32], ["promote", "m", "1", "--approver", "a"],
                                     ["rollback", "m", "--reason", "x"], ["audit", "privacy", "0" * 32]])
def test_a_command_reading_a_store_that_is_not_there_creates_none(tmp_path, monkeypatch, capsys, command):
    """Found by a validator's review (issue 21): `fedrisk report` without a store left an empty ./mlflow.db."""
    from fedrisk.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    assert "no MLflow store at" in capsys.readouterr().err and not (tmp_path / "mlflow.db").exists()


def test_every_option_says_what_it_is_and_the_exit_codes_are_in_the_help():
    """Found by a validator's review: `--tracking-uri` had no help and no stated default; exit code 3 was in no help."""
    import argparse

    from fedrisk.cli import build_parser

    parser = build_parser()
    assert "3 blocked by the gate" in parser.format_help()

    def walk(p: argparse.ArgumentParser, path: str):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, f"{path} {name}")
            elif action.dest == "tracking_uri":
                yield path, action

    found = list(walk(parser, "fedrisk"))
    assert len(found) >= 8
    for path, action in found:
        assert action.help and "default" in action.help, path
