"""The audit log: append-only JSON lines, each entry carrying the hash of the one before.

Every entry is written in one canonical form (sorted keys, no spaces, UTF-8), so a check can
compare each line byte for byte with the form its content implies: any changed byte breaks
either that form, the entry's own hash, or the chain. Deleting, inserting or reordering
entries breaks the sequence numbers and the chain. What the chain alone cannot show is a
log cut short at its end or rewritten whole; for that the head of the log is copied onto
the MLflow runs it covers (`anchor_tags`), and `verify_anchors` compares the two.

Appends take an exclusive lock on a side file, so processes writing at once (the server, a
validator promoting a model) each chain onto the true last entry.

The chain shows that nothing changed since an entry was written, not who wrote it: anyone who
can write the file can append a well-hashed entry. So each entry is signed (Ed25519) by its
actor's key when this machine holds it (`fedrisk keys create`), and `verify_signatures`
checks every entry against the consortium's roster (`fedrisk.identity`): signed, by a listed
key, held by the person the entry names, in a role that may write that event.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedrisk import identity, run_schema
from fedrisk.errors import FedriskInputError
from fedrisk.strict_json import nan_to_null

GENESIS = "0" * 64
FIELDS = ("actor", "details", "event", "hash", "prev", "seq", "time")
SIGNED_FIELDS = tuple(sorted((*FIELDS, "key", "sig")))
# Who may write which event (any roster member may write the others).
EVENT_ROLES = {"approval": {"approver"}, "promotion": {"approver"}, "override_promotion": {"approver"},
               "rollback": {"approver"}, "gate_verdict": {"trainer", "coordinator", "validator"},
               "campaign_started": {"trainer", "coordinator"}, "campaign_ended": {"trainer", "coordinator"},
               "witnessed": {"institution"}}
DEFAULT_PATH = ".fedrisk/audit.jsonl"


def default_actor() -> str:
    """Who acts: FEDRISK_ACTOR when set (a service account, a named user), else the OS user."""
    return os.environ.get("FEDRISK_ACTOR") or getpass.getuser()


def code_version() -> str:
    """fedrisk's version, and the git commit when it runs from a checkout (`+dirty` if changed)."""
    import fedrisk

    here = Path(fedrisk.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return fedrisk.__version__
    return f"{fedrisk.__version__}+{commit[:12]}{'.dirty' if dirty else ''}"


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    """Over everything but the hash and the signature (which signs the hash, so covers the rest)."""
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k not in ("hash", "sig")})).hexdigest()


@contextmanager
def locked(path: Path, purpose: str = "lock") -> Iterator[None]:
    """An exclusive lock on a side file, opened read-only so any user who can read it can lock."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(f"{path.name}.{purpose}"), os.O_RDONLY | os.O_CREAT, 0o664)
    except OSError as exc:
        raise FedriskInputError(f"audit log cannot be locked ({exc.strerror})", file=str(path)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _last_line(path: Path) -> bytes | None:
    """The last entry's bytes, read from the end: appends stay fast on a long log."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        block, data = 4096, b""
        while True:
            start = max(0, end - block)
            handle.seek(start)
            data = handle.read(end - start)
            if data.count(b"\n") >= 2 or start == 0:
                break
            block *= 2
    if not data.endswith(b"\n"):
        raise FedriskInputError("audit log ends in an incomplete entry; run `fedrisk audit verify`",
                                file=str(path))
    return data[:-1].rsplit(b"\n", 1)[-1]


def last_entry(path: str | Path) -> dict[str, Any] | None:
    """The log's last entry as written (None before the log exists), unchecked: `verify` checks."""
    last = _last_line(Path(path))
    if last is None:
        return None
    try:
        entry = json.loads(last)
    except (ValueError, RecursionError):
        entry = None
    if not isinstance(entry, dict):
        raise FedriskInputError("audit log's last entry is damaged; run `fedrisk audit verify`", file=str(path))
    return entry


def append(path: str | Path, event: str, actor: str, details: dict[str, Any]) -> dict[str, Any]:
    """Chain one entry onto the log (creating it with a `log_created` entry), signed with the
    actor's key when this machine holds one; returns it."""
    path = Path(path)
    signer = identity.private_key(actor)
    with locked(path):
        last = _last_line(path)
        if last is None:
            previous = _write(path, None, "log_created", actor, {"log_id": uuid.uuid4().hex}, signer)
        else:
            try:
                previous = json.loads(last)
                if canonical(previous) != last or entry_hash(previous) != previous["hash"]:
                    raise ValueError
            except (ValueError, KeyError, TypeError, RecursionError, UnicodeError):
                raise FedriskInputError("audit log's last entry is damaged; run `fedrisk audit verify`",
                                        file=str(path)) from None
        return _write(path, previous, event, actor, details, signer)


def _write(path: Path, previous: dict[str, Any] | None, event: str, actor: str,
           details: dict[str, Any], signer: identity.Ed25519PrivateKey | None) -> dict[str, Any]:
    entry = {
        "seq": 1 if previous is None else int(previous["seq"]) + 1,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "event": event,
        "actor": actor,
        "details": nan_to_null(details),
        "prev": GENESIS if previous is None else previous["hash"],
    }
    if signer is not None:
        entry["key"] = identity.public_text(signer.public_key())
    entry["hash"] = entry_hash(entry)
    if signer is not None:
        entry["sig"] = identity.sign(signer, entry["hash"].encode())
    line = canonical(entry) + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o664)
    except OSError as exc:
        raise FedriskInputError(f"audit log is not writable ({exc.strerror})", file=str(path)) from None
    try:
        if previous is None:
            os.fchmod(fd, 0o664)  # validators of the trainer's group append too, whatever the umask
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


@dataclass(frozen=True)
class Check:
    """The outcome of `verify`: intact or not, and the first bad entry."""

    path: str
    entries: int  # entries read and found good before the first bad one
    head: dict[str, Any] | None  # last good entry
    log_id: str | None
    problem: str | None = None
    line: int | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None


def read_entries(path: str | Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, complete): text after the last newline is an entry cut short."""
    lines = Path(path).read_bytes().split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):
        yield number, line, True
    if lines[-1]:
        yield len(lines), lines[-1], False


def entries(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, entry) of a log `verify` found intact."""
    for number, line, _ in read_entries(path):
        yield number, json.loads(line)


def verify(path: str | Path) -> Check:
    """Walk the chain from the first entry; stop at the first entry that is not as written."""
    path = Path(path)
    if not path.is_file():
        raise FedriskInputError("not a file: name the audit log itself" if path.exists() else "audit log not found",
                                file=str(path))
    previous: dict[str, Any] | None = None
    log_id = None
    count = 0

    def broken(number: int, why: str) -> Check:
        return Check(str(path), count, previous, log_id, why, number)

    if path.stat().st_size == 0:
        return Check(str(path), 0, None, None, "line 1: the log is empty (its creation entry is missing)", 1)
    for number, line, complete in read_entries(path):
        if not complete:
            return broken(number, f"line {number}: incomplete entry after the last complete one")
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            return broken(number, f"line {number}: not a JSON entry (modified)")
        if (not isinstance(entry, dict) or tuple(sorted(entry)) not in (FIELDS, SIGNED_FIELDS)
                or not isinstance(entry["details"], dict) or type(entry["seq"]) is not int):
            return broken(number, f"line {number}: not an audit entry (fields changed)")
        try:
            same = canonical(entry) == line
        except (ValueError, RecursionError, UnicodeError):
            same = False
        if not same or entry["hash"] != entry_hash(entry):
            return broken(number, f"entry {entry.get('seq')} at line {number}: content does not match "
                                  "its hash (modified)")
        expected = 1 if previous is None else int(previous["seq"]) + 1
        if entry["seq"] != expected:
            return broken(number, f"line {number}: entry {entry['seq']} where entry {expected} should be "
                                  "(entries deleted, inserted or reordered)")
        if entry["prev"] != (GENESIS if previous is None else previous["hash"]):
            return broken(number, f"entry {entry['seq']} at line {number}: does not chain to the entry "
                                  "before it (entries replaced, inserted or reordered)")
        if previous is None:
            if entry["event"] != "log_created" or not isinstance(entry["details"].get("log_id"), str):
                return broken(number, f"line {number}: the first entry is not the log's creation")
            log_id = entry["details"]["log_id"]
        previous, count = entry, count + 1
    return Check(str(path), count, previous, log_id)


def verify_signatures(path: str | Path, roster: identity.Roster) -> str | None:
    """The first entry (of a log whose chain is intact) not signed by the roster key of the person
    it names, in a role that may write it; None when every entry is."""
    for number, line, _ in read_entries(path):
        try:
            problem = _signature_problem(json.loads(line), number, roster)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, UnicodeError):
            problem = f"entry at line {number}: malformed signature, key or actor"
        if problem:
            return problem
    return None


def verify_signatures_of(entry: dict[str, Any], roster: identity.Roster) -> str | None:
    """Why one entry is not signed as it should be; None when it is."""
    try:
        return _signature_problem(entry, 0, roster)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, UnicodeError):
        return "malformed signature, key or actor"


def _signature_problem(entry: dict[str, Any], number: int, roster: identity.Roster) -> str | None:
    if not all(isinstance(entry.get(k), str) for k in ("actor", "event", "hash")):
        return f"entry at line {number}: actor, event and hash must be text"
    where = f"entry {entry['seq']} at line {number} ({entry['event']} by {entry['actor']})"
    if "sig" not in entry:
        return f"{where} is not signed"
    if not identity.signature_holds(entry["key"], entry["hash"].encode(), entry["sig"]):
        return f"{where}: its signature does not verify (changed after signing)"
    roles = roster.roles_of(entry["key"])
    if not roles:
        return f"{where}: signed by a key that is not in the roster {roster.path}"
    signers = sorted(set(roles.values()))
    if identity.skeleton(entry["actor"]) not in {identity.skeleton(n) for n in signers}:
        return f"{where}: signed by {', '.join(signers)}, not by {entry['actor']}"
    needed = EVENT_ROLES.get(entry["event"])
    if needed and not needed & set(roles):
        return (f"{where}: a {entry['event']} needs the role {' or '.join(sorted(needed))}; {signers[0]} holds "
                f"{', '.join(sorted(roles))}")
    return None


def head_tag(entry: dict[str, Any]) -> str:
    return f"{entry['seq']}:{entry['hash']}"


def anchor_tags(path: str | Path, entry: dict[str, Any]) -> dict[str, str]:
    """Tags that copy the log's head onto an MLflow run or model version."""
    return {run_schema.AUDIT_LOG: str(Path(path).resolve()), run_schema.AUDIT_LOG_ID: log_id(path),
            run_schema.AUDIT_HEAD: head_tag(entry)}


def log_id(path: str | Path) -> str:
    first = Path(path).read_bytes().split(b"\n", 1)[0]
    return str(json.loads(first)["details"]["log_id"])


def verify_anchors(path: str | Path, anchors: dict[str, str]) -> str | None:
    """First anchor (where -> 'seq:hash') the log does not hold: cut short or rewritten."""
    hashes: dict[int, str] = {}
    for _, line, _ in read_entries(path):
        try:
            entry = json.loads(line)
            hashes[int(entry["seq"])] = str(entry["hash"])
        except (ValueError, KeyError, TypeError):
            continue
    for where, value in sorted(anchors.items()):
        seq, _, digest = value.partition(":")
        if not seq.isdigit():
            return f"{where} holds a malformed copy of the head ('{value[:80]}')"
        if int(seq) not in hashes:
            return f"entry {seq}, recorded on {where}, is missing: the log was cut short"
        if hashes[int(seq)] != digest:
            return f"entry {seq} differs from the copy recorded on {where}: the log was rewritten"
    return None
