"""One campaign at a time per MLflow store, and campaigns that died are closed, not left RUNNING.

Two campaigns at once on one store raced: in a fresh folder one died creating MLflow's tables,
in an existing one both stopped after a round having spent their budgets. So a campaign holds
an exclusive lock beside the store for as long as it runs; a second is refused in one line.
Holding the lock also proves that no other campaign of this store is alive: any run still
RUNNING was interrupted (killed, or its machine lost power). It is marked KILLED, and the
audit log gets a `campaign_interrupted` entry with the rounds it completed and the epsilon each
institution's ledger on this machine shows for it: rounds trained but never aggregated are
spent, and now visible.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedrisk import audit, run_schema
from fedrisk.config import CampaignConfig
from fedrisk.errors import FedriskInputError


def lock_path(config: CampaignConfig) -> Path:
    """Beside a SQLite store; beside the audit log for a server store."""
    uri = config.tracking.uri
    if uri.startswith("sqlite:///"):
        store = Path(uri[len("sqlite:///"):]).resolve()
        return store.with_name(store.name + ".campaign.lock")
    return Path(config.audit.path).resolve().parent / "campaign.lock"


@contextmanager
def campaign_lock(config: CampaignConfig, campaign: str) -> Iterator[None]:
    """Held while the campaign runs; refused at once (never waited for) when another holds it."""
    path = lock_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise FedriskInputError(f"another campaign is running on this MLflow store ({holder}); start this one "
                                    "when it has ended", file=str(path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"campaign {campaign}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(),
                  0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _ledger_spend(campaign: str) -> dict[str, float]:
    """Epsilon charged for `campaign` by every institution whose home is on this machine."""
    from fedrisk.guard import homes_root
    from fedrisk.ledger import PrivacyLedger

    spent = {}
    root = homes_root()
    for ledger in sorted(root.glob("*/ledger.json")) if root.is_dir() else []:
        name = ledger.parent.name
        try:
            book = PrivacyLedger.open(ledger, name, float("inf"), 1.0)
        except FedriskInputError:
            continue
        if campaign in book.campaigns():
            spent[name] = round(book.spent(campaign=campaign), 6)
    return spent


def close_interrupted(config: CampaignConfig) -> list[dict[str, Any]]:
    """Mark the store's campaigns that are still RUNNING as interrupted (call with the lock held)."""
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    uri = config.tracking.uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return []  # a new store: nothing ran here
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is None:
        return []
    closed = []
    for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        campaign = tags.get(run_schema.CAMPAIGN)
        if campaign is None:
            continue  # not a campaign's run (a monitoring run holds no campaign tag)
        history = client.get_metric_history(run.info.run_id, run_schema.ROUND_SECONDS)
        rounds = max((m.step for m in history), default=0)
        found = {"campaign": campaign, "run_id": run.info.run_id, "rounds_completed": rounds,
                 "epsilon_charged": _ledger_spend(campaign)}
        client.set_tag(run.info.run_id, run_schema.STATUS, "interrupted")
        client.set_tag(run.info.run_id, run_schema.STOP_REASON,
                       f"interrupted after round {rounds}: found RUNNING with no campaign alive")
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        log = tags.get(run_schema.AUDIT_LOG) or config.audit.path
        try:
            audit.append(log, "campaign_interrupted", config.audit.actor or audit.default_actor(),
                         {"run_id": run.info.run_id, **found})
        except FedriskInputError as err:
            found["audit_error"] = err.one_line()
        closed.append(found)
    return closed


def describe(found: dict[str, Any]) -> str:
    spend = ", ".join(f"{k} {v:.3g}" for k, v in found["epsilon_charged"].items()) or "no ledger on this machine"
    return (f"campaign {found['campaign']} (MLflow run {found['run_id']}) was interrupted after round "
            f"{found['rounds_completed']}: marked KILLED; epsilon its ledgers charged: {spend}")

