"""Config files a user writes by hand: traps that must end in one line, never a silent choice
or a traceback (issue 16, trap 7)."""

from __future__ import annotations

import pytest

from fedrisk.cli import main
from fedrisk.config import load_config
from fedrisk.errors import FedriskInputError

TWO_FILES = """task: credit
data:
  source: files
  files:
    bank_a: a.csv
    bank_b: b.csv
    bank_a: c.csv
"""


def test_a_duplicate_institution_key_is_an_error_not_a_dropped_file(tmp_path):
    (tmp_path / "campaign.yaml").write_text(TWO_FILES)
    with pytest.raises(FedriskInputError) as duplicate:
        load_config(tmp_path / "campaign.yaml")
    assert duplicate.value.one_line() == (f"file {tmp_path / 'campaign.yaml'}: key 'bank_a' appears twice "
                                          "(lines 5 and 7)")


@pytest.mark.parametrize("kind", ["policy", "monitor"])
def test_duplicate_keys_are_refused_in_every_yaml_fedrisk_reads(tmp_path, kind):
    from fedrisk.monitor_config import load_monitor_config
    from fedrisk.policy import load_policy

    text = ("name: p\nrules: []\nname: q\n" if kind == "policy" else "windows:\n  days: 7\n  days: 14\n")
    (tmp_path / "file.yaml").write_text(text)
    with pytest.raises(FedriskInputError, match="appears twice"):
        load_policy(tmp_path / "file.yaml") if kind == "policy" else load_monitor_config(tmp_path / "file.yaml")


def test_a_symlink_loop_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "a.csv").symlink_to(tmp_path / "b.csv")
    (tmp_path / "b.csv").symlink_to(tmp_path / "a.csv")
    code = main(["simulate", "--set", "data.source=files", "--set",
                 f'data.files={{"a": "{tmp_path / "a.csv"}", "b": "{tmp_path / "b.csv"}"}}'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"fedrisk: error: file {tmp_path / 'a.csv'}: a symbolic link that loops"
