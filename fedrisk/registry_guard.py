"""The consortium's MLflow server behind MLflow's own basic authentication (issue 21).

Everyone signed in may read (`default_permission = READ`); anonymous requests are refused.
Only the registry's service identity writes: the ServerApp (whose gate registers versions and
sets `challenger`) and `fedrisk promote` run under it, and as the creator of the registered
models it manages them. A validator or trainer who moves `champion` with MLflow's "Promote
model" button, its alias pencil or its REST API is refused by the server (403). Whoever holds
the service identity (the coordinator) is not stopped by this; `fedrisk audit verify` flags
any alias that no recorded decision explains, with or without the guard.

The identities are made once, in the auth folder, before the server first starts (MLflow's
auth store, written directly): one `NAME.env` file per identity (mode 0600) holding the
`MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` that MLflow's client reads.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from fedrisk.errors import FedriskInputError

ADMIN = "admin"
SERVICE = "fedrisk-registry"  # the gate and `fedrisk promote`
VALIDATOR = "validator"  # reads everything, changes nothing it did not create
IDENTITIES = (ADMIN, SERVICE, VALIDATOR)


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def prepare(folder: Path) -> dict[str, str]:
    """The auth folder (config, user store, one credentials file per identity; made once) and
    the environment `mlflow server --app-name basic-auth` needs."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    folder = Path(folder).resolve()
    for above in (folder, *folder.parents):
        if above.exists() and not above.is_dir():
            raise FedriskInputError("not a folder: the MLflow store's auth folder goes inside it", file=str(above))
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    config = folder / "basic_auth.ini"
    if not config.is_file():  # written last: without it, nothing before it counts
        (folder / "users.db").unlink(missing_ok=True)
        database = f"sqlite:///{folder / 'users.db'}"
        store = SqlAlchemyStore()
        store.init_db(database)
        for name in IDENTITIES:
            password = secrets.token_urlsafe(24)
            store.create_user(name, password, is_admin=name == ADMIN)
            _write_secret(folder / f"{name}.env", f"MLFLOW_TRACKING_USERNAME={name}\nMLFLOW_TRACKING_PASSWORD={password}\n")
        _write_secret(folder / "flask.secret", secrets.token_hex(32))
        config.write_text("[mlflow]\ndefault_permission = READ\n"
                          f"database_uri = {database}\nadmin_username = {ADMIN}\n"
                          "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                          "grant_default_workspace_access = false\n"
                          # a sign-in checked once a minute, not at every request: each check is a
                          # PBKDF2 hash, and a campaign's ServerApp makes thousands of requests
                          # (one worker: a password changed through the API takes effect at once)
                          "auth_cache_ttl_seconds = 60\n")
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": (folder / "flask.secret").read_text().strip()}


def identity(folder: Path, name: str) -> dict[str, str]:
    """The environment that makes MLflow's client act as `name` (one of `IDENTITIES`)."""
    path = Path(folder) / f"{name}.env"
    if not path.is_file():
        raise FedriskInputError(f"no sign-in for {name}: the auth folder lacks it (made once, at the server's "
                                "first start; restore it from a backup or make a new auth folder)", file=str(path))
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)
