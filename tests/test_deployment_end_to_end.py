"""A real deployment on loopback: a TLS SuperLink admitting only registered keys, three
authenticated SuperNodes each reading its own file, an MLflow tracking server whose runs and
model registry live in PostgreSQL (a consortium's registry is never a SQLite file) and that
signs everyone in (only the ServerApp's identity writes: a validator cannot move an alias), SecAgg+.
Refusals of an unregistered and a plaintext node; a fourth institution whose own policy
refuses the campaign (it sits out, the others go on); every process stopped at the end."""

from __future__ import annotations

import json
import re
import time

import mlflow
import psycopg
import pytest
from mlflow.tracking import MlflowClient
from postgres_cluster import postgres_cluster

from fedrisk import audit, registry_guard
from fedrisk.certificates import make_node_key
from fedrisk.cli import main
from fedrisk.federation import alive, flower_env, nodes, supernode_command
from fedrisk.generators.credit import generate_institution
from fedrisk.guard import homes_root, update_policy
from fedrisk.ledger import PrivacyLedger
from fedrisk.local_federation import start_federation
from fedrisk.tracking import find_campaign_run

pytestmark = pytest.mark.slow
NAMES = ["inst01", "inst02", "inst03"]
REFUSER = "inst04"  # its policy allows at most epsilon 2 per campaign; the campaign asks 3


def _refused(federation, name: str, cmd: list[str], timeout: float = 90.0) -> tuple[int, str]:
    """Start a SuperNode that should be turned away; its exit code and log."""
    proc = federation.processes.start(name, cmd, flower_env(federation.flwr_home), federation.folder)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    log = federation.processes.log(name)
    federation.processes.stop(name)
    return proc.returncode, log


def test_tls_federation_with_authenticated_nodes_and_secure_aggregation(tmp_path, capsys, monkeypatch):
    files = {}
    for index, name in enumerate([*NAMES, REFUSER]):  # each institution's own file, on "its" machine
        files[name] = tmp_path / "banks" / name / f"{name}.csv"
        files[name].parent.mkdir(parents=True)
        generate_institution(index, 4, 12000, 42).to_csv(files[name], index=False)
    update_policy(homes_root() / REFUSER, REFUSER, {"privacy.max_campaign_epsilon": 2.0})
    with postgres_cluster() as registry, start_federation(tmp_path / "federation", [*NAMES, REFUSER],
                                                          data_paths=files, backend_store_uri=registry) as fed:
        started = dict(fed.processes.started)
        rogue = make_node_key(tmp_path / "rogue", "rogue")
        code, log = _refused(fed, "rogue", supernode_command(fed.superlink, fed.ca, rogue.private_key, "inst01",
                                                             port=19991))
        assert code != 0 and "Failed to activate SuperNode" in log, log[-2000:]
        code, log = _refused(fed, "plaintext", supernode_command(fed.superlink, None, None, "inst01", port=19992,
                                                                 max_retries=2))
        # a plaintext node talking to the TLS port: the SuperLink drops it (how depends on timing)
        assert code != 0 and ("Server disconnected without sending a response" in log
                              or "Connection reset by peer" in log), log[-2000:]
        assert sorted(n["status"] for n in nodes(fed.flwr_home)) == ["online"] * 4

        for key, value in registry_guard.identity(fed.auth, registry_guard.VALIDATOR).items():
            monkeypatch.setenv(key, value)  # this process reads MLflow as a validator; the ServerApp writes
        # the operator's command; the campaign's config names the institutions, and each node
        # reads the file its own operator gave it (these paths exist nowhere)
        settings = {"data.source": "files", "training.rounds": 2, "secure_aggregation.enabled": True,
                    "data.files": json.dumps({n: f"/not/on/the/server/{n}.csv" for n in [*NAMES, REFUSER]}),
                    "audit.path": str(tmp_path / "audit.jsonl"), "tracking.uri": fed.tracking_uri}
        code = main(["federation", "run", "--superlink", fed.superlink, "--ca", str(fed.ca), "--flwr-home",
                     str(fed.flwr_home), "--timeout", "1200", *[f"--set={k}={v}" for k, v in settings.items()]])
        printed = capsys.readouterr().out
        assert code in (0, 3), printed  # 3: the gate blocked the model, which the summary says
        campaign = re.search(r"^campaign\s+([0-9a-f]{32}) \(completed\)$", printed, re.M).group(1)
        client = MlflowClient(fed.tracking_uri)
        run = find_campaign_run(fed.tracking_uri, "fedrisk-credit", campaign)
        tags = run.data.tags
        assert tags["fedrisk.status"] == "completed" and tags["fedrisk.rounds_completed"] == "2"
        assert tags["fedrisk.institutions"] == ",".join(NAMES)
        assert f"institution {REFUSER}: refused by its policy (privacy.max_campaign_epsilon)" in tags["fedrisk.excluded"]
        assert tags["fedrisk.secure_aggregation"].startswith("SecAgg+")
        assert 0.6 < run.data.metrics["test_auc"] < 0.9
        assert tags["fedrisk.gate.verdict"] in {"pass", "warn", "block"}
        name, version = tags["fedrisk.gate.model_version"].split("/")
        assert client.get_model_version(name, version).run_id == run.info.run_id
        # the registry answers to its service identity only: a validator's alias change is refused
        with pytest.raises(mlflow.exceptions.MlflowException, match="Permission denied"):
            client.set_registered_model_alias(name, "champion", version)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        with pytest.raises(mlflow.exceptions.MlflowException):  # and nobody reads without signing in
            MlflowClient(fed.tracking_uri).get_model_version(name, version)
        with psycopg.connect(registry) as db, db.cursor() as cursor:  # the registry is PostgreSQL's
            cursor.execute("select run_id from model_versions where name = %s and version = %s", (name, int(version)))
            assert cursor.fetchone() == (run.info.run_id,)
        assert not list((tmp_path / "federation" / "mlflow").glob("*.db"))  # no SQLite store beside it
        assert audit.verify(tmp_path / "audit.jsonl").problem is None
        entries = [json.loads(line) for _, line, _ in audit.read_entries(tmp_path / "audit.jsonl")]
        sources = {e["details"]["institution"]: e["details"]["source"] for e in entries
                   if e["event"] == "institution_data"}
        assert sources == {n: str(files[n]) for n in NAMES}  # each node read the file its operator named
        for name in NAMES:  # each node charged its own ledger, in the home its node config names
            assert PrivacyLedger.open(homes_root() / name / "ledger.json", name, 6.0, 1e-6).spent() > 2.9
        assert not (homes_root() / REFUSER / "ledger.json").exists()  # refused before reading or spending
    for proc in started.values():
        assert proc.poll() is not None
    stopped = fed.processes.stopped
    assert len(stopped) > len(started)  # SuperExec and MLflow's workers, found and stopped too
    assert not [pid for pid in stopped if alive(pid)]
