"""What governance costs: the audit log, the data-quality scorecard and the evidence pack.

Baselines run side by side on this machine:
- audit append: a plain JSON-lines append of the same entries (open, write, fsync), without
  the lock, the hash chain and the read of the last entry;
- audit verify: parsing the same file with `json.loads`, line by line, checking nothing;
- scorecard: loading the same institution (read or generate, check, features) without it;
- evidence pack and a campaign's audit events: against the campaign itself (on fresh
  institution homes, `experiments/homes.py`: unspent budgets under the default policy).

    python experiments/governance_benchmark.py [--out docs/governance_benchmarks.md] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

from homes import fresh_homes  # experiments/homes.py
from report_file import write_report  # experiments/report_file.py

from fedrisk import audit, data, data_quality, identity, witness
from fedrisk.config import load_config

# --quick: a smoke test on small data, not a measurement
QUICK_CREDIT = {"data.synthetic.rows": 6000, "training.rounds": 2}
QUICK_FRAUD = {"data.synthetic.customers": 500, "data.synthetic.terminals": 1000}
ENTRY = {"campaign": "c" * 32, "run_id": "r" * 32, "round": 3, "epsilon_max": 1.2345, "trained": ["inst01", "inst02"]}


def _median(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _plain_append(path: Path, count: int) -> None:
    for i in range(count):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, json.dumps({**ENTRY, "i": i}).encode() + b"\n")
        os.fsync(fd)
        os.close(fd)


def audit_rows(count: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        chained, plain = Path(tmp) / "audit.jsonl", Path(tmp) / "plain.jsonl"
        t_chain = _median(lambda: [audit.append(chained, "round_completed", "bench", {**ENTRY, "i": i})
                                   for i in range(count)], 1)
        t_plain = _median(lambda: _plain_append(plain, count), 1)
        size = chained.stat().st_size
        t_verify = _median(lambda: audit.verify(chained))
        t_parse = _median(lambda: [json.loads(line) for line in chained.read_bytes().splitlines()])
        assert audit.verify(chained).intact
    signed_append, signed_check = _signed(count)
    return [
        f"| audit append ({count:,} entries, each fsynced) | {count / t_chain:,.0f} entries/s | "
        f"{count / t_plain:,.0f} entries/s (plain append) | {t_chain / t_plain:.2f}x |",
        f"| audit append, signed (Ed25519) | {count / signed_append:,.0f} entries/s | "
        f"{count / t_chain:,.0f} entries/s (unsigned) | {signed_append / t_chain:.2f}x |",
        f"| audit verify ({size / 1e6:.1f} MB) | {count / t_verify:,.0f} entries/s | "
        f"{count / t_parse:,.0f} entries/s (json.loads only) | {t_verify / t_parse:.2f}x |",
        f"| audit verify, signatures against the roster | {count / signed_check:,.0f} entries/s | "
        f"{count / t_verify:,.0f} entries/s (chain only) | {signed_check / t_verify:.2f}x |",
    ]


def _signed(count: int) -> tuple[float, float]:
    """Seconds to append `count` signed entries, and to check their signatures against a roster."""
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        for name in ("ca", "bench"):
            identity.create_key(name, keys)
        roster = identity.write_roster([("bench", "trainer")], "ca", Path(tmp) / "roster.json", keys)
        signed = Path(tmp) / "signed.jsonl"
        with mock.patch.dict(os.environ, {identity.KEYS_ENV: str(keys)}):
            t_append = _median(lambda: [audit.append(signed, "round_completed", "bench", {**ENTRY, "i": i})
                                        for i in range(count)], 1)
        t_check = _median(lambda: audit.verify_signatures(signed, roster))
        assert audit.verify_signatures(signed, roster) is None
    return t_append, t_check


def scorecard_rows(quick: bool = False) -> list[str]:
    rows = []
    fraud_yaml = str(Path(__file__).parents[1] / "configs" / "fraud.yaml")
    configs = ([("credit, largest of 5 lenders (6,000 rows in all, --quick)", load_config(None, QUICK_CREDIT)),
                ("fraud, largest of 5 issuers (500 customers, --quick)", load_config(fraud_yaml, QUICK_FRAUD))]
               if quick else
               [("credit, largest of 5 lenders (60,000 rows in all)", load_config(None)),
                ("fraud, largest of 5 issuers (1.0 M transactions in all)", load_config(fraud_yaml))])
    for label, config in configs:
        def load(config=config):
            return data.load_institution(config.data, "inst01", config.seed)

        with_card = _median(load)
        with mock.patch.object(data, "quality_counts", lambda *a, **k: {}):  # the same load, no counts made
            without = _median(load)
        rows_n = len(data.load_institution(config.data, "inst01", config.seed).frame)
        rows.append(f"| scorecard, {label}: {rows_n:,} rows | {with_card:.3f} s load with scorecard | "
                    f"{without:.3f} s load without | {with_card / without:.2f}x |")
    return rows


def _witness_seconds(keys: Path, count: int) -> float:
    """Seconds per witness record (signed), each with a new head as a new round brings."""
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {identity.KEYS_ENV: str(keys)}):
        name = "inst01"
        start = time.perf_counter()
        for i in range(count):
            witness.record(Path(tmp), name, f"{'a' * 32}:{i + 1}:{i:064x}", "c" * 32, i)
        return (time.perf_counter() - start) / count


def campaign_rows(folder: Path, quick: bool = False) -> list[str]:
    from fedrisk.evidence import write_evidence
    from fedrisk.guard import homes_root
    from fedrisk.launcher import simulate
    from fedrisk.sources import institution_names

    fresh_homes()  # the campaign's institutions start with unspent budgets
    config = load_config(None, {**(QUICK_CREDIT if quick else {}), "tracking_uri": f"sqlite:///{folder}/mlflow.db"},
                         work_dir=folder)
    spent: list[float] = []
    original = audit.append

    def timed(path, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(path, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    keys = folder / "keys"  # everyone signs: the trainer its campaign events, each institution its witness entries
    for name in (audit.default_actor(), *institution_names(config.data)):
        identity.create_key(name, keys)
    start = time.perf_counter()
    with mock.patch.object(audit, "append", timed), mock.patch.dict(os.environ, {identity.KEYS_ENV: str(keys)}):
        outcome = simulate(config)
    campaign = time.perf_counter() - start
    # the institutions' witness entries are written in their own (Ray) processes: counted from their
    # homes, each costing what a record costs here (a signed append after reading the last entry)
    homes = homes_root()
    entries = sum(len((homes / name / witness.WITNESS_FILE).read_bytes().splitlines()) - 1
                  for name in institution_names(config.data))
    per_entry = _witness_seconds(keys, 200)
    pack = _median(lambda: write_evidence(config.tracking.uri, outcome.run_id, folder / "pack", "bench"), 1)
    return [
        f"| audit events of the default credit campaign | {len(spent)} entries, {sum(spent):.3f} s | "
        f"campaign {campaign:.1f} s | {sum(spent) / campaign:.4f}x |",
        f"| witness entries of that campaign (each institution, each new head) | {entries} entries, "
        f"{entries * per_entry:.3f} s at {per_entry * 1e3:.2f} ms each | campaign {campaign:.1f} s | "
        f"{entries * per_entry / campaign:.4f}x |",
        f"| evidence pack of that campaign (`fedrisk report`) | {pack:.2f} s | campaign {campaign:.1f} s | "
        f"{pack / campaign:.3f}x |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "docs" / "governance_benchmarks.md"))
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 200 entries, small data, a 2-round campaign on 6,000 rows")
    args = parser.parse_args()
    rows = audit_rows(200 if args.quick else args.entries)
    rows += scorecard_rows(args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        rows += campaign_rows(Path(tmp), args.quick)
    write_report(args.out, [
        "# Governance: what it costs",
        "",
        f"`python experiments/governance_benchmark.py` on this machine ({os.cpu_count()} cores, Python "
        f"{sys.version.split()[0]}); medians of 3 runs except the appends and the campaign (one run).",
        "",
        "| measure | fedrisk | baseline, side by side | ratio |",
        "|---|---|---|---|",
        *rows,
        "",
        "An audit append reads the last entry, hashes the new one and writes it under an exclusive lock,",
        "then fsyncs; the plain append only writes and fsyncs, so the ratio is the price of the chain.",
        "A signed append also loads the actor's key and signs the entry's hash (Ed25519, `cryptography`);",
        "checking signatures verifies each one and looks its key up in the roster.",
        f"Scorecard dimensions: {', '.join(data_quality.DIMENSIONS)}.",
    ])


if __name__ == "__main__":
    main()
