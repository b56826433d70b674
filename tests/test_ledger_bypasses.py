"""Finding 3 of issue 14, replayed: ten ways a spent budget was granted afresh. Each now leaves
the budget where it was.

A first campaign spends each institution's whole lifetime budget (cap 3, the campaign asks
3). Every bypass then asks again with a changed copy of the data, from another folder, or
with a changed flag, through the real ClientApp handlers; each must be refused, and the
ledgers must read as before.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import own_homes, write_policies
from local_grid import LocalGrid

from clients.client_app import app as client_app
from fedrisk.config import load_config
from fedrisk.errors import FedriskInputError
from fedrisk.generators.credit import generate_consortium
from fedrisk.guard import homes_root, institution_home, ledger_path, load_policy
from fedrisk.ledger import PrivacyLedger
from server.campaign import run_campaign

NAMES = ["inst01", "inst02"]


def _config(folder: Path, files: dict[str, Path], work: Path | None = None, **extra):
    overrides = {"data.source": "files", "data.files": {n: str(p) for n, p in files.items()}, "rounds": 1,
                 "training.min_institutions": 2, "training.batch_size": 128, "privacy.target_epsilon": 3.0,
                 "tracking_uri": f"sqlite:///{folder}/mlflow.db", "audit.path": str(folder / "audit.jsonl"), **extra}
    return load_config(None, overrides, work_dir=work or folder)


def _ledgers() -> dict[str, dict]:
    out = {}
    for name in NAMES:
        home = institution_home(name, {})
        ledger = PrivacyLedger.open(ledger_path(home, load_policy(home, name)), name, 3.0, 1e-6)
        out[name] = {"epsilon": ledger.epsilon(), "charges": len(ledger.charges), "plans": sorted(ledger.plans)}
    return out


@pytest.fixture(scope="module")
def spent(tmp_path_factory):
    """Two institutions whose lifetime budgets one campaign spent."""
    folder = tmp_path_factory.mktemp("bypass")
    frames = generate_consortium(2, 6000, seed=5)
    files = {}
    for name, frame in frames.items():
        files[name] = folder / f"{name}.csv"
        frame.to_csv(files[name], index=False)
    with own_homes(tmp_path_factory.mktemp("homes")) as homes:
        write_policies(NAMES, **{"privacy.lifetime_epsilon": 3.0})
        run_campaign(LocalGrid.simulation(client_app, 2), _config(folder, files), "first")
        before = _ledgers()
    assert all(b["epsilon"] > 2.9 and b["charges"] > 3 for b in before.values())  # the budget is spent
    return folder, files, homes, before


@pytest.fixture
def homes(spent, monkeypatch):
    monkeypatch.setenv("FEDRISK_HOME", str(spent[2]))
    return spent[2]


def _again(spent, files, campaign: str, work: Path | None = None, **extra) -> str:
    """Ask for a second campaign; return the refusal, after checking the ledgers did not move."""
    folder, _, _, before = spent
    with pytest.raises(FedriskInputError) as refused:
        run_campaign(LocalGrid.simulation(client_app, len(files)), _config(folder, files, work, **extra), campaign)
    after = _ledgers()
    for name in NAMES:
        assert after[name]["epsilon"] == pytest.approx(before[name]["epsilon"])
        assert after[name]["charges"] == before[name]["charges"]
    return str(refused.value)


def _copy(spent, name: str, suffix: str, change) -> dict[str, Path]:
    folder, files, _, _ = spent
    target = folder / f"{name}-{change.__name__}{suffix}"
    change(pd.read_csv(files[name]), files[name], target)
    return {**files, name: target}


def _reordered(frame, source, target):
    frame.sample(frac=1.0, random_state=1).to_csv(target, index=False)


def _one_value_changed(frame, source, target):
    frame.loc[0, "income"] = frame.loc[0, "income"] + 1.0
    frame.to_csv(target, index=False)


def _parquet(frame, source, target):
    frame.to_parquet(target, index=False)


def _crlf(frame, source, target):
    target.write_bytes(source.read_bytes().replace(b"\n", b"\r\n"))


def _trailing_newline(frame, source, target):
    target.write_bytes(source.read_bytes() + b"\n")


def _without_customer_id(frame, source, target):
    frame.drop(columns=["customer_id"]).to_csv(target, index=False)


@pytest.mark.parametrize("change, suffix", [(_reordered, ".csv"), (_one_value_changed, ".csv"), (_parquet, ".parquet"),
                                            (_crlf, ".csv"), (_trailing_newline, ".csv"), (_without_customer_id, ".csv")])
def test_a_changed_copy_of_the_data_finds_the_same_spent_budget(spent, homes, change, suffix):
    files = _copy(spent, "inst01", suffix, change)
    reason = _again(spent, files, f"again-{change.__name__}")
    assert "budget left" in reason and "minimum is 2" in reason


def test_another_working_directory_finds_the_same_ledger(spent, homes, tmp_path):
    os.chdir(tmp_path)  # pytest restores nothing here: go back after
    try:
        reason = _again(spent, spent[1], "again-cwd", work=tmp_path)
    finally:
        os.chdir(Path(__file__).parent.parent)
    assert "budget left" in reason
    assert homes_root() == Path(spent[2]).resolve() / "institutions"


def test_the_data_under_another_institutions_name_is_refused(spent, homes):
    """One person holds every file (a simulation): the same rows under new names spend the
    budget of the institution they belong to, so the lineage of released data refuses them."""
    folder, files, _, _ = spent
    renamed = {"inst07": files["inst01"], "inst08": _copy(spent, "inst02", ".csv", _reordered)["inst02"]}
    reason = _again(spent, renamed, "again-renamed")
    assert "rows are institution inst01's" in reason and "rows are institution inst02's" in reason
    assert not any(PrivacyLedger.open(ledger_path(homes_root() / n, load_policy(homes_root() / n, n)), n, 3.0,
                                      1e-6).charges for n in renamed)


def test_a_ledger_folder_is_not_the_campaigns_to_choose(spent, homes):
    with pytest.raises(FedriskInputError, match="privacy.ledger_dir"):
        _config(spent[0], spent[1], **{"privacy.ledger_dir": str(spent[0] / "fresh")})
    reason = _again(spent, spent[1], "again-node-ledger")  # nor a node's home chosen by the campaign
    assert "budget left" in reason


def test_a_campaign_cannot_raise_the_cap_by_asking_for_more_epsilon(spent, homes):
    reason = _again(spent, spent[1], "again-epsilon", **{"privacy.target_epsilon": 8.0})
    assert "refused by its policy (privacy.max_campaign_epsilon)" in reason
    write_policies(NAMES, **{"privacy.lifetime_epsilon": 9.0, "privacy.max_campaign_epsilon": 8.0})
    try:  # an edited policy alone cannot raise the cap either: that takes two approvers
        reason = _again(spent, spent[1], "again-edited-policy", **{"privacy.target_epsilon": 8.0})
    finally:
        write_policies(NAMES, **{"privacy.lifetime_epsilon": 3.0})
    assert "budget left" in reason
