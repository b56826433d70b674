"""A real Flower deployment of fedrisk: SuperLink, SuperNodes, the flwr CLI and an MLflow server.

Each role is a Flower (or MLflow) command; this module builds those commands, so an operator
can read and run them by hand, and starts, watches and stops them for a trial federation on
one machine. It never imports flwr: it talks to Flower's processes and CLI.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fedrisk.config import check_institution_name
from fedrisk.environment import QUIET_ENV
from fedrisk.errors import FedriskInputError

log = logging.getLogger(__name__)
CONNECTION = "fedrisk"  # the SuperLink connection's name in $FLWR_HOME/config.toml
PROJECT_DIR = Path(__file__).resolve().parent.parent  # the Flower app: pyproject.toml, server/, clients/
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _tool(name: str) -> str:
    """A console script of this environment (flwr, flower-superlink, mlflow, ...)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FedriskInputError(f"'{name}' is not installed in this environment (pip install -e .)")
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process: its own FLWR_HOME, no telemetry, no update
    check, no runtime installs (the app's dependencies are installed with fedrisk)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # Flower starts its SuperExec
    return {**os.environ, **QUIET_ENV, "FLWR_HOME": str(flwr_home), "NO_COLOR": "1", "COLUMNS": "200", "PATH": path}


def superlink_command(ca: Path, certificate: Path, private_key: Path, *, host: str = "127.0.0.1",
                      port: int = 9093, database: Path | None = None) -> list[str]:
    """The consortium's SuperLink: TLS on its one port, only registered SuperNodes admitted."""
    cmd = [_tool("flower-superlink"), "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(certificate),
           "--ssl-keyfile", str(private_key), "--enable-supernode-auth", "--disable-runtime-dependency-installation",
           "--host", host,
           "--port", str(port)]
    return cmd + (["--database", str(database)] if database else [])


def supernode_command(superlink: str, ca: Path | None, private_key: Path | None, institution: str, *,
                      data_path: Path | None = None, home: Path | None = None, port: int = 9094,
                      max_retries: int | None = None, sketch_key: Path | None = None) -> list[str]:
    """An institution's SuperNode. Its node config names the institution and, when given, the
    file of its own data, its home (policy, privacy ledger) and the consortium's sketch key
    (fraud consortium features): the campaign's config cannot see them."""
    check_institution_name(institution)
    node_config = [f"institution='{institution}'"]
    if data_path is not None:
        node_config.append(f"data-path='{Path(data_path).resolve()}'")
    if home is not None:
        node_config.append(f"home='{Path(home).resolve()}'")
    if sketch_key is not None:
        node_config.append(f"sketch-key='{Path(sketch_key).resolve()}'")
    cmd = [_tool("flower-supernode"), "--superlink", superlink]
    cmd += ["--root-certificates", str(ca)] if ca is not None else ["--insecure"]
    if private_key is not None:
        cmd += ["--auth-supernode-private-key", str(private_key)]
    cmd += ["--port", str(port), "--node-config", " ".join(node_config)]
    return cmd + (["--max-retries", str(max_retries)] if max_retries is not None else [])


def tracking_server_command(store: Path, *, host: str = "127.0.0.1", port: int = 5000,
                            backend_store_uri: str | None = None, basic_auth: bool = False) -> list[str]:
    """MLflow's tracking server, serving artifacts itself (validators browse it): runs and the model
    registry in `backend_store_uri` (a consortium's PostgreSQL, `postgresql://...`), else in a
    SQLite file in `store`, the one-machine default. With `basic_auth`, MLflow's authentication
    (`fedrisk.registry_guard`; the environment from its `prepare`; the app `fedrisk.registry_app`)."""
    store = Path(store).resolve()
    backend = backend_store_uri or f"sqlite:///{store / 'mlflow.db'}"
    return [_tool("mlflow"), "server", *(["--app-name", "fedrisk-basic-auth"] if basic_auth else []),
            "--backend-store-uri", backend, "--artifacts-destination", str(store / "artifacts"),
            "--host", host, "--port", str(port), "--workers", "1"]


def write_connection(flwr_home: Path, address: str, ca: Path) -> Path:
    """The flwr CLI's connection to the SuperLink, over TLS checked against the consortium's CA."""
    if not Path(ca).is_file():
        raise FedriskInputError("the consortium's CA certificate is not there", file=str(Path(ca).resolve()))
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                    f'address = "{address}"\nroot-certificates = "{Path(ca).resolve()}"\n')
    return path


def flwr(flwr_home: Path, *args: str, timeout: float = 120.0) -> dict:
    """One flwr CLI command with JSON output; a failure raises with Flower's own message."""
    done = subprocess.run([_tool("flwr"), *args, "--format", "json"], env=flower_env(flwr_home),
                          capture_output=True, text=True, timeout=timeout, cwd=flwr_home)
    text = ANSI.sub("", done.stdout)
    try:
        out = json.loads(text[text.index("{"):])
    except ValueError:
        out = {"success": False, "error-message": (text + done.stderr).strip()[-500:]}
    if done.returncode != 0 or not out.get("success", True):
        message = _flower_message(str(out.get("error-message") or "") + "\n" + done.stderr)
        raise FedriskInputError(f"flwr {' '.join(args[:2])}: {message or 'failed'}")
    return out


def _flower_message(text: str) -> str:
    """Flower's error text without its box drawing, on one line."""
    lines = [ANSI.sub("", line).strip(" \t│╭╮╰╯─") for line in text.splitlines()]
    return " ".join(line for line in lines if line and line != "Error")


def register(flwr_home: Path, public_key: Path, institution: str) -> str:
    """Admit an institution's key: only registered SuperNodes may connect. Returns the node id."""
    key = Path(public_key).resolve()
    if not key.is_file():
        raise FedriskInputError("public key not found", institution=institution, file=str(key))
    return str(flwr(flwr_home, "supernode", "register", str(key), CONNECTION, "--name", institution)["node-id"])


def nodes(flwr_home: Path) -> list[dict]:
    return list(flwr(flwr_home, "supernode", "list", CONNECTION).get("nodes", []))


def submit(flwr_home: Path, run_config: dict[str, str], app_dir: Path = PROJECT_DIR) -> str:
    """Start a campaign on the federation; returns Flower's run id."""
    # as a TOML file: Flower's inline KEY=VALUE form splits JSON values at their spaces
    file = flwr_home / f"run-{uuid.uuid4().hex}.toml"
    file.write_text("".join(f"{k} = {json.dumps(str(v))}\n" for k, v in run_config.items()))
    return str(flwr(flwr_home, "run", str(app_dir), CONNECTION, "--run-config", str(file))["run-id"])


def run_status(flwr_home: Path, run_id: str) -> str:
    runs = flwr(flwr_home, "ls", CONNECTION, "--run-id", run_id).get("runs", [])
    return str(runs[0]["status"]) if runs else "unknown"


def wait_for_run(flwr_home: Path, run_id: str, timeout: float) -> str:
    """Poll until the run finishes; `flwr run --stream` would exit 0 even when it failed."""
    deadline = time.monotonic() + timeout
    started, shown = time.monotonic(), ""
    while time.monotonic() < deadline:
        status = run_status(flwr_home, run_id)
        if status != shown:
            log.info("run %s %s (%.0f s)", run_id, status, time.monotonic() - started)
            shown = status
        if status.startswith("finished"):
            return status
        time.sleep(1.0)
    raise FedriskInputError(f"run {run_id} did not finish within {timeout:.0f} s (status {shown})")


@dataclass(frozen=True)
class Submitted:
    campaign: str
    run_id: str     # Flower's
    status: str     # Flower's final status, e.g. finished:completed
    seconds: float  # submit to finish
    log: str        # the ServerApp's log


def run_to_end(flwr_home: Path, config_path: str | Path | None, overrides: dict, *, timeout: float,
               campaign: str | None = None) -> Submitted:
    """Submit a campaign to the SuperLink, wait for it, and fetch the ServerApp's log."""
    campaign = campaign or uuid.uuid4().hex
    run_config = {"config-path": str(Path(config_path).resolve()) if config_path else "",
                  "overrides": json.dumps(overrides), "campaign-id": campaign}
    started = time.monotonic()
    run_id = submit(flwr_home, run_config)
    log.info("campaign %s submitted as Flower run %s", campaign, run_id)
    status = wait_for_run(flwr_home, run_id, timeout)
    return Submitted(campaign, run_id, status, time.monotonic() - started, server_log(flwr_home, run_id))


def server_log(flwr_home: Path, run_id: str) -> str:
    done = subprocess.run([_tool("flwr"), "log", run_id, CONNECTION, "--show"], env=flower_env(flwr_home),
                          capture_output=True, text=True, timeout=120, cwd=flwr_home)
    return ANSI.sub("", done.stdout + done.stderr)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_https(url: str, ca: Path | None, process: subprocess.Popen | None = None,
                   timeout: float = 60.0) -> None:
    """Until `url` answers (over TLS checked against `ca` when given) or its process exits."""
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, context=context, timeout=5):
                return
        except OSError as err:
            if process is not None and process.poll() is not None:
                raise FedriskInputError(f"{url}: the process serving it exited ({process.returncode})") from None
            if time.monotonic() > deadline:
                raise FedriskInputError(f"{url} did not answer within {timeout:.0f} s ({err})") from None
            time.sleep(0.3)


@dataclass
class Processes:
    """Processes this program started, and what they spawned (Flower's SuperExec detaches into a
    session of its own, MLflow forks workers). Stopped by process id, never by name."""

    logs: Path
    started: dict[str, subprocess.Popen] = field(default_factory=dict)
    stopped: list[int] = field(default_factory=list)  # every process id stopped, descendants included

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (the process owns it)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        log.close()
        self.started[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return ANSI.sub("", path.read_text(errors="replace")) if path.exists() else ""

    def stop(self, name: str, grace: float = 10.0) -> int | None:
        """SIGTERM to the process and its descendants, SIGKILL to what is left after `grace`."""
        proc = self.started.pop(name)
        family = [proc.pid, *descendants(proc.pid)]
        self.stopped += family
        for pid in family:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(alive(pid) for pid in family) and time.monotonic() < deadline:
            proc.poll()  # reaps our own child
            time.sleep(0.1)
        for pid in family:
            if alive(pid):
                _signal(pid, signal.SIGKILL)
        proc.wait(grace)
        deadline = time.monotonic() + grace
        while any(alive(pid) for pid in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        return proc.returncode

    def stop_all(self) -> None:
        for name in reversed(list(self.started)):  # nodes before the link, the link before MLflow
            try:
                self.stop(name)
            except subprocess.TimeoutExpired:  # go on stopping the others
                pass

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # after "pid (name) ": state, ppid, ...


def alive(pid: int) -> bool:
    """Running or stopped, not gone and not a zombie waiting to be reaped."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of `pid`, from /proc (Linux)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo += parents.get(child, [])
    return out


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
