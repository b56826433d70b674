"""Campaign configuration: one YAML file, validated on load, with dotted overrides.

Pydantic does the validation (unknown keys are rejected, bad values named); this module only
turns its errors into one line and resolves relative paths, so every process of a federation
sees absolute paths.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedrisk.columns import ColumnName, ColumnNames
from fedrisk.errors import FedriskInputError
from fedrisk.strict_yaml import load_yaml, yaml_reason

DRIFT_SCENARIOS = {"credit": ("none", "population_shift", "downturn"),
                   "fraud": ("none", "population_shift", "new_fraud_pattern")}

# What `task: fraud` changes from the credit defaults; any key the user sets wins.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "fraud": {
        "data": {
            "target": "tx_fraud",
            "protected": [],
            "drop": ["transaction_id", "tx_fraud_scenario", "card_number", "customer_name"],
            "transactions": {},
            "time_split": {},
            "quality": {"positive_rate": [0.0005, 0.05], "max_age_days": 30},
        },
        "training": {"local_epochs": 2},
        "privacy": {"delta": 1e-6},  # below 1 / transactions of the largest issuer
        "evaluation": {"max_fpr": 0.01},
        "tracking": {"experiment": "fedrisk-fraud", "model_name": "fedrisk-fraud"},
    }
}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Drift(StrictModel):
    """A controlled shift of the built-in generators: later windows for monitoring."""

    scenario: Literal["none", "population_shift", "downturn", "new_fraud_pattern"] = "none"
    severity: float = Field(0.0, ge=0.0, le=5.0, description="1: a strong shift")
    stream: int = Field(0, ge=0, description="0: the training data; k > 0: the k-th later window")
    start_day: int = Field(0, ge=0, description="fraud: first day of the window's history, after the start")


class SyntheticData(StrictModel):
    """The built-in generators: credit applicants (`rows`) or card transactions (fraud)."""

    institutions: int = Field(5, ge=1, le=1000)
    rows: int = Field(60_000, ge=100, description="credit: rows over all institutions")
    group_bias: float = Field(0.0, ge=0.0, le=5.0, description="credit only")
    sizes: Literal["skewed", "equal"] = Field("skewed", description="credit: institutions' shares of the rows, "
                                              "1/rank^1.1 (a national bank first) or equal (a scale test)")
    customers: int = Field(5000, ge=10, description="fraud: cardholders over all issuers")
    terminals: int = Field(10_000, ge=10, description="fraud: terminals shared by all issuers")
    days: int = Field(105, ge=7, le=3650, description="fraud: days of transactions")
    drift: Drift = Drift()


class TransactionSpec(StrictModel):
    """Fraud: which columns make a transaction, and how features look back in time."""

    timestamp: ColumnName = "tx_datetime"
    customer: ColumnName = Field("customer_id", description="customer or card id; never leaves the issuer")
    terminal: ColumnName = Field("terminal_id", description="terminal or merchant id; never leaves the issuer")
    amount: ColumnName = "tx_amount"
    windows_days: list[int] = Field([1, 7, 30], min_length=1, description="look-back windows (days, <= 365)")
    delay_days: int = Field(7, ge=1, le=365, description="label delay: frauds are known this many days later")
    consortium_features: bool = Field(False, description="terminal counts shared across issuers (noised, summed); "
                                                          "see docs/consortium_features.md for what they are worth")
    sketch_width: int = Field(16384, ge=16, le=1 << 20, description="buckets of the shared terminal table")
    sketch_cell_days: int = Field(1, ge=1, le=28, description="days per cell of the shared terminal table")

    @model_validator(mode="after")
    def _positive_windows(self) -> TransactionSpec:
        if any(not 1 <= w <= 365 for w in self.windows_days) or len(set(self.windows_days)) != len(self.windows_days):
            raise ValueError("windows_days must be distinct whole days from 1 to 365")
        return self


class TimeSplit(StrictModel):
    """Fraud: train, label delay, validation, label delay, test; never random."""

    train_days: int = Field(28, ge=1)
    validation_days: int = Field(7, ge=1)
    test_days: int = Field(14, ge=1)
    end: date | None = Field(None, description="last day of the test window; None: each issuer's last day")


class Quality(StrictModel):
    """The data spec each institution's rows are scored against, locally, before training."""

    min_score: float = Field(90.0, ge=0.0, le=100.0, description="below it the institution sits out")
    ranges: dict[ColumnName, tuple[float | None, float | None]] = Field(
        {}, description="column -> [min, max], bounds included, null: open; built-in data have their own")
    categories: dict[ColumnName, list[str | int | bool]] = Field({}, description="column -> allowed values")
    positive_rate: tuple[float, float] = Field((0.02, 0.5), description="expected share of positives")
    max_age_days: int = Field(365, ge=1, description="freshness: the newest row at most this old")
    date_column: ColumnName | None = Field(None, description="credit: the column dating each row; fraud: the timestamp")
    as_of: date | None = Field(None, description="freshness is judged on this day; None: today")

    @model_validator(mode="after")
    def _bands(self) -> Quality:
        low, high = self.positive_rate
        if not 0.0 <= low < high <= 1.0:
            raise ValueError("positive_rate must be [low, high] with 0 <= low < high <= 1")
        for column, (lo, hi) in self.ranges.items():
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"ranges.{column}: min {lo:g} is above max {hi:g}")
        return self


class Partition(StrictModel):
    """How one file is cut into institutions for a simulation."""

    institutions: int = Field(ge=1, le=1000)
    method: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(1.0, gt=0.0, description="Dirichlet concentration; small = skewed")


class DataSpec(StrictModel):
    """Where each institution's rows are and what the columns mean."""

    source: Literal["synthetic", "files"] = "synthetic"
    synthetic: SyntheticData = SyntheticData()
    files: dict[str, str] | None = Field(None, description="institution -> CSV/Parquet file")
    path: str | None = Field(None, description="one CSV/Parquet file for all institutions")
    institution_column: ColumnName | None = None
    partition: Partition | None = None
    target: ColumnName = "default"
    features: ColumnNames | None = Field(None, description="None: every column not excluded")
    categorical: ColumnNames | None = Field(None, description="None: non-numeric columns")
    protected: ColumnNames = ["sex", "age_band"]
    drop: ColumnNames = ["customer_id", "name", "national_id", "phone", "card_number"]
    validation_fraction: float = Field(0.15, gt=0.0, lt=0.5, description="credit: random split")
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5, description="credit: random split")
    transactions: TransactionSpec | None = Field(None, description="fraud: transaction columns")
    time_split: TimeSplit | None = Field(None, description="fraud: time-ordered split")
    quality: Quality = Quality()

    @model_validator(mode="after")
    def _one_layout(self) -> DataSpec:
        if self.source == "synthetic":
            return self
        layouts = [
            self.files is not None,
            self.path is not None and self.institution_column is not None,
            self.path is not None and self.partition is not None,
        ]
        if sum(layouts) != 1:
            raise ValueError(
                "data.source 'files' needs exactly one of: data.files (one file per "
                "institution), data.path + data.institution_column, "
                "or data.path + data.partition"
            )
        return self


class ModelSpec(StrictModel):
    kind: Literal["logistic", "mlp"] = "mlp"
    hidden: list[int] = Field([32], description="hidden layer widths of the MLP")


ROBUST_RULES = ("fedtrimmedavg", "fedmedian", "krum", "multikrum", "bulyan")  # Flower's; need each update


class Robust(StrictModel):
    """Defences against a hostile institution, on the updates the server sees (docs/robustness.md)."""

    cap_weights: bool = Field(True, description="an update weighs at most its institution's admitted training rows")
    norm_bound: float | None = Field(
        3.0, gt=1.0, description="clip each update to this multiple of the round's median update norm; null: off")
    trim: float = Field(0.1, ge=0.0, lt=0.5, description="fedtrimmedavg: fraction cut from each tail of every weight")
    byzantine: int = Field(1, ge=0, description="krum, multikrum, bulyan: hostile institutions the rule tolerates")
    flag_norm: float = Field(
        3.0, gt=1.0, description="flag an update longer than this multiple of the round's median (before bounding)")
    flag_cosine: float = Field(
        0.0, ge=-1.0, le=1.0, description="flag an update whose cosine with the median of the others' is below this "
                                    "(and an outlier of the round)")
    flag_rounds: int = Field(3, ge=0, description="exclude an institution flagged this many rounds in a row; 0: never")


class Drill(StrictModel):
    """A poisoning drill, in simulation only: one institution attacks the campaign so that the
    consortium can measure its defences (the run is tagged `fedrisk.drill`)."""

    institution: str | list[str] = Field(description="the attacker, or several (colluding, or dropping out)")
    attack: Literal["scale", "sign_flip", "label_flip", "inflate_count", "nan", "group_relabel", "dropout"]
    factor: float = Field(10.0, gt=0.0, description="scale: update times this; inflate_count: example count times this")
    group: str = Field("sex=F", description="group_relabel: ATTRIBUTE=VALUE, whose training rows are all labelled positive")
    rate: float = Field(0.3, gt=0.0, le=1.0, description="dropout: share of rounds whose reply each named institution loses")

    @property
    def institutions(self) -> list[str]:
        return [self.institution] if isinstance(self.institution, str) else list(self.institution)

    @model_validator(mode="after")
    def _group(self) -> Drill:
        if self.group.count("=") != 1 or not all(self.group.split("=")):
            raise ValueError(f"drill.group '{self.group}' is not ATTRIBUTE=VALUE")
        return self


class Training(StrictModel):
    rounds: int = Field(8, ge=1, le=10_000)
    local_epochs: int = Field(1, ge=1, le=1000)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(0.5, gt=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    strategy: Literal["fedavg", "fedprox", "fedtrimmedavg", "fedmedian", "krum", "multikrum", "bulyan"] = Field(
        "fedavg", description="Flower's aggregation rule; the robust ones need each institution's update")
    robust: Robust = Robust()
    proximal_mu: float = Field(0.1, ge=0.0)
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="institutions sampled per round")
    min_institutions: int = Field(2, ge=1)
    round_timeout: float = Field(
        3600.0, gt=0.0, description="seconds a round waits for replies; an institution still silent is dropped from it")
    positive_weight: float = Field(1.0, gt=0.0, description="loss weight of a positive row")
    focal_gamma: float = Field(0.0, ge=0.0, le=10.0, description="focal loss; 0: cross-entropy")
    initial_model: str | None = Field(
        None, description="warm start: an MLflow model URI whose weights and preprocessing the campaign starts from")


class InstitutionPrivacy(StrictModel):
    """Institution-level DP: Flower's DP wrapper bounds what one institution's whole update
    can change in the global model (clipping) and adds Gaussian noise to the average."""

    enabled: bool = False
    clipping: Literal["client", "server"] = Field(
        "client", description="client: each institution clips its own update (works with secure aggregation)")
    clipping_norm: float = Field(1.0, gt=0.0, description="L2 bound of one institution's update in a round")
    noise_multiplier: float | None = Field(
        None, gt=0.0, description="None: calibrated to target_epsilon over training.rounds")
    target_epsilon: float = Field(10.0, gt=0.0, description="budget of the campaign, per institution's participation")
    delta: float = Field(1e-5, gt=0.0, lt=1.0)


class SecureAggregation(StrictModel):
    """Flower's SecAgg+: the server learns only the weighted sum of the institutions' weights."""

    enabled: bool = False
    num_shares: int = Field(3, gt=2, description="secret shares per institution, at most the institutions in a round")
    reconstruction_threshold: int = Field(2, ge=2, description="shares needed to unmask; fewer live peers abort the round")
    clipping_range: float = Field(32.0, gt=0.0, description="every model weight must stay within +/- this")
    quantization_range: int = Field(2**22, ge=2**10, description="integer levels over [-clipping_range, clipping_range]")
    timeout: float = Field(3600.0, gt=0.0, description="seconds to wait for each protocol stage, local training included")

    @model_validator(mode="after")
    def _threshold(self) -> SecureAggregation:
        if self.reconstruction_threshold >= self.num_shares:
            raise ValueError("secure_aggregation.reconstruction_threshold must be below num_shares")
        if self.num_shares % 2 == 0:  # Flower 1.41 sends an even count to clients and uses one more itself
            raise ValueError("secure_aggregation.num_shares must be odd")
        if 2 * self.reconstruction_threshold <= self.num_shares:
            raise ValueError("secure_aggregation.reconstruction_threshold must be more than half of num_shares, "
                             "or the server could rebuild an institution's secrets from two groups of shares")
        return self


class Privacy(StrictModel):
    """What the campaign asks of every institution; each institution's own policy
    (`fedrisk.guard`) decides whether to accept, and its ledger what it has left."""

    enabled: bool = True
    target_epsilon: float = Field(3.0, gt=0.0, description="this campaign's epsilon, per institution")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="the largest delta an institution may state epsilon at")
    statistics_share: float = Field(0.25, gt=0.0, lt=1.0,
                                    description="share of the epsilon for released statistics (each part alone)")
    shared_counts_share: float = Field(0.2, gt=0.0, lt=1.0, description="fraud: share of the epsilon for the "
                                       "shared terminal counts (data.transactions.consortium_features)")
    monitoring_epsilon: float = Field(1.5, gt=0.0, description="epsilon of each monitoring run of the model")
    max_grad_norm: float = Field(
        4.0, gt=0.0, description="per-sample clipping; tighter clipping biases PD downwards"
    )
    max_noise_multiplier: float = Field(
        20.0, gt=0.0, description="more noise than this means the budget left is too small"
    )
    institution_level: InstitutionPrivacy = InstitutionPrivacy()


class Evaluation(StrictModel):
    bins: int = Field(50, ge=10, le=1000, description="score bins of the evaluation grid the server fixes per campaign")
    threshold: float = Field(0.2, gt=0.0, lt=1.0, description="PD at or above it: flagged (an edge of the grid)")
    max_fpr: float = Field(0.1, gt=0.0, lt=1.0, description="for recall at this FPR")
    alerts_per_day: int = Field(
        30, ge=1, description="fraud: alert budget per issuer and day; top-k precision uses it too"
    )
    every_round: bool = Field(False, description="also release validation histograms every round (costs epsilon)")
    importance: bool = Field(False, description="release each feature's ablated histogram at the end (costs epsilon)")
    amount_cap: float = Field(1000.0, gt=0.0, description="fraud: amounts are clipped here in amount-weighted recall")


class Tracking(StrictModel):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "fedrisk-credit"
    model_name: str = Field("fedrisk-credit", description="registered model of passing runs")
    institution_metrics_limit: int = Field(20, ge=0, description="consortia up to this size log each institution's "
                                           "metrics as MLflow metrics; larger ones as one table artifact "
                                           "(institution_metrics.json)")


class Gate(StrictModel):
    enabled: bool = True
    policy: str | None = Field(None, description="policy YAML; None: the task's shipped policy (configs/gate_<task>.yaml)")


class Audit(StrictModel):
    path: str = Field(".fedrisk/audit.jsonl", description="hash-chained audit log; relative to the working directory")
    actor: str | None = Field(None, description="who runs the campaign (its trainer); None: FEDRISK_ACTOR or the OS user")


class CampaignConfig(StrictModel):
    task: Literal["credit", "fraud"] = "credit"
    seed: int = Field(42, ge=0)
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    training: Training = Training()
    privacy: Privacy = Privacy()
    evaluation: Evaluation = Evaluation()
    tracking: Tracking = Tracking()
    gate: Gate = Gate()
    audit: Audit = Audit()
    secure_aggregation: SecureAggregation = SecureAggregation()
    drill: Drill | None = Field(None, description="a poisoning drill (simulation only)")

    @model_validator(mode="after")
    def _robust(self) -> CampaignConfig:
        tr, f = self.training, self.training.robust.byzantine
        if self.secure_aggregation.enabled and tr.strategy in ROBUST_RULES:
            raise ValueError(f"training.strategy {tr.strategy} needs each institution's update, which secure "
                             "aggregation hides; use fedavg or fedprox with secure_aggregation")
        if self.secure_aggregation.enabled and tr.robust != Robust():  # the defaults simply do not apply
            raise ValueError("training.robust bounds and flags each institution's update, which secure aggregation "
                             "hides; keep its defaults or drop secure_aggregation")
        if self.privacy.institution_level.enabled and tr.strategy in ROBUST_RULES:
            raise ValueError(f"privacy.institution_level calibrates its noise to the mean of clipped updates; "
                             f"training.strategy {tr.strategy} is not a mean (use fedavg or fedprox)")
        needed = {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3, "fedtrimmedavg": 3,
                  "fedmedian": 3}.get(tr.strategy, 0)  # a median or trimmed mean of 2 is their mean
        if tr.min_institutions < needed:
            raise ValueError(f"training.strategy {tr.strategy}" + (f" with training.robust.byzantine {f}" if "krum" in
                             tr.strategy or tr.strategy == "bulyan" else "") + f" needs training.min_institutions >= {needed}")
        return self

    @model_validator(mode="after")
    def _task_data(self) -> CampaignConfig:
        fraud = self.task == "fraud"
        if fraud and (self.data.transactions is None or self.data.time_split is None):
            raise ValueError("task fraud needs data.transactions and data.time_split")
        if not fraud and (self.data.transactions is not None or self.data.time_split is not None):
            raise ValueError("data.transactions and data.time_split apply to task fraud only")
        if fraud and self.data.quality.date_column:
            raise ValueError("data.quality.date_column is for credit data; fraud freshness uses "
                             "data.transactions.timestamp")
        if self.consortium_features:
            if self.privacy.enabled and self.privacy.statistics_share + self.privacy.shared_counts_share >= 1.0:
                raise ValueError("privacy.statistics_share plus privacy.shared_counts_share must stay below 1: the "
                                 "rest pays for DP-SGD")
            if self.data.source == "files" and self.data.time_split is not None and self.data.time_split.end is None:
                raise ValueError("data.transactions.consortium_features needs data.time_split.end: the calendar "
                                 "every issuer's shared table follows (or set consortium_features: false)")
        if fraud and self.data.synthetic.sizes != "skewed":
            raise ValueError("data.synthetic.sizes applies to the credit generator (issuers' sizes follow their "
                             "cardholders)")
        scenario = self.data.synthetic.drift.scenario
        allowed = DRIFT_SCENARIOS[self.task]
        if scenario not in allowed:
            raise ValueError(f"data.synthetic.drift.scenario '{scenario}' is not a {self.task} scenario "
                             f"(use one of: {', '.join(allowed)})")
        inst = self.privacy.institution_level
        if inst.enabled and self.training.fraction != 1.0:
            raise ValueError("privacy.institution_level needs training.fraction 1.0: its accounting assumes every "
                             "institution in every round")
        if self.secure_aggregation.enabled and inst.enabled and inst.clipping == "server":
            raise ValueError("privacy.institution_level.clipping 'server' needs each institution's update, which "
                             "secure aggregation hides; use clipping 'client'")
        return self

    @property
    def consortium_features(self) -> bool:
        """Fraud with terminal counts shared across issuers."""
        return self.data.transactions is not None and self.data.transactions.consortium_features

    def institution_count_hint(self) -> int | None:
        """Number of institutions when the config alone fixes it."""
        if self.data.source == "synthetic":
            return self.data.synthetic.institutions
        if self.data.files is not None:
            return len(self.data.files)
        if self.data.partition is not None:
            return self.data.partition.institutions
        return None


INSTITUTION_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def check_institution_name(name: str, quote: bool = True) -> None:
    """Letters, digits, '_', '.', '-' (at most 64): a name becomes a folder, a file name, a
    Flower node config value. Not quoted when it was read from data (it may be a customer's)."""
    if not INSTITUTION_NAME.fullmatch(name or ""):
        what = f"'{name}'" if quote else "a value"
        raise FedriskInputError(f"{what} is not a usable institution name (letters, digits, '_', '.', '-')")


def check_secure_aggregation(config: CampaignConfig, institutions: int) -> None:
    """SecAgg+ shares each institution's secret among `num_shares` institutions: they must exist."""
    secure = config.secure_aggregation
    if secure.enabled and institutions < secure.num_shares:
        raise FedriskInputError(f"secure_aggregation.num_shares {secure.num_shares} needs at least as many "
                                f"institutions; {institutions} can take part")
    if secure.enabled and institutions * secure.quantization_range >= 2**32:  # the masked sum is taken mod 2^32
        raise FedriskInputError(f"secure_aggregation.quantization_range {secure.quantization_range} times "
                                f"{institutions} institutions overflows the protocol's 2^32; lower it")


# Short command-line names for the keys users override most.
OVERRIDE_ALIASES = {
    "rounds": "training.rounds",
    "institutions": "data.synthetic.institutions",
    "epsilon": "privacy.target_epsilon",
    "seed": "seed",
    "tracking_uri": "tracking.uri",
}


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise FedriskInputError(f"override '{dotted}': '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def _with_task_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """The task's defaults under the user's keys (a deep merge; the user's values win)."""
    defaults = copy.deepcopy(TASK_DEFAULTS.get(str(raw.get("task", "credit")), {}))  # paths get resolved in place

    def merge(base: Any, mine: Any) -> Any:
        if isinstance(base, dict) and isinstance(mine, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in mine.items()}}
        return mine

    return merge(defaults, raw)


def format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if first["type"] == "value_error":  # a rule across keys: its message names them
        msg = msg.removeprefix("Value error, ")
        if not key:
            return f"{source}: {msg}{more}"
    return f"{source}: key '{key}': {msg}{more}"


def _resolve_paths(raw: dict[str, Any], config_dir: Path, work_dir: Path) -> None:
    """Data paths are relative to the config file; outputs to the working directory."""
    data = raw.get("data") or {}
    if isinstance(data.get("files"), dict):
        data["files"] = {
            k: _resolved(config_dir / v) if isinstance(v, str) else v
            for k, v in data["files"].items()
        }
    if isinstance(data.get("path"), str):
        data["path"] = _resolved(config_dir / data["path"])
    gate = raw.get("gate") or {}
    if isinstance(gate, dict) and isinstance(gate.get("policy"), str):
        gate["policy"] = _resolved(config_dir / gate["policy"])
    audit = raw.setdefault("audit", {})
    if isinstance(audit, dict) and isinstance(audit.get("path", Audit.model_fields["path"].default), str):
        audit["path"] = str((work_dir / audit.get("path", Audit.model_fields["path"].default)).resolve())
    tracking = raw.setdefault("tracking", {})
    if isinstance(tracking, dict):
        uri = tracking.get("uri", Tracking.model_fields["uri"].default)
        if isinstance(uri, str):
            tracking["uri"] = absolute_tracking_uri(uri, work_dir)


def _resolved(path: Path) -> str:
    """An absolute path; a symbolic link that loops is refused here, not met as a traceback later."""
    try:
        return str(path.resolve())
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError for a loop, later ones OSError
        raise FedriskInputError("a symbolic link that loops", file=str(path)) from None


def absolute_tracking_uri(uri: str, work_dir: Path) -> str:
    """Make a relative SQLite file or folder store absolute; leave every other URI alone."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((work_dir / uri[len("sqlite:///") :]).resolve())
    if ":" not in uri and uri not in {"databricks", "databricks-uc", "uc"}:  # a local folder
        return str((work_dir / uri).resolve())
    return uri


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    work_dir: str | Path | None = None,
) -> CampaignConfig:
    """Load and validate a campaign; `overrides` maps dotted keys (or aliases) to values.

    With no path the built-in defaults are used (they equal configs/credit.yaml).
    """
    work = Path(work_dir or Path.cwd()).resolve()
    raw: dict[str, Any] = {}
    source = "built-in default config"
    config_dir = work
    if path:
        file = Path(path)
        if not file.is_absolute():
            file = work / file
        source = str(file)
        if not file.is_file():
            reason = "not a file" if file.exists() else "config file not found"
            raise FedriskInputError(reason, file=str(file))
        try:
            loaded = load_yaml(file.read_text())
        except UnicodeDecodeError:
            raise FedriskInputError("not a UTF-8 text file", file=str(file)) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise FedriskInputError(yaml_reason(exc, f"not valid YAML{where}"), file=str(file)) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise FedriskInputError("a config must be a mapping of keys", file=str(file))
        raw = loaded
        config_dir = file.parent.resolve()
    for key, value in (overrides or {}).items():
        set_dotted(raw, OVERRIDE_ALIASES.get(key, key), value)
    raw = _with_task_defaults(raw)
    if isinstance(raw.get("data"), dict) or "data" not in raw:
        _resolve_paths(raw, config_dir, work)
    try:
        config = CampaignConfig.model_validate(raw)
    except ValidationError as err:
        raise FedriskInputError(format_validation_error(err, source)) from None
    if config.gate.enabled:  # a bad policy fails now, not after the last round
        from fedrisk.policy import DEFAULT_POLICIES, check_policy_fits, load_policy
        from fedrisk.run_schema import task_metrics

        policy = load_policy(config.gate.policy, config.task)
        ev = config.evaluation
        logged = task_metrics(config.task, threshold=ev.threshold, max_fpr=ev.max_fpr, k=ev.alerts_per_day)
        check_policy_fits(policy, config.data.protected, logged, str(config.gate.policy or DEFAULT_POLICIES[config.task]))
    return config


def config_to_json(config: CampaignConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)


def config_from_json(text: str) -> CampaignConfig:
    try:
        return CampaignConfig.model_validate(json.loads(text))
    except ValidationError as err:
        raise FedriskInputError(format_validation_error(err, "campaign config")) from None


def flatten(config: CampaignConfig) -> dict[str, str]:
    """Dotted key -> value strings, for MLflow params."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        else:
            out[prefix] = json.dumps(node) if isinstance(node, (list, dict)) else str(node)

    walk("", config.model_dump(mode="json"))
    return out


def from_run_config(run_config: dict[str, Any]) -> CampaignConfig:
    """The campaign of a Flower run config: `campaign-config` (a validated campaign as JSON),
    else `config-path` with `overrides` (JSON of dotted keys)."""
    validated = str(run_config.get("campaign-config", "") or "")
    if validated:
        return config_from_json(validated)
    path = str(run_config.get("config-path", "") or "") or None
    text = str(run_config.get("overrides", "") or "").strip()
    try:
        overrides = json.loads(text) if text else {}
    except json.JSONDecodeError:
        raise FedriskInputError("run config 'overrides' is not valid JSON") from None
    return load_config(path, overrides)
