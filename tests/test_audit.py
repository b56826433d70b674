"""The hash-chained audit log: every byte, every deletion, insertion and reordering is caught."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from fedrisk import audit
from fedrisk.errors import FedriskInputError


def _log(tmp_path: Path, entries: int = 4) -> Path:
    path = tmp_path / "audit.jsonl"
    for i in range(entries):
        audit.append(path, "round_completed", "alice", {"round": i + 1, "epsilon_max": 0.5 * (i + 1),
                                                         "trained": ["inst01", "inst02"], "note": "é"})
    return path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_a_fresh_log_is_intact_and_chained_by_sha256(tmp_path):
    path = _log(tmp_path)
    check = audit.verify(path)
    assert check.intact and check.entries == 5 and check.head["seq"] == 5
    entries = [json.loads(line) for line in _lines(path)]
    assert entries[0]["event"] == "log_created" and entries[0]["prev"] == audit.GENESIS
    for before, after in zip(entries, entries[1:]):
        assert after["prev"] == before["hash"]
    # the hash is SHA-256 of the entry without its hash, in canonical JSON (checked with hashlib)
    body = {k: v for k, v in entries[2].items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert entries[2]["hash"] == hashlib.sha256(canonical).hexdigest()
    assert check.log_id == entries[0]["details"]["log_id"]


def test_changing_any_byte_of_any_entry_is_detected_at_that_entry(tmp_path):
    path = _log(tmp_path, 3)
    original = path.read_bytes()
    starts = [0] + [i + 1 for i, b in enumerate(original) if b == ord("\n")]
    for position in range(len(original)):
        tampered = bytearray(original)
        tampered[position] = tampered[position] ^ 0x01 if tampered[position] != ord("\n") else ord(" ")
        path.write_bytes(bytes(tampered))
        check = audit.verify(path)
        line = max(n for n, start in enumerate(starts, start=1) if start <= position)
        assert not check.intact, f"byte {position} changed, log still verified"
        assert check.line == line, (position, check.problem)


def test_a_float_written_another_way_is_a_modification(tmp_path):
    """1e-05 and 1E-05 parse to the same number; the line is no longer as written."""
    path = tmp_path / "audit.jsonl"
    audit.append(path, "campaign_started", "bob", {"delta": 1e-05})
    path.write_bytes(path.read_bytes().replace(b"1e-05", b"1E-05"))
    check = audit.verify(path)
    assert not check.intact and check.line == 2 and "modified" in check.problem


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_deleting_an_entry_is_detected(tmp_path, index):
    path = _log(tmp_path)
    lines = _lines(path)
    del lines[index]
    _write(path, lines)
    check = audit.verify(path)
    assert not check.intact and check.line == index + 1
    assert "deleted" in check.problem or "first entry" in check.problem


def test_reordering_entries_is_detected(tmp_path):
    path = _log(tmp_path)
    lines = _lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    _write(path, lines)
    check = audit.verify(path)
    assert not check.intact and check.line == 3 and "reordered" in check.problem
    assert check.entries == 2  # the two entries before are vouched for


def test_an_inserted_entry_with_a_valid_hash_is_detected(tmp_path):
    path = _log(tmp_path)
    lines = _lines(path)
    before = json.loads(lines[1])
    forged = {"seq": before["seq"] + 1, "time": before["time"], "event": "approval", "actor": "mallory",
              "details": {}, "prev": before["hash"]}
    forged["hash"] = audit.entry_hash(forged)
    lines.insert(2, audit.canonical(forged))
    _write(path, lines)
    check = audit.verify(path)
    assert not check.intact and check.line == 4  # the forgery chains; the entry after it does not


def test_a_log_cut_short_or_rewritten_is_caught_by_the_copies_of_its_head(tmp_path):
    path = _log(tmp_path)
    head = audit.head_tag(audit.verify(path).head)
    anchors = {"MLflow run r1": head}
    assert audit.verify_anchors(path, anchors) is None
    _write(path, _lines(path)[:-1])  # the chain alone cannot see this
    assert audit.verify(path).intact
    assert "cut short" in audit.verify_anchors(path, anchors)
    # rewritten whole: every hash recomputed after a change, chain intact again
    entries = [json.loads(line) for line in _lines(_log(tmp_path / "b"))]
    entries[3]["actor"] = "mallory"
    for i, entry in enumerate(entries):
        entry["prev"] = audit.GENESIS if i == 0 else entries[i - 1]["hash"]
        entry["hash"] = audit.entry_hash(entry)
    rewritten = tmp_path / "b" / "audit.jsonl"
    anchors = {"MLflow run r2": audit.head_tag(audit.verify(rewritten).head)}
    _write(rewritten, [audit.canonical(e) for e in entries])
    assert audit.verify(rewritten).intact
    assert "rewritten" in audit.verify_anchors(rewritten, anchors)


def test_an_incomplete_last_entry_is_detected_and_refuses_appends(tmp_path):
    path = _log(tmp_path)
    path.write_bytes(path.read_bytes() + b'{"seq":6,"ev')
    check = audit.verify(path)
    assert not check.intact and check.line == 6 and "incomplete" in check.problem
    with pytest.raises(FedriskInputError, match="incomplete"):
        audit.append(path, "x", "alice", {})


def test_a_damaged_last_entry_refuses_appends(tmp_path):
    path = _log(tmp_path)
    lines = _lines(path)
    lines[-1] = lines[-1].replace(b'"alice"', b'"alicf"')
    _write(path, lines)
    with pytest.raises(FedriskInputError, match="damaged"):
        audit.append(path, "x", "alice", {})


def test_nan_is_stated_as_null(tmp_path):
    path = tmp_path / "audit.jsonl"
    entry = audit.append(path, "campaign_ended", "bob", {"test_auc": float("nan"), "eps": [float("inf"), 1.0]})
    assert entry["details"] == {"test_auc": None, "eps": [None, 1.0]}
    assert audit.verify(path).intact


def _append_many(path: str, worker: int, count: int) -> None:
    for i in range(count):
        audit.append(path, "round_completed", f"worker{worker}", {"i": i})


def test_concurrent_appends_from_several_processes_keep_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(path), w, 40)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    check = audit.verify(path)
    assert check.intact and check.entries == 1 + 4 * 40
    entries = [json.loads(line) for line in _lines(path)][1:]
    for w in range(4):  # every worker's entries are all there, in its own order
        assert [e["details"]["i"] for e in entries if e["actor"] == f"worker{w}"] == list(range(40))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.slow  # seconds of end-to-end work: the full suite runs it
def test_cli_verify_exits_0_when_intact_and_1_naming_the_first_bad_entry(tmp_path):
    path = _log(tmp_path)
    ok = _cli("audit", "verify", str(path), "--chain-only", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "chain intact, 5 entries" in ok.stdout and "chain only" in ok.stdout
    unchecked = _cli("audit", "verify", str(path), cwd=tmp_path)  # no store, no roster: it says so and fails
    assert unchecked.returncode == 1 and "anchors      NOT CHECKED: no MLflow store" in unchecked.stdout
    assert "signatures   NOT CHECKED: no consortium roster" in unchecked.stdout
    lines = _lines(path)
    lines[3] = lines[3].replace(b"alice", b"alicf")
    _write(path, lines)
    bad = _cli("audit", "verify", str(path), cwd=tmp_path)
    assert bad.returncode == 1
    assert "BROKEN at entry 4 at line 4" in bad.stdout and "3 entries before it are intact" in bad.stdout
    missing = _cli("audit", "verify", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert missing.returncode == 2 and "audit log not found" in missing.stderr
    folder = _cli("audit", "verify", str(tmp_path), cwd=tmp_path)
    assert folder.returncode == 2 and "not a file" in folder.stderr


def test_an_empty_or_headless_log_is_broken(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    assert not audit.verify(path).intact and "empty" in audit.verify(path).problem
    path = _log(tmp_path / "b")
    _write(path, _lines(path)[1:])  # the creation entry removed
    assert not audit.verify(path).intact


def test_a_malformed_copy_of_the_head_is_reported_not_raised(tmp_path):
    path = _log(tmp_path)
    assert "malformed" in audit.verify_anchors(path, {"MLflow run r": "garbage"})


def test_exclusion_reasons_quote_only_fedrisk_messages():
    """A crash's text may quote a customer's value; the audit log keeps what it is given."""
    from fedrisk.protocol import BUDGET_REFUSED, INPUT_ERROR, error_reason

    crash = error_reason(1, "ValueError: could not convert string to float: 'DE89 3704 0044 0532 0130 00'", "inst02")
    assert crash[0] == "error" and "DE89" not in crash[1] and crash[1].startswith("institution inst02:")
    assert error_reason(INPUT_ERROR, "Traceback\ninstitution inst02, file f.csv: no rows", "inst02") == (
        "input", "institution inst02, file f.csv: no rows")
    assert error_reason(BUDGET_REFUSED, "budget spent", "inst02") == ("budget", "institution inst02: budget spent")
