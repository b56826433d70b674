"""The bad-input corpus (issue 16): each bad file, written next to a good institution's, ends in
one line naming institution, file and column (where there is one) and exit code 2, or loads as
it should; never a traceback, a hang or a silent coercion. A withdrawn file stops its
institution at the next message, not rounds later from a cache."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedrisk.config import DataSpec, config_to_json, load_config
from fedrisk.data import load_institution
from fedrisk.errors import FedriskInputError
from fedrisk.generators import credit
from fedrisk.sources import read_table

SEED = 42
BAD = "inst01"  # the institution whose file is bad; inst02's is good


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    return credit.generate_institution(0, 3, 3000, 9)


def _with(frame: pd.DataFrame, column: str, rows: slice | list[int], value: object) -> pd.DataFrame:
    out = frame.copy()
    out[column] = out[column].astype(object)
    out.loc[rows, column] = value
    return out


def _csv_lines(frame: pd.DataFrame, path: Path, edit: Callable[[list[str]], None]) -> Path:
    lines = frame.to_csv(index=False).splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _extra_field(lines: list[str]) -> None:
    lines[4] += ",7"  # file line 5 (line 1 is the header)


def _missing_field(lines: list[str]) -> None:
    lines[9] = lines[9].rsplit(",", 1)[0]  # file line 10: pandas would fill the label with NaN or shift the row


def _symlink_loop(path: Path) -> Path:
    other = path.with_name("loop.csv")
    path.symlink_to(other)
    other.symlink_to(path)
    return path


def _parquet_duplicate(path: Path, frame: pd.DataFrame) -> Path:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table.append_column("income", pa.array(frame["loan_amount"])), path)
    return path


# Each case: (writer of the bad file at the given path, its suffix, what the one line says, the column it names).
Writer = Callable[[Path, pd.DataFrame], Path]
REFUSED: dict[str, tuple[Writer, str, list[str], str | None]] = {
    "ragged_extra_field": (lambda p, f: _csv_lines(f, p, _extra_field), ".csv",
                           ["line 5 has 17 fields", "the header has 16"], None),
    "ragged_missing_field": (lambda p, f: _csv_lines(f, p, _missing_field), ".csv",
                             ["line 10 has 15 fields", "the header has 16"], None),
    "semicolon_delimiter": (lambda p, f: (f.to_csv(p, sep=";", decimal=",", index=False), p)[1], ".csv",
                            ["semicolon", "comma-separated"], None),
    "tab_delimiter": (lambda p, f: (f.to_csv(p, sep="\t", index=False), p)[1], ".csv",
                      ["tab", "comma-separated"], None),
    "not_utf8": (lambda p, f: (_with(f, "region", [3], "Münster").to_csv(p, index=False, encoding="cp1252"), p)[1],
                 ".csv", ["not UTF-8"], None),
    "header_only": (lambda p, f: (f.iloc[:0].to_csv(p, index=False), p)[1], ".csv", ["no rows"], None),
    "zero_bytes": (lambda p, f: (p.write_bytes(b""), p)[1], ".csv", ["empty file"], None),
    "only_whitespace": (lambda p, f: (p.write_text("  \n\t\n   \n"), p)[1], ".csv", ["empty file"], None),
    "duplicate_column": (lambda p, f: (f.rename(columns={"loan_amount": "income"}).to_csv(p, index=False), p)[1],
                         ".csv", ["appears twice"], "income"),
    "duplicate_column_by_case": (lambda p, f: (f.assign(SEX=f["sex"]).to_csv(p, index=False), p)[1], ".csv",
                                 ["same name as column 'sex'"], "SEX"),
    "duplicate_column_by_spaces": (lambda p, f: (f.assign(**{" Age ": f["age"]}).to_csv(p, index=False), p)[1],
                                   ".csv", ["same name as column 'age'"], " Age "),
    "unnamed_column": (lambda p, f: (f.to_csv(p, index=True), p)[1], ".csv", ["column 1 has no name"], None),
    "target_three_values": (lambda p, f: (_with(f, "default", slice(0, 10), 2).to_csv(p, index=False), p)[1], ".csv",
                            ["not binary", "3 distinct values"], "default"),
    "target_strings": (lambda p, f: (f.assign(default=np.where(f["default"] == 1, "yes", "no")).to_csv(p, index=False),
                                     p)[1], ".csv", ["not binary"], "default"),
    "target_nan": (lambda p, f: (_with(f, "default", [1, 2], np.nan).to_csv(p, index=False), p)[1], ".csv",
                   ["2 missing values"], "default"),
    "inf_in_numeric": (lambda p, f: (_with(f, "income", [3], np.inf).to_csv(p, index=False), p)[1], ".csv",
                       ["infinite"], "income"),
    "strings_in_numeric": (lambda p, f: (_with(f, "income", [7, 8], "lots").to_csv(p, index=False), p)[1], ".csv",
                           ["2 non-numeric values", "data.categorical"], "income"),
    "directory": (lambda p, f: (p.mkdir(), p)[1], ".csv", ["not a file"], None),
    "symlink_loop": (lambda p, f: _symlink_loop(p), ".csv", ["a symbolic link that loops"], None),
    "parquet_garbage": (lambda p, f: (p.write_bytes(b"PAR1 this is not parquet"), p)[1], ".parquet",
                        ["cannot read file"], None),
    "parquet_duplicate_column": (_parquet_duplicate, ".parquet", ["appears twice"], "income"),
    "parquet_duplicate_by_case": (lambda p, f: (f.assign(SEX=f["sex"]).to_parquet(p, index=False), p)[1], ".parquet",
                                  ["same name as column 'sex'"], "SEX"),
}


def _spec(tmp_path: Path, bad: Path, good_frame: pd.DataFrame) -> DataSpec:
    neighbour = tmp_path / "inst02.csv"
    credit.generate_institution(1, 3, 3000, 9).to_csv(neighbour, index=False)
    return DataSpec(source="files", files={BAD: str(bad), "inst02": str(neighbour)})


# A column of numbers with a stray string becomes a category when data.categorical is not given:
# the refusal belongs to `fedrisk.checks.resolve_columns` (where data.categorical can say otherwise).
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_bad_file_ends_in_one_line_naming_institution_file_and_column(tmp_path, good, case):
    write, suffix, says, column = REFUSED[case]
    bad = write(tmp_path / f"{BAD}{suffix}", good)
    with pytest.raises(FedriskInputError) as err:
        load_institution(_spec(tmp_path, bad, good), BAD, SEED)
    line = err.value.one_line()
    assert "\n" not in line and str(err.value) == line
    assert line.startswith(f"institution {BAD}, file {bad}"), line
    if column is not None:
        assert f"column '{column}'" in line, line
    for words in says:
        assert words in line, line


def test_the_good_neighbour_of_a_bad_file_still_loads(tmp_path, good):
    bad = _csv_lines(good, tmp_path / f"{BAD}.csv", _extra_field)
    assert len(load_institution(_spec(tmp_path, bad, good), "inst02", SEED).frame) > 0


def test_a_low_cardinality_numeric_column_with_a_stray_string_is_not_silently_a_category(tmp_path, good):
    """past_delinquencies holds a few integers: one stray string would make it a category."""
    bad = tmp_path / f"{BAD}.csv"
    _with(good, "past_delinquencies", [5], "unknown").to_csv(bad, index=False)
    try:
        data = load_institution(_spec(tmp_path, bad, good), BAD, SEED)
    except FedriskInputError as err:
        assert "column 'past_delinquencies'" in err.one_line()
        return
    assert "past_delinquencies" not in data.columns.categorical, "a stray string silently made it a category"


# ---------------------------------------------------------------- files that must read correctly


def test_a_utf8_bom_stays_out_of_the_first_column_name(tmp_path, good):
    bad = tmp_path / f"{BAD}.csv"
    first = ["default", *[c for c in good.columns if c != "default"]]  # the target first: a BOM would hide it
    good[first].to_csv(bad, index=False, encoding="utf-8-sig")
    assert bad.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_table(bad, BAD).columns[0] == "default"
    data = load_institution(_spec(tmp_path, bad, good), BAD, SEED)
    np.testing.assert_array_equal(data.frame["default"], good["default"])


def test_a_utf16_file_reads_like_its_utf8_copy(tmp_path, good):
    bad = tmp_path / f"{BAD}.csv"
    good.to_csv(bad, index=False, encoding="utf-16")
    good.to_csv(tmp_path / "utf8.csv", index=False)
    pd.testing.assert_frame_equal(read_table(bad, BAD), read_table(tmp_path / "utf8.csv", BAD))
    assert len(load_institution(_spec(tmp_path, bad, good), BAD, SEED).frame) == len(good)


def test_column_names_come_back_casefolded_and_stripped(tmp_path, good):
    path = tmp_path / "names.csv"
    good.rename(columns={"income": " Income ", "region": "REGION"}).to_csv(path, index=False)
    columns = list(read_table(path).columns)
    assert "income" in columns and "region" in columns and columns == [c.casefold() for c in good.columns]


def test_a_2000_column_file_loads(tmp_path, good):
    rng = np.random.default_rng(0)
    small = good.iloc[:600].reset_index(drop=True)
    extra = pd.DataFrame(rng.integers(0, 10, size=(len(small), 2000 - small.shape[1])),
                         columns=[f"x{i:04d}" for i in range(2000 - small.shape[1])])
    wide = pd.concat([small, extra], axis=1)
    wide.to_csv(tmp_path / f"{BAD}.csv", index=False)
    data = load_institution(_spec(tmp_path, tmp_path / f"{BAD}.csv", good), BAD, SEED)
    assert len(data.columns.features) == 2000 - 1 - 2 - 1  # less target, protected (2), customer_id


def test_a_huge_finite_value_is_refused_in_one_line_or_loads(tmp_path, good):
    """1e308 is finite; its refusal (winsorisation, range checks) is another change's: this case
    asserts only that it never ends in a traceback."""
    bad = tmp_path / f"{BAD}.csv"
    _with(good, "income", [3], 1e308).to_csv(bad, index=False)
    try:
        data = load_institution(_spec(tmp_path, bad, good), BAD, SEED)
    except FedriskInputError as err:
        assert "\n" not in err.one_line() and "column 'income'" in err.one_line()
    else:
        assert data.frame["income"].max() == 1e308


def test_a_duplicate_institution_key_in_yaml_is_one_line(tmp_path):
    (tmp_path / "campaign.yaml").write_text("task: credit\ndata:\n  source: files\n  files:\n    inst01: a.csv\n"
                                            "    inst02: b.csv\n    inst01: c.csv\n")
    with pytest.raises(FedriskInputError) as err:
        load_config(tmp_path / "campaign.yaml")
    assert err.value.one_line() == f"file {tmp_path / 'campaign.yaml'}: key 'inst01' appears twice (lines 5 and 7)"


# ---------------------------------------------------------------- through the CLI, before any engine


@pytest.mark.parametrize("case", ["ragged_extra_field", "semicolon_delimiter", "duplicate_column_by_case",
                                  "zero_bytes"])
def test_the_cli_exits_2_with_the_one_line_before_flower_starts(tmp_path, good, monkeypatch, capsys, case):
    from fedrisk import launcher
    from fedrisk.cli import main

    def engine(*args, **kwargs):
        raise AssertionError("Flower's engine started on a bad input")

    monkeypatch.setattr(launcher, "_run_engine", engine)
    monkeypatch.chdir(tmp_path)
    write, suffix, says, column = REFUSED[case]
    write(tmp_path / f"{BAD}{suffix}", good)
    for index, name in ((1, "inst02"), (2, "inst03")):
        credit.generate_institution(index, 3, 3000, 9).to_csv(tmp_path / f"{name}.csv", index=False)
    (tmp_path / "campaign.yaml").write_text(
        f"task: credit\ndata:\n  source: files\n  files:\n    {BAD}: {BAD}{suffix}\n    inst02: inst02.csv\n"
        "    inst03: inst03.csv\n")
    code = main(["simulate", str(tmp_path / "campaign.yaml")])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2, err
    assert "Traceback" not in err
    assert last.startswith(f"fedrisk: error: institution {BAD}, file {tmp_path / (BAD + suffix)}"), last
    assert all(words in last for words in says), last
    if column is not None:
        assert f"column '{column}'" in last


# ---------------------------------------------------------------- a file withdrawn mid-campaign


def _three_files(tmp_path: Path, rows: int = 9000) -> dict[str, str]:
    files = {}
    for name, frame in credit.generate_consortium(3, rows, seed=3).items():
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
        files[name] = str(tmp_path / f"{name}.csv")
    return files


def test_a_deleted_file_stops_its_institution_at_the_next_message(tmp_path):
    from fedrisk.session import open_session

    files = _three_files(tmp_path)
    campaign = config_to_json(load_config(None, {"data.source": "files", "data.files": files}, work_dir=tmp_path))
    assert len(open_session(campaign, {"partition-id": 0}).data.frame) > 0
    Path(files[BAD]).unlink()
    with pytest.raises(FedriskInputError) as err:
        open_session(campaign, {"partition-id": 0}).data  # noqa: B018 (the next message reads the data)
    assert err.value.one_line() == f"institution {BAD}, file {files[BAD]}: data file not found"


def test_a_file_rewritten_in_place_with_its_size_and_time_kept_is_read_again(tmp_path):
    """A copy that keeps the size and modification time (cp -p, rsync -t) is other data all the same."""
    from fedrisk.session import open_session

    files = _three_files(tmp_path)
    campaign = config_to_json(load_config(None, {"data.source": "files", "data.files": files}, work_dir=tmp_path))
    before = open_session(campaign, {"partition-id": 0}).data.fingerprint
    path = Path(files[BAD])
    info = path.stat()
    text = path.read_text()
    head, first, rest = text.partition("\n")[0], *text.partition("\n")[2].split("\n", 1)
    changed = first[:-1] + ("1" if first.endswith("0") else "0")  # the first row's label flipped
    path.write_text(f"{head}\n{changed}\n{rest}")
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert path.stat().st_size == info.st_size and path.stat().st_mtime_ns == info.st_mtime_ns
    assert open_session(campaign, {"partition-id": 0}).data.fingerprint != before


@pytest.mark.slow
def test_a_file_deleted_between_rounds_excludes_its_institution_from_the_next_round(tmp_path):
    """The whole campaign through the real ClientApp (no Ray): inst01's file goes before round 2."""
    from local_grid import LocalGrid

    from clients.client_app import app as client_app
    from fedrisk import protocol
    from fedrisk.launcher import campaign_outcome
    from server.campaign import run_campaign

    logging.getLogger("flwr").setLevel(logging.WARNING)
    files = _three_files(tmp_path)

    class WithdrawingGrid(LocalGrid):
        def push_messages(self, messages):
            messages = list(messages)
            if any(m.metadata.message_type == "train" and protocol.read_request(m).server_round == 2
                   for m in messages):
                Path(files[BAD]).unlink(missing_ok=True)
            return super().push_messages(messages)

    config = load_config(None, {"data.source": "files", "data.files": files, "rounds": 3,
                                "training.batch_size": 128, "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                                "audit.path": str(tmp_path / "audit.jsonl")}, work_dir=tmp_path)
    run_campaign(WithdrawingGrid.simulation(client_app, 3), config, "withdrawn")
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    trained = {e["details"]["round"]: e["details"]["trained"] for e in entries if e["event"] == "round_completed"}
    assert trained == {1: ["inst01", "inst02", "inst03"], 2: ["inst02", "inst03"], 3: ["inst02", "inst03"]}
    excluded = [{k: e["details"][k] for k in ("institution", "round", "kind", "reason")}
                for e in entries if e["event"] == "institution_excluded"]
    assert excluded == [{"institution": BAD, "round": 2, "kind": "input",
                         "reason": f"institution {BAD}, file {files[BAD]}: data file not found"}]
    assert campaign_outcome(config, "withdrawn").status == "completed"
