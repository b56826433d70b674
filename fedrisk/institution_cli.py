"""`fedrisk institution ...`: what an institution does with its own home (policy, ledger).

- `show NAME`: its policy, its ledger's cap and what each campaign and mechanism spent;
- `policy NAME... --set KEY=VALUE`: edit its policy (validated; recorded in its audit log);
- `raise-cap NAME --to EPS --approver WHO --justification TEXT`: one of the two approvals a
  higher lifetime cap needs (`fedrisk.cap_approval`).

A deployed institution names its home with `--home` (the folder its SuperNode's node config
names); a simulated one lives under `$FEDRISK_HOME/institutions/NAME` (default `~/.fedrisk`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedrisk import audit
from fedrisk.errors import FedriskInputError


def _home(name: str, home: str | None) -> Path:
    from fedrisk.guard import institution_home

    return institution_home(name, {"home": str(Path(home).resolve())} if home else {})


def _show(args: argparse.Namespace) -> int:
    from fedrisk.guard import ledger_path, load_policy
    from fedrisk.ledger import PrivacyLedger

    home = _home(args.name, args.home)
    policy = load_policy(home, args.name)
    rules = policy.privacy
    ledger = PrivacyLedger.open(ledger_path(home, policy, args.name), args.name, rules.lifetime_epsilon, rules.delta)
    print(f"institution {args.name}: home {home}")
    print(f"policy      lifetime cap {rules.lifetime_epsilon:g}, per campaign {rules.max_campaign_epsilon:g}, delta "
          f"{rules.delta:g}, DP required: {'yes' if rules.require_dp else 'no'}, min count {policy.release.min_count}, "
          f"max bins {policy.release.max_bins}, never used: {', '.join(policy.never_use) or '-'}")
    cap = ledger.effective_cap(rules.lifetime_epsilon)
    print(f"ledger      {ledger.path}: cap {ledger.cap:g} (in force {cap:g}), spent {ledger.spent():.3f}, "
          f"with reservations {ledger.epsilon():.3f}, at delta {ledger.delta:g}")
    for campaign in ledger.campaigns():
        summary = ledger.summary(campaign)
        parts = ", ".join(f"{m} {e:.3f}" for m, e in summary["by_mechanism"].items()) or "nothing charged yet"
        print(f"  {campaign}: {summary['campaign']:.3f} ({parts})")
    if ledger.refusals:
        print(f"refusals    {len(ledger.refusals)}; last: {ledger.refusals[-1]['reason']}")
    for change in ledger.cap_changes:
        print(f"cap raised  {change['from']:g} -> {change['to']:g} by {' and '.join(change['approvers'])}")
    return 0


def _policy(args: argparse.Namespace) -> int:
    from fedrisk.cli_output import set_values
    from fedrisk.guard import update_policy

    changes = set_values(args.set)
    if not changes:
        raise FedriskInputError("nothing to change: give --set KEY=VALUE")
    if args.home and len(args.names) > 1:
        raise FedriskInputError("--home is one institution's folder: name one institution with it")
    for name in args.names:
        home = _home(name, args.home)
        update_policy(home, name, changes)
        audit.append(home / "audit.jsonl", "policy_changed", audit.default_actor(), {"institution": name, **changes})
        print(f"institution {name}: policy {home / 'policy.yaml'} updated: "
              + ", ".join(f"{k}={v}" for k, v in changes.items()))
    return 0


def _raise_cap(args: argparse.Namespace) -> int:
    from fedrisk.cap_approval import approve_cap

    decision = approve_cap(_home(args.name, args.home), args.name, args.to, args.approver, args.justification)
    if decision.raised:
        print(f"institution {args.name}: lifetime cap raised to {decision.cap:g} (approved by "
              f"{' and '.join(decision.approvers)})")
    else:
        print(f"institution {args.name}: approval of a cap of {decision.requested:g} recorded; a second approver is "
              "needed")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    inst = sub.add_parser("institution", help="an institution's own policy and privacy ledger")
    inst_sub = inst.add_subparsers(dest="institution_command", required=True)
    show = inst_sub.add_parser("show", help="its policy, cap and what each campaign spent")
    show.add_argument("name")
    show.add_argument("--home", help="its home folder (default: $FEDRISK_HOME/institutions/NAME)")
    show.set_defaults(func=_show)
    pol = inst_sub.add_parser("policy", help="edit its policy, e.g. --set privacy.require_dp=false")
    pol.add_argument("names", nargs="+", metavar="name")
    pol.add_argument("--set", action="append", metavar="KEY=VALUE", required=True)
    pol.add_argument("--home", help="its home folder (one institution)")
    pol.set_defaults(func=_policy)
    cap = inst_sub.add_parser("raise-cap", help="approve a higher lifetime cap (two approvers raise it)")
    cap.add_argument("name")
    cap.add_argument("--to", type=float, required=True, help="the new lifetime epsilon cap")
    cap.add_argument("--approver", required=True, help="your name")
    cap.add_argument("--justification", required=True)
    cap.add_argument("--home", help="its home folder (default: $FEDRISK_HOME/institutions/NAME)")
    cap.set_defaults(func=_raise_cap)
