"""One institution's state for one campaign on its node, built once and reused by every message.

The campaign config is parsed once, the node's own settings (its file, its home) are applied
once, the institution's policy is read before anything else (`guard`), the data are loaded and
split once, and the preprocessed matrices are cached per shared preprocessing. A ClientApp
process keeps its sessions (a simulation's actor serves many institutions) up to a number of
rows, so a round costs no parsing and no reloading.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedrisk import lineage
from fedrisk.budget import SIZE_NOISE, CampaignPlan, Shape, exact_plan, plan_campaign
from fedrisk.columns import DAY, TERMINAL
from fedrisk.config import CampaignConfig, config_from_json
from fedrisk.consortium_features import check_table, consortium_features, kept_table, load_key
from fedrisk.data import InstitutionData, load_institution
from fedrisk.data_quality import blocks as quality_blocks
from fedrisk.errors import FedriskInputError, PolicyRefused
from fedrisk.guard import (
    InstitutionPolicy,
    check_delta,
    check_request,
    check_shared,
    home_secret,
    homes_root,
    institution_home,
    ledger_path,
    load_policy,
)
from fedrisk.ledger import PrivacyLedger, Release
from fedrisk.mechanisms import noised
from fedrisk.preprocessing import Preprocessor
from fedrisk.sources import institution_names
from fedrisk.splits import Split, split_institution, table_calendar

SIZE = Release("train", "size", SIZE_NOISE)  # the training rows' count, released once per data version
DEPLOYED_KEYS = {"institution", "home", "data-path", "sketch-key"}  # set by an operator; Flower's simulation sets none
MAX_SESSIONS_PER_INSTITUTION = 8  # a campaign, and a monitoring run's windows
MAX_CACHED_ROWS = 2_000_000  # rows a process keeps loaded across its sessions (~1 GB); least recently used go first


@dataclass
class NodeSession:
    """What one node knows of one campaign: the typed config and this institution's rows."""

    name: str
    config: CampaignConfig
    home: Path
    _policy: InstitutionPolicy | None = None
    _data: tuple[InstitutionData, Split] | None = None
    _preprocessors: dict[str, Preprocessor] = field(default_factory=dict)
    _matrices: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    _plans: dict[str, CampaignPlan] = field(default_factory=dict)
    _new_size: bool = False  # the row count was released for the campaign being admitted
    sketch_key_file: Path | None = None  # the consortium's sketch key (fraud with consortium features)
    deployed: bool = False  # a SuperNode of a real federation (its node config names the institution)
    _table_campaign: str | None = None  # the campaign whose shared terminal table the rows carry

    @property
    def policy(self) -> InstitutionPolicy:
        """The institution's policy, read from its home (never from the campaign)."""
        if self._policy is None:
            self._policy = load_policy(self.home, self.name)
        return self._policy

    def guard(self, message_type: str, monitoring: bool = False) -> None:
        """Refuse, before any data are read, what the institution's policy does not allow (read
        afresh on every message: the institution may tighten it between two)."""
        self._policy = None
        check_request(self.policy, self.config, message_type, self.name, monitoring=monitoring)

    def ledger(self) -> PrivacyLedger:
        rules = self.policy.privacy
        return PrivacyLedger.open(ledger_path(self.home, self.policy, self.name), self.name, rules.lifetime_epsilon, rules.delta)

    def _loaded(self) -> tuple[InstitutionData, Split]:
        if self._data is None:
            data = load_institution(self.config.data, self.name, self.config.seed, never_use=self.policy.never_use,
                                    sketch_key=self.sketch_key() if self.uses_table else None)
            self._data = (data, split_institution(data, self.config.data, self.config.seed))
        return self._data

    @property
    def uses_table(self) -> bool:
        """Fraud with the consortium's shared terminal table among the inputs."""
        return self.config.consortium_features and self.sketch_key_file is not None

    def sketch_key(self) -> bytes:
        """The consortium's key of terminal ids: a deployment's comes with the federation's set-up,
        a simulation's is made once for the machine's simulated issuers."""
        if self.sketch_key_file is None:
            raise PolicyRefused("the campaign does not use consortium features: no sketch key", institution=self.name)
        return load_key(self.sketch_key_file, create=not self.deployed)

    def table_path(self, campaign: str) -> Path:
        """Where the node keeps a campaign's shared table: its own home (a later message, another
        process, `fedrisk score`, read it there)."""
        return self.home / kept_table(campaign)

    def attach_table(self, campaign: str, table: np.ndarray | None = None) -> None:
        """Compute the consortium's columns of every row from the campaign's summed table (given,
        or as kept from an earlier message); the rows then carry them for every later release.
        A campaign has one table: a different one sent later is refused."""
        if not self.uses_table:
            return
        path = self.table_path(campaign)
        if table is not None:
            self.plan(campaign)  # a campaign this institution did not admit keeps nothing here
            table = np.asarray(table, dtype=np.float32)
            if path.is_file() and not np.array_equal(np.load(path, allow_pickle=False), table):
                raise PolicyRefused(f"refused a second, different terminal table for campaign {campaign}",
                                    institution=self.name)
        if self._table_campaign == campaign:
            return
        if table is None:
            if not path.is_file():
                return  # not shared yet: `require_table` refuses what needs it
            table = np.load(path, allow_pickle=False)
        tx, data = self.config.data.transactions, self.data
        assert tx is not None
        cal = table_calendar(self.config.data)
        try:
            table = check_table(table, cal, tx.sketch_width).astype(np.float32)
        except FedriskInputError as err:
            raise PolicyRefused(err.detail, institution=self.name) from None
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, table, allow_pickle=False)
        frame = data.frame.copy()
        features = consortium_features(table.astype(float), cal, frame[DAY].to_numpy(), frame[TERMINAL].to_numpy(),
                                       tx.windows_days, tx.delay_days)
        frame[list(features.columns)] = features.to_numpy()
        data = replace(data, frame=frame)
        self._data = (data, split_institution(data, self.config.data, self.config.seed))
        self._matrices.clear()
        self._table_campaign = campaign

    def require_table(self, campaign: str) -> None:
        """Refuse a release whose rows would carry empty consortium columns."""
        self.attach_table(campaign)
        if self.uses_table and self._table_campaign != campaign:
            raise FedriskInputError(f"campaign {campaign}: the consortium's terminal table has not been shared "
                                    "with this institution yet (query.terminals, then query.statistics)",
                                    institution=self.name)

    @property
    def shape(self) -> Shape:
        columns = self.data.columns
        return Shape(len(self.split.train), len(columns.numeric), len(columns.categorical), len(columns.protected),
                     columns.amount is not None, quality_blocks(self.data.quality), len(columns.shared))

    @property
    def binding(self) -> str:
        """What fixes a campaign's releases: the whole campaign as the node runs it (data, split,
        columns, privacy, training, evaluation; not where the server keeps its records) and the
        data. A message under other settings would let parts overlap or train otherwise than
        planned."""
        settings = self.config.model_dump(mode="json", exclude={"tracking", "audit", "gate"})
        return hashlib.sha256(json.dumps([settings, self.data.fingerprint], sort_keys=True).encode()).hexdigest()

    @property
    def released_fingerprint(self) -> str:
        """The data's fingerprint as it leaves: keyed with the institution's secret, so it tells
        one version of its data from another without letting a holder of a file test it."""
        return hmac.new(home_secret(self.home), self.data.fingerprint.encode(), hashlib.sha256).hexdigest()

    def public_rows(self) -> float:
        """The training rows as the institution releases them: once per version of its data and
        split, noised and charged (`size`). Every plan is calibrated on this number (sample rate,
        steps, delta), so nothing a campaign learns, a refusal included, depends on the exact one."""
        split = self.config.data.model_dump(mode="json", include={"validation_fraction", "test_fraction", "time_split"})
        key = "size:" + hashlib.sha256(json.dumps([self.data.fingerprint, split, self.config.seed], sort_keys=True)
                                       .encode()).hexdigest()[:16]
        ledger = self.ledger()
        if key not in ledger.plans:
            rows = float(max(round(float(noised(len(self.split.train), SIZE_NOISE))), 1))
            ledger.plan(key, [SIZE], self.policy.privacy.lifetime_epsilon, {"rows": rows})
            ledger.charge(key, SIZE)
            self._new_size = True
        return float(self.ledger().plans[key]["rows"])

    def reserve(self, campaign: str) -> CampaignPlan:
        """Admission: check whose customers these are and that delta fits them, then calibrate the
        campaign's privacy plan and reserve it in the ledger (or find it reserved: a restart)."""
        data, rules = self.data, self.policy.privacy
        ledger = self.ledger()
        if campaign not in ledger.plans:
            lineage.check_population(self.home, self.name, data.population, data.source)
            self._new_size = False
            rows = self.public_rows()
            check_delta(self.config, self.name, rows, ledger.delta, data.source)
            shape = replace(self.shape, train_rows=int(rows))
            exact = not self.config.privacy.enabled  # the guard let it through: the policy allows it
            plan = (exact_plan(self.config, shape) if exact else
                    plan_campaign(self.config, shape, self.ledger(), campaign, rules.max_campaign_epsilon,
                                  rules.lifetime_epsilon, (SIZE,) if self._new_size else ()))
            self.ledger().plan(campaign, list(plan.releases), rules.lifetime_epsilon,
                               {"noise": _plan_noise(plan), "fingerprint": data.fingerprint, "binding": self.binding,
                                "released_rows": rows}, exact=exact)
            lineage.record(self.home, data.fingerprint, data.population)
        return self.plan(campaign)

    def plan(self, campaign: str) -> CampaignPlan:
        """The campaign's reserved plan, read from the ledger (another process, a restart: the same
        plan). A campaign this institution did not admit, or admitted with other data, split or
        columns, is refused: its releases would not be the ones reserved."""
        if campaign not in self._plans:
            saved = self.ledger().plans.get(campaign)
            if saved is None:
                raise PolicyRefused(f"campaign {campaign} was not admitted here (no query.bounds first)",
                                    institution=self.name)
            if saved.get("binding") != self.binding:
                raise PolicyRefused(f"campaign {campaign} was admitted with other data, split or columns",
                                    institution=self.name)
            self._plans[campaign] = _plan_from(saved)
        return self._plans[campaign]

    def released_rows(self, campaign: str) -> float:
        """The campaign's training rows as released at admission (noised once): the weight of its updates."""
        self.plan(campaign)
        return float(self.ledger().plans[campaign]["released_rows"])

    @property
    def data(self) -> InstitutionData:
        return self._loaded()[0]

    @property
    def split(self) -> Split:
        return self._loaded()[1]

    def preprocessor(self, text: str, monitoring: bool = False) -> Preprocessor:
        """The request's shared preprocessing, once checked (`fedrisk.guard.check_shared`): a
        campaign's has exactly this institution's features; a monitoring window's, the model's."""
        if text not in self._preprocessors:
            try:
                self._preprocessors[text] = Preprocessor.from_json(text)
            except (ValueError, KeyError, TypeError):
                raise PolicyRefused("refused the request's shared preprocessing: not readable",
                                    institution=self.name) from None
        shared = self._preprocessors[text]
        columns = None if monitoring else (self.data.columns.numeric, self.data.columns.categorical)
        check_shared(shared, self.policy, self.config, self.name, columns)  # every time: the policy may change
        return shared

    def matrices(self, preprocessor: str, part: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) of one split under the shared preprocessing, computed once."""
        key = (preprocessor, part)
        if self.uses_table and self._table_campaign is None:
            raise FedriskInputError("the consortium's terminal table has not been shared with this institution yet",
                                    institution=self.name)
        if key not in self._matrices:
            frame = getattr(self.split, part)
            x = self.preprocessor(preprocessor).transform(frame)
            y = frame[self.data.columns.target].to_numpy(dtype=np.float32)
            self._matrices[key] = (x, y)
        return self._matrices[key]


_SESSIONS: OrderedDict[str, NodeSession] = OrderedDict()


@lru_cache(maxsize=64)
def parsed_config(config_json: str) -> CampaignConfig:
    """A campaign config parsed once per process (it is frozen): every message carries it."""
    return config_from_json(config_json)


def cached_rows() -> int:
    return sum(len(s._data[0].frame) for s in _SESSIONS.values() if s._data is not None)


def open_session(config_json: str, node_config: dict[str, Any], names: list[str] | None = None) -> NodeSession:
    """This node's session for a campaign config, from the cache or new."""
    config = parsed_config(config_json)
    key = hashlib.sha256(json.dumps([config_json, sorted(node_config.items()), names, str(homes_root()),
                                     _data_stamp(config, node_config)], default=str).encode()).hexdigest()
    if key in _SESSIONS:
        _SESSIONS.move_to_end(key)
        return _SESSIONS[key]
    name = resolve_institution(config, node_config, names)
    session = NodeSession(name, for_node(config, name, node_config), institution_home(name, node_config),
                          sketch_key_file=sketch_key_file(name, node_config) if config.consortium_features else None,
                          deployed=bool(DEPLOYED_KEYS & set(node_config)))
    while len(_SESSIONS) > 1 and cached_rows() > MAX_CACHED_ROWS:
        _SESSIONS.popitem(last=False)
    mine = [k for k, s in _SESSIONS.items() if s.name == name and s.home == session.home]
    for old in mine[: max(len(mine) - MAX_SESSIONS_PER_INSTITUTION + 1, 0)]:  # oldest first
        del _SESSIONS[old]
    _SESSIONS[key] = session
    return session


def close_sessions() -> None:
    """Forget every session (a process that checked the institutions and will not serve them)."""
    _SESSIONS.clear()


def _data_stamp(config: CampaignConfig, node_config: dict[str, Any]) -> list[Any]:
    """Identity, size and times of the data files: a file changed on disk is loaded again, even
    rewritten with its size and modification time kept (cp -p, rsync -t: its change time moves);
    a withdrawn file leaves the stamp, so the next message reads it again and fails."""
    files = [*(config.data.files or {}).values(), config.data.path, node_config.get("data-path")]
    stamp = []
    for file in files:
        if file is not None and Path(str(file)).is_file():
            info = Path(str(file)).stat()
            stamp.append([str(file), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns])
    return stamp


def sketch_key_file(name: str, node_config: dict[str, Any]) -> Path:
    """The consortium's sketch key: the node config's `sketch-key` (a deployment: it comes with
    the federation's set-up), else one shared by the simulated institutions of this machine."""
    if "sketch-key" in node_config:
        return _absolute_node_path(name, "sketch-key", node_config["sketch-key"])
    return homes_root().parent / "federation" / "sketch.key"


def resolve_institution(config: CampaignConfig, node_config: dict[str, Any], names: list[str] | None = None) -> str:
    """This node's institution: named in its node config, else its simulation partition.

    `names` fixes the partition order when the data differ between messages (monitoring
    windows need not all name every institution).
    """
    if "institution" in node_config:
        return str(node_config["institution"])
    names = names or institution_names(config.data)
    partition = int(node_config.get("partition-id", 0))
    if partition >= len(names):
        raise FedriskInputError(f"simulation partition {partition} has no institution ({len(names)} configured)")
    return names[partition]


def for_node(config: CampaignConfig, name: str, node_config: dict[str, Any]) -> CampaignConfig:
    """The campaign as this institution's node runs it. A deployed node's operator names, in
    its node config, the file of its own data (`data-path`); its home (`home`: policy, ledger)
    is read by `institution_home`. The campaign's config, written at the server, knows neither."""
    if "ledger-dir" in node_config:
        raise FedriskInputError("node config ledger-dir is no more: name the institution's home (policy and "
                                "ledger) with home=/absolute/folder", institution=name)
    if "data-path" not in node_config:
        return config
    raw = config.model_dump(mode="json")
    path = _absolute_node_path(name, "data-path", node_config["data-path"])
    if not path.is_file():
        raise FedriskInputError("node config data-path: no such file", institution=name, file=str(path))
    raw["data"].update(source="files", files={name: str(path)}, path=None, institution_column=None, partition=None)
    return config_from_json(json.dumps(raw))


def _plan_noise(plan: CampaignPlan) -> dict[str, float]:
    return {"statistics": plan.statistics, "shared_counts": plan.shared_counts, "dp_sgd": plan.dp_sgd,
            "sample_rate": plan.sample_rate, "steps_per_round": plan.steps_per_round, "validation": plan.validation,
            "test": plan.test, "partition_delta": plan.partition_delta, "epsilon": plan.epsilon}


def _plan_from(saved: dict[str, Any]) -> CampaignPlan:
    noise = saved["noise"]
    return CampaignPlan(noise["statistics"], noise["dp_sgd"], noise["sample_rate"], int(noise["steps_per_round"]),
                        noise["validation"], noise["test"], noise["partition_delta"],
                        tuple(Release.from_dict(r) for r in saved["releases"]), noise["epsilon"],
                        noise.get("shared_counts", 0.0))


def _absolute_node_path(name: str, key: str, value: Any) -> Path:
    path = Path(str(value))
    if not path.is_absolute():
        raise FedriskInputError(f"node config {key} must be an absolute path", institution=name, file=str(value))
    return path
