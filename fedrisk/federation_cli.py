"""`fedrisk federation ...`: run fedrisk as a real Flower deployment.

One command per role, each printing or running the Flower command it stands for:
- consortium operator: `certs`, `superlink`, `register`, `tracking-server`, `run`;
- each institution: `node-key`, `supernode`; among the issuers (fraud consortium features): `sketch-key`;
- anyone, on one machine: `trial` (the whole federation as real processes, then stopped).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from fedrisk.errors import FedriskInputError


def _exec(cmd: list[str], env: dict[str, str], dry_run: bool) -> int:
    """Show the Flower/MLflow command, then become it (Ctrl-C stops it)."""
    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    if dry_run:
        return 0
    os.execvpe(cmd[0], cmd, env)
    return 1  # not reached


def _certs(args: argparse.Namespace) -> int:
    from fedrisk.certificates import make_server_certificates

    made = make_server_certificates(args.out, tuple(args.host or ()) or ("localhost", "127.0.0.1", "::1"),
                                    days=args.days)
    print(f"CA certificate      {made.ca_certificate}  (give to every institution and validator)")
    print(f"SuperLink cert/key  {made.certificate}, {made.private_key}  (the key stays on the SuperLink)")
    print(f"CA key              {Path(args.out) / 'ca.key'}  (keep offline; signs the next certificate)")
    return 0


def _node_key(args: argparse.Namespace) -> int:
    from fedrisk.certificates import make_node_key, public_key_fingerprint

    key = make_node_key(args.out, args.institution)
    print(f"private key  {key.private_key}  (stays at {args.institution}; flower-supernode reads it)")
    print(f"public key   {key.public_key}  (send to the consortium operator)")
    print(f"fingerprint  {public_key_fingerprint(key.public_key)}  (read it to the operator out of band)")
    return 0


def _sketch_key(args: argparse.Namespace) -> int:
    from fedrisk.consortium_features import load_key

    if Path(args.out).exists():
        raise FedriskInputError("exists already: every institution must use the same key", file=args.out)
    load_key(Path(args.out), create=True)
    print(f"sketch key   {Path(args.out).resolve()}  (one institution makes it and hands it to the others out of "
          "band; never to the operator; each SuperNode reads it: supernode --sketch-key)")
    return 0


def _superlink(args: argparse.Namespace) -> int:
    from fedrisk.federation import flower_env, superlink_command

    certs = Path(args.certs).resolve()
    for name in ("ca.crt", "server.pem", "server.key"):
        if not (certs / name).is_file():
            raise FedriskInputError("missing; make it with: fedrisk federation certs --out DIR", file=str(certs / name))
    cmd = superlink_command(certs / "ca.crt", certs / "server.pem", certs / "server.key", host=args.host,
                            port=args.port, database=Path(args.state).resolve())
    return _exec(cmd, flower_env(Path(args.flwr_home).resolve()), args.dry_run)


def _connect(args: argparse.Namespace) -> Path:
    from fedrisk.federation import write_connection

    home = Path(args.flwr_home).resolve()
    write_connection(home, args.superlink, Path(args.ca))
    return home


def _register(args: argparse.Namespace) -> int:
    from fedrisk.certificates import public_key_fingerprint
    from fedrisk.federation import register

    home = _connect(args)
    node = register(home, Path(args.public_key), args.institution)
    print(f"registered {args.institution}: node {node}, key {public_key_fingerprint(args.public_key)}")
    return 0


def _institution_home(name: str, home: str | None) -> Path:
    from fedrisk.guard import homes_root

    return Path(home).resolve() if home else homes_root() / name


def _supernode(args: argparse.Namespace) -> int:
    from fedrisk.federation import flower_env, supernode_command

    for option, value in (("--key", args.key), ("--ca", args.ca)):
        if not Path(value).is_file():
            raise FedriskInputError(f"{option}: no such file", institution=args.institution, file=str(Path(value).resolve()))
    data = Path(args.data).resolve() if args.data else None
    if data is not None and not data.is_file():
        raise FedriskInputError("--data: no such file", institution=args.institution, file=str(data))
    if args.sketch_key is not None and not Path(args.sketch_key).is_file():
        raise FedriskInputError("no such sketch key (make it with: fedrisk federation sketch-key --out FILE)",
                                institution=args.institution, file=args.sketch_key)
    cmd = supernode_command(args.superlink, Path(args.ca).resolve(), Path(args.key).resolve(), args.institution,
                            data_path=data, home=_institution_home(args.institution, args.home), port=args.port,
                            sketch_key=Path(args.sketch_key) if args.sketch_key else None)
    return _exec(cmd, flower_env(Path(args.flwr_home).resolve()), args.dry_run)


def _tracking_server(args: argparse.Namespace) -> int:
    from fedrisk.federation import flower_env, tracking_server_command

    cmd = tracking_server_command(Path(args.store), host=args.host, port=args.port,
                                  backend_store_uri=args.backend_store_uri, basic_auth=args.basic_auth)
    env = flower_env(Path(args.flwr_home).resolve())
    if args.basic_auth and not args.dry_run:
        from fedrisk import registry_guard

        auth = Path(args.store).resolve() / "auth"
        env.update(registry_guard.prepare(auth))
        print(f"sign-in      {auth}/{{{','.join(registry_guard.IDENTITIES)}}}.env (MLFLOW_TRACKING_USERNAME and "
              f"_PASSWORD; the ServerApp and fedrisk promote run as {registry_guard.SERVICE}, everyone else reads)",
              file=sys.stderr)
    return _exec(cmd, env, args.dry_run)


def _outcome(config: Any, campaign: str, status: str) -> int:
    from fedrisk.cli_output import print_outcome
    from fedrisk.launcher import campaign_outcome

    outcome = campaign_outcome(config, campaign)
    if outcome is None:
        print(f"fedrisk: campaign {campaign} left no MLflow run (Flower status {status})", file=sys.stderr)
        return 1
    return print_outcome(config, outcome)


def _pinned(items: list[str] | None, config: Any) -> dict[str, Any]:
    """The user's overrides plus the outputs' absolute paths as resolved here: the ServerApp
    runs in the SuperLink's working directory, not this one."""
    from fedrisk.cli_output import set_values

    return {**set_values(items), "audit.path": config.audit.path, "tracking.uri": config.tracking.uri}


def _run(args: argparse.Namespace) -> int:
    from fedrisk.cli_output import set_values
    from fedrisk.config import load_config
    from fedrisk.federation import run_to_end

    config = load_config(args.config, set_values(args.set))  # a bad config fails here, not on the SuperLink
    done = run_to_end(_connect(args), args.config, _pinned(args.set, config), timeout=args.timeout)
    if done.status != "finished:completed":
        print(done.log[-3000:], file=sys.stderr)
    return _outcome(config, done.campaign, done.status)


def _trial(args: argparse.Namespace) -> int:
    from fedrisk import registry_guard
    from fedrisk.cli_output import set_values
    from fedrisk.config import load_config
    from fedrisk.launcher import preflight
    from fedrisk.local_federation import run_campaign, start_federation
    from fedrisk.sources import institution_names

    overrides = set_values(args.set)
    if args.rounds is not None:
        overrides["training.rounds"] = args.rounds
    config = load_config(args.config, overrides)
    overrides = {**overrides, "audit.path": config.audit.path}
    names = preflight(config) if config.data.source == "synthetic" or config.data.files else \
        institution_names(config.data)
    data = {n: Path(p) for n, p in (config.data.files or {}).items()}  # each node reads its own file
    folder = Path(args.dir).resolve()
    started = time.monotonic()
    with start_federation(folder, names, data_paths=data) as federation:
        print(f"fedrisk: federation up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        os.environ.update(registry_guard.identity(federation.auth, registry_guard.VALIDATOR))  # this CLI only reads
        print(f"fedrisk: MLflow on {federation.tracking_uri} signs in; as a validator: "
              f"{federation.auth / registry_guard.VALIDATOR}.env", file=sys.stderr)
        campaign, status, seconds = run_campaign(federation, Path(args.config) if args.config else None, overrides)
        print(f"fedrisk: campaign {status} in {seconds:.1f} s", file=sys.stderr)
        config = load_config(args.config, {**overrides, "tracking.uri": federation.tracking_uri})
        code = _outcome(config, campaign, status)
        if args.keep:
            print(f"fedrisk: federation kept running (MLflow UI {federation.tracking_uri}); Ctrl-C stops it",
                  file=sys.stderr)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    print(f"fedrisk: federation stopped; its files are in {folder}; browse the runs with "
          f"fedrisk federation tracking-server --basic-auth --store {folder / 'mlflow'} (sign in as in "
          f"{folder / 'mlflow' / 'auth'}/validator.env)", file=sys.stderr)
    return code


def add_parser(sub: Any) -> None:
    fed = sub.add_parser("federation", help="run as a real Flower deployment (SuperLink, SuperNodes, TLS)")
    cmds = fed.add_subparsers(dest="federation_command", required=True)

    def common(p: argparse.ArgumentParser, connect: bool = False) -> None:
        p.add_argument("--flwr-home", dest="flwr_home", default=".fedrisk/flwr",
                       help="Flower's home folder for this role (default .fedrisk/flwr)")
        if connect:
            p.add_argument("--superlink", required=True, help="HOST:PORT of the consortium's SuperLink")
            p.add_argument("--ca", required=True, help="the consortium's CA certificate (ca.crt)")

    p = cmds.add_parser("certs", help="operator: the consortium CA and the SuperLink's TLS certificate")
    p.add_argument("--out", default=".fedrisk/certs")
    p.add_argument("--host", action="append", help="SuperLink host name or IP (repeat); default localhost")
    p.add_argument("--days", type=int, default=365)
    p.set_defaults(func=_certs)
    p = cmds.add_parser("node-key", help="institution: its SuperNode key pair")
    p.add_argument("--institution", required=True)
    p.add_argument("--out", default=".fedrisk/keys")
    p.set_defaults(func=_node_key)
    p = cmds.add_parser("sketch-key", help="institutions: the key that hashes terminal ids (consortium features)")
    p.add_argument("--out", required=True, help="file to write (owner-only); share it among the institutions")
    p.set_defaults(func=_sketch_key)
    p = cmds.add_parser("superlink", help="operator: start the SuperLink (TLS, registered nodes only)")
    p.add_argument("--certs", default=".fedrisk/certs")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    p.add_argument("--port", type=int, default=9093)
    p.add_argument("--state", default=".fedrisk/superlink.db", help="the SuperLink's state (registered keys, runs)")
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    common(p)
    p.set_defaults(func=_superlink)
    p = cmds.add_parser("register", help="operator: admit an institution's public key")
    p.add_argument("public_key")
    p.add_argument("--institution", required=True)
    common(p, connect=True)
    p.set_defaults(func=_register)
    p = cmds.add_parser("supernode", help="institution: start its SuperNode next to its data")
    p.add_argument("--institution", required=True)
    p.add_argument("--data", help="the institution's CSV/Parquet file (default: the campaign's data spec)")
    p.add_argument("--key", required=True, help="the institution's private key")
    p.add_argument("--home", help="its own folder: policy.yaml, privacy ledger, audit log (default: "
                                  "$FEDRISK_HOME/institutions/NAME, $FEDRISK_HOME defaulting to ~/.fedrisk)")
    p.add_argument("--port", type=int, default=9094, help="the SuperNode's local ClientApp port")
    p.add_argument("--sketch-key", help="the issuers' shared key of the terminal table (fraud consortium features)")
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    common(p, connect=True)
    p.set_defaults(func=_supernode)
    p = cmds.add_parser("tracking-server", help="operator: MLflow's tracking server (runs and model registry)")
    p.add_argument("--store", default=".fedrisk/mlflow", help="folder of artifacts/ (and mlflow.db without "
                                                              "--backend-store-uri)")
    p.add_argument("--backend-store-uri", dest="backend_store_uri",
                   help="the consortium's database for runs and the registry, e.g. "
                        "postgresql://USER@HOST:5432/mlflow (default: SQLite in --store)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--basic-auth", dest="basic_auth", action="store_true",
                   help="MLflow's authentication: everyone signed in reads, only the fedrisk-registry identity (the "
                        "ServerApp, fedrisk promote) writes, so no one moves an alias by hand; identities made once "
                        "in STORE/auth (default: off)")
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    common(p)
    p.set_defaults(func=_tracking_server)
    p = cmds.add_parser("run", help="operator: run a campaign on the federation and wait for it")
    p.add_argument("config", nargs="?", help="campaign YAML (default: built-in credit campaign)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--timeout", type=float, default=6 * 3600.0)
    common(p, connect=True)
    p.set_defaults(func=_run)
    p = cmds.add_parser("trial", help="the whole federation on this machine as real processes, one campaign")
    p.add_argument("config", nargs="?", help="campaign YAML (default: built-in credit campaign)")
    p.add_argument("--dir", default=".fedrisk/trial", help="new folder for certificates, keys, logs, MLflow")
    p.add_argument("--rounds", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--keep", action="store_true", help="keep it running after the campaign (Ctrl-C stops)")
    p.set_defaults(func=_trial)
