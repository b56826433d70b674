"""fedrisk ClientApp: reads this node's own data, calls the library, replies with records.

Message types: `query.statistics` (preprocessing statistics), `train` (one DP round),
`evaluate` (validation histograms). Input errors and budget refusals become error replies
carrying one line; the server excludes the institution and goes on.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrisk import institution
from fedrisk.config import config_from_json
from fedrisk.errors import BudgetExhaustedError, FedriskInputError

INPUT_ERROR = 2001
BUDGET_REFUSED = 2002

torch.set_num_threads(1)
app = ClientApp()


def _campaign(msg: Message, context: Context) -> tuple[dict, str]:
    config = msg.content["config"]
    config_json = str(config["campaign-config"])
    name = institution.resolve_institution(config_from_json(config_json), dict(context.node_config))
    return config, name


def _error(msg: Message, err: FedriskInputError) -> Message:
    code = BUDGET_REFUSED if isinstance(err, BudgetExhaustedError) else INPUT_ERROR
    return Message(Error(code=code, reason=err.one_line()), reply_to=msg)


def _who(name: str) -> ConfigRecord:
    return ConfigRecord({"institution": name})


@app.query("statistics")
def statistics(msg: Message, context: Context) -> Message:
    try:
        config, name = _campaign(msg, context)
        stats = institution.statistics(str(config["campaign-config"]), name)
    except FedriskInputError as err:
        return _error(msg, err)
    content = RecordDict({"statistics": ConfigRecord({"json": json.dumps(stats)}), "who": _who(name)})
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        config, name = _campaign(msg, context)
        state, metrics = institution.train_round(
            str(config["campaign-config"]),
            name,
            str(config["preprocessor"]),
            msg.content["arrays"].to_torch_state_dict(),
            int(config["server-round"]),
            str(config["campaign"]),
            float(config.get("proximal-mu", 0.0)),
        )
    except FedriskInputError as err:
        return _error(msg, err)
    content = RecordDict(
        {"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics), "who": _who(name)}
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    try:
        config, name = _campaign(msg, context)
        stats = institution.evaluate_round(
            str(config["campaign-config"]),
            name,
            str(config["preprocessor"]),
            msg.content["arrays"].to_torch_state_dict(),
            str(config.get("split", "validation")),
        )
    except FedriskInputError as err:
        return _error(msg, err)
    metrics = MetricRecord(
        {
            "num-examples": stats.examples,
            "loss-sum": stats.loss_sum,
            "hist-pos": np.asarray(stats.hist_pos).tolist(),
            "hist-neg": np.asarray(stats.hist_neg).tolist(),
        }
    )
    return Message(RecordDict({"metrics": metrics, "who": _who(name)}), reply_to=msg)
