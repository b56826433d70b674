"""One institution's state for one campaign on its node, built once and reused by every message.

The campaign config is parsed once, the node's own settings (its file, its ledger) are
applied once, the data are loaded and split once, and the preprocessed matrices are cached
per shared preprocessing. A ClientApp process keeps the last few sessions, so a round costs
no parsing and no reloading.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedrisk.config import CampaignConfig, config_from_json
from fedrisk.data import InstitutionData, load_institution
from fedrisk.errors import FedriskInputError
from fedrisk.preprocessing import Preprocessor
from fedrisk.sources import institution_names
from fedrisk.splits import Split, split_institution

MAX_SESSIONS = 8  # a campaign, and a monitoring run's windows


@dataclass
class NodeSession:
    """What one node knows of one campaign: the typed config and this institution's rows."""

    name: str
    config: CampaignConfig
    _data: tuple[InstitutionData, Split] | None = None
    _preprocessors: dict[str, Preprocessor] = field(default_factory=dict)
    _matrices: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def _loaded(self) -> tuple[InstitutionData, Split]:
        if self._data is None:
            data = load_institution(self.config.data, self.name, self.config.seed)
            self._data = (data, split_institution(data, self.config.data, self.config.seed))
        return self._data

    @property
    def data(self) -> InstitutionData:
        return self._loaded()[0]

    @property
    def split(self) -> Split:
        return self._loaded()[1]

    def preprocessor(self, text: str) -> Preprocessor:
        if text not in self._preprocessors:
            self._preprocessors[text] = Preprocessor.from_json(text)
        return self._preprocessors[text]

    def matrices(self, preprocessor: str, part: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) of one split under the shared preprocessing, computed once."""
        key = (preprocessor, part)
        if key not in self._matrices:
            frame = getattr(self.split, part)
            x = self.preprocessor(preprocessor).transform(frame)
            y = frame[self.data.columns.target].to_numpy(dtype=np.float32)
            self._matrices[key] = (x, y)
        return self._matrices[key]


_SESSIONS: OrderedDict[str, NodeSession] = OrderedDict()


def open_session(config_json: str, node_config: dict[str, Any], names: list[str] | None = None) -> NodeSession:
    """This node's session for a campaign config, from the cache or new."""
    key = hashlib.sha256(json.dumps([config_json, sorted(node_config.items()), names], default=str)
                         .encode()).hexdigest()
    if key in _SESSIONS:
        _SESSIONS.move_to_end(key)
        return _SESSIONS[key]
    config = config_from_json(config_json)
    name = resolve_institution(config, node_config, names)
    session = NodeSession(name, for_node(config, name, node_config))
    _SESSIONS[key] = session
    while len(_SESSIONS) > MAX_SESSIONS:
        _SESSIONS.popitem(last=False)
    return session


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
    its node config, the file of its own data (`data-path`) and its privacy ledger
    (`ledger-dir`): the campaign's config, written at the server, cannot know them."""
    if "data-path" not in node_config and "ledger-dir" not in node_config:
        return config
    raw = config.model_dump(mode="json")
    if "data-path" in node_config:
        path = _absolute_node_path(name, "data-path", node_config["data-path"])
        if not path.is_file():
            raise FedriskInputError("node config data-path: no such file", institution=name, file=str(path))
        raw["data"].update(source="files", files={name: str(path)}, path=None, institution_column=None,
                           partition=None)
    if "ledger-dir" in node_config:
        raw["privacy"]["ledger_dir"] = str(_absolute_node_path(name, "ledger-dir", node_config["ledger-dir"]))
    return config_from_json(json.dumps(raw))


def _absolute_node_path(name: str, key: str, value: Any) -> Path:
    path = Path(str(value))
    if not path.is_absolute():
        raise FedriskInputError(f"node config {key} must be an absolute path", institution=name, file=str(value))
    return path
