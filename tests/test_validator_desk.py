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


@pytest.mark.parametrize("command", [["report", "0" * 32], ["validate", "0" * 32], ["promote", "m/1", "--approver", "a"],
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


def test_one_way_to_name_a_model_version_on_every_command():
    """Found by a validator's review: `NAME@ALIAS`, `models:/NAME@ALIAS` and `NAME 1` on different
    commands; promotion took `--approver`, rollback `--actor`."""
    import argparse

    from fedrisk.cli import build_parser
    from fedrisk.errors import FedriskInputError
    from fedrisk.model_names import model_uri, parse_model

    assert str(parse_model("fedrisk-credit@challenger")) == "fedrisk-credit@challenger"
    twelve = parse_model("fedrisk-credit/12")
    assert twelve.version == "12" and twelve.uri == "models:/fedrisk-credit/12"
    assert str(parse_model("models:/fedrisk-credit@champion")) == "fedrisk-credit@champion"  # as MLflow prints it
    for bad in ("fedrisk-credit", "fedrisk-credit 1", "fedrisk-credit/one", "a@b@c", "fedrisk-credit/1/2", ""):
        with pytest.raises(FedriskInputError, match="NAME@ALIAS or NAME/VERSION"):
            parse_model(bad)
    assert model_uri("models:/m-0123abcd") == "models:/m-0123abcd" and model_uri("runs:/abc/model") == "runs:/abc/model"
    assert model_uri("fedrisk-fraud/3") == "models:/fedrisk-fraud/3"
    # found by an adversarial review: non-ASCII digits and zero-width characters read as names
    for bad in ("fedrisk-credit/\u0663", "fedrisk\u200b-credit/1", "fedrisk-credit@champ\u200bion"):
        with pytest.raises(FedriskInputError, match="NAME@ALIAS or NAME/VERSION"):
            parse_model(bad)
    assert str(parse_model("fedrisk-credit/007")) == "fedrisk-credit/7"

    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in ("promote", "monitor", "score", "explain"):
        model = next(a for a in subcommands[command]._actions if a.dest == "model")
        assert "NAME@ALIAS or NAME/VERSION" in model.help, command
        assert model.nargs is None or "required unless" in model.help, command  # monitor: or its config's model
    flags = {command: {o for a in subcommands[command]._actions for o in a.option_strings}
             for command in ("promote", "rollback")}
    assert "--approver" in flags["promote"] and "--approver" in flags["rollback"] and "--actor" not in flags["rollback"]
    assert parser.parse_args(["promote", "fedrisk-credit/2", "--approver", "a"]).model == "fedrisk-credit/2"
    with pytest.raises(SystemExit):  # the old two-word form is refused, not misread
        parser.parse_args(["promote", "fedrisk-credit", "2", "--approver", "a"])


def test_a_name_is_a_name_and_a_folder_is_a_folder_on_score_and_explain(tmp_path, monkeypatch):
    """Found by an adversarial review: `score` read a folder called fedrisk-credit/2 instead of the
    registry's version, `explain` read folder out/3 as model out version 3 and refused ./model."""
    from fedrisk.errors import FedriskInputError
    from fedrisk.model_names import model_uri

    monkeypatch.chdir(tmp_path)
    (tmp_path / "fedrisk-credit" / "2").mkdir(parents=True)
    (tmp_path / "model").mkdir()
    assert model_uri("fedrisk-credit/2") == "models:/fedrisk-credit/2"  # the registry's, folder or not
    assert model_uri("./fedrisk-credit/2") == "./fedrisk-credit/2" and model_uri("./model") == "./model"
    assert model_uri(str(tmp_path / "model")) == str(tmp_path / "model")
    with pytest.raises(FedriskInputError, match="no model folder there, and not NAME@ALIAS or NAME/VERSION"):
        model_uri("./not-there")


def test_the_ks_legend_names_the_task_s_positives():
    """Found by a validator's review: the credit KS plot's legend read "positives (defaults, frauds)"."""
    import numpy as np

    from fedrisk.metrics import EvalStats
    from fedrisk.report import roc_ks_figure

    rng = np.random.default_rng(0)
    stats = EvalStats.from_scores(rng.integers(0, 2, 500).astype(float), rng.random(500), np.linspace(0, 1, 11)[1:-1])
    for task, labels in (("credit", ["defaults", "no default"]), ("fraud", ["frauds", "no fraud"])):
        legend = [t.get_text() for t in roc_ks_figure(stats, task).axes[1].get_legend().get_texts()]
        assert legend[:2] == labels and legend[2].startswith("KS ")


def test_unhappy_paths_of_model_names_and_the_registry_guard_are_one_line(tmp_path, monkeypatch, capsys):
    """Tried by hand: `explain fedrisk-credit` said "cannot load model ...: model ...: name ..."
    twice over; `tracking-server --basic-auth --store FILE` ended in a NotADirectoryError traceback."""
    from fedrisk import registry_guard
    from fedrisk.cli import main
    from fedrisk.errors import FedriskInputError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.csv").write_text("x\n1\n")
    assert main(["explain", "fedrisk-credit", "a.csv"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("model 'fedrisk-credit'") == 1 and "cannot load" not in err and len(err.splitlines()) == 1
    (tmp_path / "store").write_text("not a folder")
    with pytest.raises(FedriskInputError, match="not a folder"):
        registry_guard.prepare(tmp_path / "store" / "auth")
    assert main(["federation", "tracking-server", "--basic-auth", "--store", "store"]) == 2
    assert "not a folder" in capsys.readouterr().err
    registry_guard.prepare(tmp_path / "auth")
    (tmp_path / "auth" / "validator.env").unlink()
    with pytest.raises(FedriskInputError, match="validator.env"):
        registry_guard.identity(tmp_path / "auth", "validator")
