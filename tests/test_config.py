"""Campaign configuration: defaults, validation messages, overrides and path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedrisk.config import DataSpec, load_config
from fedrisk.errors import FedriskInputError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_YAML = REPO / "configs" / "credit.yaml"


def _write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------- defaults


@pytest.mark.parametrize("task", ["credit", "fraud"])
def test_builtin_defaults_equal_configs_task_yaml(tmp_path, task):
    """configs/<task>.yaml is exactly what `task: <task>` alone gives."""
    builtin = load_config(None, {"task": task}, work_dir=tmp_path)
    from_file = load_config(REPO / "configs" / f"{task}.yaml", work_dir=tmp_path)
    assert builtin.model_dump() == from_file.model_dump()


@pytest.mark.parametrize("task", ["credit", "fraud"])
def test_configs_task_yaml_lists_every_default_key(task):
    """The shipped file spells out every key (so it documents the defaults)."""
    raw = yaml.safe_load((REPO / "configs" / f"{task}.yaml").read_text())
    builtin = load_config(None, {"task": task}).model_dump()

    def keys(node, prefix=""):
        out = set()
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else key
            out.add(dotted)
            if isinstance(value, dict):
                out |= keys(value, dotted)
        return out

    assert keys(builtin) <= keys(raw)


# ---------------------------------------------------------------- validation


def test_unknown_key_is_rejected_naming_dotted_key(tmp_path):
    cfg = _write(tmp_path / "c.yaml", {"training": {"roundz": 3}})
    with pytest.raises(FedriskInputError) as info:
        load_config(cfg, work_dir=tmp_path)
    message = str(info.value)
    assert "training.roundz" in message
    assert "unknown key" in message
    assert str(cfg) in message


def test_unknown_top_level_key_is_rejected(tmp_path):
    cfg = _write(tmp_path / "c.yaml", {"trainin": {"rounds": 3}})
    with pytest.raises(FedriskInputError, match="trainin.*unknown key"):
        load_config(cfg, work_dir=tmp_path)


@pytest.mark.parametrize(
    ("tree", "dotted"),
    [
        ({"training": {"rounds": 0}}, "training.rounds"),
        ({"privacy": {"delta": 2}}, "privacy.delta"),
        ({"model": {"kind": "tree"}}, "model.kind"),
        ({"training": {"strategy": "fedsgd"}}, "training.strategy"),
        ({"data": {"synthetic": {"institutions": 0}}}, "data.synthetic.institutions"),
        ({"privacy": {"target_epsilon": -1}}, "privacy.target_epsilon"),
    ],
)
def test_bad_value_is_rejected_naming_key(tmp_path, tree, dotted):
    cfg = _write(tmp_path / "c.yaml", tree)
    with pytest.raises(FedriskInputError) as info:
        load_config(cfg, work_dir=tmp_path)
    assert f"'{dotted}'" in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_override_value_is_rejected_naming_key(tmp_path):
    with pytest.raises(FedriskInputError, match="training.rounds"):
        load_config(None, {"rounds": 0}, work_dir=tmp_path)


def test_unknown_override_key_is_rejected(tmp_path):
    with pytest.raises(FedriskInputError, match=r"training\.roundz.*unknown key"):
        load_config(None, {"training.roundz": 3}, work_dir=tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "privacy: {ledger_dir: /tmp/fresh}\n",
        "privacy: {accountant: prv}\n",
        "data: {source: files, files: {a: 5}}\n",
        "data: {source: files, files: {a: null}}\n",
    ],
)
def test_non_string_path_values_are_input_errors(tmp_path, text):
    """A path key holding a non-string is a user mistake: a one-line input error."""
    cfg = _write(tmp_path / "c.yaml", text)
    with pytest.raises(FedriskInputError):
        load_config(cfg, work_dir=tmp_path)


def test_negative_seed_is_rejected_with_its_key(tmp_path):
    """numpy's generators refuse negative seeds: the config refuses them first, naming the key."""
    with pytest.raises(FedriskInputError, match="key 'seed': Input should be greater than or equal to 0"):
        load_config(None, {"seed": -1, "data.synthetic.rows": 500}, work_dir=tmp_path)


def test_the_largest_seed_is_usable(tmp_path):
    from fedrisk.data import load_institution

    cfg = load_config(None, {"seed": 2**32 - 1, "data.synthetic.rows": 500}, work_dir=tmp_path)
    assert len(load_institution(cfg.data, "inst01", cfg.seed).frame) > 0


# ---------------------------------------------------------------- overrides


def test_overrides_via_aliases(tmp_path):
    cfg = load_config(
        None,
        {
            "rounds": 3,
            "epsilon": 1.5,
            "institutions": 7,
            "seed": 9,
            "tracking_uri": "sqlite:///x.db",
        },
        work_dir=tmp_path,
    )
    assert cfg.training.rounds == 3
    assert cfg.privacy.target_epsilon == 1.5
    assert cfg.data.synthetic.institutions == 7
    assert cfg.seed == 9
    assert cfg.tracking.uri == f"sqlite:///{tmp_path.resolve()}/x.db"
    assert cfg.institution_count_hint() == 7


def test_dotted_override_on_top_of_file(tmp_path):
    cfg_file = _write(tmp_path / "c.yaml", {"training": {"rounds": 4, "local_epochs": 2}})
    cfg = load_config(cfg_file, {"training.rounds": 6, "model.kind": "logistic"}, work_dir=tmp_path)
    assert cfg.training.rounds == 6
    assert cfg.training.local_epochs == 2
    assert cfg.model.kind == "logistic"


def test_absolute_and_server_tracking_uris_unchanged(tmp_path):
    absolute = load_config(None, {"tracking_uri": "sqlite:////abs/m.db"}, work_dir=tmp_path)
    assert absolute.tracking.uri == "sqlite:////abs/m.db"
    server = load_config(None, {"tracking_uri": "http://mlflow:5000"}, work_dir=tmp_path)
    assert server.tracking.uri == "http://mlflow:5000"
    plain = load_config(None, {"tracking_uri": "mlruns"}, work_dir=tmp_path)
    assert plain.tracking.uri == str((tmp_path / "mlruns").resolve())


# ---------------------------------------------------------------- paths


def test_relative_data_paths_resolve_against_config_dir(tmp_path):
    cfg_dir = tmp_path / "project" / "configs"
    work = tmp_path / "work"
    work.mkdir()
    cfg_file = _write(
        cfg_dir / "c.yaml",
        {
            "data": {"source": "files", "files": {"a": "data/a.csv", "b": "../b.parquet"}},
            "tracking": {"uri": "sqlite:///runs.db"},
        },
    )
    cfg = load_config(cfg_file, work_dir=work)
    assert cfg.data.files == {
        "a": str((cfg_dir / "data" / "a.csv").resolve()),
        "b": str((tmp_path / "project" / "b.parquet").resolve()),
    }
    assert cfg.tracking.uri == f"sqlite:///{work.resolve()}/runs.db"


def test_single_path_resolves_against_config_dir(tmp_path):
    cfg_dir = tmp_path / "cfg"
    cfg_file = _write(
        cfg_dir / "c.yaml",
        {"data": {"source": "files", "path": "all.csv", "institution_column": "lender"}},
    )
    cfg = load_config(cfg_file, work_dir=tmp_path / "elsewhere")
    assert cfg.data.path == str((cfg_dir / "all.csv").resolve())


def test_a_campaign_cannot_name_an_institutions_ledger(tmp_path):
    """The ledger lives in the institution's home; a campaign asking to put it elsewhere (a fresh
    budget) is refused on load, naming the key."""
    cfg = load_config(None, work_dir=tmp_path)
    assert cfg.tracking.uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    with pytest.raises(FedriskInputError, match="key 'privacy.ledger_dir': unknown key"):
        load_config(None, {"privacy.ledger_dir": str(tmp_path / "fresh")}, work_dir=tmp_path)


def test_relative_config_path_is_taken_from_work_dir(tmp_path):
    _write(tmp_path / "sub" / "c.yaml", {"training": {"rounds": 2}})
    cfg = load_config("sub/c.yaml", work_dir=tmp_path)
    assert cfg.training.rounds == 2


# ---------------------------------------------------------------- file errors


def test_missing_config_file_names_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FedriskInputError) as info:
        load_config(missing, work_dir=tmp_path)
    assert str(missing) in str(info.value)
    assert "not found" in str(info.value)


def test_invalid_yaml_names_file(tmp_path):
    cfg = _write(tmp_path / "bad.yaml", "training:\n  rounds: [1, 2\n  other: {\n")
    with pytest.raises(FedriskInputError) as info:
        load_config(cfg, work_dir=tmp_path)
    assert str(cfg) in str(info.value)
    assert "YAML" in str(info.value)


def test_yaml_that_is_not_a_mapping_names_file(tmp_path):
    cfg = _write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(FedriskInputError) as info:
        load_config(cfg, work_dir=tmp_path)
    assert str(cfg) in str(info.value)


def test_empty_yaml_gives_defaults(tmp_path):
    cfg = _write(tmp_path / "empty.yaml", "")
    assert load_config(cfg, work_dir=tmp_path).model_dump() == load_config(
        None, work_dir=tmp_path
    ).model_dump()


# ---------------------------------------------------------------- data layouts


def test_files_source_without_layout_is_rejected(tmp_path):
    cfg = _write(tmp_path / "c.yaml", {"data": {"source": "files"}})
    with pytest.raises(FedriskInputError) as info:
        load_config(cfg, work_dir=tmp_path)
    assert "data" in str(info.value)
    assert "exactly one" in str(info.value)


def test_files_source_with_two_layouts_is_rejected(tmp_path):
    cfg = _write(
        tmp_path / "c.yaml",
        {
            "data": {
                "source": "files",
                "files": {"a": "a.csv"},
                "path": "all.csv",
                "institution_column": "lender",
            }
        },
    )
    with pytest.raises(FedriskInputError, match="exactly one"):
        load_config(cfg, work_dir=tmp_path)


def test_files_source_with_column_and_partition_is_rejected():
    with pytest.raises(ValueError, match="exactly one"):
        DataSpec(
            source="files",
            path="/x.csv",
            institution_column="lender",
            partition={"institutions": 3},
        )


@pytest.mark.parametrize(
    "data",
    [
        {"source": "files", "files": {"a": "a.csv", "b": "b.csv"}},
        {"source": "files", "path": "all.csv", "institution_column": "lender"},
        {"source": "files", "path": "all.csv", "partition": {"institutions": 4}},
    ],
)
def test_each_single_layout_is_accepted(tmp_path, data):
    cfg = load_config(_write(tmp_path / "c.yaml", {"data": data}), work_dir=tmp_path)
    assert cfg.data.source == "files"


def test_monitor_credit_yaml_equals_and_lists_the_monitoring_defaults(tmp_path):
    from fedrisk.monitor_config import MonitorConfig, load_monitor_config

    shipped = load_monitor_config(REPO / "configs" / "monitor_credit.yaml", work_dir=tmp_path)
    assert shipped == load_monitor_config(None, work_dir=tmp_path)
    raw = yaml.safe_load((REPO / "configs" / "monitor_credit.yaml").read_text())
    assert set(raw) == set(MonitorConfig.model_fields)
    for name in ("monitor_credit_downturn.yaml", "monitor_fraud.yaml"):
        load_monitor_config(REPO / "configs" / name, work_dir=tmp_path)


def test_monitor_config_errors_name_the_key(tmp_path):
    from fedrisk.monitor_config import load_monitor_config

    with pytest.raises(FedriskInputError, match="key 'levels.psi'.*yellow < orange < severe"):
        load_monitor_config(None, {"levels.psi.yellow": 0.3}, work_dir=tmp_path)
    with pytest.raises(FedriskInputError, match="windows.source 'files' needs windows.files"):
        load_monitor_config(None, {"windows.source": "files"}, work_dir=tmp_path)
    with pytest.raises(FedriskInputError, match="unknown key"):
        load_monitor_config(None, {"levels.psi.amber": 0.3}, work_dir=tmp_path)


def test_the_shipped_policies_are_the_package_data():
    """configs/ holds the user-facing copies; the installed package reads its own."""
    from fedrisk.policy import DEFAULT_POLICIES

    root = Path(__file__).resolve().parents[1]
    for task, packaged in DEFAULT_POLICIES.items():
        assert packaged.is_relative_to(root / "fedrisk")
        assert (root / "configs" / f"gate_{task}.yaml").read_text() == packaged.read_text()


@pytest.mark.parametrize("overrides, says", [
    ({"data.synthetic.sizes": "equals"}, "key 'data.synthetic.sizes': Input should be 'skewed' or 'equal'"),
    ({"task": "fraud", "data.synthetic.sizes": "equal"}, "built-in default config: data.synthetic.sizes applies to the credit"),
    ({"tracking.institution_metrics_limit": -1},
     "key 'tracking.institution_metrics_limit': Input should be greater than or equal to 0"),
    ({"training.round_timeout": 0}, "key 'training.round_timeout': Input should be greater than 0"),
])
def test_bad_values_are_refused_naming_their_key(overrides, says):
    with pytest.raises(FedriskInputError) as err:
        load_config(None, overrides)
    assert says in str(err.value) and "(top level)" not in str(err.value) and "Value error" not in str(err.value)
