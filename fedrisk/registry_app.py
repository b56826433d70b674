"""MLflow's basic-auth app, with a DELETE read one way (`mlflow server --app-name fedrisk-basic-auth`).

MLflow 3.17's permission check reads a DELETE request's parameters from its query string
unless the body is declared JSON, while the handler reads the body as JSON whatever its
declared type: a signed-in user could name a registered model of their own in the query and
the consortium's in the body, and delete its aliases, tags, versions or the model itself
(found by an adversarial review; `tests/test_registry_guard.py`). Here every DELETE body is
declared JSON before either reads it, so both read the same parameters (a DELETE naming its
parameters in the query alone, which MLflow's own client never sends, gets 400).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def _deletes_as_json(wsgi_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "DELETE":
            environ["CONTENT_TYPE"] = "application/json"
        return wsgi_app(environ, start_response)

    return app


def create_app() -> Any:
    """MLflow's `basic-auth` app factory, its Flask app's DELETEs declared JSON first."""
    from mlflow.server import app as flask_app
    from mlflow.server.auth import create_app as basic_auth

    flask_app.wsgi_app = _deletes_as_json(flask_app.wsgi_app)
    return basic_auth(flask_app)
