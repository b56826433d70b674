"""The wire protocol between the ServerApp and each institution's ClientApp, in one place.

Every message type, record key and error code is named here, and every payload has its
encoder and decoder side by side, so the server and the client share one contract and a
test can check each as a round trip. Histograms and count vectors travel as packed numpy
arrays (`pack`), never as JSON lists of floats; only small descriptive metadata (a data
fingerprint, a quality scorecard of counts) travels as JSON.

This module and the launcher are the only parts of the library that know Flower's types.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedrisk.errors import BudgetExhaustedError, FedriskInputError
from fedrisk.evaluation import SplitStatistics
from fedrisk.fairness import GroupHistograms
from fedrisk.fraud_metrics import FraudStats
from fedrisk.metrics import EvalStats

if TYPE_CHECKING:
    from fedrisk.institution import RoundResult

# Message types: Flower's categories (train, evaluate, query) and our query actions.
TRAIN = "train"
EVALUATE = "evaluate"
STATISTICS = "query.statistics"
IMPORTANCE = "query.importance"
REFERENCE = "query.reference"
MONITOR = "query.monitor"

# Codes of the error replies a ClientApp sends: the server tells refusals from bad data by them.
INPUT_ERROR = 2001
BUDGET_REFUSED = 2002

# Record names of a message's content. "arrays" and "config" are Flower's strategy defaults.
ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
WHO, STATISTICS_RECORD, EVALUATION_RECORD = "who", "statistics", "evaluation"
IMPORTANCE_RECORD, COUNTS_RECORD = "importance", "counts"

AGGREGATION_WEIGHT = "aggregation-weight"  # the train metric FedAvg and SecAgg+ weight an update by

# Keys of the request's ConfigRecord.
CAMPAIGN_CONFIG, CAMPAIGN, PREPROCESSOR = "campaign-config", "campaign", "preprocessor"
SERVER_ROUND, PROXIMAL_MU, SPLITS = "server-round", "proximal-mu", "splits"
EDGES, WINDOW_DAYS, INSTITUTIONS = "edges", "window-days", "institutions"


def pack(array: np.ndarray) -> bytes:
    """A numpy array as bytes (dtype and shape included, no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def unpack(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# --- requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What the server asks of an institution, as the ClientApp reads it."""

    campaign_config: str
    campaign: str
    preprocessor: str | None = None
    server_round: int = 0
    proximal_mu: float = 0.0
    splits: tuple[str, ...] = ("validation",)
    edges: dict[str, list[float]] | None = None
    window_days: int = 0
    institutions: list[str] | None = None

    @property
    def shared(self) -> str:
        """The shared preprocessing (JSON) the request carries; every model message has one."""
        if self.preprocessor is None:
            raise FedriskInputError("the request carries no shared preprocessing: the server is of another version")
        return self.preprocessor


def request_config(
    campaign_config: str, campaign: str, *, preprocessor: str | None = None, splits: tuple[str, ...] | None = None,
    edges: dict[str, list[float]] | None = None, window_days: int | None = None,
    institutions: list[str] | None = None,
) -> ConfigRecord:
    """The request's ConfigRecord; strategies add the round keys (`with_round`)."""
    record = ConfigRecord({CAMPAIGN_CONFIG: campaign_config, CAMPAIGN: campaign})
    if preprocessor is not None:
        record[PREPROCESSOR] = preprocessor
    if splits is not None:
        record[SPLITS] = ",".join(splits)
    if edges is not None:
        record[EDGES] = json.dumps(edges)
    if window_days is not None:
        record[WINDOW_DAYS] = int(window_days)
    if institutions is not None:
        record[INSTITUTIONS] = json.dumps(list(institutions))
    return record


def with_round(config: ConfigRecord, server_round: int, proximal_mu: float) -> ConfigRecord:
    config[SERVER_ROUND] = int(server_round)
    config[PROXIMAL_MU] = float(proximal_mu)
    return config


def read_request(msg: Message) -> Request:
    config = msg.content[CONFIG]
    return Request(
        campaign_config=str(config[CAMPAIGN_CONFIG]),
        campaign=str(config[CAMPAIGN]),
        preprocessor=str(config[PREPROCESSOR]) if PREPROCESSOR in config else None,
        server_round=int(config.get(SERVER_ROUND, 0)),
        proximal_mu=float(config.get(PROXIMAL_MU, 0.0)),
        splits=tuple(str(config.get(SPLITS, "validation")).split(",")),
        edges=json.loads(str(config[EDGES])) if EDGES in config else None,
        window_days=int(config.get(WINDOW_DAYS, 0)),
        institutions=json.loads(str(config[INSTITUTIONS])) if INSTITUTIONS in config else None,
    )


def model_of(msg: Message) -> dict[str, Any]:
    """The model weights a request carries, as a torch state dict."""
    return msg.content[ARRAYS].to_torch_state_dict()


# --- replies --------------------------------------------------------------------------


def reply(msg: Message, name: str, records: dict[str, Any]) -> Message:
    """A reply naming the institution that sends it."""
    return Message(RecordDict({**records, WHO: ConfigRecord({"institution": name})}), reply_to=msg)


def institution_of(msg: Message) -> str:
    return str(msg.content[WHO]["institution"])


def error_reply(msg: Message, err: FedriskInputError) -> Message:
    """One line naming institution, file and column; the code says refusal or bad input."""
    code = BUDGET_REFUSED if isinstance(err, BudgetExhaustedError) else INPUT_ERROR
    return Message(Error(code=code, reason=err.one_line()), reply_to=msg)


def error_reason(code: int, text: str, name: str) -> tuple[str, str]:
    """(kind, one line) of an error reply. Only fedrisk's own messages are quoted: any other
    exception's text may quote a customer's value, and the audit log keeps what it is given."""
    if code not in (INPUT_ERROR, BUDGET_REFUSED):
        return "error", f"institution {name}: the ClientApp failed (Flower error code {code}); see the institution's log"
    reason = (str(text).strip().splitlines() or ["(no reason given)"])[-1]
    if name not in reason:
        reason = f"institution {name}: {reason}"
    return ("budget" if code == BUDGET_REFUSED else "input"), reason


def _put_fields(record: ConfigRecord, prefix: str, value: Any) -> None:
    for f in fields(value):
        item = getattr(value, f.name)
        record[f"{prefix}.{f.name}"] = pack(item) if isinstance(item, np.ndarray) else np.asarray(item).item()


def _get_fields(record: ConfigRecord, prefix: str, cls: type) -> Any:
    values = {}
    for f in fields(cls):
        item = record[f"{prefix}.{f.name}"]
        values[f.name] = unpack(item) if isinstance(item, bytes) else item
    return cls(**values)


# Statistics of the training rows, for the shared preprocessing.

def statistics_reply(msg: Message, name: str, stats: dict[str, Any]) -> Message:
    """Counts and sums as packed arrays; the data's description (fingerprint, scorecard) as JSON."""
    record = ConfigRecord({"rows": int(stats["rows"]), "schema": json.dumps(stats["schema"]),
                           "data": json.dumps(stats["data"]), "split_rows": json.dumps(stats["split_rows"])})
    numeric = list(stats["numeric"])
    record["numeric.columns"] = json.dumps(numeric)
    record["numeric.stats"] = pack(np.array([[stats["numeric"][c][k] for k in NUMERIC_STATS] for c in numeric],
                                            dtype=float).reshape(len(numeric), len(NUMERIC_STATS)))
    categorical = list(stats["categorical"])
    record["categorical.columns"] = json.dumps(categorical)
    for i, column in enumerate(categorical):
        counts = stats["categorical"][column]["counts"]
        record[f"categorical.{i}.values"] = json.dumps(list(counts))
        record[f"categorical.{i}.counts"] = pack(np.array(list(counts.values()), dtype=np.int64))
        record[f"categorical.{i}.missing"] = int(stats["categorical"][column]["missing"])
    if "split_days" in stats:
        record["split_days"] = json.dumps(stats["split_days"])
    return reply(msg, name, {STATISTICS_RECORD: record})


NUMERIC_STATS = ("count", "sum", "sumsq", "missing")


def read_statistics(msg: Message) -> dict[str, Any]:
    record = msg.content[STATISTICS_RECORD]
    numeric = json.loads(str(record["numeric.columns"]))
    table = unpack(record["numeric.stats"])
    categorical = {}
    for i, column in enumerate(json.loads(str(record["categorical.columns"]))):
        values = json.loads(str(record[f"categorical.{i}.values"]))
        counts = unpack(record[f"categorical.{i}.counts"])
        categorical[column] = {"counts": {v: int(n) for v, n in zip(values, counts, strict=True)},
                               "missing": int(record[f"categorical.{i}.missing"])}
    stats = {
        "rows": int(record["rows"]),
        "numeric": {c: {k: (int(v) if k in ("count", "missing") else float(v)) for k, v in zip(NUMERIC_STATS, row,
                                                                                                 strict=True)}
                    for c, row in zip(numeric, table, strict=True)},
        "categorical": categorical,
        "schema": json.loads(str(record["schema"])),
        "data": json.loads(str(record["data"])),
        "split_rows": json.loads(str(record["split_rows"])),
    }
    if "split_days" in record:
        stats["split_days"] = json.loads(str(record["split_days"]))
    return stats


# Evaluation statistics: per split, overall, by protected group and (fraud) per issuer.

def evaluation_record(stats: dict[str, SplitStatistics]) -> ConfigRecord:
    """One ConfigRecord (a train reply keeps the single ArrayRecord and MetricRecord FedAvg
    expects) holding each split's statistics as packed arrays under `<split>.<field>`."""
    record = ConfigRecord()
    for split, part in stats.items():
        _put_fields(record, split, part.overall)
        if part.fraud is not None:
            _put_fields(record, f"{split}.fraud", part.fraud)
        pairs = [(a, g) for a, by in part.groups.items() for g in by]
        record[f"{split}.groups"] = json.dumps(pairs)
        if pairs:
            record[f"{split}.groups.histograms"] = pack(np.stack(
                [np.stack([np.asarray(part.groups[a][g][0]), np.asarray(part.groups[a][g][1])]) for a, g in pairs]))
    return record


def read_evaluation(msg: Message, split: str) -> SplitStatistics:
    record = msg.content[EVALUATION_RECORD]
    overall = _get_fields(record, split, EvalStats)
    fraud = _get_fields(record, f"{split}.fraud", FraudStats) if f"{split}.fraud.days" in record else None
    pairs = json.loads(str(record[f"{split}.groups"]))
    groups: GroupHistograms = {}
    if pairs:
        histograms = unpack(record[f"{split}.groups.histograms"])
        for (attribute, group), (pos, neg) in zip(pairs, histograms, strict=True):
            groups.setdefault(attribute, {})[group] = (pos, neg)
    return SplitStatistics(overall, groups, fraud)


def has_evaluation(msg: Message) -> bool:
    return EVALUATION_RECORD in msg.content


def train_reply(msg: Message, name: str, result: RoundResult, validation: SplitStatistics) -> Message:
    """The new weights, what the round spent and cost, and the validation statistics of the
    model the round started from."""
    metrics = {"num-examples": float(result.examples), AGGREGATION_WEIGHT: float(result.weight),
               "train-loss": result.mean_loss, "steps": float(result.steps), "train-seconds": result.seconds}
    if result.epsilon is not None:
        metrics.update({"epsilon": result.epsilon, "delta": result.delta, "noise-multiplier": result.noise_multiplier,
                        "sample-rate": result.sample_rate})
    return reply(msg, name, {ARRAYS: ArrayRecord(result.state), METRICS: MetricRecord(metrics),
                             EVALUATION_RECORD: evaluation_record({"validation": validation})})


def train_metrics(msg: Message) -> dict[str, float]:
    return {k: float(v) for k, v in msg.content[METRICS].items()}


def evaluate_reply(msg: Message, name: str, stats: dict[str, SplitStatistics]) -> Message:
    return reply(msg, name, {EVALUATION_RECORD: evaluation_record(stats)})


# Feature importance: score histograms with each feature ablated.

def importance_reply(msg: Message, name: str, histograms: dict[str, tuple[np.ndarray, np.ndarray]]) -> Message:
    features = list(histograms)
    record = ConfigRecord({"features": json.dumps(features)})
    if features:
        record["histograms"] = pack(np.stack([np.stack(histograms[f]) for f in features]))
    return reply(msg, name, {IMPORTANCE_RECORD: record})


def read_importance(msg: Message) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    record = msg.content[IMPORTANCE_RECORD]
    features = json.loads(str(record["features"]))
    if not features:
        return {}
    return {f: (pos, neg) for f, (pos, neg) in zip(features, unpack(record["histograms"]), strict=True)}


# Bin counts of the score and the inputs: the drift reference and monitoring windows.

def counts_reply(msg: Message, name: str, counts: dict[str, np.ndarray],
                 window: SplitStatistics | None = None) -> Message:
    record = ConfigRecord({f"count.{i}": pack(values) for i, values in enumerate(counts.values())})
    record["columns"] = json.dumps(list(counts))
    records: dict[str, Any] = {COUNTS_RECORD: record}
    if window is not None:
        records[EVALUATION_RECORD] = evaluation_record({"window": window})
    return reply(msg, name, records)


def read_counts(msg: Message) -> dict[str, np.ndarray]:
    record = msg.content[COUNTS_RECORD]
    return {column: unpack(record[f"count.{i}"]) for i, column in enumerate(json.loads(str(record["columns"])))}
