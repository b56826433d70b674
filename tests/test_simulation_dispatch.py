"""Flower's simulation engine hands out messages through `fedrisk.simulation_dispatch`: one scan
of the link state a sweep instead of one per node (quadratic at a thousand institutions). It
must hand out exactly what Flower's own loop does, sweep after sweep, on Flower's real state."""

from __future__ import annotations

import flwr
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fedrisk import simulation_dispatch


def engine_state(nodes: int, destinations: list[int], ttl: float | None = None):
    """Flower's in-memory link state as `run_simulation` sets it up, with `nodes` registered
    SuperNodes and one message pushed by the ServerApp's grid to each node index in `destinations`."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    node_ids = list(_register_nodes(num_nodes=nodes, state_factory=factory))
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    state = factory.state()
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    messages = []
    for i, d in enumerate(destinations):
        msg = Message(RecordDict({"config": ConfigRecord({"i": i})}), dst_node_id=node_ids[d], message_type="query.x")
        if ttl is not None and i % 2:
            msg.metadata.ttl = ttl
        messages.append(msg)
    grid.push_messages(messages)
    return state, node_ids


def sweeps(state, node_ids, sweep) -> list[list[tuple[int, int]]]:
    """(node index, message number) handed out by each sweep until one hands out nothing."""
    out = []
    while batch := [(node_ids.index(m.metadata.dst_node_id), int(m.content["config"]["i"]))
                    for m in sweep(state, node_ids)]:
        out.append(batch)
    return out


def flowers_sweep(state, node_ids):
    """The body of Flower's `add_messages_to_queue` loop."""
    return [m for node in node_ids for m in state.get_message_ins(node_id=node, limit=1)]


@pytest.mark.parametrize("destinations", [[2, 0, 2, 3], [0] * 5, [4, 3, 2, 1, 0, 0, 1, 2], []])
def test_one_scan_hands_out_what_flowers_loop_does(destinations):
    expected = sweeps(*engine_state(6, destinations), flowers_sweep)
    assert sweeps(*engine_state(6, destinations), simulation_dispatch.next_messages) == expected
    assert sum(len(b) for b in expected) == len(destinations)


def test_expired_messages_are_dropped_as_flower_drops_them():
    twin, twin_ids = engine_state(4, [0, 1, 2, 3], ttl=1e-9)  # every second message expires at once
    assert sweeps(twin, twin_ids, flowers_sweep) == [[(0, 0), (2, 2)]]
    state, node_ids = engine_state(4, [0, 1, 2, 3], ttl=1e-9)
    assert sweeps(state, node_ids, simulation_dispatch.next_messages) == [[(0, 0), (2, 2)]]
    assert len(state.message_ins_store) == 2  # the expired ones deleted, as Flower's check deletes them


def test_installed_only_on_the_flower_it_mirrors(monkeypatch):
    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
    monkeypatch.setattr(flwr, "__version__", "9.9.9")
    assert not simulation_dispatch.install()
    monkeypatch.setattr(flwr, "__version__", "1.41.0")
    assert simulation_dispatch.install()
    assert vce_api.add_messages_to_queue is simulation_dispatch.add_messages_to_queue

