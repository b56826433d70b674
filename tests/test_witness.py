"""Institutions witness the coordinator's audit log, played by an attacker who holds the
coordinating machine and its keys: he can rewrite the campaign's own entries, re-sign them with
the trainer's key and move the MLflow copies of the head, and `audit verify` without witnesses
passes. The heads each institution saw and counter-signed in its own home catch him."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import consortium_keys
from mlflow.tracking import MlflowClient

from fedrisk import audit, run_schema, witness
from fedrisk.errors import FedriskInputError
from fedrisk.identity import load_roster, private_key, public_text, sign

INSTITUTIONS = ("inst01", "inst02", "inst03")
MEMBERS = {"tom": "trainer", **{name: "institution" for name in INSTITUTIONS}}


@pytest.fixture()
def keyed(tmp_path, monkeypatch):
    for key, value in consortium_keys(tmp_path, MEMBERS).items():
        monkeypatch.setenv(key, value)
    return tmp_path


def _campaign_log(folder: Path, rounds: int = 2, campaign: str = "c1", sent=witness.head_of) -> Path:
    """A coordinator's log whose heads the three institutions witnessed as a campaign would send them
    (`sent`: what the coordinator puts in each message, from the log)."""
    log = folder / "audit.jsonl"
    audit.append(log, "campaign_started", "tom", {"run_id": "r1", "campaign": campaign})
    for name in INSTITUTIONS:
        audit.append(log, "institution_data", "tom", {"campaign": campaign, "institution": name})
    for server_round in range(1, rounds + 1):
        head = sent(log)
        for name in INSTITUTIONS:
            witness.record(folder / name, name, head, campaign, server_round)
        audit.append(log, "round_completed", "tom", {"run_id": "r1", "campaign": campaign, "round": server_round,
                                                     "epsilon_max": 1.0})
    head = sent(log)
    for name in INSTITUTIONS:
        witness.record(folder / name, name, head, campaign, rounds + 1)
    audit.append(log, "campaign_ended", "tom", {"run_id": "r1", "campaign": campaign})
    return log


def _rewrite(log: Path, change, signer: str = "tom") -> None:
    """The coordinator's rewrite: change entries, re-chain and re-sign them all with a key he holds."""
    tom = private_key(signer)
    previous = None
    out = []
    for line in log.read_bytes().splitlines():
        entry = json.loads(line)
        change(entry)
        if previous is not None:
            entry["prev"] = previous["hash"]
        entry.pop("sig", None)
        entry["key"] = public_text(tom.public_key())
        entry["hash"] = audit.entry_hash(entry)
        entry["sig"] = sign(tom, entry["hash"].encode())
        out.append(audit.canonical(entry))
        previous = entry
    log.write_bytes(b"\n".join(out) + b"\n")


def _lower_epsilon(entry: dict, campaign: str = "c1") -> None:
    if (entry["event"] == "round_completed" and entry["details"]["round"] == 1
            and entry["details"]["campaign"] == campaign):
        entry["details"]["epsilon_max"] = 0.5


def test_witnesses_agree_with_an_honest_log(keyed):
    log = _campaign_log(keyed)
    roster = load_roster()
    for name in INSTITUTIONS:
        check = witness.check(log, keyed / name, roster)
        assert check.problem is None and check.heads == 3 and check.institution == name
        assert check.last_seq == audit.verify(log).entries - 1  # all but campaign_ended, written after the last message
        assert all("sig" in e["details"] for _, e in audit.entries(keyed / name / witness.WITNESS_FILE)
                   if e["event"] == witness.EVENT)  # each head carries the coordinator's signature


def test_a_history_rewritten_and_resigned_by_the_coordinator_is_caught(keyed):
    log = _campaign_log(keyed)
    _rewrite(log, _lower_epsilon)
    roster = load_roster()
    assert audit.verify(log).intact and audit.verify_signatures(log, roster) is None  # the hole witnesses close
    for name in INSTITUTIONS:
        problem = witness.check(log, keyed / name, roster).problem
        assert problem is not None and "rewritten" in problem and name in problem


def test_a_log_cut_short_is_caught(keyed):
    log = _campaign_log(keyed)
    lines = log.read_bytes().splitlines()
    log.write_bytes(b"\n".join(lines[:3]) + b"\n")  # gone: the last rounds
    problem = witness.check(log, keyed / "inst01", load_roster()).problem
    assert problem is not None and "cut short" in problem


def test_a_witness_forged_by_the_coordinator_fails_its_signatures(keyed):
    """He rewrites the log, then the witnesses to match, signing them with the only keys he holds."""
    log = _campaign_log(keyed)
    _rewrite(log, _lower_epsilon)
    new = {json.loads(x)["seq"]: json.loads(x)["hash"] for x in log.read_bytes().splitlines()}
    forged = keyed / "inst01" / witness.WITNESS_FILE

    def follow(entry: dict) -> None:
        if entry["event"] == "witnessed":
            entry["details"]["hash"] = new[entry["details"]["seq"]]

    _rewrite(forged, follow)
    problem = witness.check(log, keyed / "inst01", load_roster()).problem
    assert problem is not None and "tom" in problem and "inst01" in problem


def test_a_witness_of_another_log_or_none_cannot_vouch(keyed):
    log = _campaign_log(keyed)
    other = keyed / "other"
    witness.record(other / "inst01", "inst01", witness.head_of(_campaign_log(other, campaign="c2")), "c2", 1)
    stranger = witness.check(log, other / "inst01", load_roster())
    assert stranger.heads == 0 and "took part in campaign c1" in stranger.problem
    with pytest.raises(FedriskInputError, match="no witness log"):
        witness.check(log, keyed / "nobody", load_roster())


def test_a_witness_signed_by_another_institution_fails(keyed):
    """inst02 signing a witness log that claims to be inst01's: one member speaking for another."""
    log = _campaign_log(keyed)
    spoof = keyed / "spoof" / witness.WITNESS_FILE
    spoof.parent.mkdir()
    spoof.write_bytes((keyed / "inst02" / witness.WITNESS_FILE).read_bytes())
    _rewrite(spoof, lambda entry: entry.update(actor="inst01"), signer="inst02")
    problem = witness.check(log, spoof, load_roster()).problem
    assert problem is not None and "signed by inst02, not by inst01" in problem


def test_a_second_campaign_sent_without_heads_or_with_stale_ones_cannot_be_rewritten_unseen(keyed):
    """Found by adversarial review: the coordinator stopped sending heads (or resent campaign 1's
    last one) in campaign 2, rewrote campaign 2, and every witness still matched."""
    log = _campaign_log(keyed)
    _campaign_log(keyed, campaign="c2", sent=lambda _: None)
    _rewrite(log, lambda entry: _lower_epsilon(entry, "c2"))
    problem = witness.check(log, keyed / "inst01", load_roster()).problem
    assert problem is not None and "without the audit head" in problem

    other = keyed / "stale"
    other.mkdir()
    log = _campaign_log(other)
    stale = witness.head_of(log)  # campaign 1's last head, resent all through campaign 2
    _campaign_log(other, campaign="c2", sent=lambda _: stale)
    _rewrite(log, lambda entry: _lower_epsilon(entry, "c2"))
    problem = witness.check(log, other / "inst01", load_roster()).problem
    assert problem is not None and "older than the campaign's start" in problem


def test_a_campaign_the_institution_took_part_in_must_be_witnessed(keyed):
    log = _campaign_log(keyed)
    audit.append(log, "campaign_started", "tom", {"campaign": "c3"})
    audit.append(log, "institution_data", "tom", {"campaign": "c3", "institution": "inst01"})
    problem = witness.check(log, keyed / "inst01", load_roster()).problem
    assert problem is not None and "took part in campaign c3" in problem
    assert witness.check(log, keyed / "inst02", load_roster()).problem is None  # inst02 was not in it


def test_a_head_going_back_is_refused_by_the_node(keyed):
    log = _campaign_log(keyed)
    log_id = audit.log_id(log)
    with pytest.raises(FedriskInputError, match="went back"):
        witness.record(keyed / "inst01", "inst01", f"{log_id}:1:{'0' * 64}", "c9", 1)


def test_an_institution_cannot_frame_an_honest_coordinator(keyed):
    """inst02 writes into its own witness a head the coordinator never sent."""
    log = _campaign_log(keyed)
    log_id = audit.log_id(log)
    home = keyed / "inst02"
    made_up = witness.record  # through the node's own function: a well-formed, signed witness entry
    inst02 = private_key("inst02")
    fake = "ab" * 32
    forged_sig = sign(inst02, fake.encode())
    made_up(home, "inst02", f"{log_id}:9:{fake}:{public_text(inst02.public_key())}:{forged_sig}", "c1", 9)
    problem = witness.check(log, home, load_roster()).problem
    assert problem is not None and "the witness is wrong, not the log" in problem

    unsigned = keyed / "unsigned"
    (unsigned / witness.WITNESS_FILE).parent.mkdir()
    (unsigned / witness.WITNESS_FILE).write_bytes((keyed / "inst03" / witness.WITNESS_FILE).read_bytes())
    witness.record(unsigned, "inst03", f"{log_id}:9:{fake}", "c1", 9)
    problem = witness.check(log, unsigned, load_roster()).problem
    assert problem is not None and "either the log or this witness is wrong" in problem


@pytest.mark.parametrize("head", ["", "x", "abc:1", "a:b:c", "a:-1:" + "0" * 64, "a:1:" + "z" * 64, "a:1:00"])
def test_a_malformed_head_from_the_server_is_refused_in_one_line(keyed, head):
    with pytest.raises(FedriskInputError, match="audit head"):
        witness.record(keyed / "inst01", "inst01", head, "c1", 1)


@pytest.mark.slow  # a real campaign on the Flower simulation engine, then the CLI
def test_a_campaign_is_witnessed_and_a_rewrite_is_caught_from_the_command_line(keyed, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
           "FEDRISK_ACTOR": "tom", "FEDRISK_HOME": str(tmp_path / "homes")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)

    ran = cli("simulate", "--institutions", "3", "--rounds", "2", "--set", "data.synthetic.rows=6000")
    assert ran.returncode in (0, 3), ran.stderr[-2000:]
    homes = [str(tmp_path / "homes" / "institutions" / name) for name in INSTITUTIONS]
    log = tmp_path / ".fedrisk" / "audit.jsonl"
    ok = cli("audit", "verify", str(log), "--witness", *homes)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "witnesses    3 institutions" in ok.stdout and "all match" in ok.stdout
    for name in INSTITUTIONS:  # admission, two rounds, the final evaluation
        assert witness.check(log, Path(homes[0]).parent / name, load_roster()).heads >= 4

    # the coordinator lowers round 1's epsilon, re-signs with tom's key, moves the MLflow copies
    _rewrite(log, lambda entry: _lower_epsilon(entry, entry["details"].get("campaign")))
    heads = {json.loads(x)["seq"]: json.loads(x)["hash"] for x in log.read_bytes().splitlines()}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            seq = int(run.data.tags[run_schema.AUDIT_HEAD].split(":")[0])
            client.set_tag(run.info.run_id, run_schema.AUDIT_HEAD, f"{seq}:{heads[seq]}")
    fooled = cli("audit", "verify", str(log))
    assert fooled.returncode == 0, fooled.stdout  # chain, anchors and signatures all hold
    caught = cli("audit", "verify", str(log), "--witness", *homes)
    assert caught.returncode == 1 and "rewritten" in caught.stdout and "inst01" in caught.stdout
    twice = cli("audit", "verify", str(log), "--witness", homes[0], homes[0] + "/witness.jsonl")
    assert twice.returncode == 1 and "given twice" in twice.stdout
    missing = cli("audit", "verify", str(log), "--witness", str(tmp_path / "homes" / "institutions" / "inst09"))
    assert missing.returncode == 1 and "no witness log" in missing.stdout + missing.stderr


def test_a_file_that_is_no_witness_log_is_named_as_such(tmp_path):
    """`--witness` given the wrong file (a policy, a CSV) says so, instead of calling it a
    modified log; a witness log copied under another name is still read (and judged) as one."""
    wrong = tmp_path / "policy.yaml"
    wrong.write_text("privacy:\n  lifetime_epsilon: 10\n")
    with pytest.raises(FedriskInputError, match="not a witness log"):
        witness.witness_path(wrong)
    copy = tmp_path / "inst01-witness-backup.jsonl"
    copy.write_text(json.dumps({"seq": 1, "event": witness.EVENT, "actor": "inst01"}) + "\n")
    assert witness.witness_path(copy) == copy
    modified = tmp_path / witness.WITNESS_FILE  # the real name: a broken line is a modified log, not a mistake
    modified.write_text("not json\n")
    assert witness.witness_path(modified) == modified
