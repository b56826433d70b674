"""Runs a campaign or a monitoring run on Flower's simulation engine, on this machine.

Before Ray starts, every institution's data, split and privacy budget is checked locally
(in a simulation all data sit on this machine), so input errors fail fast with one line.
The apps are loaded by their component references, as `flwr run` loads them, and read their
work from the run config: the simulation runs the same ServerApp entry point as a
deployment, and the library never imports the apps.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrisk import audit, run_schema
from fedrisk.campaign_lock import campaign_lock, close_interrupted, describe
from fedrisk.config import CampaignConfig, check_secure_aggregation, config_to_json
from fedrisk.environment import quiet
from fedrisk.errors import BudgetExhaustedError, FedriskInputError
from fedrisk.privacy import institution_noise_multiplier
from fedrisk.sources import institution_names
from fedrisk.tracking import find_campaign_run, run_metrics

if TYPE_CHECKING:
    from fedrisk.monitor_config import MonitorConfig

# The apps, as pyproject.toml's [tool.flwr.app.components] names them (a test checks it).
SERVER_APP = "server.server_app:app"
CLIENT_APP = "clients.client_app:app"
MONITOR_APP = "server.monitor_app:app"

log = logging.getLogger("fedrisk")


@dataclass(frozen=True)
class Outcome:
    campaign: str
    run_id: str
    experiment_id: str
    status: str
    metrics: dict[str, float]
    tags: dict[str, str]


def preflight(config: CampaignConfig, campaign: str = "preflight") -> list[str]:
    """Check locally what every institution would check (in a simulation all data and homes sit
    on this machine): its policy, its data, whose population they are, and its budget. Nothing
    is reserved or released; the institutions check again when the campaign asks them."""
    from fedrisk import lineage
    from fedrisk.budget import check_campaign_fits
    from fedrisk.guard import check_delta
    from fedrisk.protocol import BOUNDS, implied_messages
    from fedrisk.session import close_sessions, open_session
    from fedrisk.splits import check_history, check_split

    names = institution_names(config.data)
    if len(names) < config.training.min_institutions:
        raise FedriskInputError(
            f"{len(names)} institution(s) configured, training.min_institutions is {config.training.min_institutions}")
    check_secure_aggregation(config, len(names))
    unknown = [n for n in (config.drill.institutions if config.drill else []) if n not in names]
    if unknown:  # before any institution is asked (and charged) anything
        raise FedriskInputError(f"drill.institution '{unknown[0]}' is not an institution of this campaign "
                                f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    inst = config.privacy.institution_level
    if inst.enabled:  # the campaign's institution-level budget must pay for its rounds
        institution_noise_multiplier(inst.target_epsilon, inst.delta, config.training.rounds, inst.noise_multiplier)
    seen: dict[str, str] = {}
    config_json = config_to_json(config)
    for partition, name in enumerate(names):
        session = open_session(config_json, {"partition-id": partition}, names)
        for kind in implied_messages(BOUNDS, config):
            session.guard(kind)
        data = session.data
        if data.fingerprint in seen:  # the federation's epsilon assumes disjoint data
            raise FedriskInputError(f"same data as institution {seen[data.fingerprint]}", institution=name,
                                    file=data.source)
        seen[data.fingerprint] = name
        if config.data.time_split is not None:
            check_history(data, config.data)
        check_split(data, session.split)
        ledger = session.ledger()
        check_delta(config, name, len(session.split.train), ledger.delta, data.source)
        lineage.check_population(session.home, name, data.population, data.source)
        if config.privacy.enabled:
            rules = session.policy.privacy
            try:
                check_campaign_fits(config, session.shape, ledger, campaign, rules.max_campaign_epsilon,
                                    rules.lifetime_epsilon)
            except BudgetExhaustedError as err:
                raise BudgetExhaustedError(f"{err.detail} (ledger {ledger.path})", institution=name,
                                           file=data.source) from None
    close_sessions()  # the institutions' nodes load their own data; this process keeps none of it
    return names


def simulate(config: CampaignConfig, *, campaign: str | None = None, check_inputs: bool = True,
             verbose: bool = False, num_supernodes: int | None = None) -> Outcome:
    """Run one campaign on Flower's simulation engine; returns its MLflow run."""
    quiet()
    campaign = campaign or uuid.uuid4().hex
    with campaign_lock(config, campaign):  # one campaign per store; any other still RUNNING here died
        for found in close_interrupted(config):
            log.warning(describe(found))
        return _simulate_locked(config, campaign, check_inputs, verbose, num_supernodes)


def _simulate_locked(config: CampaignConfig, campaign: str, check_inputs: bool, verbose: bool,
                     num_supernodes: int | None) -> Outcome:
    try:
        names = preflight(config) if check_inputs else institution_names(config.data)
    except FedriskInputError as err:  # a refusal before any round is a decision too
        kind = "budget" if isinstance(err, BudgetExhaustedError) else "input"
        try:
            audit.append(config.audit.path, "campaign_refused", config.audit.actor or audit.default_actor(),
                         {"campaign": campaign, "kind": kind, "reason": err.one_line()})
        except FedriskInputError as audit_error:  # the refusal's own reason is what the user needs
            log.warning("not in the audit log: %s", audit_error.one_line())
        raise
    run_config = {"campaign-config": config_to_json(config), "campaign-id": campaign}
    _run_engine(SERVER_APP, run_config, num_supernodes or len(names), verbose)
    outcome = campaign_outcome(config, campaign)
    if outcome is None:
        raise RuntimeError(f"campaign {campaign} left no MLflow run")
    return outcome


def resume(where: CampaignConfig, campaign: str, *, verbose: bool = False) -> tuple[CampaignConfig, Outcome]:
    """Go on with an interrupted campaign after its last completed round. Its config is the one
    it started with (the run's artifact, checked against the run's hash); `where` only says which
    store holds it. The institutions answer what they already answered from their homes, so the
    campaign spends what an uninterrupted one would."""
    import yaml
    from mlflow.tracking import MlflowClient

    from fedrisk import checkpoint
    from fedrisk.tracking import config_hash

    quiet()
    if not re.fullmatch(r"[0-9a-f]{32}", campaign):
        raise FedriskInputError("--resume needs a campaign id: 32 hexadecimal characters, as the audit log and the "
                                f"run's tag {run_schema.CAMPAIGN} show it")
    uri, experiment = where.tracking.uri, where.tracking.experiment
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():  # MLflow would create one
        raise FedriskInputError(f"no MLflow store at {uri[len('sqlite:///'):]}: --resume goes on with a campaign of "
                                "an existing store (name it with --tracking-uri)")
    with campaign_lock(where, campaign):
        for found in close_interrupted(where):
            log.warning(describe(found))
        run = find_campaign_run(uri, experiment, campaign)
        if run is None:
            raise FedriskInputError(f"no campaign {campaign} in experiment '{experiment}' of {uri}")
        status = run.data.tags.get(run_schema.STATUS, run.info.status)
        if run.info.status not in ("KILLED", "FAILED"):
            raise FedriskInputError(f"campaign {campaign} (MLflow run {run.info.run_id}) is {status}: only an "
                                    "interrupted or failed campaign resumes")
        client = MlflowClient(uri)
        try:
            raw = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, run_schema.CONFIG_ARTIFACT)).read_text())
            config = CampaignConfig.model_validate(raw)
        except Exception as exc:  # the artifact missing or not a campaign
            raise FedriskInputError(f"campaign {campaign}'s config cannot be read from its run "
                                    f"({type(exc).__name__})") from None
        if config_hash(config) != run.data.tags.get(run_schema.CONFIG_SHA256):
            raise FedriskInputError(f"campaign {campaign}'s config artifact is not the config it started with "
                                    f"(SHA-256 differs from the run's tag {run_schema.CONFIG_SHA256})")
        saved = checkpoint.load(config, campaign)
        log.warning("campaign %s resumes after round %d of %d", campaign, saved.server_round, config.training.rounds)
        run_config = {"campaign-config": config_to_json(config), "campaign-id": campaign,
                      "resume-run": run.info.run_id}
        _run_engine(SERVER_APP, run_config, len(institution_names(config.data)), verbose)
    outcome = campaign_outcome(config, campaign)
    if outcome is None:
        raise RuntimeError(f"campaign {campaign} left no MLflow run")
    return config, outcome


def reference_config(config: CampaignConfig) -> CampaignConfig:
    """The same campaign without DP, as a reference for the gate's privacy rule: never gated or
    registered (it is evidence, not a model to deploy)."""
    if not config.privacy.enabled:
        raise FedriskInputError("--reference compares a DP campaign with its non-private twin: this campaign has "
                                "privacy.enabled false")
    return config.model_copy(update={"privacy": config.privacy.model_copy(update={"enabled": False}),
                                     "gate": config.gate.model_copy(update={"enabled": False})})


def simulate_with_reference(config: CampaignConfig, *, verbose: bool = False) -> Outcome:
    """The campaign, then its non-private twin on the same data and settings, then the gate again
    with the twin as reference. Every institution's policy must accept the non-private release:
    that is checked before anything is trained. The private campaign runs first because the
    ledger records the twin's releases as what they are, infinitely costly."""
    from fedrisk.validation import validate_run

    twin = reference_config(config)
    preflight(twin)  # a policy that requires DP refuses the twin now, before any budget is spent
    outcome = simulate(config, verbose=verbose)
    if outcome.status != "completed":
        return outcome
    log.warning("training the non-private reference (a non-private release of every institution's data)")
    reference = simulate(twin, verbose=verbose, check_inputs=False)
    from mlflow.tracking import MlflowClient

    MlflowClient(config.tracking.uri).set_tag(reference.run_id, run_schema.REFERENCE_FOR, outcome.run_id)
    if reference.status != "completed":
        raise FedriskInputError(f"the non-private reference {reference.run_id} did not complete ({reference.status}): "
                                "the privacy rule stays not evaluated")
    if config.gate.enabled:
        validate_run(config.tracking.uri, outcome.run_id, config.gate.policy, actor=config.audit.actor,
                     reference_run=reference.run_id)
    return campaign_outcome(config, outcome.campaign) or outcome


def campaign_outcome(config: CampaignConfig, campaign: str) -> Outcome | None:
    """A campaign's MLflow run as the CLI summarises it; None when it left no run."""
    from mlflow.tracking import MlflowClient

    run = find_campaign_run(config.tracking.uri, config.tracking.experiment, campaign)
    if run is None:
        return None
    return Outcome(campaign=campaign, run_id=run.info.run_id, experiment_id=run.info.experiment_id,
                   status=run.data.tags.get(run_schema.STATUS, "unknown"),
                   metrics=run_metrics(MlflowClient(config.tracking.uri), run), tags=dict(run.data.tags))


def monitor(monitor_config: MonitorConfig, model: str | None, institutions: int, *, verbose: bool = False) -> Any:
    """Run the monitoring rounds of a model on the simulation engine; returns its MLflow run."""
    from mlflow.tracking import MlflowClient

    quiet()
    request = uuid.uuid4().hex
    run_config = {"monitor-config": monitor_config.model_dump_json(), "model": model or "", "request": request}
    _run_engine(MONITOR_APP, run_config, institutions, verbose)
    client = MlflowClient(monitor_config.tracking.uri)
    exp = client.get_experiment_by_name(monitor_config.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`{run_schema.MONITOR}` = '{request}'") if exp else []
    if not runs:
        raise RuntimeError("the monitoring run left no MLflow run")
    return runs[0]


def load_component(reference: str) -> Any:
    """`module:attribute`, as Flower's app components are named."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _run_engine(server_app: str, run_config: dict[str, str], num_supernodes: int, verbose: bool) -> None:
    """Flower's simulation engine, quiet unless `verbose`; input errors come back as such."""
    from flwr.app import Context, RecordDict
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from fedrisk import simulation_dispatch

    simulation_dispatch.install()  # one scan a sweep, not one per institution

    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 2, "include_dashboard": False,
                      "logging_level": logging.INFO if verbose else logging.ERROR, "log_to_driver": verbose},
    }
    flwr_logger = logging.getLogger("flwr")
    previous = flwr_logger.level
    pythonpath = os.environ.get("PYTHONPATH")  # Ray exports the driver's sys.path into it
    if not verbose:  # the progress bar and the closing summary say what matters
        flwr_logger.setLevel(logging.ERROR)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    try:
        with warnings.catch_warnings():  # after Flower's imports: they put DeprecationWarnings back to "once"
            if not verbose:
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", category=FutureWarning)
            _run_simulation(num_supernodes=num_supernodes, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                            server_app=load_component(server_app), client_app=load_component(CLIENT_APP),
                            backend_config=backend, server_app_context=context, verbose_logging=verbose)
    except RuntimeError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, FedriskInputError):
            raise cause from None
        raise
    finally:
        flwr_logger.setLevel(previous)
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath
