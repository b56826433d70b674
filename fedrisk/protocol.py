"""The wire protocol between the ServerApp and each institution's ClientApp, in one place.

Every message type, record key and error code is named here, and every payload has its
encoder and decoder side by side, so the server and the client share one contract and a
test can check each as a round trip. Histograms and count vectors travel as packed numpy
arrays (`pack`), never as JSON lists of floats; only small descriptive metadata (a data
fingerprint, a quality scorecard of counts, the ledger's summary) travels as JSON.

A campaign's messages, in order: `query.bounds` (admission: what the institution says of its
data, its privacy plan, and noised histograms for the clipping bounds), for fraud with
consortium features `query.terminals` (the issuer's noised terminal table), `query.statistics`
(noised sums for the shared preprocessing), `train` each round, `query.reference` (the drift
reference, which also gives the evaluation grid), `evaluate` (validation and test), and
`query.importance`; a monitoring run sends `query.monitor` per window. Every reply but an
error carries the institution's privacy summary.

This module and the launcher (with `simulation_dispatch`, which it installs) are the only parts of
the library that know Flower's types.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedrisk.consortium_features import TABLE_SCALE
from fedrisk.errors import BudgetExhaustedError, FedriskInputError, PolicyRefused
from fedrisk.evaluation import SplitStatistics
from fedrisk.fairness import GroupHistograms
from fedrisk.fraud_metrics import FraudStats
from fedrisk.metrics import EvalStats
from fedrisk.preprocessing import NUMERIC_STATS, Bounds

if TYPE_CHECKING:
    from fedrisk.config import CampaignConfig
    from fedrisk.institution import RoundResult

# Message types: Flower's categories (train, evaluate, query) and our query actions.
TRAIN = "train"
EVALUATE = "evaluate"
BOUNDS = "query.bounds"
STATISTICS = "query.statistics"
IMPORTANCE = "query.importance"
REFERENCE = "query.reference"
MONITOR = "query.monitor"
TERMINALS = "query.terminals"
MESSAGE_TYPES = (BOUNDS, TERMINALS, STATISTICS, TRAIN, EVALUATE, IMPORTANCE, REFERENCE, MONITOR)


def implied_messages(message_type: str, config: CampaignConfig) -> list[str]:
    """What a message commits the institution to: admission (`query.bounds`) is the first of a
    campaign's messages, so it is refused at once if the policy would refuse a later one; a round
    with validation every round is an evaluation too."""
    if message_type == TRAIN and config.evaluation.every_round:
        return [TRAIN, EVALUATE]  # a round's reply then carries the received model's validation histograms
    if message_type != BOUNDS:
        return [message_type]
    return [BOUNDS, *([TERMINALS] if config.consortium_features else []), STATISTICS, TRAIN, EVALUATE, REFERENCE,
            *([IMPORTANCE] if config.evaluation.importance else [])]

# Codes of the error replies a ClientApp sends: the server tells refusals from bad data by them.
INPUT_ERROR = 2001
BUDGET_REFUSED = 2002
POLICY_REFUSED = 2003
REPLY_KINDS = {INPUT_ERROR: "input", BUDGET_REFUSED: "budget", POLICY_REFUSED: "policy"}

# Record names of a message's content. "arrays" and "config" are Flower's strategy defaults.
ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
WHO, ADMISSION_RECORD, STATISTICS_RECORD, EVALUATION_RECORD = "who", "admission", "statistics", "evaluation"
IMPORTANCE_RECORD, COUNTS_RECORD, PRIVACY_RECORD = "importance", "counts", "privacy"
TABLE_RECORD = "terminal-table"

AGGREGATION_WEIGHT = "aggregation-weight"  # the train metric FedAvg and SecAgg+ weight an update by

# Keys of the request's ConfigRecord.
CAMPAIGN_CONFIG, CAMPAIGN, PREPROCESSOR = "campaign-config", "campaign", "preprocessor"
SERVER_ROUND, PROXIMAL_MU, SPLITS = "server-round", "proximal-mu", "splits"
EDGES, WINDOW_DAYS, INSTITUTIONS = "edges", "window-days", "institutions"
BOUNDS_KEY, GRID, GROUPS, WINDOW, WINDOWS = "bounds", "grid", "groups", "window", "windows"
TABLE = "terminal-table"
AUDIT_HEAD = "audit-head"  # the coordinator's audit log head when the message left: the node witnesses it
TABLE_ROUND = "terminal-table-round"  # a train message that carries no model: the table under SecAgg+
WIRE_TABLE = np.float16  # a terminal table's cells on the wire: whole counts to 2048 exact, noised ones to 0.05 %;
WIDE_TABLE = np.float32  # ... float32 when a cell is beyond float16's range (65,504)


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
    bounds: dict[str, Bounds] | None = None
    grid: np.ndarray | None = None
    groups: dict[str, list[str]] | None = None
    window: int = 0
    windows: int = 0
    table: np.ndarray | None = None  # the consortium's summed terminal table
    audit_head: str | None = None  # `log id:seq:hash` of the coordinator's audit log

    @property
    def shared(self) -> str:
        """The shared preprocessing (JSON) the request carries; every model message has one."""
        if self.preprocessor is None:
            raise FedriskInputError("the request carries no shared preprocessing: the server is of another version")
        return self.preprocessor

    @property
    def score_grid(self) -> np.ndarray:
        if self.grid is None:
            raise FedriskInputError("the request carries no score grid: the server is of another version")
        return self.grid


def request_config(
    campaign_config: str, campaign: str, *, preprocessor: str | None = None, splits: tuple[str, ...] | None = None,
    edges: dict[str, list[float]] | None = None, window_days: int | None = None,
    institutions: list[str] | None = None, bounds: dict[str, Bounds] | None = None, grid: np.ndarray | None = None,
    groups: dict[str, list[str]] | None = None, window: int | None = None, windows: int | None = None,
    table: np.ndarray | None = None,
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
    if bounds is not None:
        record[BOUNDS_KEY] = json.dumps({c: [b.lower, b.upper, b.deciles] for c, b in bounds.items()})
    if grid is not None:
        record[GRID] = pack(np.asarray(grid, dtype=float))
    if groups is not None:
        record[GROUPS] = json.dumps(groups)
    if window is not None:
        record[WINDOW] = int(window)
    if windows is not None:
        record[WINDOWS] = int(windows)
    if table is not None:
        record[TABLE] = pack(wire_table(table))
    return record


def with_audit_head(config: ConfigRecord, head: str | None) -> ConfigRecord:
    """The coordinator's audit head as the message leaves (`fedrisk.witness`)."""
    if head is not None:
        config[AUDIT_HEAD] = head
    return config


def with_round(config: ConfigRecord, server_round: int, proximal_mu: float) -> ConfigRecord:
    config[SERVER_ROUND] = int(server_round)
    config[PROXIMAL_MU] = float(proximal_mu)
    return config


def read_request(msg: Message) -> Request:
    if CONFIG not in msg.content or CAMPAIGN_CONFIG not in msg.content[CONFIG]:
        raise FedriskInputError("the request carries no campaign: the server is of another version")
    config = msg.content[CONFIG]
    bounds = json.loads(str(config[BOUNDS_KEY])) if BOUNDS_KEY in config else None
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
        bounds={c: Bounds(float(lo), float(hi), list(d)) for c, (lo, hi, d) in bounds.items()} if bounds else None,
        grid=_floats(config[GRID], 1, "score grid") if GRID in config else None,
        groups=json.loads(str(config[GROUPS])) if GROUPS in config else None,
        window=int(config.get(WINDOW, 0)),
        windows=int(config.get(WINDOWS, 0)),
        table=_floats(config[TABLE], 3, "terminal table") if TABLE in config else None,
        audit_head=str(config[AUDIT_HEAD]) if AUDIT_HEAD in config else None,
    )


def _floats(data: Any, ndim: int, what: str) -> np.ndarray:
    """An array a request carries, as sent: `ndim` dimensions of floats, or a one-line refusal."""
    try:
        array = unpack(data)
    except (ValueError, OSError, EOFError, TypeError):
        array = None
    if array is None or array.ndim != ndim or array.dtype.kind != "f":
        raise FedriskInputError(f"the request's {what} is not an array of numbers of the expected shape")
    return array


def is_monitoring(msg: Message) -> bool:
    """A request about a monitoring window (it names the window)."""
    return CONFIG in msg.content and WINDOW in msg.content[CONFIG]


def model_of(msg: Message) -> dict[str, Any]:
    """The model weights a request carries, as a torch state dict."""
    return msg.content[ARRAYS].to_torch_state_dict()


# --- replies --------------------------------------------------------------------------


def reply(msg: Message, name: str, records: dict[str, Any], privacy: dict[str, Any] | None = None) -> Message:
    """A reply naming the institution that sends it, with its privacy summary."""
    content = {**records, WHO: ConfigRecord({"institution": name})}
    if privacy is not None:
        content[PRIVACY_RECORD] = ConfigRecord({"json": json.dumps(_finite(privacy))})
    return Message(RecordDict(content), reply_to=msg)


def _finite(value: Any) -> Any:
    """JSON without NaN or infinity (an exact campaign's epsilon is infinite): as text."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def institution_of(msg: Message) -> str:
    return str(msg.content[WHO]["institution"])


def privacy_of(msg: Message) -> dict[str, Any] | None:
    """The privacy summary a reply carries (per mechanism, campaign, lifetime, cap, delta)."""
    if PRIVACY_RECORD not in msg.content:
        return None
    return json.loads(str(msg.content[PRIVACY_RECORD]["json"]), parse_float=float,
                      object_hook=lambda d: {k: float(v) if v in ("inf", "nan") else v for k, v in d.items()})


NUMBER = re.compile(r"(?<![\w.'/])(?!0/1\b)[-+]?\d[\d.,:%]*(?:[-T]\d[\d.,:%]*)*(?:e[-+]?\d+)?")


def released_reason(err: FedriskInputError) -> str:
    """The one line an error reply carries. A refusal's numbers are the policy's and the
    budget's; a data error's may count rows or quote a date of the data, so they go (the
    institution's own log and a local check keep them): "target has N missing values"."""
    if isinstance(err, BudgetExhaustedError | PolicyRefused):
        return err.one_line()
    return FedriskInputError(NUMBER.sub("N", err.detail), institution=err.institution, file=err.file,
                             column=err.column).one_line()


def error_reply(msg: Message, err: FedriskInputError) -> Message:
    """One line naming institution, file and column; the code says refusal or bad input."""
    code = (BUDGET_REFUSED if isinstance(err, BudgetExhaustedError) else
            POLICY_REFUSED if isinstance(err, PolicyRefused) else INPUT_ERROR)
    return Message(Error(code=code, reason=released_reason(err)), reply_to=msg)


def institution_named(text: str) -> str | None:
    """The institution a refusal names ("institution inst01: ..."), before the reply is admitted."""
    found = re.search(r"institution ([\w.-]+)[,:]", (str(text).strip().splitlines() or [""])[-1])
    return found.group(1) if found else None


def error_reason(code: int, text: str, name: str) -> tuple[str, str]:
    """(kind, one line) of an error reply. Only fedrisk's own messages are quoted: any other
    exception's text may quote a customer's value, and the audit log keeps what it is given."""
    if code not in REPLY_KINDS:
        return "error", f"institution {name}: the ClientApp failed (Flower error code {code}); see the institution's log"
    reason = (str(text).strip().splitlines() or ["(no reason given)"])[-1]
    if name not in reason:
        reason = f"institution {name}: {reason}"
    return REPLY_KINDS[code], reason


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


# Admission: the institution's data description, privacy plan, and the bounds histograms.

def admission_reply(msg: Message, name: str, admission: dict[str, Any], privacy: dict[str, Any]) -> Message:
    bounds = admission["bounds"]
    record = ConfigRecord({"json": json.dumps({k: v for k, v in admission.items() if k != "bounds"}),
                           "bounds.columns": json.dumps(list(bounds))})
    for i, counts in enumerate(bounds.values()):
        record[f"bounds.{i}"] = pack(counts)
    return reply(msg, name, {ADMISSION_RECORD: record}, privacy)


def read_admission(msg: Message) -> dict[str, Any]:
    record = msg.content[ADMISSION_RECORD]
    out = json.loads(str(record["json"]))
    out["bounds"] = {c: unpack(record[f"bounds.{i}"]) for i, c in enumerate(json.loads(str(record["bounds.columns"])))}
    return out


# The issuer's noised terminal table (fraud, consortium features).

def wire_table(table: np.ndarray) -> np.ndarray:
    """The table as it travels: float16, or float32 where a cell would overflow float16."""
    table = np.asarray(table, dtype=float)
    return table.astype(WIRE_TABLE if np.abs(table).max(initial=0.0) < np.finfo(WIRE_TABLE).max else WIDE_TABLE)


def terminals_reply(msg: Message, name: str, table: np.ndarray, noise: float, privacy: dict[str, Any]) -> Message:
    return reply(msg, name, {TABLE_RECORD: ConfigRecord({"table": pack(wire_table(table)),
                                                         "noise": float(noise)})}, privacy)


def read_terminals(msg: Message) -> tuple[np.ndarray, float]:
    """(table, noise per cell) of a terminal-table reply."""
    record = msg.content[TABLE_RECORD]
    return unpack(record["table"]), float(record["noise"])


def table_round_request(config: ConfigRecord, node: int) -> Message:
    """The table's request under SecAgg+: a train message (the protocol masks train replies only),
    flagged, with a one-cell placeholder naming the array the masked sum comes back as."""
    config[TABLE_ROUND] = 1
    content = RecordDict({CONFIG: config, ARRAYS: ArrayRecord({"table": Array(np.zeros(1, dtype=np.float32))})})
    return Message(content, dst_node_id=node, message_type=TRAIN)


def is_table_round(msg: Message) -> bool:
    return CONFIG in msg.content and TABLE_ROUND in msg.content[CONFIG]


def table_round_reply(msg: Message, name: str, table: np.ndarray, noise: float, privacy: dict[str, Any]) -> Message:
    """The issuer's table for SecAgg+ to mask: scaled to fit the protocol's range, weight 1 (the
    unmasked average times the institutions that took part is the sum)."""
    arrays = ArrayRecord({"table": Array((np.asarray(table) / TABLE_SCALE).astype(np.float32))})
    metrics = MetricRecord({AGGREGATION_WEIGHT: 1.0, "table-noise": float(noise)})
    return reply(msg, name, {ARRAYS: arrays, METRICS: metrics}, privacy)


def read_table_round(msg: Message, contributors: int) -> tuple[np.ndarray, float]:
    """(summed table, this institution's noise) of a table round's reply, which carries the
    unmasked average of the `contributors` institutions' scaled tables."""
    average = msg.content[ARRAYS]["table"].numpy().astype(float)
    return average * contributors * TABLE_SCALE, float(msg.content[METRICS]["table-noise"])


# Statistics of the training rows, for the shared preprocessing.

def statistics_reply(msg: Message, name: str, stats: dict[str, Any], privacy: dict[str, Any]) -> Message:
    """Noised counts and sums as packed arrays; released category values with their noised counts."""
    numeric = list(stats["numeric"])
    record = ConfigRecord({"schema": json.dumps(stats["schema"]), "numeric.columns": json.dumps(numeric)})
    record["numeric.stats"] = pack(np.array([[stats["numeric"][c][k] for k in NUMERIC_STATS] for c in numeric],
                                            dtype=float).reshape(len(numeric), len(NUMERIC_STATS)))
    categories = list(stats["categories"])
    record["categories.columns"] = json.dumps(categories)
    for i, column in enumerate(categories):
        counts = stats["categories"][column]["counts"]
        record[f"categories.{i}.values"] = json.dumps(list(counts))
        record[f"categories.{i}.counts"] = pack(np.array(list(counts.values()), dtype=float))
        record[f"categories.{i}.missing"] = float(stats["categories"][column]["missing"])
    return reply(msg, name, {STATISTICS_RECORD: record}, privacy)


def read_statistics(msg: Message) -> dict[str, Any]:
    record = msg.content[STATISTICS_RECORD]
    numeric = json.loads(str(record["numeric.columns"]))
    table = unpack(record["numeric.stats"])
    categories = {}
    for i, column in enumerate(json.loads(str(record["categories.columns"]))):
        values = json.loads(str(record[f"categories.{i}.values"]))
        counts = unpack(record[f"categories.{i}.counts"])
        categories[column] = {"counts": {v: float(n) for v, n in zip(values, counts, strict=True)},
                              "missing": float(record[f"categories.{i}.missing"])}
    return {
        "numeric": {c: dict(zip(NUMERIC_STATS, map(float, row), strict=True)) for c, row in zip(numeric, table, strict=True)},
        "categories": categories,
        "schema": json.loads(str(record["schema"])),
    }


# Evaluation statistics: per split, overall, by protected group and (fraud) per issuer.

def evaluation_record(stats: dict[str, SplitStatistics]) -> ConfigRecord:
    """One ConfigRecord (a train reply keeps the single ArrayRecord and MetricRecord FedAvg
    expects) holding each split's statistics as packed arrays under `<split>.<field>`."""
    record = ConfigRecord()
    for split, part in stats.items():
        _put_fields(record, split, part.overall)
        record[f"{split}.noise"] = float(part.noise)
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
    return SplitStatistics(overall, groups, fraud, float(record[f"{split}.noise"]))


def has_evaluation(msg: Message, split: str | None = None) -> bool:
    if EVALUATION_RECORD not in msg.content:
        return False
    return split is None or f"{split}.noise" in msg.content[EVALUATION_RECORD]


def train_reply(msg: Message, name: str, result: RoundResult, validation: SplitStatistics | None,
                privacy: dict[str, Any]) -> Message:
    """The new weights, what the round spent and cost, and (every-round evaluation) the validation
    statistics of the model the round started from."""
    metrics = {"num-examples": float(result.examples), AGGREGATION_WEIGHT: float(result.weight),
               "steps": float(result.steps), "train-seconds": result.seconds}
    if result.epsilon is not None:
        metrics.update({"epsilon": result.epsilon, "delta": result.delta, "noise-multiplier": result.noise_multiplier,
                        "sample-rate": result.sample_rate})
    records: dict[str, Any] = {ARRAYS: ArrayRecord(result.state), METRICS: MetricRecord(metrics)}
    if validation is not None:
        records[EVALUATION_RECORD] = evaluation_record({"validation": validation})
    return reply(msg, name, records, privacy)


def train_metrics(msg: Message) -> dict[str, float]:
    return {k: float(v) for k, v in msg.content[METRICS].items()}


def evaluate_reply(msg: Message, name: str, stats: dict[str, SplitStatistics], privacy: dict[str, Any]) -> Message:
    return reply(msg, name, {EVALUATION_RECORD: evaluation_record(stats)}, privacy)


# Feature importance: score histograms with each feature ablated.

def importance_reply(msg: Message, name: str, histograms: dict[str, tuple[np.ndarray, np.ndarray]],
                     privacy: dict[str, Any]) -> Message:
    features = list(histograms)
    record = ConfigRecord({"features": json.dumps(features)})
    if features:
        record["histograms"] = pack(np.stack([np.stack(histograms[f]) for f in features]))
    return reply(msg, name, {IMPORTANCE_RECORD: record}, privacy)


def read_importance(msg: Message) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    record = msg.content[IMPORTANCE_RECORD]
    features = json.loads(str(record["features"]))
    if not features:
        return {}
    return {f: (pos, neg) for f, (pos, neg) in zip(features, unpack(record["histograms"]), strict=True)}


# Bin counts of the score and the inputs: the drift reference and monitoring windows.

def counts_reply(msg: Message, name: str, counts: dict[str, np.ndarray], privacy: dict[str, Any],
                 window: SplitStatistics | None = None, noise: float = 0.0) -> Message:
    record = ConfigRecord({f"count.{i}": pack(values) for i, values in enumerate(counts.values())})
    record["columns"] = json.dumps(list(counts))
    record["noise"] = float(noise)
    records: dict[str, Any] = {COUNTS_RECORD: record}
    if window is not None:
        records[EVALUATION_RECORD] = evaluation_record({"window": window})
    return reply(msg, name, records, privacy)


def read_counts(msg: Message) -> dict[str, np.ndarray]:
    record = msg.content[COUNTS_RECORD]
    return {column: unpack(record[f"count.{i}"]) for i, column in enumerate(json.loads(str(record["columns"])))}


def counts_noise(msg: Message) -> float:
    return float(msg.content[COUNTS_RECORD]["noise"])
