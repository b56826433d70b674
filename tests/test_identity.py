"""Keys, the signed roster and names compared by their confusable skeleton: each test plays
someone trying to pass as someone else."""

from __future__ import annotations

import json
import stat

import pytest

from fedrisk.cli import main
from fedrisk.errors import FedriskInputError
from fedrisk.identity import create_key, load_roster, private_key, public_key, skeleton, write_roster


@pytest.mark.parametrize("look_alike,name", [
    ("rооt", "root"),  # Cyrillic o
    ("b o b", "bob"),  # spaces
    ("b\u00a0ob", "bob"),  # no-break space
    ("ａｌｉｃｅ", "alice"),  # full-width
    ("alice\u200b", "alice"),  # zero-width space
    ("ALICE", "alice"),
    ("Ιvan", "ivan"),  # Greek capital iota
    ("t0m", "tom"),  # digit zero for o
    ("root\u034f", "root"),  # combining grapheme joiner
    ("ro\ufe0fot", "root"),  # variation selector
    ("r\u3164oot", "root"),  # Hangul filler
    ("root\u2800", "root"),  # braille blank
])
def test_look_alike_names_share_a_skeleton(look_alike, name):
    assert skeleton(look_alike) == skeleton(name)


def test_different_people_keep_different_skeletons():
    assert len({skeleton(n) for n in ("alice", "bob", "carol", "tom", "root", "ivan")}) == 6


def test_a_key_is_private_and_never_overwritten(tmp_path):
    path = create_key("alice", tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert private_key("alice", tmp_path) is not None and public_key("ALICE", tmp_path)
    with pytest.raises(FedriskInputError, match="exists already"):
        create_key("аlice", tmp_path)  # Cyrillic a: the same person's file


def _roster(tmp_path, members=(("alice", "approver"), ("bob", "approver"), ("tom", "trainer"))):
    for name in ("ca", *dict(members)):
        if private_key(name, tmp_path) is None:
            create_key(name, tmp_path)
    out = tmp_path / "roster.json"
    write_roster(list(members), "ca", out, tmp_path)
    return out, public_key("ca", tmp_path)


def test_a_roster_loads_only_with_the_trusted_ca_key(tmp_path):
    out, ca = _roster(tmp_path)
    roster = load_roster(out, ca)
    assert {m.name for m in roster.holders("approver")} == {"alice", "bob"}
    create_key("mallory", tmp_path)
    with pytest.raises(FedriskInputError, match="not signed by the trusted CA"):
        load_roster(out, public_key("mallory", tmp_path))
    with pytest.raises(FedriskInputError, match="no trusted CA key"):
        load_roster(out, None)


def test_an_edited_roster_is_refused(tmp_path):
    out, ca = _roster(tmp_path)
    document = json.loads(out.read_text())
    document["body"]["members"][2]["role"] = "approver"  # the trainer makes himself an approver
    out.write_text(json.dumps(document))
    with pytest.raises(FedriskInputError, match="not signed by the trusted CA"):
        load_roster(out, ca)
    create_key("mallory", tmp_path)  # re-signed by another key, with that key as the roster's own copy
    write_roster([("mallory", "approver")], "mallory", out, tmp_path)
    with pytest.raises(FedriskInputError, match="not signed by the trusted CA"):
        load_roster(out, ca)


def test_a_roster_refuses_a_look_alike_of_another_member(tmp_path):
    for name in ("ca", "root", "rооt"):
        try:
            create_key(name, tmp_path)
        except FedriskInputError:
            pass  # 'rооt' is root's file: the key store refuses it too
    with pytest.raises(FedriskInputError, match="drawn like"):
        write_roster([("root", "trainer"), ("rооt", "approver")], "ca", tmp_path / "r.json", tmp_path)


def test_keys_cli_creates_keys_and_a_roster(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEDRISK_KEYS", str(tmp_path / "keys"))
    for name in ("ca", "alice", "bob", "tom"):
        assert main(["keys", "create", name]) == 0
    assert main(["keys", "create", "Alice"]) == 2
    assert main(["keys", "roster", "--ca", "ca", "--out", str(tmp_path / "roster.json"), "alice=approver",
                 "bob=approver", "tom=trainer"]) == 0
    out = capsys.readouterr().out
    assert "roster" in out and "3 members" in out
    assert len(load_roster(tmp_path / "roster.json", public_key("ca", tmp_path / "keys")).members) == 3
    assert main(["keys", "roster", "--ca", "ca", "--out", str(tmp_path / "r2.json"), "alice=boss"]) == 2


def test_a_roster_lists_each_person_once(tmp_path):
    """A trainer who is also an approver would approve his own models."""
    for name in ("ca", "root", "alice"):
        create_key(name, tmp_path)
    with pytest.raises(FedriskInputError, match="listed twice"):
        write_roster([("root", "trainer"), ("root", "approver")], "ca", tmp_path / "r.json", tmp_path)
    with pytest.raises(FedriskInputError, match="exists already"):
        create_key("root\u034f", tmp_path)  # an invisible joiner does not make a second person


def test_a_roster_with_a_repeated_key_or_extra_fields_is_refused(tmp_path):
    out, ca = _roster(tmp_path)
    text = out.read_text()
    forged = text.replace('"body": {', '"body": {"members": [], "issued": "x"}, "body": {', 1)
    out.write_text(forged)  # two "body" keys: readers disagree on which one is the roster
    with pytest.raises(FedriskInputError, match="not a fedrisk roster"):
        load_roster(out, ca)
    document = json.loads(text)
    document["note"] = "extra"
    out.write_text(json.dumps(document))
    with pytest.raises(FedriskInputError, match="not a fedrisk roster"):
        load_roster(out, ca)


def test_broken_key_files_are_one_line_errors(tmp_path):
    create_key("alice", tmp_path)
    (tmp_path / "alice.key").write_text("not a key")
    with pytest.raises(FedriskInputError, match="not a readable private key"):
        private_key("alice", tmp_path)
    (tmp_path / "bin.pub").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(FedriskInputError, match="not a public key file"):
        load_roster(_roster(tmp_path / "r")[0], str(tmp_path / "bin.pub"))
    with pytest.raises(FedriskInputError, match="at most 100 characters"):
        create_key("x" * 300, tmp_path)


def test_an_expired_roster_is_refused(tmp_path):
    from datetime import UTC, datetime, timedelta
    out, ca = _roster(tmp_path)
    assert load_roster(out, ca).serial == 1
    with pytest.raises(FedriskInputError, match="the roster expired on"):
        load_roster(out, ca, now=datetime.now(UTC) + timedelta(days=366))
    with pytest.raises(FedriskInputError, match="1 to 3650 days"):
        write_roster([("alice", "approver")], "ca", tmp_path / "x.json", tmp_path, valid_days=0)


def test_an_older_roster_put_back_is_refused_once_a_newer_one_was_seen(tmp_path):
    """The CA removed carol; the coordinator puts back the roster that still lists her."""
    import shutil
    for name in ("ca", "alice", "bob", "carol"):
        create_key(name, tmp_path)
    out = tmp_path / "roster.json"
    ca = public_key("ca", tmp_path)
    write_roster([("alice", "approver"), ("bob", "approver"), ("carol", "approver")], "ca", out, tmp_path)
    shutil.copy(out, tmp_path / "old.json")
    write_roster([("alice", "approver"), ("bob", "approver")], "ca", out, tmp_path)
    assert load_roster(out, ca).serial == 2
    with pytest.raises(FedriskInputError, match="roster serial 1 is older than serial 2"):
        load_roster(tmp_path / "old.json", ca)
