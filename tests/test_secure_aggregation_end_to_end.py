"""SecAgg+ and institution-level DP on the real Flower simulation engine and MLflow store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_policies
from mlflow.tracking import MlflowClient

from fedrisk.config import load_config
from fedrisk.errors import FedriskInputError
from fedrisk.launcher import simulate
from fedrisk.privacy import institution_epsilon, institution_noise_multiplier
from fedrisk.serving import load_model_files

SMALL = {"institutions": 3, "rounds": 2, "data.synthetic.rows": 9000, "training.batch_size": 128}


def _config(tmp_path: Path, name: str, **extra):
    overrides = {**SMALL, "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                 "audit.path": str(tmp_path / "audit.jsonl"), **extra}
    return load_config(None, overrides, work_dir=tmp_path)


def _weights(config, outcome) -> dict[str, np.ndarray]:
    state, _, _ = load_model_files(outcome.tags["fedrisk.model_uri"], config.tracking.uri)
    return {k: v.numpy() for k, v in state.items()}


@pytest.mark.slow
def test_secure_aggregation_gives_the_weighted_average_of_plain_fedavg(tmp_path):
    """One round, so the only difference is SecAgg+'s quantisation: each institution's weighted
    update is rounded (stochastically, by at most one step of 2 * clipping_range /
    quantization_range) and the sum divided by the weights' total, at least 1 (the largest
    weight is max_weight). A second round would amplify that by training, by no known bound."""
    write_policies(["inst01", "inst02", "inst03"], **{"privacy.require_dp": False})  # exact, to compare weights
    one_round = {"privacy.enabled": False, "rounds": 1}
    plain_cfg = _config(tmp_path, "plain", **one_round)
    secure_cfg = _config(tmp_path, "secure", **one_round, **{"secure_aggregation.enabled": True})
    plain, secure = simulate(plain_cfg), simulate(secure_cfg)
    assert plain.status == secure.status == "completed"
    a, b = _weights(plain_cfg, plain), _weights(secure_cfg, secure)
    assert a.keys() == b.keys()
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    settings = secure_cfg.secure_aggregation
    step = 2 * settings.clipping_range / settings.quantization_range
    assert 0.0 < worst <= 3 * step  # quantised, so not bit-equal; three institutions' rounding at most
    assert "SecAgg+ (num_shares 3, reconstruction_threshold 2" in secure.tags["fedrisk.secure_aggregation"]
    assert "fedrisk.secure_aggregation" not in plain.tags
    history = MlflowClient(secure_cfg.tracking.uri).get_metric_history(secure.run_id, "secure_aggregation_seconds")
    assert [m.step for m in history] == [1]


@pytest.mark.slow
def test_institution_level_dp_with_secure_aggregation_reports_both_epsilons(tmp_path):
    config = _config(tmp_path, "both", **{"secure_aggregation.enabled": True, "privacy.institution_level.enabled": True,
                                           "privacy.institution_level.target_epsilon": 8.0})
    outcome = simulate(config)
    assert outcome.status == "completed"
    noise = institution_noise_multiplier(8.0, 1e-5, 2)
    assert outcome.metrics["institution_epsilon"] == pytest.approx(institution_epsilon(noise, 2, 1e-5))
    assert outcome.metrics["institution_epsilon"] <= 8.0
    assert outcome.metrics["institution_noise_stddev"] == pytest.approx(noise * 1.0 / 3)  # z * C / institutions
    assert outcome.tags["fedrisk.institution_epsilon"].startswith(f"{outcome.metrics['institution_epsilon']:.4f} "
                                                                  "(institution level, delta=1e-05, accountant=rdp")
    assert "epsilon_final_max" in outcome.metrics  # the record-level epsilon, reported beside it


@pytest.mark.slow
def test_weights_outside_the_clipping_range_are_refused_not_clipped(tmp_path):
    config = _config(tmp_path, "range", **{"secure_aggregation.enabled": True,
                                            "secure_aggregation.clipping_range": 0.05})
    outcome = simulate(config)
    assert outcome.status == "stopped"
    assert "outside secure_aggregation.clipping_range 0.05; raise it" in outcome.tags["fedrisk.excluded"]


def test_institution_budget_too_small_refused_before_any_round(tmp_path):
    config = _config(tmp_path, "budget", **{"privacy.institution_level.enabled": True,
                                             "privacy.institution_level.noise_multiplier": 0.3})
    with pytest.raises(FedriskInputError, match="privacy.institution_level.noise_multiplier 0.3 spends epsilon"):
        simulate(config)


@pytest.mark.parametrize("extra, message", [
    ({"secure_aggregation.enabled": True, "privacy.institution_level.enabled": True,
      "privacy.institution_level.clipping": "server"}, "secure aggregation hides"),
    ({"secure_aggregation.reconstruction_threshold": 3}, "reconstruction_threshold must be below num_shares"),
    ({"secure_aggregation.num_shares": 4, "secure_aggregation.reconstruction_threshold": 3}, "num_shares must be odd"),
    ({"secure_aggregation.num_shares": 5, "secure_aggregation.reconstruction_threshold": 2}, "more than half"),
    ({"privacy.institution_level.enabled": True, "training.fraction": 0.5}, "needs training.fraction 1.0"),
])
def test_impossible_secure_aggregation_settings_fail_on_load(tmp_path, extra, message):
    with pytest.raises(FedriskInputError, match=message):
        _config(tmp_path, "x", **extra)


def test_more_shares_than_institutions_refused_before_any_round(tmp_path):
    config = _config(tmp_path, "shares", **{"secure_aggregation.enabled": True, "secure_aggregation.num_shares": 5,
                                             "secure_aggregation.reconstruction_threshold": 3})
    with pytest.raises(FedriskInputError, match="num_shares 5 needs at least as many institutions; 3 can take part"):
        simulate(config)
