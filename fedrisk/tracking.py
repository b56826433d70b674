"""MLflow tracking of a campaign: one run, per-round metrics, the model and its evidence.

Only the server writes here. Nothing row-level is logged: parameters, aggregate metrics,
the config, the privacy ledger snapshot and the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.tracking import MlflowClient

import fedrisk
from fedrisk import audit, run_schema
from fedrisk.config import CampaignConfig, config_to_json, flatten
from fedrisk.errors import FedriskInputError
from fedrisk.preprocessing import Preprocessor
from fedrisk.serving import save_model_files

MODEL_REQUIREMENTS = ("torch", "numpy", "pandas", "pydantic", "pyyaml", "opacus")  # what the served model imports


def pip_requirements() -> list[str]:
    """The served model's requirements at the versions installed here (pyproject.toml pins them)."""
    return [f"{name}=={version(name).split('+')[0]}" for name in MODEL_REQUIREMENTS]  # no local label (+cpu)


def _artifact_root(uri: str) -> str | None:
    """Keep a SQLite store's artifacts next to its database file."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).parent.joinpath("mlartifacts").as_uri()
    return None


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_root(uri))
    except mlflow.exceptions.MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id  # type: ignore[union-attr]


class TrackedRun:
    """One MLflow run; state is the run id and a batch of pending metrics."""

    def __init__(self, uri: str, experiment: str, tags: dict[str, str], run_id: str | None = None) -> None:
        """A new run, or the existing `run_id` running again (a resumed campaign's)."""
        self.uri = uri
        self.tags = dict(tags)  # what the run's tags are, as set through this object
        self.client = MlflowClient(uri)
        if run_id is None:
            exp = experiment_id(self.client, experiment, uri)
            self.run_id = self.client.create_run(exp, tags=tags).info.run_id
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self._pending: list[Any] = []
        self._institutions: frozenset[str] = frozenset()  # whose metrics go to the table (`set_institutions`)
        self._table: dict[str, dict[str, float]] = {}  # step -> per-institution metric -> value
        self._table_changed = False

    def set_institutions(self, names: list[str], metrics_limit: int) -> None:
        """Tag the run with its institutions; beyond `metrics_limit` of them, each institution's
        metrics (`name.<institution>`) go to one table artifact, not to MLflow's metrics: MLflow
        stores and lists every metric key, and links each to the logged model one query at a time
        (75 keys an institution, 75,000 at a thousand). Consortium-wide metrics stay metrics."""
        tags = run_schema.institution_tags(names)
        before = self.client.get_run(self.run_id).data.tags  # a resumed campaign's: its parts, its table
        for stale in set(run_schema.institution_tag_parts(before)) - set(tags):
            self.client.delete_tag(self.run_id, stale)
        if len(names) > metrics_limit or before.get(run_schema.INSTITUTION_METRICS) == "table":  # once begun, kept
            tags[run_schema.INSTITUTION_METRICS] = "table"
            self._institutions = frozenset(names)
            self._table = json.loads(read_artifact(self.client, self.run_id, run_schema.INSTITUTION_METRICS_ARTIFACT)
                                     or "{}")
        self.set_tags(tags)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queued to MLflow's background logger, off the round's critical path; see flush."""
        if self._institutions:
            mine = {k: float(v) for k, v in metrics.items() if run_schema.institution_of_key(k, self._institutions)}
            if mine:
                self._table.setdefault(str(step), {}).update(mine)
                self._table_changed = True
                metrics = {k: v for k, v in metrics.items() if k not in mine}
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 500):
            self._pending.append(
                self.client.log_batch(self.run_id, metrics=batch[i : i + 500], synchronous=False)
            )

    def flush(self) -> None:
        """Wait until every queued metric is stored (before anyone reads the run)."""
        for operation in self._pending:
            operation.wait()
        self._pending.clear()
        if self._table_changed:
            self.log_dict(self._table, run_schema.INSTITUTION_METRICS_ARTIFACT)
            self._table_changed = False

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.tags.update({k: str(v) for k, v in tags.items()})

    def log_dict(self, content: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, content, artifact_file)

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)

    @contextmanager
    def closing(self) -> Iterator[None]:
        """Ends the run: stopped (bad input, with the reason), failed (with the error), interrupted
        (Ctrl-C: KILLED, as a campaign found dead is; `fedrisk simulate --resume` goes on) or finished."""
        status = "FINISHED"
        try:
            yield
        except FedriskInputError as exc:
            status = "FAILED"
            self.set_tags({run_schema.STATUS: "stopped", run_schema.STOP_REASON: exc.one_line()[:4000]})
            raise
        except Exception as exc:
            status = "FAILED"
            self.set_tags({run_schema.STATUS: "failed", run_schema.ERROR: str(exc)[:4000]})
            raise
        except BaseException as exc:  # Ctrl-C, SystemExit: stopped by hand, not finished (it may resume)
            status = "KILLED"
            self.set_tags({run_schema.STATUS: "interrupted", run_schema.STOP_REASON: type(exc).__name__})
            raise
        finally:
            self.finish(status)


def audit_event(client: MlflowClient, run_id: str, path: str | Path, event: str, actor: str,
                details: dict[str, Any]) -> dict[str, Any]:
    """Append an event about a run to the audit log and copy the log's new head onto the run."""
    entry = audit.append(path, event, actor, {"run_id": run_id, **details})
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in audit.anchor_tags(path, entry).items()])
    return entry


def audit_anchors(uri: str, log_id: str, path: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """Copies of a log's head held by the store's runs, deleted ones too: ('MLflow run ID' -> 'seq:hash'
    for this log, and 'MLflow run ID' -> log id for runs that name this file with another log's id)."""
    client = MlflowClient(uri)
    experiments, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ALL, max_results=1000, page_token=token)
        experiments += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    anchors: dict[str, str] = {}
    foreign: dict[str, str] = {}
    where = str(Path(path).resolve())
    # MLflow's search has no OR: one search per clause
    for clause in (f"tags.`{run_schema.AUDIT_LOG_ID}` = '{log_id}'", f"tags.`{run_schema.AUDIT_LOG}` = '{where}'"):
        token = None
        while experiments:
            page = client.search_runs(experiments, clause, run_view_type=ViewType.ALL, max_results=1000,
                                      page_token=token)
            for run in page:
                tags = run.data.tags
                if tags.get(run_schema.AUDIT_LOG_ID) == log_id:
                    anchors[f"MLflow run {run.info.run_id}"] = tags.get(run_schema.AUDIT_HEAD, "")
                else:
                    foreign[f"MLflow run {run.info.run_id}"] = tags.get(run_schema.AUDIT_LOG_ID, "?")
            token = page.token
            if not token:
                break
    return anchors, foreign


def config_hash(config: CampaignConfig) -> str:
    return hashlib.sha256(config_to_json(config).encode()).hexdigest()


class CampaignRun(TrackedRun):
    """The MLflow run of one campaign: its config as params, metrics, the model, its audit trail."""

    def __init__(self, config: CampaignConfig, campaign: str, resume_run: str | None = None) -> None:
        """A new run, or `resume_run` (an interrupted run of this campaign) running again."""
        self.config = config
        self.campaign = campaign
        self.ended = False  # its campaign_ended entry is written
        self.actor = config.audit.actor or audit.default_actor()
        tags = {
            run_schema.TRAINER: self.actor,
            run_schema.MLFLOW_USER: self.actor,
            run_schema.CONFIG_SHA256: config_hash(config),
            run_schema.CODE_VERSION: audit.code_version(),
            run_schema.CAMPAIGN: campaign,
            run_schema.TASK: config.task,
            run_schema.VERSION: fedrisk.__version__,
            run_schema.PRIVACY: "dp" if config.privacy.enabled else "none",
            run_schema.ACCOUNTANT: "rdp",  # the one accountant: every epsilon of the run is RDP's
            run_schema.DELTA: f"{config.privacy.delta:g}",  # every epsilon metric is at this delta
            run_schema.RUN_NAME: f"{config.task}-{campaign[:8]}",
        }
        if config.training.initial_model:
            tags[run_schema.WARM_START] = config.training.initial_model
        if resume_run is not None:
            tags[run_schema.STATUS] = "resumed"
        super().__init__(config.tracking.uri, config.tracking.experiment, tags, resume_run)
        if resume_run is not None:  # its params and config are the campaign's own, logged at its start
            if run_schema.STOP_REASON in self.client.get_run(resume_run).data.tags:
                self.client.delete_tag(resume_run, run_schema.STOP_REASON)
            return
        params = [Param(k, v[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_dict(self.run_id, config.model_dump(mode="json"), run_schema.CONFIG_ARTIFACT)

    def audit(self, event: str, details: dict[str, Any]) -> dict[str, Any]:
        return audit_event(self.client, self.run_id, self.config.audit.path, event, self.actor,
                           {"campaign": self.campaign, **details})

    def log_model(self, state: dict[str, Any], preprocessor: Preprocessor,
                  reference: dict[str, Any] | None = None) -> str:
        """Log the global model with its preprocessing and drift reference; returns the model URI."""
        from fedrisk.scoring import transaction_spec

        with tempfile.TemporaryDirectory() as tmp:
            files = save_model_files(Path(tmp), state, preprocessor, self.config.model, reference,
                                     transaction_spec(self.config, self.campaign))
            mlflow.set_tracking_uri(self.uri)
            pyfunc_log = logging.getLogger("mlflow.pyfunc")
            level = pyfunc_log.level
            pyfunc_log.setLevel(logging.ERROR)  # "no signature": on purpose, see below
            with mlflow.start_run(run_id=self.run_id):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(Path(fedrisk.__file__).parent / "mlflow_entry.py"),
                    artifacts=files,
                    code_paths=[str(Path(fedrisk.__file__).parent)],
                    # No signature: MLflow's schema check refuses int for float columns and
                    # echoes the rows it refused; the model checks its columns itself.
                    metadata={"input_columns": preprocessor.input_columns,
                              "output": "probability of fraud" if self.config.task == "fraud"
                              else "probability of default"},
                    pip_requirements=pip_requirements(),
                )
            pyfunc_log.setLevel(level)
        return info.model_uri


def run_metrics(client: MlflowClient, run: Any) -> dict[str, float]:
    """A run's latest metrics, with its institutions' table (`TrackedRun.set_institutions`) when
    the run routed them there: only metrics of the run's own institutions, never over a metric
    MLflow holds (a table uploaded by hand changes nothing else)."""
    metrics = dict(run.data.metrics)
    if run.data.tags.get(run_schema.INSTITUTION_METRICS) != "table":
        return metrics
    institutions = set(run_schema.institutions_of(run.data.tags))
    table = json.loads(read_artifact(client, run.info.run_id, run_schema.INSTITUTION_METRICS_ARTIFACT) or "{}")
    merged: dict[str, float] = {}
    for step in sorted(table, key=int):
        merged.update({k: float(v) for k, v in table[step].items() if run_schema.institution_of_key(k, institutions)})
    return {**{k: v for k, v in merged.items() if k not in metrics}, **metrics}


def read_artifact(client: MlflowClient, run_id: str, path: str) -> str | None:
    """The text of one artifact of a run, or None when the run has none at that path."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(client.download_artifacts(run_id, path, tmp)).read_text()
    except (mlflow.exceptions.MlflowException, OSError):
        return None


def find_campaign_run(uri: str, experiment: str, campaign: str) -> Any:
    """The MLflow run of a campaign id, or None."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.`{run_schema.CAMPAIGN}` = '{campaign}'")
    return runs[0] if runs else None
