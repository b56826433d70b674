"""Finding 4 of issue 14, replayed: the campaign config is a request, never an order.

One institution's own policy refuses what the campaign asks; it answers the first message with
one line naming the rule, before reading any data, and spends nothing; the others go on.
Driven through the real ClientApp handlers here; the slow tests repeat one case on Flower's
simulation engine and on real SuperLink/SuperNode processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_policies
from local_grid import LocalGrid

from clients.client_app import app as client_app
from fedrisk import protocol, run_schema
from fedrisk.config import config_to_json, load_config
from fedrisk.errors import FedriskInputError
from fedrisk.guard import homes_root
from fedrisk.launcher import campaign_outcome
from server.campaign import run_campaign

OTHERS, REFUSER = ["inst01", "inst03"], "inst02"
CASES = {  # what inst02's policy says, what the others' say, what the campaign asks, the rule named
    "dp off": ({}, {"privacy.require_dp": False}, {"privacy.enabled": False}, "privacy.require_dp"),
    "epsilon": ({"privacy.max_campaign_epsilon": 1.0}, {}, {"privacy.target_epsilon": 2.0},
                "privacy.max_campaign_epsilon"),
    "delta": ({"privacy.delta": 1e-5}, {}, {"privacy.delta": 1e-6}, "privacy.delta"),
    "bins": ({}, {"release.max_bins": 1000}, {"evaluation.bins": 400}, "release.max_bins"),
    "column": ({"never_use": ["income"]}, {}, {"data.features": ["age", "income", "debt_to_income", "loan_amount",
                                                                 "loan_purpose"]},
               "never_use"),
    "message type": ({"messages": ["query.bounds", "query.statistics", "train", "evaluate", "query.reference"]}, {},
                     {"evaluation.importance": True}, "messages"),
    "statistics share": ({"privacy.statistics_share": [0.1, 0.2]}, {}, {"privacy.statistics_share": 0.3},
                         "privacy.statistics_share"),
}


# 3,000 applicants an institution: at 2,000 (6,000 rows) an institution's six loan purposes sat near the
# partition-selection threshold, and once every one of them stayed below it at both that answered
def _config(tmp_path: Path, **extra):
    return load_config(None, {"institutions": 3, "rounds": 1, "data.synthetic.rows": 9000, "training.batch_size": 128,
                              "training.min_institutions": 2, "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                              "audit.path": str(tmp_path / "audit.jsonl"), **extra}, work_dir=tmp_path)


@pytest.mark.slow  # a whole in-process campaign per refusal (~3.5 s each): the full suite runs them
@pytest.mark.parametrize("case", list(CASES))
def test_an_institution_refuses_what_its_policy_forbids_and_the_others_go_on(tmp_path, case):
    refuser, others, asked, rule = CASES[case]
    write_policies([REFUSER], **refuser)
    write_policies(OTHERS, **others)
    config = _config(tmp_path, **asked)
    run_campaign(LocalGrid.simulation(client_app, 3), config, "asked")
    outcome = campaign_outcome(config, "asked")
    assert outcome.status == "completed"
    excluded = outcome.tags[run_schema.EXCLUDED]
    assert f"institution {REFUSER}: refused by its policy ({rule})" in excluded and "inst01" not in excluded
    assert "\n" not in excluded
    assert not (homes_root() / REFUSER / "ledger.json").exists()  # refused before anything was read or spent
    for name in OTHERS:
        assert (homes_root() / name / "ledger.json").exists()
    events = [json.loads(line) for line in Path(config.audit.path).read_text().splitlines()]
    assert any(e["event"] == "institution_excluded" and e["details"]["institution"] == REFUSER
               and e["details"]["kind"] == "policy" for e in events)


def test_a_hostile_server_cannot_send_a_finer_grid_than_its_config_says(tmp_path):
    """The config asks 50 bins; the request carries a 1,000-bin grid: refused by what it carries."""
    from flwr.app import Message, RecordDict

    from fedrisk.metrics import logit_edges

    config = _config(tmp_path)
    grid = LocalGrid.simulation(client_app, 3)
    request = protocol.request_config(config_to_json(config), "hostile", grid=logit_edges(1000))
    msg = Message(RecordDict({protocol.CONFIG: request}), dst_node_id=100, message_type=protocol.BOUNDS)
    reply = grid.send_and_receive([msg])[0]
    assert reply.has_error() and "refused by its policy (release.max_bins)" in reply.error.reason
    assert "has 1000 bins" in reply.error.reason
    assert not (homes_root() / "inst01" / "ledger.json").exists()


def test_a_campaign_every_institution_refuses_stops_with_their_reasons(tmp_path):
    config = _config(tmp_path, **{"privacy.enabled": False})
    with pytest.raises(FedriskInputError, match=r"minimum is 2.*refused by its policy \(privacy.require_dp\)"):
        run_campaign(LocalGrid.simulation(client_app, 3), config, "all-refuse")
