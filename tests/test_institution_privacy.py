"""Institution-level DP: the accountant against Flower's own RDP accountant, the budget check,
and the client-side clipping mod on a real message."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)

from clients.mods import institution_clipping_mod
from fedrisk.errors import BudgetExhaustedError
from fedrisk.privacy import institution_epsilon, institution_noise_multiplier

# epsilon at delta 1e-5 printed by Flower 1.41's RdpAccountant (flwr[dp], dp-accounting 0.6) for
# one Gaussian release per round with every client in every round (no amplification)
FLOWER_RDP = [(1.0, 3, 9.01), (1.0, 10, 19.05), (1.0, 50, 57.30), (2.0, 50, 22.02)]


@pytest.mark.parametrize("noise, rounds, expected", FLOWER_RDP)
def test_institution_epsilon_matches_flowers_accountant(noise, rounds, expected):
    assert institution_epsilon(noise, rounds, 1e-5) == pytest.approx(expected, abs=0.006)


def test_calibrated_noise_spends_the_budget_and_no_more():
    noise = institution_noise_multiplier(10.0, 1e-5, 8)
    spent = institution_epsilon(noise, 8, 1e-5)
    assert 9.98 <= spent <= 10.0
    assert institution_noise_multiplier(10.0, 1e-5, 8, noise_multiplier=2.0) == 2.0


def test_noise_too_small_for_the_rounds_is_refused_naming_the_key():
    with pytest.raises(BudgetExhaustedError, match="privacy.institution_level.noise_multiplier 0.5 spends epsilon"):
        institution_noise_multiplier(10.0, 1e-5, 20, noise_multiplier=0.5)


@pytest.fixture(autouse=True)
def _flower_run():
    """Flower stamps every new Message with the run it belongs to, as a ClientApp process does."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id = TaskIdentity._node_id = TaskIdentity._task_id = None


def _train_message(config: dict) -> Message:
    arrays = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32)), "b": Array(np.zeros(2, dtype=np.float32))})
    return Message(RecordDict({"arrays": arrays, "config": ConfigRecord(config)}), dst_node_id=1,
                   message_type=MessageType.TRAIN)


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def _trained(msg: Message, _context: Context) -> Message:
    """An institution's update from zero weights, of L2 norm sqrt(52)."""
    update = ArrayRecord({"w": Array(np.full(4, 3.0, dtype=np.float32)),
                          "b": Array(np.full(2, 4.0 / np.sqrt(2), dtype=np.float32))})
    return Message(RecordDict({"arrays": update}), reply_to=msg)


def test_client_clipping_bounds_the_update_norm():
    norm = float(np.sqrt(4 * 9 + 2 * 8))
    reply = institution_clipping_mod(_train_message({"clipping_norm": 1.5}), _context(), _trained)
    clipped = np.concatenate([a.numpy().ravel() for a in reply.content["arrays"].values()])
    assert np.linalg.norm(clipped) == pytest.approx(1.5, rel=1e-5)
    original = np.concatenate([np.full(4, 3.0), np.full(2, 4.0 / np.sqrt(2))])
    np.testing.assert_allclose(clipped, original * 1.5 / norm, rtol=1e-5)  # same direction


def test_without_a_clipping_norm_the_update_passes_unchanged():
    reply = institution_clipping_mod(_train_message({"server-round": 1}), _context(), _trained)
    np.testing.assert_array_equal(reply.content["arrays"]["w"].numpy(), np.full(4, 3.0))
