"""What a monitoring run needs before the engine starts: the model, its reference, the windows.

Everything here is read on the server side from MLflow (the registered model, its training
run's config and the reference stored with the model); the windows' data stay with the
institutions, which load them when the monitoring round asks.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from fedrisk import run_schema
from fedrisk.config import (
    DRIFT_SCENARIOS,
    CampaignConfig,
    config_to_json,
    format_validation_error,
)
from fedrisk.errors import FedriskInputError
from fedrisk.model_names import parse_model
from fedrisk.monitor_config import MonitorConfig
from fedrisk.serving import read_model
from fedrisk.sources import institution_names


@dataclass(frozen=True)
class ModelRef:
    """A registered model version and the campaign run that trained it."""

    name: str
    version: str
    alias: str | None
    uri: str  # the logged model (models:/m-...)
    training_run: str


@dataclass(frozen=True)
class MonitorPlan:
    model: ModelRef
    training: CampaignConfig
    monitor: MonitorConfig
    state: dict[str, torch.Tensor]
    preprocessor_json: str
    reference: dict[str, Any]
    windows: list[tuple[str, str, float | None]]  # (label, window campaign config JSON, severity)
    institutions: list[str]
    request: str  # tags the monitoring run, so the caller finds it afterwards


def resolve_model(uri: str, spec: str) -> ModelRef:
    """NAME@ALIAS, NAME/VERSION (with or without models:/) to its registered version."""
    named = parse_model(spec)
    name, alias, version = named.name, named.alias, named.version
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise FedriskInputError(f"no MLflow store at {uri}: run a campaign first, or give --tracking-uri")
    try:
        client = MlflowClient(uri)
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise FedriskInputError(f"model '{spec}' not found in {uri}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # an unusable tracking URI raises several types
        raise FedriskInputError(f"tracking URI {uri}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not mv.run_id:
        raise FedriskInputError(f"model '{spec}' has no training run: it was not made by fedrisk")
    return ModelRef(name, str(mv.version), alias, str(mv.source), mv.run_id)


def training_config(uri: str, run_id: str) -> CampaignConfig:
    """The campaign config a model was trained with, as its run stored it."""
    import tempfile

    client = MlflowClient(uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, run_schema.CONFIG_ARTIFACT, tmp)
        except MlflowException:
            raise FedriskInputError(f"run {run_id} has no config.yaml: not a fedrisk campaign") from None
        raw = yaml.safe_load(Path(path).read_text())
    try:
        return CampaignConfig.model_validate(raw)
    except ValidationError as err:
        raise FedriskInputError(format_validation_error(err, f"config of run {run_id}")) from None


def window_config(training: CampaignConfig, monitor: MonitorConfig, index: int) -> CampaignConfig:
    """The training campaign with its data replaced by window `index` (0-based)."""
    raw = training.model_dump(mode="json")
    data = raw["data"]
    windows = monitor.windows
    if windows.source == "synthetic":
        if training.data.source != "synthetic":
            raise FedriskInputError("the model was trained on files: give its new data in windows.files "
                                    "(windows.source: files)")
        synthetic = windows.synthetic
        allowed = DRIFT_SCENARIOS[training.task]
        if synthetic.scenario not in allowed:
            raise FedriskInputError(f"windows.synthetic.scenario '{synthetic.scenario}' is not a {training.task} "
                                    f"scenario (use one of: {', '.join(allowed)})")
        drift = {"scenario": synthetic.scenario, "severity": synthetic.severities[index],
                 "stream": index + 1, "start_day": 0}
        if training.task == "fraud":
            tx = training.data.transactions
            assert tx is not None
            history = max(tx.windows_days) + tx.delay_days + 1  # look-back before the window, a day spare
            data["synthetic"]["days"] = history + windows.days
            first = training.data.synthetic.drift.start_day + training.data.synthetic.days  # after the model's data
            drift["start_day"] = max(0, first + index * windows.days - history)
        else:
            data["synthetic"]["rows"] = synthetic.rows
        data["synthetic"]["drift"] = drift
    else:
        assert windows.files is not None
        data.update(source="files", files=windows.files[index], path=None, institution_column=None,
                    partition=None)
    try:
        return CampaignConfig.model_validate(raw)
    except ValidationError as err:
        raise FedriskInputError(format_validation_error(err, f"monitoring {windows.label(index)}")) from None


def plan_monitoring(monitor: MonitorConfig, model_spec: str | None, request: str | None = None) -> MonitorPlan:
    spec = model_spec or monitor.model
    if not spec:
        raise FedriskInputError("no model to monitor: give NAME@ALIAS or NAME/VERSION (or set model: in the config)")
    uri = monitor.tracking.uri
    model = resolve_model(uri, spec)
    training = training_config(uri, model.training_run)
    files = read_model(model.uri, uri)
    state, preprocessor, reference = files["state"], files["preprocessor"], files["reference"]
    if reference is None:
        raise FedriskInputError(f"model '{spec}' carries no drift reference (logged before monitoring existed); "
                                "retrain it to monitor it")
    windows = []
    for index in range(monitor.windows.count()):
        config = window_config(training, monitor, index)
        severity = monitor.windows.synthetic.severities[index] if monitor.windows.source == "synthetic" else None
        windows.append((monitor.windows.label(index), config_to_json(config), severity))
    if monitor.windows.source == "files":
        assert monitor.windows.files is not None
        institutions = sorted({name for window in monitor.windows.files for name in window})
    else:
        institutions = institution_names(training.data)
    if "pooled" in institutions:
        raise FedriskInputError("an institution named 'pooled' would be mistaken for the pooled scope: rename it")
    return MonitorPlan(model, training, monitor, state, preprocessor.to_json(), reference, windows, institutions,
                       request or uuid.uuid4().hex)


def retrain_config(plan: MonitorPlan, window: int, rounds: int | None = None) -> CampaignConfig:
    """The campaign that retrains the monitored model, warm-started from it, on the new data.

    Built-in data: the training campaign on the data of window `window`'s regime (its drift
    scenario and severity, a new stream, the training campaign's size). Files: the campaign
    in `retrain.config`.
    """
    from fedrisk.config import load_config

    overrides: dict[str, Any] = {"training.initial_model": plan.model.uri,
                                 "tracking.uri": plan.monitor.tracking.uri,
                                 "tracking.model_name": plan.model.name}  # a new version of the same model
    if rounds is not None or plan.monitor.retrain.rounds is not None:
        overrides["training.rounds"] = rounds if rounds is not None else plan.monitor.retrain.rounds
    if plan.monitor.retrain.config:
        return load_config(plan.monitor.retrain.config, overrides)
    if plan.monitor.windows.source != "synthetic":
        raise FedriskInputError("the windows come from files: give retrain.config, a campaign on the new data")
    raw = plan.training.model_dump(mode="json")
    windows = plan.monitor.windows
    drift = {"scenario": windows.synthetic.scenario, "severity": windows.synthetic.severities[window],
             "stream": 1000 + window, "start_day": 0}
    if plan.training.task == "fraud":  # the campaign's whole calendar, ending with that window
        drift["start_day"] = plan.training.data.synthetic.drift.start_day + (window + 1) * windows.days
    raw["data"]["synthetic"]["drift"] = drift
    for key, value in overrides.items():
        section, name = key.split(".")
        raw[section][name] = value
    try:
        return CampaignConfig.model_validate(raw)
    except ValidationError as err:
        raise FedriskInputError(format_validation_error(err, "retraining campaign")) from None
