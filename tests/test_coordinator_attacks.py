"""An attacker with the coordinator's access, against the institution's node: every attack of
the adversarial review of issue 14's guard, replayed through the real ClientApp handlers.

The coordinator writes the campaign config and every message; it does not control the nodes,
their homes or their data. Each test plays one attack and fails if it works again.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import write_policies
from flwr.app import ArrayRecord, Message, RecordDict
from local_grid import LocalGrid

from clients.client_app import app as client_app
from fedrisk import protocol
from fedrisk.config import config_to_json, load_config
from fedrisk.data import load_institution
from fedrisk.drift import reference_edges
from fedrisk.generators.credit import generate_consortium
from fedrisk.guard import homes_root, ledger_path, load_policy
from fedrisk.ledger import PrivacyLedger
from fedrisk.metrics import logit_edges, with_threshold
from fedrisk.models import build_model
from fedrisk.preprocessing import Bounds, bounds_from_counts, fit_preprocessor, merge_statistics
from fedrisk.training import dp_sampling


def _config(tmp_path, **extra):
    return load_config(None, {"institutions": 3, "rounds": 1, "data.synthetic.rows": 9000, "training.batch_size": 128,
                              "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", **extra}, work_dir=tmp_path)


def _send(grid, kind, record, node=100, arrays=None):
    content = RecordDict({protocol.CONFIG: record})
    if arrays is not None:
        content[protocol.ARRAYS] = arrays
    return grid.send_and_receive([Message(content, dst_node_id=node, message_type=kind)])[0]


def _reason(reply) -> str:
    assert reply.has_error(), "the node answered"
    return reply.error.reason.strip().splitlines()[-1]


def _ledger(name="inst01") -> PrivacyLedger:
    home = homes_root() / name
    policy = load_policy(home, name)
    return PrivacyLedger.open(ledger_path(home, policy, name), name, policy.privacy.lifetime_epsilon,
                              policy.privacy.delta)


def _admit(grid, config, campaign, node=100):
    """An honest admission and statistics: what the coordinator learns, and a shared preprocessing."""
    text = config_to_json(config)
    reply = _send(grid, protocol.BOUNDS, protocol.request_config(text, campaign), node)
    admission = protocol.read_admission(reply)
    bounds = bounds_from_counts(admission["bounds"], admission["noise"]["statistics"])
    stats = protocol.read_statistics(_send(grid, protocol.STATISTICS, protocol.request_config(text, campaign,
                                                                                             bounds=bounds), node))
    return admission, bounds, fit_preprocessor(merge_statistics([stats]), stats["schema"], bounds)


def _exact(config, name="inst01"):
    return load_institution(config.data, name, config.seed)


def test_no_exact_count_leaves_at_admission(tmp_path):
    """Finding 1: exact split counts let two admissions with validation fractions either side of
    a known row's hash tell membership and label. Counts now leave noised, every time afresh."""
    config = _config(tmp_path)
    grid = LocalGrid.simulation(client_app, 3)
    exact = _exact(config)
    seen = []
    for campaign in ("a1", "a2"):
        admission, _, _ = _admit(grid, config, campaign)
        assert set(admission["split_rows"]) == {"train"}  # no validation or test counts
        seen.append((admission["split_rows"]["train"], admission["data"]["quality"]["rows"]))
        assert "rows" not in admission["data"]
    assert seen[0] != seen[1]  # fresh noise per campaign: differencing two answers gives noise
    assert seen[0][1] != len(exact.frame) and seen[1][1] != len(exact.frame)


def test_the_quality_scorecard_is_no_counting_oracle(tmp_path):
    """Finding 2: campaign-chosen ranges turned the scorecard into an exact counting query (a
    binary search found the largest income). Its counts now leave noised and charged."""
    config = _config(tmp_path, **{"data.quality.ranges": {"income": [None, 210_000]}})
    grid = LocalGrid.simulation(client_app, 3)
    exact = _exact(config).quality["invalid"]["income"]
    released = [protocol.read_admission(_send(grid, protocol.BOUNDS, protocol.request_config(
        config_to_json(config), f"q{i}")))["data"]["quality"] for i in range(2)]
    assert all(r["invalid"]["income"] != exact for r in released)
    assert released[0]["invalid"]["income"] != released[1]["invalid"]["income"]
    noise = released[0]["noise"]
    assert noise > 1.0 and all(abs(r["invalid"]["income"] - exact) < 6 * noise for r in released)
    charged = [c for c in _ledger().charges if c["mechanism"] == "quality"]
    assert {c["part"] for c in charged} == {"train", "validation", "test"} and len(charged) == 6


def _window(grid, config, run, preprocessor, model, edges, window, windows, node=100):
    record = protocol.request_config(config_to_json(config), run, preprocessor=preprocessor, edges=edges,
                                     grid=logit_edges(50), window_days=30, window=window, windows=windows)
    return _send(grid, protocol.MONITOR, record, node, model)


def test_monitoring_windows_on_the_same_rows_are_refused(tmp_path):
    """Finding 3: windows re-reading the same rows were charged as disjoint parts (40 windows on
    one set of rows cost as one). A window sharing rows with an earlier one is now refused."""
    config = _config(tmp_path)
    grid = LocalGrid.simulation(client_app, 3)
    _, bounds, shared = _admit(grid, config, "c1")
    model = ArrayRecord(build_model(config.model, shared.width, 0).state_dict())
    edges = reference_edges({c: b.deciles for c, b in bounds.items()}, 200)
    first = _window(grid, config, "run1", shared.to_json(), model, edges, 1, 40)
    assert not first.has_error(), first.error.reason
    assert "shares rows with window 1" in _reason(_window(grid, config, "run1", shared.to_json(), model, edges, 2, 40))
    assert [c["part"] for c in _ledger().charges if c["campaign"] == "run1"] == ["window:1"]


def test_a_monitoring_run_cannot_change_its_model_or_use_a_refused_column(tmp_path):
    """Finding 6: later windows were charged as the first window's shape whatever preprocessing
    they carried, and never_use did not apply to windows."""
    config = _config(tmp_path)
    grid = LocalGrid.simulation(client_app, 3)
    _, bounds, shared = _admit(grid, config, "c1")
    model = ArrayRecord(build_model(config.model, shared.width, 0).state_dict())
    edges = reference_edges({c: b.deciles for c, b in bounds.items()}, 200)
    assert not _window(grid, config, "run2", shared.to_json(), model, edges, 1, 3).has_error()
    other = json.loads(shared.to_json())
    other["means"] = [m + 1.0 for m in other["means"]]
    assert "planned for another model or other bins" in _reason(
        _window(grid, config, "run2", json.dumps(other), model, edges, 2, 3))
    write_policies(["inst01"], never_use=["income"])
    assert "refused the request's shared preprocessing: an input it may not use" in _reason(
        _window(grid, config, "run3", shared.to_json(), model, edges, 1, 3))


def test_a_campaign_cannot_change_its_split_after_admission(tmp_path):
    """Finding 4: the same campaign id with another seed made train rows of one message the
    test rows of the next, while the ledger took the maximum over 'parts'."""
    config = _config(tmp_path)
    grid = LocalGrid.simulation(client_app, 3)
    _, _, shared = _admit(grid, config, "c1")
    model = ArrayRecord(build_model(config.model, shared.width, 0).state_dict())
    reseeded = _config(tmp_path, seed=2)
    record = protocol.request_config(config_to_json(reseeded), "c1", preprocessor=shared.to_json(), splits=("test",),
                                     grid=with_threshold(logit_edges(50), 0.2), groups={})
    assert "campaign c1 was admitted with other data, split or columns" in _reason(
        _send(grid, protocol.EVALUATE, record, 100, model))


def test_crafted_bounds_cannot_amplify_one_row(tmp_path):
    """Finding 5: inverted bounds made each present value add -5e11 to a noised sum: an exact count."""
    config = _config(tmp_path)
    grid = LocalGrid.simulation(client_app, 3)
    text = config_to_json(config)
    admission = protocol.read_admission(_send(grid, protocol.BOUNDS, protocol.request_config(text, "c1")))
    inverted = {c: Bounds(1.0, 0.0, []) for c in admission["schema"]["numeric"]}
    reply = _send(grid, protocol.STATISTICS, protocol.request_config(text, "c1", bounds=inverted))
    assert "the request's clipping bounds are not a finite interval" in _reason(reply)
    assert {c["mechanism"] for c in _ledger().charges} == {"size", "bounds", "quality"}  # nothing charged for it


def test_messages_need_admission_and_train_implies_evaluate(tmp_path):
    """Finding 7: a train message with evaluation every round released validation histograms at
    an institution whose policy refuses evaluate; admission could be skipped altogether."""
    write_policies(["inst01"], messages=["query.bounds", "query.statistics", "train", "query.reference"])
    config = _config(tmp_path, **{"evaluation.every_round": True})
    grid = LocalGrid.simulation(client_app, 3)
    text = config_to_json(config)
    bounds = {c: Bounds(0.0, 1e5, []) for c in ("age", "income")}
    assert "was not admitted here" in _reason(_send(grid, protocol.STATISTICS, protocol.request_config(
        text, "skip", bounds=bounds), node=101))
    record = protocol.with_round(protocol.request_config(text, "c1", preprocessor="{}", groups={},
                                                         grid=with_threshold(logit_edges(50), 0.2)), 1, 0.0)
    assert "refused by its policy (messages): it does not answer evaluate" in _reason(
        _send(grid, protocol.TRAIN, record, 100, ArrayRecord({})))


def test_the_lineage_check_cannot_be_skipped_or_steered(tmp_path, monkeypatch):
    """Finding 8: a node asked for statistics without admission skipped the lineage check, and a
    campaign listing fewer features changed the rows' sketch."""
    frames = generate_consortium(2, 6000, seed=3)
    files = {}
    for name, frame in frames.items():
        files[name] = tmp_path / f"{name}.csv"
        frame.to_csv(files[name], index=False)
    base = {"data.source": "files", "training.min_institutions": 1}
    config = _config(tmp_path, **base, **{"data.files": {n: str(p) for n, p in files.items()}})
    grid = LocalGrid.simulation(client_app, 2)
    _admit(grid, config, "c1")  # inst01 released from these rows
    features = [c for c in frames["inst01"].columns if c not in {"default", "customer_id", "sex", "age_band", "age"}]
    renamed = _config(tmp_path, **base, **{"data.files": {"inst07": str(files["inst01"])}, "data.features": features})
    node = LocalGrid.simulation(client_app, 1)
    text = config_to_json(renamed)
    assert "rows are institution inst01's" in _reason(_send(node, protocol.BOUNDS, protocol.request_config(text, "c2")))
    assert "was not admitted here" in _reason(_send(node, protocol.STATISTICS, protocol.request_config(
        text, "c2", bounds={c: Bounds(0.0, 1.0, []) for c in features})))


def test_a_request_cannot_add_inputs_or_categories(tmp_path):
    """Finding 9: importance and reference released histograms for whatever columns the
    request's preprocessing named (the label among them), with any number of categories."""
    config = _config(tmp_path, **{"evaluation.importance": True})
    grid = LocalGrid.simulation(client_app, 3)
    _, bounds, shared = _admit(grid, config, "c1")
    model = ArrayRecord(build_model(config.model, shared.width, 0).state_dict())
    text = config_to_json(config)
    edges = reference_edges({c: b.deciles for c, b in bounds.items()}, 200)
    with_label = json.loads(shared.to_json())
    with_label["categorical"].append("default")
    with_label["vocabularies"].append(["0", "1"])
    with_label["modes"].append("0")
    reply = _send(grid, protocol.REFERENCE, protocol.request_config(text, "c1", preprocessor=json.dumps(with_label),
                                                                    edges=edges), 100, model)
    assert "its categorical inputs are not this institution's features" in _reason(reply)
    wide = json.loads(shared.to_json())
    wide["vocabularies"][0] = [f"v{i}" for i in range(5000)]
    reply = _send(grid, protocol.REFERENCE, protocol.request_config(text, "c1", preprocessor=json.dumps(wide),
                                                                    edges=edges), 100, model)
    assert "above the policy's max_bins" in _reason(reply)
    assert not any(c["mechanism"] in {"drift_reference", "importance"} for c in _ledger().charges)


def test_error_replies_carry_no_counts_or_dates(tmp_path):
    """Finding 10: a campaign naming another column as the target read exact counts from errors."""
    config = _config(tmp_path, **{"data.target": "past_delinquencies", "data.protected": [], "gate.enabled": False})
    grid = LocalGrid.simulation(client_app, 3)
    reason = _reason(_send(grid, protocol.BOUNDS, protocol.request_config(config_to_json(config), "c1")))
    assert re.search(r"column 'past_delinquencies': target is not binary 0/1 \(N distinct values of type [a-z]+\d*\)$",
                     reason), reason


def test_an_institution_name_is_never_read_from_the_data(tmp_path):
    """Finding 11: with an institution column, a customer's e-mail became an institution's name,
    its home folder and the subject of error lines."""
    frame = pd.concat(generate_consortium(2, 4000, seed=1).values(), ignore_index=True)
    frame["bank"] = np.where(np.arange(len(frame)) % 2, "bank-a", "customer00001@example.org")
    frame.to_csv(tmp_path / "all.csv", index=False)
    config = _config(tmp_path, **{"data.source": "files", "data.path": str(tmp_path / "all.csv"),
                                  "data.institution_column": "bank"})
    grid = LocalGrid.simulation(client_app, 2)
    reason = _reason(_send(grid, protocol.BOUNDS, protocol.request_config(config_to_json(config), "c1")))
    assert "is not a usable institution name" in reason and "@" not in reason
    assert not list(homes_root().glob("*@*")) if homes_root().exists() else True


@pytest.mark.parametrize("kind", [protocol.STATISTICS, protocol.EVALUATE, protocol.REFERENCE, protocol.IMPORTANCE])
def test_no_release_before_admission(tmp_path, kind):
    config = _config(tmp_path, **{"evaluation.importance": True})
    grid = LocalGrid.simulation(client_app, 3)
    record = protocol.request_config(config_to_json(config), "never-admitted", preprocessor="{}",
                                     bounds={"age": Bounds(0.0, 1.0, [])}, grid=with_threshold(logit_edges(50), 0.2),
                                     groups={}, edges={"score": [0.5]})
    reason = _reason(_send(grid, kind, record, 100, ArrayRecord({})))
    assert "was not admitted here" in reason or "refused the request's shared preprocessing" in reason
    assert not (homes_root() / "inst01" / "ledger.json").exists() or not _ledger().charges


# Second review round.

def test_admission_answers_depend_on_the_released_row_count_only(tmp_path):
    """Round 2, finding 1: delta checks against the exact training rows, refused before anything
    was charged, let a bisection read the exact count in 14 free queries, and with the split
    key (the seed) a known customer's membership and label. Every answer now comes from the
    row count released once per data version (noised, charged)."""
    grid = LocalGrid.simulation(client_app, 3)

    def refuses_delta(m: int) -> bool:
        config = _config(tmp_path, **{"privacy.delta": 1.0 / m, "privacy.target_epsilon": 1e-4})
        reason = _reason(_send(grid, protocol.BOUNDS, protocol.request_config(config_to_json(config), "probe")))
        return "is not below" in reason

    low, high = 1, 2 ** 14
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if refuses_delta(middle) else (low, middle)
    sizes = {k: p for k, p in _ledger().plans.items() if k.startswith("size:")}
    assert len(sizes) == 1 and low == int(next(iter(sizes.values()))["rows"])  # the released count, not the data
    assert [c["mechanism"] for c in _ledger().charges] == ["size"]  # charged once, for all 14 questions


def test_a_budget_refusal_names_no_count(tmp_path):
    """Round 2, finding 2: with batch size 1 a refusal stated the exact rows as 'DP-SGD steps'."""
    config = _config(tmp_path, **{"training.batch_size": 1, "privacy.max_noise_multiplier": 1e-3})
    grid = LocalGrid.simulation(client_app, 3)
    reason = _reason(_send(grid, protocol.BOUNDS, protocol.request_config(config_to_json(config), "c1")))
    assert "cannot pay for 1 rounds of DP-SGD" in reason and "sample rate" not in reason
    assert str(len(_exact(config).frame)) not in reason


def test_a_round_reports_what_the_released_count_implies(tmp_path):
    """Round 2, finding 4: steps and sample rate of a round were the exact rows' (batch size 1: the count)."""
    config = _config(tmp_path, **{"training.batch_size": 1})
    grid = LocalGrid.simulation(client_app, 3)
    _, _, shared = _admit(grid, config, "c1")
    record = protocol.with_round(protocol.request_config(config_to_json(config), "c1", preprocessor=shared.to_json(),
                                                         groups={}, grid=with_threshold(logit_edges(50), 0.2)), 1, 0.0)
    reply = _send(grid, protocol.TRAIN, record, 100, ArrayRecord(build_model(config.model, shared.width, 0).state_dict()))
    assert not reply.has_error(), reply.error.reason
    metrics = dict(reply.content[protocol.METRICS])
    released = int(next(p["rows"] for k, p in _ledger().plans.items() if k.startswith("size:")))
    rate, steps = dp_sampling(released, 1)
    assert metrics["steps"] == steps and metrics["sample-rate"] == pytest.approx(rate)


def test_a_campaign_admitted_with_dp_cannot_train_without_it(tmp_path):
    """Round 2, finding 5: DP off in a later message trained without noise, charged as with it."""
    write_policies(["inst01"], **{"privacy.require_dp": False})
    config = _config(tmp_path)
    grid = LocalGrid.simulation(client_app, 3)
    _, _, shared = _admit(grid, config, "c1")
    off = _config(tmp_path, **{"privacy.enabled": False})
    record = protocol.with_round(protocol.request_config(config_to_json(off), "c1", preprocessor=shared.to_json(),
                                                         groups={}, grid=with_threshold(logit_edges(50), 0.2)), 1, 0.0)
    reply = _send(grid, protocol.TRAIN, record, 100, ArrayRecord(build_model(config.model, shared.width, 0).state_dict()))
    assert "admitted with other data, split or columns" in _reason(reply)


def test_a_window_is_the_same_rows_whatever_is_derived_from_them(tmp_path):
    """Round 2, finding 3: a window re-read once its outcomes were known (or with other look-back
    features) hashed differently and was released again as other rows."""
    frames = generate_consortium(3, 9000, seed=4)
    windows = []
    for k, labelled in enumerate((False, True)):
        files = {}
        for name, frame in frames.items():
            files[name] = tmp_path / f"{name}-{k}.csv"
            (frame if labelled else frame.drop(columns=["default"])).to_csv(files[name], index=False)
        windows.append(_config(tmp_path, **{"data.source": "files", "data.files": {n: str(p) for n, p in files.items()}}))
    config = _config(tmp_path)
    grid = LocalGrid.simulation(client_app, 3)
    _, bounds, shared = _admit(grid, config, "c1")
    model = ArrayRecord(build_model(config.model, shared.width, 0).state_dict())
    edges = reference_edges({c: b.deciles for c, b in bounds.items()}, 200)
    assert not _window(grid, windows[0], "run", shared.to_json(), model, edges, 1, 2).has_error()
    assert "shares rows with window 1" in _reason(_window(grid, windows[1], "run", shared.to_json(), model, edges, 2, 2))


def test_the_fingerprint_cannot_be_tested_against_a_candidate_file(tmp_path):
    """Round 2, finding 7: the released fingerprint was the file's plain sha256."""
    import hashlib
    import hmac

    frames = generate_consortium(2, 6000, seed=5)
    files = {}
    for name, frame in frames.items():
        files[name] = tmp_path / f"{name}.csv"
        frame.to_csv(files[name], index=False)
    config = _config(tmp_path, **{"data.source": "files", "data.files": {n: str(p) for n, p in files.items()}})
    admission = protocol.read_admission(_send(LocalGrid.simulation(client_app, 2), protocol.BOUNDS,
                                              protocol.request_config(config_to_json(config), "c1")))
    raw = hashlib.sha256(files["inst01"].read_bytes()).hexdigest()
    secret = (homes_root() / "inst01" / "secret.key").read_bytes()
    assert admission["data"]["fingerprint"] != raw
    assert admission["data"]["fingerprint"] == hmac.new(secret, raw.encode(), hashlib.sha256).hexdigest()
