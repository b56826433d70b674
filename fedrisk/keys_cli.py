"""`fedrisk keys create NAME` and `fedrisk keys roster --ca NAME NAME=ROLE ...`: who is who.

A consortium issues one key per person and node and a roster its CA signs; for a trial on one
machine these two commands make both, so the same checks (signed audit entries, four eyes by
key) run end to end. Private keys stay in $FEDRISK_KEYS (default ~/.fedrisk/keys), mode 0600.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedrisk import identity
from fedrisk.errors import FedriskInputError


def add_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="Ed25519 keys and the consortium's signed roster")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="a new key for NAME in $FEDRISK_KEYS (never overwrites one, nor "
                                                "makes one for a name drawn like an existing one)")
    create.add_argument("name")
    create.set_defaults(func=_create)
    roster = keys_sub.add_parser("roster", help="list who holds which role, signed by the CA's key")
    roster.add_argument("members", nargs="+", metavar="NAME=ROLE", help=f"roles: {', '.join(identity.ROLES)}")
    roster.add_argument("--ca", required=True, help="name of the CA's key on this machine")
    roster.add_argument("--out", default="roster.json")
    roster.add_argument("--valid-days", dest="valid_days", type=int, default=365,
                        help="after this many days verifiers refuse it (default 365)")
    roster.set_defaults(func=_roster)


def _create(args: argparse.Namespace) -> int:
    path = identity.create_key(args.name)
    print(f"key          {args.name}: {path} (private, keep it), {path.with_suffix('.pub')} (public)")
    print(f"key id       {identity.key_id(identity.public_key(args.name))}")
    return 0


def _roster(args: argparse.Namespace) -> int:
    members = []
    for item in args.members:
        name, sep, role = item.rpartition("=")
        if not sep or not name.strip():
            raise FedriskInputError(f"'{item}' is not NAME=ROLE")
        members.append((name.strip(), role.strip()))
    roster = identity.write_roster(members, args.ca, Path(args.out), valid_days=args.valid_days)
    print(f"roster       {args.out}: {len(roster.members)} members, serial {roster.serial}, valid until "
          f"{roster.expires}, signed by {args.ca}")
    print(f"trust        verifiers need the CA's public key: {identity.keys_dir() / (args.ca + '.pub')} "
          f"(${identity.CA_ENV})")
    return 0
