"""The consortium's shared terminal table: its features, its privacy claims and its campaign.

References are independent of `fedrisk.consortium_features`: a brute-force count per
transaction with pandas for the features, Opacus's RDP accountant for the table's epsilon.
Attacks play the server: it reads the released table, sends a second table, or asks a
deployed node to send its table in clear.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from conftest import own_homes
from flwr.app import Message, RecordDict
from local_grid import LocalGrid
from mlflow.tracking import MlflowClient
from opacus.accountants import RDPAccountant

from clients.client_app import app as client_app
from fedrisk import consortium_features as cf
from fedrisk import protocol, run_schema
from fedrisk.budget import shared_counts_releases
from fedrisk.config import config_to_json, load_config
from fedrisk.errors import FedriskInputError, PolicyRefused
from fedrisk.generators.fraud import generate_issuer
from fedrisk.launcher import campaign_outcome
from fedrisk.ledger import campaign_epsilon
from fedrisk.session import NodeSession
from fedrisk.splits import table_calendar
from server.campaign import run_campaign

KEY = bytes(range(32))
WINDOWS, DELAY = [1, 7, 30], 7
SMALL = {"task": "fraud", "institutions": 3, "rounds": 2, "data.synthetic.customers": 600,
         "data.synthetic.terminals": 400, "data.synthetic.days": 70, "training.batch_size": 128,
         "data.transactions.consortium_features": True, "data.transactions.sketch_width": 4096}


@pytest.fixture(autouse=True)
def _quiet_flower():
    logging.getLogger("flwr").setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def issuers() -> list[pd.DataFrame]:
    """Three issuers' transactions of one small world (terminals shared)."""
    frames = [generate_issuer(i, 3, customers=300, terminals=60, days=50, seed=5) for i in range(3)]
    for frame in frames:
        frame["day"] = frame.tx_datetime.to_numpy(dtype="datetime64[D]").astype(np.int64)
    return frames


def _brute_force(pooled: pd.DataFrame, rows: pd.DataFrame, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Consortium transactions and known frauds at each row's terminal on days [d - delay - w, d - delay - 1]."""
    counts, frauds = [], []
    for terminal, day in zip(rows.terminal_id, rows.day, strict=True):
        seen = pooled[(pooled.terminal_id == terminal) & (pooled.day >= day - DELAY - w) & (pooled.day <= day - DELAY - 1)]
        counts.append(len(seen))
        frauds.append(seen.tx_fraud.sum())
    return np.array(counts, float), np.array(frauds, float)


def test_summed_tables_give_the_consortium_wide_counts_when_no_terminals_collide(issuers):
    pooled = pd.concat(issuers, ignore_index=True)
    width = 1 << 16
    assert len(set(cf.buckets(pooled.terminal_id.unique(), KEY, width))) == pooled.terminal_id.nunique()  # no collision
    first, last = int(pooled.day.min()) + 40, int(pooled.day.max())
    cal = cf.calendar(first, last, WINDOWS, DELAY, 1)
    total = sum(cf.local_table(f.day.to_numpy(), cf.buckets(f.terminal_id, KEY, width), f.tx_fraud.to_numpy(), cal, width)
                for f in issuers)
    mine = issuers[2][issuers[2].day >= first].sample(120, random_state=0)  # the smallest issuer's rows
    features = cf.consortium_features(total, cal, mine.day.to_numpy(), cf.buckets(mine.terminal_id, KEY, width),
                                      WINDOWS, DELAY)
    for w in WINDOWS:
        counts, frauds = _brute_force(pooled, mine, w)
        np.testing.assert_array_equal(features[f"consortium_terminal_nb_tx_{w}d"], counts)
        np.testing.assert_allclose(features[f"consortium_terminal_risk_{w}d"], frauds / np.maximum(counts, 1))
    assert features["consortium_terminal_nb_tx_30d"].sum() > 0


def test_a_fraud_counts_only_from_the_day_after_it_is_known():
    cal = cf.calendar(100, 140, [7], DELAY, 1)
    table = cf.local_table(np.array([110]), np.array([3]), np.array([1]), cal, 8)
    days = np.array([110 + DELAY, 110 + DELAY + 1])
    risk = cf.consortium_features(table, cal, days, np.array([3, 3]), [7], DELAY)["consortium_terminal_risk_7d"]
    assert risk.tolist() == [0.0, 1.0]


def test_days_outside_the_look_back_are_never_sent(issuers):
    frame = issuers[0]
    cal = cf.calendar(int(frame.day.min()) + 40, int(frame.day.max()) - 3, WINDOWS, DELAY, 7)
    bucket = cf.buckets(frame.terminal_id, KEY, 64)
    inside = ((frame.day >= cal.first_day) & (frame.day <= cal.last_day)).to_numpy()
    assert 0 < inside.sum() < len(frame)
    full = cf.local_table(frame.day.to_numpy(), bucket, frame.tx_fraud.to_numpy(), cal, 64)
    kept = cf.local_table(frame.day.to_numpy()[inside], bucket[inside], frame.tx_fraud.to_numpy()[inside], cal, 64)
    np.testing.assert_array_equal(full, kept)
    assert full[..., 0].sum() == inside.sum()
    assert cal.last_day == int(frame.day.max()) - 3 - DELAY - 1  # ends on the newest day a fraud is known for


def test_one_transaction_moves_the_table_by_at_most_sqrt2_and_the_release_costs_one_gaussian():
    cal = cf.calendar(100, 140, WINDOWS, DELAY, 1)
    rng = np.random.default_rng(0)
    days, bucket, fraud = rng.integers(60, 140, 500), rng.integers(0, 32, 500), rng.random(500) < 0.3
    full = cf.local_table(days, bucket, fraud, cal, 32)
    for drop in range(0, 500, 37):
        keep = np.arange(500) != drop
        assert np.linalg.norm(full - cf.local_table(days[keep], bucket[keep], fraud[keep], cal, 32)) <= np.sqrt(2) + 1e-12
    noise, delta = 9.0, 1e-6  # the table's epsilon is that of one Gaussian of noise multiplier 9 / sqrt(2)
    accountant = RDPAccountant()
    accountant.history = [(noise / np.sqrt(2), 1.0, 1)]
    releases = shared_counts_releases(noise)
    assert campaign_epsilon(releases, delta) == pytest.approx(accountant.get_epsilon(delta), rel=0.02)
    assert {r.part for r in releases} == {"train", "validation", "test"}


def test_terminal_ids_are_hashed_with_the_consortiums_key():
    ids = pd.Series([17, 18, 19, 20] * 5)
    mine = cf.buckets(ids, KEY, 1 << 20)
    assert np.array_equal(mine, cf.buckets(ids.astype(str), KEY, 1 << 20))  # 17 and "17": one terminal everywhere
    guessed = cf.buckets(ids, bytes(32), 1 << 20)  # a server without the key cannot place a terminal id
    assert not np.array_equal(mine, guessed)


def test_the_key_comes_with_the_federation(tmp_path):
    with pytest.raises(FedriskInputError, match="sketch key"):
        cf.load_key(tmp_path / "missing.key")
    key = cf.load_key(tmp_path / "made.key", create=True)
    assert len(key) == 32 and (tmp_path / "made.key").stat().st_mode & 0o077 == 0
    (tmp_path / "short.key").write_text("abcd")
    with pytest.raises(FedriskInputError, match="16 or more bytes"):
        cf.load_key(tmp_path / "short.key")


def test_files_without_a_shared_calendar_are_refused_with_one_line(tmp_path):
    with pytest.raises(FedriskInputError, match="time_split.end"):
        load_config(None, {"task": "fraud", "data.source": "files", "data.files": {"a": "a.csv", "b": "b.csv"},
                           "data.transactions.consortium_features": True}, work_dir=tmp_path)
    with pytest.raises(FedriskInputError, match="shared_counts_share"):
        load_config(None, {**SMALL, "privacy.statistics_share": 0.5, "privacy.shared_counts_share": 0.5},
                    work_dir=tmp_path)


def test_the_table_is_the_same_shape_whatever_terminals_an_issuer_saw(tmp_path):
    config = load_config(None, SMALL, work_dir=tmp_path)
    cal = table_calendar(config.data)
    sessions = [NodeSession(f"inst0{i}", config, tmp_path / f"inst0{i}", sketch_key_file=tmp_path / "sketch.key")
                for i in (1, 3)]
    from fedrisk.institution import admit, terminal_counts

    tables = []
    for session in sessions:
        admit(session, "c1")
        tables.append(terminal_counts(session, "c1"))
    assert tables[0].shape == tables[1].shape == (cal.cells, 4096, 2)
    assert {r["mechanism"] for r in json.loads((tmp_path / "inst01" / "ledger.json").read_text())["charges"]} >= {
        "shared_counts"}


@pytest.fixture(scope="module")
def consortium_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("consortium")
    config = load_config(None, {**SMALL, "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
                                "audit.path": str(tmp / "audit.jsonl"), "gate.enabled": False}, work_dir=tmp)
    grid = LocalGrid.simulation(client_app, 3)
    with own_homes(tmp / "homes") as homes:
        run_campaign(grid, config, "consortium1")
    grid.home = str(homes)  # the institutions' homes the campaign ran with
    return config, campaign_outcome(config, "consortium1"), grid


def test_a_campaign_shares_the_table_and_spends_exactly_its_budget(consortium_run):
    config, outcome, grid = consortium_run
    assert outcome.status == "completed"
    run = MlflowClient(config.tracking.uri).get_run(outcome.run_id)
    metrics = run.data.metrics
    for name in ("inst01", "inst02", "inst03"):
        assert 0 < metrics[f"epsilon_shared_counts.{name}"] < metrics[f"epsilon_campaign.{name}"]
        assert metrics[f"epsilon_campaign.{name}"] == pytest.approx(config.privacy.target_epsilon, rel=0.01)
    cal = table_calendar(config.data)
    assert metrics[run_schema.SHARED_TABLE_MEGABYTES] == pytest.approx(2 * 2 * cal.cells * 4096 * 2 / 1e6)
    assert metrics[run_schema.SHARED_TABLE_NOISE] > 0
    statistics = [m for m in grid.delivered if m.metadata.message_type == protocol.STATISTICS]
    request = protocol.read_request(statistics[0])
    assert request.table is not None and request.table.shape == (cal.cells, 4096, 2)
    train = [m for m in grid.delivered if m.metadata.message_type == protocol.TRAIN]
    numeric = json.loads(protocol.read_request(train[0]).shared)["numeric"]
    assert set(cf.feature_names(WINDOWS)) <= set(numeric)


def test_terminal_ids_never_reach_the_server(consortium_run, tmp_path):
    """The server's view of an issuer's release: a noised table of buckets, no id, no exact count."""
    config, _, grid = consortium_run
    replies = [r for r in grid.answered if not r.has_error() and protocol.TABLE_RECORD in r.content]
    assert len(replies) == 3
    ids = {str(t) for i in range(3) for t in generate_issuer(i, 3, 600, 400, 70, config.seed).terminal_id.unique()[:50]}
    for reply in replies:
        record = reply.content[protocol.TABLE_RECORD]
        assert set(record.keys()) == {"table", "noise"}
        table, noise = protocol.read_terminals(reply)
        assert noise > 1.0 and not np.allclose(table, np.round(table))  # noised, never exact counts
        assert not any(i.encode() in record["table"] for i in ids if len(i) > 3)


def test_a_second_different_table_for_the_campaign_is_refused(consortium_run, monkeypatch):
    config, _, grid = consortium_run
    monkeypatch.setenv("FEDRISK_HOME", grid.home)
    statistics = next(m for m in grid.delivered if m.metadata.message_type == protocol.STATISTICS)
    request = protocol.read_request(statistics)
    forged = request.table.astype(float) * 0.0 + 50.0  # every terminal looks compromised
    record = protocol.request_config(request.campaign_config, "consortium1", bounds=request.bounds, table=forged)
    [reply] = grid.send_and_receive([Message(RecordDict({protocol.CONFIG: record}), dst_node_id=100,
                                             message_type=protocol.STATISTICS)])
    assert reply.has_error() and "second, different terminal table" in reply.error.reason


def test_a_deployed_node_sends_its_table_in_clear_only_if_its_policy_says_so(tmp_path):
    config = load_config(None, SMALL, work_dir=tmp_path)
    session = NodeSession("inst01", config, tmp_path / "inst01", sketch_key_file=tmp_path / "sketch.key",
                          deployed=True)
    cf.load_key(tmp_path / "sketch.key", create=True)  # the federation's set-up gave it
    from fedrisk.guard import update_policy
    from fedrisk.institution import admit, terminal_counts

    admit(session, "c1")
    with pytest.raises(PolicyRefused, match="shared_counts_in_clear"):
        terminal_counts(session, "c1")
    update_policy(tmp_path / "inst01", "inst01", {"release.shared_counts_in_clear": True})
    session.guard(protocol.TERMINALS)  # every message reads the policy afresh
    assert terminal_counts(session, "c1").shape[1:] == (4096, 2)


LENIENT = "name: lenient\ntask: fraud\nrules:\n  - {metric: auc, comparator: '>=', threshold: 0.5, severity: block}\n"


@pytest.mark.slow  # seconds of end-to-end work: the full suite runs it
def test_monitoring_windows_refresh_the_table_and_charge_it(tmp_path):
    """A model with consortium features is monitored on windows whose own tables are shared first."""
    from fedrisk.monitor_config import load_monitor_config
    from fedrisk.monitoring import plan_monitoring
    from server.monitor_app import run_monitoring

    (tmp_path / "lenient.yaml").write_text(LENIENT)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = load_config(None, {**SMALL, "tracking_uri": uri, "audit.path": str(tmp_path / "audit.jsonl"),
                                "gate.policy": str(tmp_path / "lenient.yaml")}, work_dir=tmp_path)
    run_campaign(LocalGrid.simulation(client_app, 3), config, "monitored1")
    outcome = campaign_outcome(config, "monitored1")
    version = outcome.tags[run_schema.GATE_MODEL_VERSION].split("/")[-1]
    monitor = load_monitor_config(None, {"tracking.uri": uri, "windows.synthetic.scenario": "none",
                                         "windows.synthetic.severities": [0.0, 0.0], "windows.days": 14},
                                  work_dir=tmp_path)
    plan = plan_monitoring(monitor, f"fedrisk-fraud/{version}")
    grid = LocalGrid.simulation(client_app, 3)
    run_monitoring(grid, plan)
    tables = [m for m in grid.delivered if m.metadata.message_type == protocol.TERMINALS]
    windows = [protocol.read_request(m) for m in grid.delivered if m.metadata.message_type == protocol.MONITOR]
    assert len(tables) == 6 and len(windows) == 6  # 3 institutions x 2 windows, a table before each window
    assert all(w.table is not None and w.table.shape[1:] == (4096, 2) for w in windows)
    from fedrisk.guard import homes_root

    charges = json.loads((homes_root() / "inst01" / "ledger.json").read_text())["charges"]
    shared = {c["part"] for c in charges if c["mechanism"] == "shared_counts" and c["campaign"] != "monitored1"}
    assert shared == {"window:1", "window:2"}
    # the attack: window 1's rows asked again as window 2's table (two parts, one set of rows)
    first = next(m for m in tables if protocol.read_request(m).window == 1)
    record = first.content[protocol.CONFIG]
    record[protocol.WINDOW] = 2
    [reply] = grid.send_and_receive([Message(RecordDict({protocol.CONFIG: record}),
                                             dst_node_id=first.metadata.dst_node_id, message_type=protocol.TERMINALS)])
    assert reply.has_error() and "shares rows with window 1" in reply.error.reason
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fedrisk-monitoring").experiment_id]
                              if client.get_experiment_by_name("fedrisk-monitoring") else [])
    assert runs and runs[0].data.tags[run_schema.STATUS] == "completed"


def test_under_secure_aggregation_the_server_gets_only_the_sum(tmp_path):
    """Deployed nodes (each names its institution, home and sketch key, and sends its table only
    under SecAgg+), DP off (each policy allows it): the table the issuers receive is the exact sum
    of their tables, and no issuer's reply carries its own table."""
    from conftest import write_policies

    from fedrisk.data import load_institution
    from fedrisk.guard import homes_root
    from fedrisk.sources import institution_names

    config = load_config(None, {**SMALL, "privacy.enabled": False, "secure_aggregation.enabled": True,
                                "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "gate.enabled": False,
                                "audit.path": str(tmp_path / "audit.jsonl")}, work_dir=tmp_path)
    names = institution_names(config.data)
    write_policies(names, **{"privacy.require_dp": False})  # shared_counts_in_clear stays false
    key = tmp_path / "sketch.key"
    cf.load_key(key, create=True)
    grid = LocalGrid(client_app, [{"institution": n, "home": str(homes_root() / n), "sketch-key": str(key)}
                                  for n in names])
    run_campaign(grid, config, "secure1")
    assert campaign_outcome(config, "secure1").status == "completed"
    cal = table_calendar(config.data)
    exact = 0
    for name in names:
        frame = load_institution(config.data, name, config.seed, sketch_key=cf.load_key(key)).frame
        exact = exact + cf.local_table(frame["_day"].to_numpy(), frame["_terminal_bucket"].to_numpy(),
                                       frame["tx_fraud"].to_numpy(), cal, 4096)
    statistics = next(m for m in grid.delivered if m.metadata.message_type == protocol.STATISTICS)
    received = protocol.read_request(statistics).table
    np.testing.assert_allclose(received, exact, atol=0.01)  # float16 on the way down: counts < 2048 exact
    assert exact.sum() > 1000
    tables = [r for r in grid.answered if not r.has_error() and protocol.TABLE_RECORD in r.content]
    assert tables == []  # no plain table reply: the masked vectors went through SecAgg+'s stages
    rounds = [m for m in grid.delivered if protocol.is_table_round(m)]
    assert len(rounds) >= 3


def test_a_table_round_without_secagg_is_refused_by_a_deployed_node(tmp_path):
    """The attack: the coordinator flags a plain train message as the table round, hoping the node
    believes SecAgg+ masks its reply. The flag the node trusts is in its own state, set by the mod."""
    key = tmp_path / "sketch.key"
    cf.load_key(key, create=True)
    config = load_config(None, SMALL, work_dir=tmp_path)
    node = {"institution": "inst01", "home": str(tmp_path / "inst01"), "sketch-key": str(key)}
    grid = LocalGrid(client_app, [node])
    record = protocol.request_config(config_to_json(config), "plain1")
    [admitted] = grid.send_and_receive([Message(RecordDict({protocol.CONFIG: record}), dst_node_id=100,
                                                message_type=protocol.BOUNDS)])
    assert not admitted.has_error()
    [reply] = grid.send_and_receive([protocol.table_round_request(
        protocol.request_config(config_to_json(config), "plain1"), 100)])
    assert reply.has_error() and "only under secure aggregation" in reply.error.reason


def _secagg_stage(configs: dict) -> Message:
    from flwr.app import ConfigRecord
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    return Message(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(configs)}), dst_node_id=100,
                   message_type=protocol.TRAIN)


@pytest.mark.parametrize("configs, why", [
    ({"stage": "setup", "sample_num": 1, "share_num": 1, "threshold": 1, "clipping_range": 32.0,
      "target_range": 4194304, "mod_range": 1 << 32, "max_weight": 1.0}, "round of 1 institutions"),
    ({"stage": "setup", "sample_num": 5, "share_num": 4, "threshold": 2, "clipping_range": 32.0,
      "target_range": 4194304, "mod_range": 1 << 32, "max_weight": 1.0}, "threshold above half"),
    ({"stage": "unmask", "active_nids": [101, 102], "dead_nids": [102]}, "both alive and dead"),
])
def test_a_server_cannot_run_secagg_so_that_it_unmasks_one_institution(tmp_path, configs, why):
    """The attack of the review: a hostile coordinator runs SecAgg+ with one participant (it then
    holds the only share of the mask), or asks for a node's mask and secret key at once."""
    grid = LocalGrid(client_app, [{"institution": "inst01", "home": str(tmp_path / "inst01")}])
    [reply] = grid.send_and_receive([_secagg_stage(configs)])
    assert reply.has_error() and why in reply.error.reason


def test_a_deployed_node_sends_no_monitoring_table_in_clear(tmp_path):
    from fedrisk.institution import window_terminal_counts

    config = load_config(None, SMALL, work_dir=tmp_path)
    session = NodeSession("inst01", config, tmp_path / "inst01", sketch_key_file=tmp_path / "sketch.key",
                          deployed=True)
    with pytest.raises(PolicyRefused, match="only under secure aggregation"):  # a deployed node, in clear
        window_terminal_counts(session, "{}", "run1", {}, np.array([0.0, 1.0]), 14, 1, 2)


def test_a_window_of_a_campaign_with_an_end_date_has_its_own_calendar(tmp_path):
    from fedrisk.monitor_config import load_monitor_config
    from fedrisk.monitoring import window_config
    from fedrisk.splits import window_calendar

    training = load_config(None, {**SMALL, "data.time_split.end": "2026-03-10"}, work_dir=tmp_path)
    monitor = load_monitor_config(None, {"windows.synthetic.scenario": "none", "windows.days": 14},
                                  work_dir=tmp_path)
    window = window_config(training, monitor, 1)
    frame = generate_issuer(0, 3, 600, 400, window.data.synthetic.days, 42, stream=2,
                            start_day=window.data.synthetic.drift.start_day)
    last = int(frame.tx_datetime.max().to_datetime64().astype("datetime64[D]").astype(np.int64))
    assert window_calendar(window.data, 14).last_day == last - DELAY - 1


@pytest.mark.parametrize("table", [np.array([["a"]]), b"not an array", np.zeros((2, 2))])
def test_a_hostile_table_is_refused_in_one_line(tmp_path, table):
    config = load_config(None, SMALL, work_dir=tmp_path)
    record = protocol.request_config(config_to_json(config), "c1")
    record[protocol.TABLE] = table if isinstance(table, bytes) else protocol.pack(table)
    grid = LocalGrid.simulation(client_app, 1)
    [reply] = grid.send_and_receive([Message(RecordDict({protocol.CONFIG: record}), dst_node_id=100,
                                             message_type=protocol.STATISTICS)])
    assert reply.has_error() and reply.error.code == protocol.INPUT_ERROR
    assert "terminal table is not an array of numbers of the expected shape" in reply.error.reason


def test_a_table_for_a_campaign_not_admitted_is_neither_used_nor_kept(tmp_path):
    from fedrisk.guard import homes_root

    config = load_config(None, SMALL, work_dir=tmp_path)
    cal = table_calendar(config.data)
    record = protocol.request_config(config_to_json(config), "never-admitted", table=np.ones((cal.cells, 4096, 2)))
    grid = LocalGrid.simulation(client_app, 1)
    [reply] = grid.send_and_receive([Message(RecordDict({protocol.CONFIG: record}), dst_node_id=100,
                                             message_type=protocol.STATISTICS)])
    assert reply.has_error() and "not admitted" in reply.error.reason
    assert not list(homes_root().glob("*/shared_tables/*"))
    [reply] = grid.send_and_receive([Message(RecordDict(), dst_node_id=100, message_type=protocol.TERMINALS)])
    assert reply.has_error() and reply.error.code == protocol.INPUT_ERROR  # one line, not a crash


def test_a_busy_cell_travels_as_float32_not_as_infinity():
    table = np.zeros((2, 4, 2))
    table[0, 1, 0] = 70_000.0
    assert protocol.wire_table(table).dtype == np.float32 and protocol.wire_table(table)[0, 1, 0] == 70_000.0
    assert protocol.wire_table(np.ones((2, 4, 2))).dtype == np.float16


def test_an_issuer_whose_frauds_are_known_later_than_the_campaign_assumes_sits_out(tmp_path):
    """Its newest fraud counts would be incomplete in the shared table (and its labels wrong)."""
    from fedrisk.guard import update_policy

    config = load_config(None, SMALL, work_dir=tmp_path)
    update_policy(tmp_path / "inst01", "inst01", {"label_delay_days": 14})
    session = NodeSession("inst01", config, tmp_path / "inst01", sketch_key_file=tmp_path / "sketch.key")
    with pytest.raises(PolicyRefused) as refused:
        session.guard(protocol.BOUNDS)
    assert refused.value.one_line() == ("institution inst01: refused by its policy (label_delay_days): the campaign's "
                                        "data.transactions.delay_days 7 is shorter than its label delay 14: its "
                                        "newest frauds are not known yet")
    update_policy(tmp_path / "inst01", "inst01", {"label_delay_days": 7})
    session.guard(protocol.BOUNDS)


def test_an_issuer_without_terminal_ids_is_refused_in_one_line(tmp_path):
    frame = generate_issuer(0, 3, 600, 400, 70, 42).drop(columns="terminal_id")
    frame.to_csv(tmp_path / "bank.csv", index=False)
    config = load_config(None, {**SMALL, "data.source": "files", "data.files": {"bank": str(tmp_path / "bank.csv"),
                                                                              "other": str(tmp_path / "bank.csv")},
                                "data.time_split.end": "2026-03-10"}, work_dir=tmp_path)
    from fedrisk.data import load_institution

    with pytest.raises(FedriskInputError) as missing:
        load_institution(config.data, "bank", config.seed, sketch_key=KEY)
    assert missing.value.one_line() == (f"institution bank, file {tmp_path / 'bank.csv'}, column 'terminal_id': "
                                        "terminal id column missing")
