"""fedrisk ClientApp: reads this node's own data, calls the library, replies with records.

Message types:
- `query.statistics`: preprocessing statistics of the training rows;
- `train`: evaluate the received global model on the validation rows, then one DP round;
- `evaluate`: evaluation statistics of the received model on the splits asked for;
- `query.reference`: fine-grid counts of the final model's score and inputs (training rows);
- `query.monitor`: counts of a monitoring window on the reference bins, and its score
  histograms when the window is labelled.
Evaluating on receipt lets one message exchange per round carry both, so a round costs one
trip through the engine, not two. Input errors and budget refusals become error replies
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
from fedrisk.errors import BUDGET_REFUSED_REPLY, INPUT_ERROR_REPLY, BudgetExhaustedError, FedriskInputError
from fedrisk.fairness import GroupHistograms
from fedrisk.fraud_metrics import FraudStats
from fedrisk.metrics import EvalStats
from clients.mods import institution_clipping_mod, secure_aggregation_mod

torch.set_num_threads(1)
app = ClientApp(mods=[secure_aggregation_mod])


def _campaign(msg: Message, context: Context) -> tuple[ConfigRecord, str]:
    config = msg.content["config"]
    config_json = str(config["campaign-config"])
    names = json.loads(str(config["institutions"])) if "institutions" in config else None
    node = dict(context.node_config)
    name = institution.resolve_institution(config_from_json(config_json), node, names)
    if "data-path" in node or "ledger-dir" in node:  # a deployed node's own file and ledger
        config["campaign-config"] = institution.for_node(config_json, name, node)
    return config, name


def _error(msg: Message, err: FedriskInputError) -> Message:
    code = BUDGET_REFUSED_REPLY if isinstance(err, BudgetExhaustedError) else INPUT_ERROR_REPLY
    return Message(Error(code=code, reason=err.one_line()), reply_to=msg)


def _who(name: str) -> ConfigRecord:
    return ConfigRecord({"institution": name})


def _evaluation(stats: dict[str, tuple[EvalStats, GroupHistograms, FraudStats | None]]) -> ConfigRecord:
    """Histograms and sums per split, under keys `<split>.<quantity>`: they add up.

    A ConfigRecord, so that a train reply keeps the single MetricRecord FedAvg expects.
    """
    record = ConfigRecord()
    for split, (overall, groups, fraud) in stats.items():
        for field, value in vars(overall).items():
            record[f"{split}.{field}"] = value.tolist() if isinstance(value, np.ndarray) else value
        for field, value in (vars(fraud) if fraud is not None else {}).items():
            record[f"{split}.fraud.{field}"] = value.tolist() if isinstance(value, np.ndarray) else value
        record[f"{split}.groups"] = json.dumps(
            {a: {g: [pos.tolist(), neg.tolist()] for g, (pos, neg) in by.items()} for a, by in groups.items()}
        )
    return record


def _evaluate(config: ConfigRecord, name: str, state: dict, splits: list[str]) -> ConfigRecord:
    return _evaluation(
        {
            split: institution.evaluate_round(
                str(config["campaign-config"]), name, str(config["preprocessor"]), state, split
            )
            for split in splits
        }
    )


@app.query("statistics")
def statistics(msg: Message, context: Context) -> Message:
    try:
        config, name = _campaign(msg, context)
        stats = institution.statistics(str(config["campaign-config"]), name)
    except FedriskInputError as err:
        return _error(msg, err)
    content = RecordDict({"statistics": ConfigRecord({"json": json.dumps(stats)}), "who": _who(name)})
    return Message(content, reply_to=msg)


@app.query("importance")
def importance(msg: Message, context: Context) -> Message:
    try:
        config, name = _campaign(msg, context)
        hists = institution.importance_histograms(
            str(config["campaign-config"]), name, str(config["preprocessor"]),
            msg.content["arrays"].to_torch_state_dict(),
        )
    except FedriskInputError as err:
        return _error(msg, err)
    payload = json.dumps({f: [pos.tolist(), neg.tolist()] for f, (pos, neg) in hists.items()})
    return Message(RecordDict({"importance": ConfigRecord({"json": payload}), "who": _who(name)}), reply_to=msg)


def _counts(counts: dict[str, np.ndarray]) -> ConfigRecord:
    return ConfigRecord({"json": json.dumps({k: v.tolist() for k, v in counts.items()})})


@app.query("reference")
def reference(msg: Message, context: Context) -> Message:
    try:
        config, name = _campaign(msg, context)
        counts = institution.reference_counts(str(config["campaign-config"]), name, str(config["preprocessor"]),
                                              msg.content["arrays"].to_torch_state_dict())
    except FedriskInputError as err:
        return _error(msg, err)
    return Message(RecordDict({"counts": _counts(counts), "who": _who(name)}), reply_to=msg)


@app.query("monitor")
def monitor(msg: Message, context: Context) -> Message:
    try:
        config, name = _campaign(msg, context)
        counts, stats = institution.window_statistics(
            str(config["campaign-config"]), name, str(config["preprocessor"]),
            msg.content["arrays"].to_torch_state_dict(), json.loads(str(config["edges"])),
            int(config["window-days"]),
        )
    except FedriskInputError as err:
        return _error(msg, err)
    content = RecordDict({"counts": _counts(counts), "who": _who(name)})
    if stats is not None:
        content["evaluation"] = _evaluation({"window": (stats, {}, None)})
    return Message(content, reply_to=msg)


@app.train(mods=[institution_clipping_mod])
def train(msg: Message, context: Context) -> Message:
    try:
        config, name = _campaign(msg, context)
        received = msg.content["arrays"].to_torch_state_dict()
        evaluation = _evaluate(config, name, received, ["validation"])
        state, metrics = institution.train_round(
            str(config["campaign-config"]),
            name,
            str(config["preprocessor"]),
            received,
            int(config["server-round"]),
            str(config["campaign"]),
            float(config.get("proximal-mu", 0.0)),
        )
    except FedriskInputError as err:
        return _error(msg, err)
    content = RecordDict(
        {
            "arrays": ArrayRecord(state),
            "metrics": MetricRecord(metrics),
            "evaluation": evaluation,
            "who": _who(name),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    try:
        config, name = _campaign(msg, context)
        splits = str(config.get("splits", "validation")).split(",")
        evaluation = _evaluate(config, name, msg.content["arrays"].to_torch_state_dict(), splits)
    except FedriskInputError as err:
        return _error(msg, err)
    return Message(RecordDict({"evaluation": evaluation, "who": _who(name)}), reply_to=msg)
