"""Institutions witness the coordinator's audit log.

Every campaign message carries the head of the coordinator's log as it stood when the message
was sent (`log id:seq:hash`). The institution's node appends what it saw to its own chained log
in its home (`witness.jsonl`), signed with the institution's key. Since each hash commits to the
whole history before it, a coordinator who rewrites or cuts its log, even re-signing every entry
with its own keys and moving the MLflow copies of the head, no longer matches the heads the
institutions hold: rewriting history then needs their keys too. Entries written after the last
message of a campaign (its end, the gate, approvals) are witnessed by the next campaign's first.

A head carries the coordinator's own signature of that entry, so an institution cannot frame
an honest coordinator with a head it made up. A message without a head, or with a head older
than one already seen, is recorded as such: `check` then fails, so a coordinator cannot get
round the witnesses by no longer sending heads (or sending stale ones) before he rewrites.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from fedrisk import audit, identity
from fedrisk.errors import FedriskInputError

WITNESS_FILE = "witness.jsonl"
EVENT = "witnessed"
_B64 = r"[A-Za-z0-9+/]+={0,2}"
_HEAD = re.compile(rf"([0-9a-f]{{32}}):([1-9][0-9]{{0,17}}):([0-9a-f]{{64}})(?::({_B64}):({_B64}))?")
STARTS = ("campaign_started", "campaign_resumed")  # a head sent in a campaign is never older than these


def head_of(log: str | Path) -> str | None:
    """The log's current head as a message carries it (`log id:seq:hash`, then the signer's key and
    signature when the entry is signed); None before the log exists."""
    entry = audit.last_entry(log)
    if entry is None:
        return None
    signed = f":{entry['key']}:{entry['sig']}" if "sig" in entry else ""
    return f"{audit.log_id(log)}:{audit.head_tag(entry)}{signed}"


def record(home: Path, institution: str, head: str | None, campaign: str, server_round: int) -> None:
    """Append what a campaign message said of the coordinator's log to the institution's witness
    log: its head, or that it carried none (once per campaign and head). A head older than one
    already seen from the same log is refused: the coordinator's log only grows."""
    details: dict = {"campaign": campaign, "round": int(server_round)}
    if head is not None:
        match = _HEAD.fullmatch(head)
        if match is None:
            raise FedriskInputError(f"the server sent a malformed audit head ('{head[:80]}')", institution=institution)
        details.update(log_id=match.group(1), seq=int(match.group(2)), hash=match.group(3))
        if match.group(4):
            details.update(key=match.group(4), sig=match.group(5))
    path = Path(home) / WITNESS_FILE
    seen = [entry["details"] for _, entry in audit.entries(path)] if path.is_file() else []
    same = ("campaign", "log_id", "seq", "hash")
    if any(all(d.get(k) == details.get(k) for k in same) for d in seen):
        return
    if head is not None:
        latest = max((d["seq"] for d in seen if d.get("log_id") == details["log_id"]), default=0)
        if details["seq"] < latest:
            raise FedriskInputError(f"the server sent audit head {details['seq']} after head {latest} of the same log: "
                                    "its log went back", institution=institution)
    path.parent.mkdir(parents=True, exist_ok=True)
    audit.append(path, EVENT, institution, details)


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
    if path.name != WITNESS_FILE and not _starts_with_entry(path):  # another file given by mistake, not a modified log
        raise FedriskInputError("not a witness log: give an institution's home or its witness.jsonl", file=str(path))
    return path


def _starts_with_entry(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            first = json.loads(handle.readline())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(first, dict) and {"seq", "event", "actor"} <= set(first)


def check(log: str | Path, where: str | Path, roster: identity.Roster | None) -> WitnessCheck:
    """The witness log's own chain and signatures (None: chain only); then every head it saw of
    `log` against `log`: signed by the coordinator (else the witness is wrong, not the log), present
    (else the log was cut short), the same (else rewritten), not older than its campaign's start;
    and every campaign of `log` the institution took part in witnessed, with heads."""
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
    witnessed = [e for e in entries if e["event"] == EVENT]
    starts, taken_part = _campaigns(log, str(name))
    mine = [e for e in witnessed if e["details"].get("log_id") == log_id
            or (e["details"].get("log_id") is None and e["details"].get("campaign") in starts)]
    problem = _problem(log, str(name), mine, starts, taken_part, roster)
    heads = [e for e in mine if e["details"].get("log_id") == log_id]
    if problem is None and not heads:
        problem = f"{name}'s witness never saw this log (log id {log_id})"
    last = max((int(e["details"]["seq"]) for e in heads), default=None)
    return WitnessCheck(str(path), name, len(heads), last, problem)


def _campaigns(log: str | Path, institution: str) -> tuple[dict[str, int], dict[str, int]]:
    """Each campaign's first entry in the log (its start), and the entry admitting this institution's data."""
    starts: dict[str, int] = {}
    taken_part: dict[str, int] = {}
    for _, entry in audit.entries(log):
        details = entry["details"]
        campaign = details.get("campaign")
        if not isinstance(campaign, str):
            continue
        if entry["event"] in STARTS:
            starts.setdefault(campaign, int(entry["seq"]))
        elif entry["event"] == "institution_data" and details.get("institution") == institution:
            taken_part.setdefault(campaign, int(entry["seq"]))
    return starts, taken_part


def _problem(log: str | Path, name: str, mine: list[dict], starts: dict[str, int], taken_part: dict[str, int],
             roster: identity.Roster | None) -> str | None:
    for entry in mine:
        d, where = entry["details"], f"{name}'s witness (its entry {entry['seq']})"
        if "seq" not in d:
            return f"{where}: the coordinator sent campaign {d.get('campaign')}'s messages without the audit head"
        if roster is not None and "sig" in d and not _signed_by_coordinator(d, roster):
            return (f"{where} holds head {d['seq']} with a signature no trainer or coordinator of the roster made: "
                    "the witness is wrong, not the log")
        start = starts.get(str(d.get("campaign")))
        if start is not None and d["seq"] < start:
            return (f"{where}: the coordinator sent campaign {d['campaign']} an audit head ({d['seq']}) older than "
                    f"the campaign's start (entry {start}): a stale head hides what follows")
    def anchors(signed: bool) -> dict[str, str]:
        return {f"{name}'s witness (its entry {e['seq']})": f"{e['details']['seq']}:{e['details']['hash']}"
                for e in mine if ("sig" in e["details"]) == signed}

    problem = audit.verify_anchors(log, anchors(True))  # the coordinator signed what it no longer holds
    if problem:
        return problem
    problem = audit.verify_anchors(log, anchors(False))
    if problem:
        return (f"{problem}; that head carries no coordinator signature, so either the log or this witness is "
                "wrong")
    witnessed = {e["details"].get("campaign") for e in mine}
    for campaign, seq in sorted(taken_part.items(), key=lambda item: item[1]):
        if campaign not in witnessed:
            return (f"{name} took part in campaign {campaign} (log entry {seq}) but its witness holds no head of it: "
                    "the campaign's messages were not witnessed")
    return None


def _signed_by_coordinator(details: dict, roster: identity.Roster) -> bool:
    roles = roster.roles_of(str(details["key"]))
    return bool({"trainer", "coordinator"} & set(roles)) and identity.signature_holds(
        str(details["key"]), str(details["hash"]).encode(), str(details["sig"]))
