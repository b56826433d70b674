"""An interrupted campaign goes on where it stopped, spending what an uninterrupted one would.

The node half: a request already answered is answered again from the institution's home, with
the same release and no new charge (`fedrisk.replay`). The whole: a campaign killed with SIGKILL
after round 2, resumed with `fedrisk simulate --resume`, ends with every planned release charged
exactly once, one MLflow run, and an audit log that tells the story."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from fedrisk import audit, institution
from fedrisk.config import config_to_json, load_config
from fedrisk.ledger import Release, campaign_epsilon
from fedrisk.models import build_model
from fedrisk.preprocessing import bounds_from_counts, fit_preprocessor, merge_statistics
from fedrisk.session import open_session

SMALL = ["--institutions", "3", "--set", "data.synthetic.rows=9000", "--set", "training.batch_size=128"]


def _ledger(session):
    return session.ledger()


def test_a_repeated_request_is_answered_from_home_and_charged_once(tmp_path):
    config = config_to_json(load_config(None, {"data.synthetic.rows": 6000}, work_dir=tmp_path))
    session = open_session(config, {"partition-id": 0})
    first = institution.admit(session, "c" * 32)
    charges = len(_ledger(session).charges)
    again = institution.admit(open_session(config, {"partition-id": 0}), "c" * 32)
    assert json.dumps(first, default=str, sort_keys=True) == json.dumps(again, default=str, sort_keys=True)
    assert len(_ledger(session).charges) == charges  # the same release, not a second one

    bounds = _consortium_bounds(first)
    stats = institution.statistics(session, "c" * 32, bounds)
    charges = len(_ledger(session).charges)
    assert institution.statistics(session, "c" * 32, bounds) == stats and len(_ledger(session).charges) == charges


def _consortium_bounds(admission: dict):
    """The clipping bounds a server would derive from this one institution's release."""
    return bounds_from_counts(admission["bounds"], admission["noise"]["statistics"])


def _admitted(tmp_path: Path, campaign: str):
    """One institution admitted to `campaign`, its statistics released: (session, preprocessing, model)."""
    config = config_to_json(load_config(None, {"data.synthetic.rows": 6000}, work_dir=tmp_path))
    session = open_session(config, {"partition-id": 0})
    admission = institution.admit(session, campaign)
    bounds = _consortium_bounds(admission)
    stats = institution.statistics(session, campaign, bounds)
    preprocessor = fit_preprocessor(merge_statistics([stats]), admission["schema"], bounds).to_json()
    state = build_model(session.config.model, session.preprocessor(preprocessor).width, 0).state_dict()
    return session, preprocessor, state


def test_a_round_is_replayed_only_for_the_same_model(tmp_path):
    campaign = "d" * 32
    session, preprocessor, state = _admitted(tmp_path, campaign)
    one = institution.train_round(session, preprocessor, state, 1, campaign, 0.0)
    charges = len(_ledger(session).charges)
    two = institution.train_round(session, preprocessor, state, 1, campaign, 0.0)
    assert len(_ledger(session).charges) == charges
    assert all(torch.equal(one.state[k], two.state[k]) for k in one.state)  # the same noised update
    other = {k: v + 0.01 for k, v in state.items()}  # another model: a new release, charged
    institution.train_round(session, preprocessor, other, 1, campaign, 0.0)
    assert len(_ledger(session).charges) == charges + 1


def _start(folder: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "FEDRISK_HOME": str(folder / "homes")}
    return subprocess.Popen([sys.executable, "-m", "fedrisk.cli", "simulate", *args], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _entries(folder: Path) -> list[dict]:
    log = folder / ".fedrisk" / "audit.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines() if x.endswith("}")] if log.is_file() else []


@pytest.mark.slow  # a real campaign killed with SIGKILL, then resumed: the full suite runs it
def test_a_killed_campaign_resumes_and_spends_what_an_uninterrupted_one_would(tmp_path):
    from fedrisk.ledger import PrivacyLedger

    killed = _start(tmp_path, *SMALL, "--rounds", "6")
    deadline = time.time() + 180
    while time.time() < deadline and not any(e["event"] == "round_completed" and e["details"]["round"] >= 2
                                             for e in _entries(tmp_path)):
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=60)
    campaign = next(e["details"]["campaign"] for e in _entries(tmp_path) if e["event"] == "campaign_started")
    done = max(e["details"]["round"] for e in _entries(tmp_path) if e["event"] == "round_completed")
    assert done < 6

    resumed = _start(tmp_path, "--resume", campaign)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode in (0, 3), err[-3000:]
    assert "(completed)" in out and f"campaign {campaign} resumes after round" in err

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and run.data.tags["fedrisk.status"] == "completed"
    assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "round_seconds")}) == [1, 2, 3, 4, 5, 6]
    events = _entries(tmp_path)
    (interrupted,) = [e for e in events if e["event"] == "campaign_interrupted"]
    (resumed_entry,) = [e for e in events if e["event"] == "campaign_resumed"]
    after = resumed_entry["details"]["after_round"]
    # a kill between a round's log entry and its checkpoint redoes that round (same releases, charged once)
    assert after >= done - 1 and after >= 1 and interrupted["details"]["rounds_completed"] >= after
    assert {e["details"]["round"] for e in events if e["event"] == "round_completed"} == set(range(1, 7))
    (ended,) = [e for e in events if e["event"] == "campaign_ended"]
    assert ended["details"]["rounds_completed"] == 6 and ended["details"]["status"] == "completed"
    assert not (tmp_path / ".fedrisk" / "checkpoints" / f"{campaign}.pt").exists()

    # every release the campaign planned was charged once: the epsilon of an uninterrupted campaign
    for path in (tmp_path / "homes" / "institutions").glob("*/ledger.json"):
        ledger = PrivacyLedger.open(path, path.parent.name, float("inf"), 1.0)
        planned = [Release.from_dict(r) for r in ledger.plans[campaign]["releases"]]
        charged = [Release.from_dict(c) for c in ledger.charges if c["campaign"] == campaign]
        assert Counter(charged) == Counter(planned), path.parent.name
        assert ledger.spent(campaign=campaign) == pytest.approx(campaign_epsilon(planned, ledger.delta), rel=1e-9)
        assert run.data.metrics[f"epsilon.{path.parent.name}"] == pytest.approx(ledger.epsilon(), rel=1e-6)

    again = _start(tmp_path, "--resume", campaign)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 2 and "only an interrupted or failed campaign resumes" in err.strip().splitlines()[-1]
    bogus = _start(tmp_path, "--resume", "nope")
    _, err = bogus.communicate(timeout=120)
    assert bogus.returncode == 2 and "--resume needs a campaign id" in err


@pytest.mark.slow  # three campaigns, each killed and resumed (in process): the full suite runs them
@pytest.mark.parametrize("mode", ["plain", "institution_level", "secure_aggregation"])
def test_a_campaign_that_died_mid_round_resumes_in_process(tmp_path, mode):
    """The server dies when round 3 goes out (one institution has its first message); resumed on
    the real ClientApp, every institution's charges equal its plan, institution-level DP counts
    all four rounds as an uninterrupted campaign's accountant would, and SecAgg+'s protocol goes
    on from round 3."""
    from flwr.app import MessageType
    from local_grid import LocalGrid

    from clients.client_app import app as client_app
    from fedrisk.campaign_lock import close_interrupted
    from fedrisk.guard import homes_root
    from fedrisk.ledger import PrivacyLedger
    from fedrisk.privacy import institution_epsilon, institution_noise_multiplier
    from fedrisk.tracking import find_campaign_run
    from server.campaign import run_campaign

    log = tmp_path / "audit.jsonl"

    class Dies(LocalGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            done = {e["details"].get("round") for _, e in audit.entries(log) if e["event"] == "round_completed"}
            if 2 in done and any(m.metadata.message_type == MessageType.TRAIN for m in messages):
                super().send_and_receive(messages[:1], timeout=timeout)  # round 3's first message, then it dies
                raise KeyboardInterrupt
            return super().send_and_receive(messages, timeout=timeout)

    institution_level = mode == "institution_level"
    config = load_config(None, {"institutions": 3, "data.synthetic.rows": 9000, "rounds": 4,
                                "privacy.institution_level.enabled": institution_level,
                                "secure_aggregation.enabled": mode == "secure_aggregation",
                                "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                                "audit.path": str(log)}, work_dir=tmp_path)
    campaign = "b" * 32
    with pytest.raises(KeyboardInterrupt):
        run_campaign(Dies.simulation(client_app, 3), config, campaign)
    stopped = find_campaign_run(config.tracking.uri, config.tracking.experiment, campaign)
    assert stopped.info.status == "KILLED" and stopped.data.tags["fedrisk.status"] == "interrupted"  # not FINISHED
    assert close_interrupted(config) == []  # nothing left RUNNING
    events = [e for _, e in audit.entries(config.audit.path)]
    assert events[-1]["event"] == "campaign_interrupted" and events[-1]["details"]["rounds_completed"] == 2
    run_campaign(LocalGrid.simulation(client_app, 3), config, campaign, resume_run=stopped.info.run_id)

    run = find_campaign_run(config.tracking.uri, config.tracking.experiment, campaign)
    assert run.info.run_id == stopped.info.run_id and run.data.tags["fedrisk.status"] == "completed"
    for name in ("inst01", "inst02", "inst03"):
        ledger = PrivacyLedger.open(homes_root() / name / "ledger.json", name, float("inf"), 1.0)
        planned = [Release.from_dict(r) for r in ledger.plans[campaign]["releases"]]
        charged = [Release.from_dict(c) for c in ledger.charges if c["campaign"] == campaign]
        assert Counter(charged) == Counter(planned), name
    if mode == "secure_aggregation":
        history = MlflowClient(config.tracking.uri).get_metric_history(run.info.run_id, "secure_aggregation_seconds")
        assert sorted(m.step for m in history) == [3, 4]  # numbered on; rounds 1-2's were logged by no one (it died)
    if institution_level:  # the server's accountant over all four rounds, not the two after the resume
        inst = config.privacy.institution_level
        z = institution_noise_multiplier(inst.target_epsilon, inst.delta, 4, inst.noise_multiplier)
        history = MlflowClient(config.tracking.uri).get_metric_history(run.info.run_id, "institution_epsilon")
        assert sorted(m.step for m in history) == [1, 2, 3, 4]
        assert run.data.metrics["institution_epsilon"] == pytest.approx(institution_epsilon(z, 4, inst.delta), rel=1e-9)


def test_a_release_computed_but_never_kept_is_charged_once_when_asked_again(tmp_path, monkeypatch):
    """The node dies between the charge and keeping the reply (the campaign killed mid-round): its
    output never left, so the retry spends the same charge; a kept and settled release whose file
    was pruned is a new release, charged again."""
    campaign = "e" * 32
    session, preprocessor, state = _admitted(tmp_path, campaign)
    before = len(_ledger(session).charges)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after the charge, before anything is kept or sent

    with monkeypatch.context() as patch:
        patch.setattr(institution, "train_local", killed)
        with pytest.raises(KeyboardInterrupt):
            institution.train_round(session, preprocessor, state, 1, campaign, 0.0)
    pending = [c for c in _ledger(session).charges if c.get("pending")]
    assert len(_ledger(session).charges) == before + 1 and len(pending) == 1
    institution.train_round(session, preprocessor, state, 1, campaign, 0.0)
    ledger = _ledger(session)
    assert len(ledger.charges) == before + 1 and not any(c.get("pending") for c in ledger.charges)
    assert len(ledger.voided) == 1 and ledger.voided[0]["release_key"] == pending[0]["release_key"]

    for kept in (session.home / "releases").glob("train-*.pkl"):
        kept.unlink()  # the institution prunes its releases: a settled charge is never voided
    institution.train_round(session, preprocessor, state, 1, campaign, 0.0)
    assert len(_ledger(session).charges) == before + 2


def test_the_server_derives_the_same_preprocessing_whatever_order_the_replies_arrive_in(tmp_path):
    """A resumed campaign asks its admission and statistics again; the answers are the same releases
    but may arrive in another order. Summed in arrival order, the floats differed in their last bits,
    the preprocessing with them, and the round trained before the kill was not recognised (charged
    twice; seen in 1 of 7 kills)."""
    from itertools import permutations

    from local_grid import LocalGrid

    from clients.client_app import app as client_app
    from fedrisk.tracking import CampaignRun
    from server.campaign import admit, start_model

    class Ordered(LocalGrid):
        order: tuple[int, ...] = (0, 1, 2)

        def send_and_receive(self, messages, *, timeout=None):
            replies = list(super().send_and_receive(messages, timeout=timeout))
            return [replies[i] for i in self.order] if len(replies) == len(self.order) else replies

    config = load_config(None, {"institutions": 3, "data.synthetic.rows": 9000,
                                "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                                "audit.path": str(tmp_path / "audit.jsonl")}, work_dir=tmp_path)
    campaign = "f" * 32
    run = CampaignRun(config, campaign)
    built = set()
    for order in permutations(range(3)):
        grid = Ordered.simulation(client_app, 3)
        grid.order = order
        start = start_model(grid, config, campaign, admit(grid, config, campaign, run), run)
        built.add((start.preprocessor.to_json(), repr(start.bounds)))
    assert len(built) == 1


def _train_copy(session_config: str, preprocessor: str, state: dict, campaign: str, delay: float, slow: float,
                out) -> None:
    """A second ClientApp execution of one train message, on the same home (forked)."""
    time.sleep(delay)
    original = institution.train_local

    def slowly(*args, **kwargs):
        time.sleep(slow)  # still computing when the copy arrives
        return original(*args, **kwargs)

    institution.train_local = slowly
    result = institution.train_round(open_session(session_config, {"partition-id": 0}), preprocessor, state, 1,
                                     campaign, 0.0)
    out.put({k: v.numpy().tolist() for k, v in result.state.items()})


def test_two_copies_of_a_request_at_once_get_one_release_and_one_charge(tmp_path):
    """Found by adversarial review: the copy voided the first one's pending charge while it was
    still computing, and two different noised updates left for one charge."""
    import multiprocessing

    campaign = "a" * 32
    session, preprocessor, state = _admitted(tmp_path, campaign)
    config = config_to_json(session.config)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    copies = [context.Process(target=_train_copy, args=(config, preprocessor, state, campaign, delay, slow, out))
              for delay, slow in ((0.0, 1.5), (0.5, 0.0))]
    for copy in copies:
        copy.start()
    first, second = out.get(timeout=120), out.get(timeout=120)
    for copy in copies:
        copy.join(timeout=60)
    assert first == second  # one release, sent twice
    ledger = _ledger(session)
    assert sum(c["mechanism"] == "dp_sgd" for c in ledger.charges) == 1 and ledger.voided == []


def test_resume_in_a_folder_without_the_store_creates_nothing(tmp_path, monkeypatch):
    """`fedrisk simulate --resume` run from the wrong folder names the store it did not find and
    leaves no empty mlflow.db (nor a lock file) behind, as the read commands do."""
    from fedrisk.errors import FedriskInputError
    from fedrisk.launcher import resume

    monkeypatch.chdir(tmp_path)
    config = load_config(None, {}, work_dir=tmp_path)
    with pytest.raises(FedriskInputError, match=r"no MLflow store at .*mlflow\.db.*--tracking-uri"):
        resume(config, "0123456789abcdef0123456789abcdef")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
