"""Institutions witness the coordinator's audit log.

Every campaign message carries the head of the coordinator's log as it stood when the message
was sent (`log id:seq:hash`). The institution's node appends what it saw to its own chained log
in its home (`witness.jsonl`), signed with the institution's key. Since each hash commits to the
whole history before it, a coordinator who rewrites or cuts its log, even re-signing every entry
with its own keys and moving the MLflow copies of the head, no longer matches the heads the
institutions hold: rewriting history then needs their keys too. Entries written after the last
message of a campaign (its end, the gate, approvals) are witnessed by the next campaign's first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fedrisk import audit, identity
from fedrisk.errors import FedriskInputError

WITNESS_FILE = "witness.jsonl"
EVENT = "witnessed"
_HEAD = re.compile(r"([0-9a-f]{32}):([1-9][0-9]{0,17}):([0-9a-f]{64})")


def head_of(log: str | Path) -> str | None:
    """The log's current head as a message carries it; None before the log exists."""
    entry = audit.last_entry(log)
    return None if entry is None else f"{audit.log_id(log)}:{audit.head_tag(entry)}"


def record(home: Path, institution: str, head: str, campaign: str, server_round: int) -> None:
    """Append the head a message carried to the institution's witness log, unless it is the last one seen."""
    match = _HEAD.fullmatch(head)
    if match is None:
        raise FedriskInputError(f"the server sent a malformed audit head ('{head[:80]}')", institution=institution)
    log_id, seq, digest = match.group(1), int(match.group(2)), match.group(3)
    path = Path(home) / WITNESS_FILE
    last = audit.last_entry(path)
    if last is not None and last["event"] == EVENT and (last["details"].get("log_id"), last["details"].get("seq"),
                                                         last["details"].get("hash")) == (log_id, seq, digest):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    audit.append(path, EVENT, institution, {"log_id": log_id, "seq": seq, "hash": digest, "campaign": campaign,
                                            "round": int(server_round)})


@dataclass(frozen=True)
class WitnessCheck:
    """What one institution's witness log says about the coordinator's log."""

    path: str
    institution: str | None
    heads: int  # heads of this log the institution saw
    last_seq: int | None  # the latest entry it saw
    problem: str | None = None


def witness_path(where: str | Path) -> Path:
    """An institution's home (holding witness.jsonl) or the witness log itself."""
    path = Path(where)
    path = path / WITNESS_FILE if path.is_dir() else path
    if not path.is_file():
        raise FedriskInputError("no witness log here (an institution's home holds witness.jsonl once it has taken "
                                "part in a campaign)", file=str(path))
    return path


def check(log: str | Path, where: str | Path, roster: identity.Roster | None) -> WitnessCheck:
    """The witness log's own chain and signatures (None: chain only), then every head it saw of
    `log` against `log`: a head missing means the log was cut short, a differing one rewritten."""
    path = witness_path(where)
    chain = audit.verify(path)
    name = chain.head["actor"] if chain.head else None
    if not chain.intact:
        return WitnessCheck(str(path), name, 0, None, f"witness log {path} is broken: {chain.problem}")
    entries = [entry for _, entry in audit.entries(path)]
    actors = {entry["actor"] for entry in entries}
    if len(actors) != 1:
        return WitnessCheck(str(path), name, 0, None, f"witness log {path} is written by {len(actors)} actors "
                                                       f"({', '.join(sorted(map(str, actors)))[:200]}), not one institution")
    if roster is not None:
        problem = audit.verify_signatures(path, roster)
        if problem:
            return WitnessCheck(str(path), name, 0, None, f"{name}'s witness log: {problem}")
    log_id = audit.log_id(log)
    seen = {f"{name}'s witness (its entry {entry['seq']})": f"{entry['details']['seq']}:{entry['details']['hash']}"
            for entry in entries if entry["event"] == EVENT and entry["details"].get("log_id") == log_id}
    if not seen:
        return WitnessCheck(str(path), name, 0, None, f"{name}'s witness never saw this log (log id {log_id})")
    last = max(int(value.split(":")[0]) for value in seen.values())
    return WitnessCheck(str(path), name, len(seen), last, audit.verify_anchors(log, seen))
