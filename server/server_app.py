"""fedrisk ServerApp: one campaign, from federated preprocessing to a model in MLflow.

The same app runs under Flower's simulation engine (`fedrisk simulate`) and under a real
SuperLink (`flwr run`, `fedrisk federation run`). Run config keys: `config-path` (campaign
YAML, absolute) with `overrides` (JSON of dotted keys), or `campaign-config` (a validated
campaign as JSON); `campaign-id` (optional: the CLI sets it to find the MLflow run);
`resume-run` (the MLflow run of an interrupted campaign to go on with, after its checkpoint).
"""

from __future__ import annotations

import uuid

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrisk.config import from_run_config
from server.campaign import run_campaign
from server.messaging import PromptGrid

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = from_run_config(dict(context.run_config))
    campaign = str(context.run_config.get("campaign-id", "") or "") or uuid.uuid4().hex
    run_campaign(PromptGrid(grid), config, campaign, str(context.run_config.get("resume-run", "") or "") or None)
