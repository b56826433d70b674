"""A hostile institution: each drill's attack as its node really sends it, and what the server's
screening does with it (bounded, capped, flagged, excluded, recorded).

Campaigns run on `LocalGrid` (real Flower messages through the real ClientApp, no Ray), so they
sit in the fast tier; `experiments/robustness.py` measures the same drills at 10 institutions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from local_grid import LocalGrid
from mlflow.tracking import MlflowClient

from clients.client_app import app as client_app
from fedrisk import protocol, run_schema
from fedrisk.config import Robust, config_to_json, load_config
from fedrisk.errors import FedriskInputError
from fedrisk.launcher import campaign_outcome
from server import robust
from server.campaign import run_campaign

SMALL = {"institutions": 3, "rounds": 3, "data.synthetic.rows": 9000, "training.batch_size": 128,
         "gate.enabled": False}  # the gate runs where its report is read


@pytest.fixture(autouse=True)
def _quiet_flower():
    logging.getLogger("flwr").setLevel(logging.WARNING)


def _config(tmp_path: Path, **extra):
    overrides = {**SMALL, "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "audit.path": str(tmp_path / "audit.jsonl"),
                 **extra}
    return load_config(None, overrides, work_dir=tmp_path)


def _events(config, event: str) -> list[dict]:
    entries = [json.loads(line) for line in Path(config.audit.path).read_text().splitlines()]
    return [e["details"] for e in entries if e["event"] == event]


def _history(config, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(MlflowClient(config.tracking.uri).get_metric_history(run_id, key), key=lambda m: m.step)]


# The screening functions, on updates whose answer is known.

def test_an_update_longer_than_the_bound_is_scaled_to_it_and_flagged():
    sent = np.zeros(4)
    updates = {"a": np.array([1.0, 0, 0, 0]), "b": np.array([0, 2.0, 0, 0]), "d": np.array([0, 0, 0, -2.0]),
               "c": np.array([0, 0, 30.0, 0])}
    screening, deltas = robust.measure(sent, updates, Robust(norm_bound=3.0, flag_norm=5.0))
    assert screening.norm_ratio == pytest.approx({"a": 0.5, "b": 1.0, "d": 1.0, "c": 15.0})  # against the others
    assert np.linalg.norm(deltas["c"]) == pytest.approx(3 * 2.0)  # 3x the others' median norm, 2
    assert deltas["c"] @ updates["c"] > 0 and screening.bounded == pytest.approx({"c": 0.2})
    assert list(screening.flags) == ["c"] and "15.0x" in screening.flags["c"]
    np.testing.assert_array_equal(deltas["a"], updates["a"])  # the others pass as sent
    _, unbounded = robust.measure(sent, updates, Robust(norm_bound=None))
    np.testing.assert_array_equal(unbounded["c"], updates["c"])


def test_with_two_institutions_the_long_one_is_bounded_against_the_other():
    """A median including the attacker would be its own half: x100 would show as 2x, unbounded."""
    updates = {"honest": np.array([1.0, 0.0]), "hostile": np.array([0.0, 100.0])}
    screening, deltas = robust.measure(np.zeros(2), updates, Robust(norm_bound=3.0))
    assert screening.norm_ratio["hostile"] == pytest.approx(100.0) and list(screening.flags) == ["hostile"]
    assert np.linalg.norm(deltas["hostile"]) == pytest.approx(3.0)
    directions = robust.Screening()
    robust.judge_direction(directions, {"a": np.array([1.0, 0]), "b": np.array([-1.0, 0])}, Robust())
    assert not directions.flags  # two disagreeing updates: nothing says which is hostile


def test_an_update_pointing_away_from_the_others_is_flagged_even_when_it_dominates():
    rng = np.random.default_rng(0)
    honest = np.array([1.0, 1.0, 0.0, 0.0])
    deltas = {n: honest + rng.normal(0, 0.2, 4) for n in "abcd"}
    deltas["e"] = -10 * honest  # would dominate a mean, and agree with it
    screening = robust.Screening()
    robust.judge_direction(screening, deltas, settings=Robust(flag_cosine=0.0))
    assert screening.cosine["e"] == pytest.approx(-1.0, abs=0.05) and min(screening.cosine[n] for n in "abcd") > 0.8
    assert list(screening.flags) == ["e"]


def test_the_others_median_equals_numpys_median_without_the_row():
    rng = np.random.default_rng(2)
    for n in (2, 3, 4, 7, 10):
        stack = rng.normal(size=(n, 6)).round(1)  # ties too
        expected = np.stack([np.median(np.delete(stack, i, axis=0), axis=0) for i in range(n)])
        np.testing.assert_allclose(robust.others_median(stack), expected)


def test_noise_alone_excludes_nobody_though_many_cosines_are_negative():
    """Late rounds: every update mostly DP noise, honest institutions of unequal size (the
    smallest with the least signal). The sign alone would accuse them at random; the outlier
    rule flags about 1 % of honest updates a round, so 3 rounds in a row (p ~ 1e-6) never."""
    rng = np.random.default_rng(1)
    signal = rng.normal(0, 1, 500)
    strength = np.linspace(0.3, 0.05, 10)  # the largest institution first
    negatives = flagged = 0
    streaks: dict[str, int] = {}
    longest = 0
    for _ in range(300):
        deltas = {str(i): s * signal + rng.normal(0, 1, 500) for i, s in enumerate(strength)}
        screening = robust.Screening()
        robust.judge_direction(screening, deltas, settings=Robust(flag_cosine=0.0))
        negatives += sum(c < 0 for c in screening.cosine.values())
        flagged += len(screening.flags)
        streaks = robust.flagged_in_a_row(streaks, screening, list(deltas))
        longest = max(longest, *streaks.values())
    assert negatives > 200 and flagged / 3000 < 0.03 and longest < 3


def test_flags_count_rounds_in_a_row_and_a_clean_round_resets():
    streaks: dict[str, int] = {}
    for flagged, expected in [({"a", "b"}, {"a": 1, "b": 1, "c": 0}), ({"a"}, {"a": 2, "b": 0, "c": 0}),
                              ({"a", "b"}, {"a": 3, "b": 1, "c": 0})]:
        streaks = robust.flagged_in_a_row(streaks, robust.Screening(flags={n: "x" for n in flagged}), ["a", "b", "c"])
        assert streaks == expected
    assert robust.flagged_in_a_row({"a": 2}, robust.Screening(), ["b"]) == {"a": 2, "b": 0}  # a round sat out keeps


def test_flat_and_unflat_keep_keys_shapes_and_dtypes():
    record = ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3)), "b": Array(np.ones(2, np.float32))})
    vector = robust.flat(record)
    assert vector.shape == (8,) and vector.dtype == np.float64
    back = robust.unflat(vector * 2, record)
    assert list(back.keys()) == ["w", "b"] and back["w"].numpy().dtype == np.float32
    np.testing.assert_array_equal(back["w"].numpy(), np.arange(6).reshape(2, 3) * 2)


# Combinations that cannot work are refused in one line.

@pytest.mark.parametrize("overrides, says", [
    ({"training.strategy": "fedmedian", "secure_aggregation.enabled": True}, "secure aggregation hides"),
    ({"training.robust.norm_bound": 2.0, "secure_aggregation.enabled": True}, "training.robust bounds and flags"),
    ({"training.strategy": "fedtrimmedavg", "privacy.institution_level.enabled": True}, "not a mean"),
    ({"training.strategy": "bulyan"}, "min_institutions >= 7"),
    ({"training.strategy": "krum", "training.robust.byzantine": 2}, "min_institutions >= 7"),
    ({"training.strategy": "fedmedian"}, "fedmedian needs training.min_institutions >= 3"),
    ({"drill": {"institution": "inst01", "attack": "group_relabel", "group": "sex"}}, "ATTRIBUTE=VALUE"),
    ({"drill": {"institution": "inst01", "attack": "poison"}}, "drill.attack"),
])
def test_impossible_combinations_are_refused(overrides, says):
    with pytest.raises(FedriskInputError, match=says):
        load_config(None, overrides)


def test_secure_aggregation_with_the_default_screening_says_it_is_not_screened():
    config = load_config(None, {"secure_aggregation.enabled": True})
    assert "not screened" in robust.describe(config)


# Drills through the real ClientApp and the real server.

def test_a_scaled_update_is_bounded_flagged_and_its_institution_excluded(tmp_path):
    config = _config(tmp_path, **{"drill": {"institution": "inst02", "attack": "scale", "factor": 10.0},
                                  "training.robust.flag_rounds": 2, "gate.enabled": True})
    run_campaign(LocalGrid.simulation(client_app, 3), config, "scale")
    outcome = campaign_outcome(config, "scale")
    assert outcome.status == "completed" and outcome.tags[run_schema.DRILL] == "inst02: scale x10"
    ratios = _history(config, outcome.run_id, run_schema.at(run_schema.UPDATE_NORM_RATIO, "inst02"))
    assert len(ratios) == 2 and min(ratios) > 5  # flagged in rounds 1 and 2, then excluded
    assert max(_history(config, outcome.run_id, run_schema.at(run_schema.UPDATE_NORM_RATIO, "inst01"))) < 3
    assert _history(config, outcome.run_id, run_schema.UPDATES_BOUNDED)[:2] == [1.0, 1.0]
    flagged = _events(config, "update_flagged")
    assert [(f["institution"], f["round"]) for f in flagged] == [("inst02", 1), ("inst02", 2)]
    excluded = [e for e in _events(config, "institution_excluded") if e["kind"] == "robust"]
    assert [(e["institution"], e["round"]) for e in excluded] == [("inst02", 2)]
    assert "inst02: update flagged 2 rounds in a row" in outcome.tags[run_schema.EXCLUDED]
    assert _history(config, outcome.run_id, run_schema.INSTITUTIONS_TRAINED) == [3.0, 3.0, 2.0]
    report = Path(MlflowClient(config.tracking.uri).download_artifacts(
        outcome.run_id, run_schema.GATE_REPORT_ARTIFACT, str(tmp_path))).read_text()  # the validator sees who and why
    assert "poisoning drill" in report and "inst02: update flagged 2 rounds in a row" in report


def test_without_a_bound_the_same_attack_reaches_the_model(tmp_path):
    """The bound is what keeps the scaled update out: off, the first aggregate moves ~4x as far."""
    moved = {}
    for bound in (3.0, None):
        config = _config(tmp_path / str(bound), rounds=1, **{
            "drill": {"institution": "inst02", "attack": "scale", "factor": 10.0},
            "training.robust.norm_bound": bound})
        grid = LocalGrid.simulation(client_app, 3)
        run_campaign(grid, config, "bound")
        first = [m for m in grid.delivered if m.metadata.message_type == "train"][0]
        final = [m for m in grid.delivered if m.metadata.message_type == "evaluate"][-1]
        moved[bound] = np.linalg.norm(robust.flat(final.content[protocol.ARRAYS]) - robust.flat(first.content[protocol.ARRAYS]))
    assert moved[None] > 2 * moved[3.0]


def test_an_inflated_example_count_is_capped_at_the_admitted_rows(tmp_path):
    config = _config(tmp_path, rounds=1, **{"drill": {"institution": "inst03", "attack": "inflate_count",
                                                      "factor": 1000.0}})
    run_campaign(LocalGrid.simulation(client_app, 3), config, "count")
    outcome = campaign_outcome(config, "count")
    capped = _events(config, "update_weight_capped")
    assert [c["institution"] for c in capped] == ["inst03"]
    admitted = _history(config, outcome.run_id, run_schema.at("rows_train", "inst03"))[0]
    assert capped[0]["cap"] == pytest.approx(admitted) and capped[0]["claimed"] == pytest.approx(1000 * admitted)


def test_nan_weights_exclude_the_institution_in_the_round_they_come(tmp_path):
    config = _config(tmp_path, rounds=2, **{"drill": {"institution": "inst01", "attack": "nan"}})
    run_campaign(LocalGrid.simulation(client_app, 3), config, "nan")
    outcome = campaign_outcome(config, "nan")
    assert outcome.status == "completed"
    excluded = [e for e in _events(config, "institution_excluded") if e["kind"] == "robust"]
    assert [(e["institution"], e["round"]) for e in excluded] == [("inst01", 1)]
    assert "non-finite" in excluded[0]["reason"]
    assert np.isfinite(outcome.metrics["test_auc"])


def test_label_attacks_change_what_the_attacker_trains_on(tmp_path):
    """Flipped labels and a relabelled group are what the attacker's DP-SGD sees: its update
    then points away from the honest ones (measured by the server)."""
    from fedrisk import drill

    config = _config(tmp_path, **{"drill": {"institution": "inst01", "attack": "group_relabel", "group": "sex=F"}})
    frame = __import__("pandas").DataFrame({"sex": ["F", "M", "F", "other"]})
    y = np.array([0, 0, 1, 1], dtype=np.float32)
    np.testing.assert_array_equal(drill.labels(config.drill, y, frame, "inst01"), [1, 0, 1, 1])
    flip = load_config(None, {"drill": {"institution": "inst01", "attack": "label_flip"}}).drill
    np.testing.assert_array_equal(drill.labels(flip, y, frame, "inst01"), [1, 1, 0, 0])
    missing = load_config(None, {"drill": {"institution": "inst01", "attack": "group_relabel", "group": "gender=F"}}).drill
    with pytest.raises(FedriskInputError, match="institution inst01, column 'gender'"):
        drill.labels(missing, y, frame, "inst01")
    config = _config(tmp_path, rounds=2, **{"drill": {"institution": "inst01", "attack": "label_flip"}})
    run_campaign(LocalGrid.simulation(client_app, 3), config, "flip")
    outcome = campaign_outcome(config, "flip")
    cosines = _history(config, outcome.run_id, run_schema.at(run_schema.UPDATE_COSINE, "inst01"))
    honest = _history(config, outcome.run_id, run_schema.at(run_schema.UPDATE_COSINE, "inst02"))
    assert max(cosines) < min(honest)


def test_a_look_alike_drill_name_is_refused_before_any_budget_is_spent(tmp_path):
    from fedrisk.guard import homes_root
    from fedrisk.launcher import preflight

    config = _config(tmp_path, **{"drill": {"institution": ["inst01", "INST02"], "attack": "sign_flip"}})
    with pytest.raises(FedriskInputError, match="drill.institution 'INST02' is not an institution"):
        preflight(config)
    assert not list(homes_root().glob("*/ledger.json"))  # nothing charged, nothing reserved


def test_a_drill_naming_no_institution_of_the_campaign_is_refused(tmp_path):
    config = _config(tmp_path, rounds=1, **{"drill": {"institution": "inst09", "attack": "sign_flip"}})
    with pytest.raises(FedriskInputError, match="drill.institution 'inst09' is not an institution"):
        run_campaign(LocalGrid.simulation(client_app, 3), config, "nobody")


def test_a_deployed_node_refuses_a_campaign_that_carries_a_drill(tmp_path):
    """A coordinator cannot make a real institution attack: its node refuses the first message."""
    config = _config(tmp_path, **{"drill": {"institution": "inst01", "attack": "scale"}})
    grid = LocalGrid(client_app, [{"institution": "inst01"}])  # named by its operator: a deployed node
    from flwr.app import Message, RecordDict

    request = protocol.request_config(config_to_json(config), "deployed")
    reply = grid.send_and_receive([Message(RecordDict({protocol.CONFIG: request}), dst_node_id=100,
                                           message_type=protocol.BOUNDS)])[0]
    assert reply.has_error() and "runs in simulation only" in reply.error.reason
    plain = _config(tmp_path)
    request = protocol.request_config(config_to_json(plain), "deployed2")
    reply = grid.send_and_receive([Message(RecordDict({protocol.CONFIG: request}), dst_node_id=100,
                                           message_type=protocol.BOUNDS)])[0]
    assert not reply.has_error()


@pytest.mark.parametrize("strategy, extra", [("fedtrimmedavg", {"training.min_institutions": 3}),
                                              ("fedmedian", {"training.min_institutions": 3}),
                                              ("krum", {"training.robust.byzantine": 0, "training.min_institutions": 3})])
def test_flowers_robust_rules_run_a_campaign(tmp_path, strategy, extra):
    config = _config(tmp_path, rounds=1, **{"training.strategy": strategy, **extra})
    run_campaign(LocalGrid.simulation(client_app, 3), config, strategy)
    outcome = campaign_outcome(config, strategy)
    assert outcome.status == "completed" and outcome.tags[run_schema.ROBUST].startswith(strategy)
    assert outcome.metrics["test_auc"] > 0.5


def test_an_institution_silent_in_one_round_is_dropped_from_it_and_rejoins(tmp_path):
    """A node that does not answer (dead, or slower than training.round_timeout) costs its round,
    not the campaign; it is recorded and asked again the next round."""

    class OneSilentRound(LocalGrid):
        def push_messages(self, messages):
            messages = list(messages)
            rounds = {m.content[protocol.CONFIG]["server-round"] for m in messages
                      if m.metadata.message_type == "train" and "server-round" in m.content[protocol.CONFIG]}
            self.silent = {101} if rounds == {2} else set()
            return super().push_messages(messages)

    config = _config(tmp_path)
    grid = OneSilentRound.simulation(client_app, 3)
    run_campaign(grid, config, "dropout")
    outcome = campaign_outcome(config, "dropout")
    assert outcome.status == "completed"
    assert _history(config, outcome.run_id, run_schema.INSTITUTIONS_TRAINED) == [3.0, 2.0, 3.0]
    assert _history(config, outcome.run_id, run_schema.INSTITUTIONS_DROPPED) == [0.0, 1.0, 0.0]
    assert [(e["round"], e["institutions"]) for e in _events(config, "institutions_dropped")] == [(2, ["inst02"])]
    assert not [e for e in _events(config, "institution_excluded")]


def test_screening_runs_under_institution_level_dp(tmp_path):
    """Server-side clipping bounds every update before the screening sees it; the campaign's
    institution-level accounting is untouched (its n stays fixed while nobody is excluded)."""
    config = _config(tmp_path, rounds=2, **{"privacy.institution_level.enabled": True,
                                            "privacy.institution_level.clipping": "server",
                                            "drill": {"institution": "inst02", "attack": "scale", "factor": 10.0}})
    run_campaign(LocalGrid.simulation(client_app, 3), config, "instdp")
    outcome = campaign_outcome(config, "instdp")
    assert outcome.status == "completed" and run_schema.INSTITUTION_EPSILON_METRIC in outcome.metrics
    ratios = _history(config, outcome.run_id, run_schema.at(run_schema.UPDATE_NORM_RATIO, "inst02"))
    assert len(ratios) == 2 and max(ratios) < 1.5  # clipped to the same norm as the others before screening


# What an adversarial review found: each attack on the screening itself.

class Tampering(LocalGrid):
    """The real ClientApp's training replies, altered by `tamper(node, reply)` as a hostile
    institution's own code would send them."""

    tamper = None

    def _deliver(self, msg):
        from local_grid import _wire

        reply = super()._deliver(msg)
        if self.tamper is not None and msg.metadata.message_type == "train" and not reply.has_error():
            reply = _wire(self.tamper(msg.metadata.dst_node_id, reply) or reply)
        return reply


def _tampered(tmp_path, tamper, institutions: int = 3, **extra):
    config = _config(tmp_path, **{"institutions": institutions, **extra})
    grid = Tampering.simulation(client_app, institutions)
    grid.tamper = tamper
    run_campaign(grid, config, "tampered")
    return config, campaign_outcome(config, "tampered")


def _robust_exclusions(config) -> list[tuple[str, int, str]]:
    return [(e["institution"], e["round"], e["reason"]) for e in _events(config, "institution_excluded")
            if e["kind"] == "robust"]


def test_an_institution_replying_under_anothers_name_is_excluded_not_its_victim(tmp_path):
    """inst03 sends a x20 update labelled inst01: judged by the node it came from, inst03 is out."""
    from flwr.app import ConfigRecord

    def frame(node, reply):
        if node == 102:
            reply.content[protocol.WHO] = ConfigRecord({"institution": "inst01"})
            arrays = reply.content[protocol.ARRAYS]
            reply.content[protocol.ARRAYS] = robust.unflat(robust.flat(arrays) * 20, arrays)
        return reply

    config, outcome = _tampered(tmp_path, frame)
    assert _robust_exclusions(config) == [("inst03", 1, "institution inst03: replied under another institution's name")]
    assert outcome.status == "completed" and "inst01" not in outcome.tags.get(run_schema.EXCLUDED, "")


def test_a_negative_zero_or_nan_weight_claim_is_refused(tmp_path):
    claims = {101: -4000.0, 102: 0.0, 103: float("nan")}  # one hostile institution each

    def claim(node, reply):
        if node in claims:
            reply.content[protocol.METRICS][protocol.AGGREGATION_WEIGHT] = claims[node]
        return reply

    config, outcome = _tampered(tmp_path, claim, institutions=5, rounds=1, **{"data.synthetic.rows": 15000})
    refused = {n: why for n, _, why in _robust_exclusions(config)}
    assert refused == {"inst02": "institution inst02: claimed an aggregation weight of -4000",
                       "inst03": "institution inst03: claimed an aggregation weight of 0",
                       "inst04": "institution inst04: sent non-finite training metrics"}
    assert outcome.status == "completed" and np.isfinite(outcome.metrics["test_auc"])


def test_a_reply_of_another_layout_is_refused_not_a_crash(tmp_path):
    """Flower aggregates by array name, the screening reads in order: a reordered reply would be
    screened as one update and aggregated as another."""
    changes = {101: "extra", 102: "missing", 103: "reordered", 104: "transposed"}

    def reshape(node, reply):
        if node not in changes:
            return reply
        items = [(k, a.numpy()) for k, a in reply.content[protocol.ARRAYS].items()]
        if changes[node] == "extra":
            items.append(("extra", np.zeros(3, np.float32)))
        elif changes[node] == "missing":
            items = items[:-1]
        elif changes[node] == "reordered":
            items = items[::-1]
        else:
            items[0] = (items[0][0], items[0][1].T.copy())
        reply.content[protocol.ARRAYS] = ArrayRecord({k: Array(v) for k, v in items})
        return reply

    config, outcome = _tampered(tmp_path, reshape, institutions=6, rounds=1, **{"data.synthetic.rows": 18000})
    refused = _robust_exclusions(config)
    assert sorted(n for n, _, _ in refused) == ["inst02", "inst03", "inst04", "inst05"]
    assert all("differ from the model it was sent" in why for _, _, why in refused)
    assert outcome.status == "completed"


def test_nan_weights_under_institution_level_dp_stop_the_campaign_instead_of_misaccounting(tmp_path):
    """The noise is sized for a fixed number of updates: one refused must not leave 2 averaged
    under noise sized for 3."""
    config = _config(tmp_path, rounds=2, **{"privacy.institution_level.enabled": True,
                                            "drill": {"institution": "inst02", "attack": "nan"}})
    run_campaign(LocalGrid.simulation(client_app, 3), config, "instnan")
    outcome = campaign_outcome(config, "instnan")
    assert outcome.status == "stopped" and "institution-level DP is accounted for a fixed set" in outcome.tags[
        run_schema.STOP_REASON]


def test_multikrum_keeps_all_but_the_tolerated_hostile_updates_of_each_round():
    from server.strategy import campaign_strategy

    config = load_config(None, {"training.strategy": "multikrum", "training.min_institutions": 5})
    strategy = campaign_strategy(config, 10, min_train_nodes=5, min_available_nodes=5)
    strategy.config = config
    assert strategy.num_nodes_to_select == 9
    strategy.per_round_settings(6)  # after exclusions or dropouts: not the 9 of admission, which is everyone
    assert strategy.num_nodes_to_select == 5
    trimmed = load_config(None, {"training.strategy": "fedtrimmedavg", "training.min_institutions": 3})
    strategy = campaign_strategy(trimmed, 5, min_train_nodes=3, min_available_nodes=3)
    strategy.config = trimmed
    strategy.per_round_settings(5)  # 0.1 of 5 would cut nobody
    assert int(strategy.beta * 5) == 1


def test_a_node_set_up_by_an_operator_refuses_a_drill_however_it_is_named(tmp_path):
    config = _config(tmp_path, **{"drill": {"institution": "inst01", "attack": "scale"}})
    from flwr.app import Message, RecordDict

    request = protocol.request_config(config_to_json(config), "deployed")
    for node_config in ({"home": str(tmp_path / "home1")}, {"institution": "inst01"}):
        grid = LocalGrid(client_app, [node_config])
        reply = grid.send_and_receive([Message(RecordDict({protocol.CONFIG: request}), dst_node_id=100,
                                               message_type=protocol.BOUNDS)])[0]
        assert reply.has_error() and "runs in simulation only" in reply.error.reason, node_config


def test_the_gate_report_lists_every_exclusion_however_long_another_reason_is():
    from fedrisk.report import aggregation_rows

    excluded = {"inst01": {"kind": "input", "round": 0, "reason": "x; " * 2000},
                "inst02": {"kind": "robust", "round": 3, "reason": "institution inst02: update flagged 3 rounds in a row"}}
    rows = aggregation_rows({run_schema.ROBUST: "fedavg"}, excluded)
    assert [r["what"] for r in rows] == ["aggregation", "excluded (input, round 0)", "excluded (robust, round 3)"]
    assert "inst02: update flagged" in rows[2]["detail"]


def test_a_dropout_drill_loses_its_share_of_rounds_and_the_campaign_goes_on(tmp_path):
    """Which rounds an institution's reply is lost is a fixed draw (rerunnable); the server sees
    those rounds as the timeout would leave them: the institution sits the round out, rejoins."""
    from fedrisk import drill

    config = _config(tmp_path, rounds=4, **{"institutions": 4, "data.synthetic.rows": 12000,
                                            "drill": {"institution": ["inst02", "inst04"], "attack": "dropout",
                                                      "rate": 0.5}})
    missed = [drill.drops(config.drill, "inst02", r, config.seed) for r in range(1, 2001)]
    assert 0.47 < np.mean(missed) < 0.53  # binomial sd 0.011
    assert not any(drill.drops(drill.of(config, "inst01"), "inst01", r, config.seed) for r in range(1, 50))
    run_campaign(LocalGrid.simulation(client_app, 4), config, "drops")
    outcome = campaign_outcome(config, "drops")
    expected = {r: [n for n in ("inst02", "inst04") if drill.drops(config.drill, n, r, config.seed)] for r in range(1, 5)}
    assert outcome.status == "completed" and outcome.tags[run_schema.DRILL] == "inst02, inst04: dropout (0.5 of the rounds each)"
    assert [(e["round"], e["institutions"]) for e in _events(config, "institutions_dropped")] == [
        (r, names) for r, names in expected.items() if names]
    assert _history(config, outcome.run_id, run_schema.INSTITUTIONS_TRAINED) == [4.0 - len(expected[r]) for r in range(1, 5)]
