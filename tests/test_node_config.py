"""A deployed SuperNode's own settings: its data file and its privacy ledger."""

from __future__ import annotations

import pytest

from fedrisk.config import config_to_json, load_config
from fedrisk.errors import FedriskInputError
from fedrisk.generators.credit import generate_institution
from fedrisk.institution import admit
from fedrisk.session import open_session


def test_data_path_replaces_the_campaigns_layout_with_the_nodes_file(tmp_path):
    frame = generate_institution(1, 3, 6000, 42)
    frame.to_csv(tmp_path / "mine.csv", index=False)
    campaign = config_to_json(load_config(None, {"institutions": 3}, work_dir=tmp_path))
    session = open_session(campaign, {"institution": "inst02", "data-path": str(tmp_path / "mine.csv"),
                                      "home": str(tmp_path / "home")})
    assert session.name == "inst02"
    assert session.config.data.source == "files"
    assert session.config.data.files == {"inst02": str(tmp_path / "mine.csv")}
    assert session.home == tmp_path / "home"
    stats = admit(session, "c1")
    assert (tmp_path / "home" / "policy.yaml").is_file() and (tmp_path / "home" / "ledger.json").is_file()
    noise = stats["noise"]["statistics"]  # the rows leave noised: within 5 standard deviations
    assert abs(stats["data"]["quality"]["rows"] - len(frame)) < 5 * noise and stats["data"]["quality"]["noise"] == noise
    assert stats["data"]["source"] == str(tmp_path / "mine.csv")


@pytest.mark.parametrize("node, message", [
    ({"data-path": "relative.csv"}, "institution inst01, file relative.csv: node config data-path must be an absolute"),
    ({"data-path": "/no/such/file.csv"}, "institution inst01, file /no/such/file.csv: node config data-path: no such"),
    ({"home": "home"}, "institution inst01, file home: node config home must be an absolute"),
    ({"ledger-dir": "/abs/ledger"}, "institution inst01: node config ledger-dir is no more"),
])
def test_bad_node_settings_fail_in_one_line_naming_institution_and_file(tmp_path, node, message):
    campaign = config_to_json(load_config(None, {"institutions": 3}, work_dir=tmp_path))
    with pytest.raises(FedriskInputError) as err:
        open_session(campaign, {"institution": "inst01", **node})
    assert err.value.one_line().startswith(message)
