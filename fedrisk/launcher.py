"""Runs a campaign on Flower's simulation engine: the only fedrisk module importing flwr.

Before Ray starts, every institution's data, split and privacy budget is checked locally
(in a simulation all data sit on this machine), so input errors fail fast with one line.
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedrisk import audit
from fedrisk.config import CampaignConfig, check_secure_aggregation
from fedrisk.data import load_institution
from fedrisk.sources import institution_names
from fedrisk.splits import split_institution
from fedrisk.errors import BudgetExhaustedError, FedriskInputError
from fedrisk.institution import check_delta, sampling_plan
from fedrisk.privacy import PrivacyLedger, calibrate_noise_multiplier, institution_noise_multiplier
from fedrisk.tracking import find_campaign_run

if TYPE_CHECKING:
    from fedrisk.monitoring import MonitorPlan

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


@dataclass(frozen=True)
class Outcome:
    campaign: str
    run_id: str
    experiment_id: str
    status: str
    metrics: dict[str, float]
    tags: dict[str, str]


def preflight(config: CampaignConfig) -> list[str]:
    """Check each institution's data and budget locally; returns the institutions."""
    names = institution_names(config.data)
    if len(names) < config.training.min_institutions:
        raise FedriskInputError(
            f"{len(names)} institution(s) configured, training.min_institutions is "
            f"{config.training.min_institutions}"
        )
    check_secure_aggregation(config, len(names))
    pv = config.privacy
    inst = pv.institution_level
    if inst.enabled:  # the campaign's institution-level budget must pay for its rounds
        institution_noise_multiplier(inst.target_epsilon, inst.delta, config.training.rounds, inst.noise_multiplier)
    seen: dict[str, str] = {}
    for name in names:
        data = load_institution(config.data, name, config.seed)
        if data.fingerprint in seen:  # the federation's epsilon assumes disjoint data
            raise FedriskInputError(
                f"same data as institution {seen[data.fingerprint]}", institution=name,
                file=data.source,
            )
        seen[data.fingerprint] = name
        split = split_institution(data, config.data, config.seed)
        if pv.enabled:
            check_delta(config, name, len(split.train), data.source)
            ledger = PrivacyLedger.open(pv.ledger_dir, name, data.fingerprint)
            rate, per_round = sampling_plan(config, len(split.train))
            try:
                calibrate_noise_multiplier(
                    pv.target_epsilon, pv.delta, rate, per_round * config.training.rounds,
                    ledger.history, max_noise_multiplier=pv.max_noise_multiplier,
                )
            except BudgetExhaustedError as err:
                raise BudgetExhaustedError(
                    f"{err.detail} (ledger {ledger.path})", institution=name, file=data.source
                ) from None
    return names


def simulate(
    config: CampaignConfig,
    *,
    campaign: str | None = None,
    check_inputs: bool = True,
    verbose: bool = False,
    num_supernodes: int | None = None,
) -> Outcome:
    """Run one campaign on Flower's simulation engine; returns its MLflow run."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    campaign = campaign or uuid.uuid4().hex
    try:
        names = preflight(config) if check_inputs else institution_names(config.data)
    except FedriskInputError as err:  # a refusal before any round is a decision too
        kind = "budget" if isinstance(err, BudgetExhaustedError) else "input"
        try:
            audit.append(config.audit.path, "campaign_refused", config.audit.actor or audit.default_actor(),
                         {"campaign": campaign, "kind": kind, "reason": err.one_line()})
        except FedriskInputError as audit_error:  # the refusal's own reason is what the user needs
            logging.getLogger("fedrisk").warning("not in the audit log: %s", audit_error.one_line())
        raise

    from clients.client_app import app as client_app
    from server.server_app import app_for

    _run_engine(app_for(config, campaign), client_app, num_supernodes or len(names), verbose)
    outcome = campaign_outcome(config, campaign)
    if outcome is None:
        raise RuntimeError(f"campaign {campaign} left no MLflow run")
    return outcome


def campaign_outcome(config: CampaignConfig, campaign: str) -> Outcome | None:
    """A campaign's MLflow run as the CLI summarises it; None when it left no run."""
    run = find_campaign_run(config.tracking.uri, config.tracking.experiment, campaign)
    if run is None:
        return None
    return Outcome(
        campaign=campaign,
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        status=run.data.tags.get("fedrisk.status", "unknown"),
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
    )


def monitor(plan: MonitorPlan, *, verbose: bool = False) -> Any:
    """Run the monitoring rounds of `plan` on the simulation engine; returns its MLflow run."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    from clients.client_app import app as client_app
    from server.monitor_app import MONITOR_TAG, monitor_app_for

    _run_engine(monitor_app_for(plan), client_app, len(plan.institutions), verbose)
    client = MlflowClient(plan.monitor.tracking.uri)
    exp = client.get_experiment_by_name(plan.monitor.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`{MONITOR_TAG}` = '{plan.request}'") if exp else []
    if not runs:
        raise RuntimeError("the monitoring run left no MLflow run")
    return runs[0]


def _run_engine(server_app: Any, client_app: Any, num_supernodes: int, verbose: bool) -> None:
    """Flower's simulation engine, quiet unless `verbose`; input errors come back as such."""
    from flwr.simulation import run_simulation

    if not verbose:  # after Flower's imports: they put DeprecationWarnings back to "once"
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)

    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": os.cpu_count() or 2,
            "include_dashboard": False,
            "logging_level": logging.INFO if verbose else logging.ERROR,
            "log_to_driver": verbose,
        },
    }
    flwr_logger = logging.getLogger("flwr")
    previous = flwr_logger.level
    pythonpath = os.environ.get("PYTHONPATH")  # Ray exports the driver's sys.path into it
    if not verbose:  # the progress bar and the closing summary say what matters
        flwr_logger.setLevel(logging.ERROR)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_supernodes,
            backend_config=backend,
            verbose_logging=verbose,
        )
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
