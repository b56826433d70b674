"""A whole federation on one machine, as real processes: for trials, tests and benchmarks.

The same pieces a consortium runs on separate machines: certificates from the project's own
script, an MLflow tracking server, a TLS SuperLink admitting only registered keys, and one
authenticated SuperNode per institution reading its own file. Everything lives under one
folder and is stopped by process id when the federation closes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fedrisk import registry_guard
from fedrisk.certificates import make_node_key, make_server_certificates
from fedrisk.consortium_features import load_key
from fedrisk.errors import FedriskInputError
from fedrisk.federation import (
    Processes,
    flower_env,
    free_port,
    nodes,
    register,
    run_to_end,
    superlink_command,
    supernode_command,
    tracking_server_command,
    wait_for_https,
    write_connection,
)
from fedrisk.guard import homes_root


@dataclass
class LocalFederation:
    folder: Path
    processes: Processes
    flwr_home: Path
    ca: Path
    superlink: str            # host:port of the SuperLink
    tracking_uri: str | None  # the MLflow server's, when started
    node_ids: dict[str, str]  # institution -> Flower node id
    auth: Path | None = None  # the MLflow server's identities (`fedrisk.registry_guard`), when started

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.processes.stop_all()


log = logging.getLogger(__name__)


def start_federation(
    folder: str | Path,
    institutions: list[str],
    *,
    data_paths: dict[str, Path] | None = None,
    tracking: bool = True,
    node_timeout: float = 90.0,
    backend_store_uri: str | None = None,
) -> LocalFederation:
    """Start the federation (MLflow's runs and registry in `backend_store_uri`, default a SQLite
    file in the folder); on any failure, stop what was started and raise."""
    root = Path(folder).resolve()
    if root.exists() and not root.is_dir():
        raise FedriskInputError("not a folder", file=str(root))
    if root.exists() and any(root.iterdir()):
        raise FedriskInputError("the federation folder is not empty: a trial starts from new keys", file=str(root))
    processes = Processes(root / "logs")
    try:
        return _start(root, institutions, data_paths or {}, tracking, node_timeout, processes, backend_store_uri)
    except BaseException:
        processes.stop_all()
        raise


def _start(root: Path, institutions: list[str], data_paths: dict[str, Path], tracking: bool,
           node_timeout: float, processes: Processes, backend_store_uri: str | None = None) -> LocalFederation:
    flwr_home = root / "flwr"
    env = flower_env(flwr_home)
    certs = make_server_certificates(root / "certs")
    log.info(f"certificates in {root / 'certs'} (CA, SuperLink certificate for localhost)")
    tracking_uri, auth, service = None, None, {}
    if tracking:  # behind MLflow's authentication: only the ServerApp's identity writes
        port = free_port()
        auth = root / "mlflow" / "auth"
        mlflow_server = processes.start("mlflow", tracking_server_command(root / "mlflow", port=port,
                                                                          backend_store_uri=backend_store_uri,
                                                                          basic_auth=True),
                                        {**env, **registry_guard.prepare(auth)}, root)
        tracking_uri = f"http://127.0.0.1:{port}"
        service = registry_guard.identity(auth, registry_guard.SERVICE)  # the ServerApp inherits it
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    link = processes.start("superlink", superlink_command(certs.ca_certificate, certs.certificate,
                                                          certs.private_key, port=port,
                                                          database=root / "superlink.db"), {**env, **service}, root)
    wait_for_https(f"https://{superlink}/health", certs.ca_certificate, link)
    log.info(f"SuperLink on {superlink} (TLS, SuperNode authentication)")
    write_connection(flwr_home, superlink, certs.ca_certificate)
    node_ids = {}
    sketch = root / "institutions" / "sketch.key"  # the institutions' shared key, never the operator's
    load_key(sketch, create=True)
    for name in institutions:
        key = make_node_key(root / "institutions" / name / "keys", name)
        node_ids[name] = register(flwr_home, key.public_key, name)
        processes.start(f"supernode-{name}", supernode_command(
            superlink, certs.ca_certificate, key.private_key, name, data_path=data_paths.get(name),
            home=homes_root() / name, port=free_port(), sketch_key=sketch), env, root / "institutions" / name)
    log.info(f"{len(institutions)} institution keys registered, SuperNodes started")
    deadline = time.monotonic() + node_timeout
    while sum(n.get("status") == "online" for n in nodes(flwr_home)) < len(institutions):
        for name in institutions:
            proc = processes.started[f"supernode-{name}"]
            if proc.poll() is not None:
                raise FedriskInputError(f"institution {name}: SuperNode exited ({proc.returncode}): "
                                        f"{_last_line(processes.log(f'supernode-{name}'))}")
        if time.monotonic() > deadline:
            raise FedriskInputError(f"SuperNodes not online within {node_timeout:.0f} s (see {root / 'logs'})")
        time.sleep(0.5)
    if tracking_uri:
        wait_for_https(f"{tracking_uri}/health", None, mlflow_server)
        log.info(f"MLflow tracking server on {tracking_uri} (store {root / 'mlflow'}; sign-in: {auth}/*.env)")
    log.info(f"{len(institutions)} SuperNodes online")
    return LocalFederation(root, processes, flwr_home, certs.ca_certificate, superlink, tracking_uri, node_ids, auth)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def run_campaign(federation: LocalFederation, config_path: Path | None, overrides: dict, *,
                 campaign: str | None = None, timeout: float = 3600.0) -> tuple[str, str, float]:
    """Submit a campaign to the federation and wait: (campaign id, Flower's final status, seconds)."""
    if federation.tracking_uri:
        overrides = {**overrides, "tracking.uri": federation.tracking_uri}
    done = run_to_end(federation.flwr_home, config_path, overrides, timeout=timeout, campaign=campaign)
    (federation.folder / "logs" / f"serverapp-{done.run_id}.log").write_text(done.log)
    if done.status != "finished:completed":
        log.warning("the ServerApp's log ends with: %s", _last_line(done.log))
    return done.campaign, done.status, done.seconds

