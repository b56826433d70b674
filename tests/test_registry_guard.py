"""The registry guard against a real `mlflow server --app-name basic-auth` (issue 21): a validator
who moves `champion` through MLflow's REST API or its client, as the UI's "Promote model" button
and alias pencil do, is refused by the server; anonymous requests are refused; the registry's
service identity (the gate, `fedrisk promote`) registers versions and sets aliases."""

from __future__ import annotations

import base64
import json
import os
import stat
import urllib.error
import urllib.request

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fedrisk import registry_guard
from fedrisk.federation import Processes, flower_env, free_port, tracking_server_command, wait_for_https

pytestmark = pytest.mark.slow  # a real MLflow server (~10 s to start)


def _post(uri: str, path: str, body: dict, who: dict[str, str] | None, method: str = "POST",
          content_type: str = "application/json") -> int:
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", json.dumps(body).encode(),
                                     {"Content-Type": content_type}, method=method)
    if who:
        token = base64.b64encode(f"{who['MLFLOW_TRACKING_USERNAME']}:{who['MLFLOW_TRACKING_PASSWORD']}".encode())
        request.add_header("Authorization", f"Basic {token.decode()}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def test_only_the_registry_identity_moves_an_alias(tmp_path, monkeypatch):
    store, auth = tmp_path / "mlflow", tmp_path / "mlflow" / "auth"
    env = registry_guard.prepare(auth)
    assert registry_guard.prepare(auth) == env  # made once: a restart keeps the identities
    for name in registry_guard.IDENTITIES:  # secrets readable by the operator only
        assert stat.S_IMODE(os.stat(auth / f"{name}.env").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(auth).st_mode) == 0o700
    processes = Processes(tmp_path / "logs")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = processes.start("mlflow", tracking_server_command(store, port=port, basic_auth=True),
                             {**flower_env(tmp_path / "flwr"), **env}, tmp_path)
    try:
        wait_for_https(f"{uri}/health", None, server, timeout=120)
        service = registry_guard.identity(auth, registry_guard.SERVICE)
        validator = registry_guard.identity(auth, registry_guard.VALIDATOR)
        for key, value in service.items():
            monkeypatch.setenv(key, value)
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("fedrisk-credit"))
        client.create_registered_model("fedrisk-credit")
        version = client.create_model_version("fedrisk-credit", f"runs:/{run.info.run_id}/model", run.info.run_id).version
        client.set_registered_model_alias("fedrisk-credit", "challenger", version)  # what the gate does

        hand = {"name": "fedrisk-credit", "alias": "champion", "version": str(version)}
        assert _post(uri, "registered-models/alias", hand, validator) == 403  # the UI's call, as a validator
        assert _post(uri, "registered-models/alias", hand, None) == 401  # anonymous
        assert _post(uri, "model-versions/update", {"name": "fedrisk-credit", "version": str(version),
                                                    "description": "approved"}, validator) == 403
        # MLflow 3.17's permission check reads a DELETE's parameters from the query string unless
        # the body is declared JSON, and its handler reads the body whatever it is declared: a
        # validator names a model of their own in the query and the consortium's in a text body
        # (found by an adversarial review: it deleted `champion`, tags, a version, the model)
        for key, value in validator.items():
            monkeypatch.setenv(key, value)
        reader = MlflowClient(uri)
        reader.create_registered_model("mine")  # any signed-in user may create one
        theirs = {"name": "fedrisk-credit", "version": str(version)}
        for path, body in (("registered-models/alias?name=mine&alias=champion", {**theirs, "alias": "challenger"}),
                           ("model-versions/delete-tag?name=mine&version=1&key=k", {**theirs, "key": "k"}),
                           (f"model-versions/delete?name=mine&version={version}", theirs),
                           ("registered-models/delete?name=mine", {"name": "fedrisk-credit"})):
            assert _post(uri, path, body, validator, "DELETE", "text/plain") in (400, 403), path
        assert reader.get_model_version_by_alias("fedrisk-credit", "challenger").version == version  # all still there
        with pytest.raises(MlflowException, match="Permission denied"):
            reader.set_registered_model_alias("fedrisk-credit", "champion", version)
        with pytest.raises(MlflowException):
            reader.delete_registered_model_alias("fedrisk-credit", "challenger")
        for key, value in service.items():
            monkeypatch.setenv(key, value)
        MlflowClient(uri).set_registered_model_alias("fedrisk-credit", "champion", version)  # `fedrisk promote`
        assert MlflowClient(uri).get_model_version_by_alias("fedrisk-credit", "champion").version == version
    finally:
        processes.stop_all()
