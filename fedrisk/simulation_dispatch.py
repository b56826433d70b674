"""Flower's simulation engine hands out messages in one pass, not one pass per institution.

Flower 1.41/1.42's simulation engine (`vce_api.add_messages_to_queue`) asks its in-memory link
state, every 0.1 s and once per node, for that node's next message; each ask scans and
re-checks every stored message. With N institutions that is N^2 checks a sweep, for as long as
a round's messages are out: at 1,000 institutions three quarters of the driver's samples were in
it and the rounds waited on the GIL. `add_messages_to_queue` here hands out the same messages
(at most one per node and sweep, undelivered, each checked and expired as Flower checks it, in
the nodes' order) from one scan. It replaces Flower's only on the versions it was read from.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from queue import Queue

import flwr
from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkState
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

PATCHED_VERSIONS = ("1.41.0", "1.42.0")  # whose add_messages_to_queue and InMemoryLinkState this mirrors
SWEEP_SECONDS = 0.02  # Flower waits 0.1 s between sweeps, which every message paid; a scan of 1,000 stored messages takes 1.5 ms


def next_messages(state: LinkState, node_ids: Iterable[int]) -> list[Message]:
    """What one sweep of Flower's loop (`get_message_ins(node_id, limit=1)` for each node in
    turn) returns, from one scan of the stored messages."""
    order = list(node_ids)
    if not isinstance(state, InMemoryLinkState):
        return [m for node in order for m in state.get_message_ins(node_id=node, limit=1)]
    wanted, picked = set(order), {}
    with state.lock:
        state._check_stored_messages(set(state.message_ins_store))  # expired or outside the federation: deleted
        for msg in list(state.message_ins_store.values()):
            node = msg.metadata.dst_node_id
            if node in wanted and node not in picked and msg.metadata.delivered_at == "":
                picked[node] = msg
    delivered_at = now().isoformat()
    for msg in picked.values():
        msg.metadata.delivered_at = delivered_at
    return [picked[node] for node in order if node in picked]


def add_messages_to_queue(state: LinkState, queue: Queue[Message], nodes_mapping: dict[int, int],
                          f_stop: threading.Event) -> None:
    """Flower's loop, with one scan a sweep and five sweeps for its one."""
    while not f_stop.is_set():
        for msg in next_messages(state, nodes_mapping.keys()):
            queue.put(msg)
        f_stop.wait(SWEEP_SECONDS)


def install() -> bool:
    """Use the one-scan loop in this process's simulation engine; False on a Flower it was not read from."""
    if flwr.__version__ not in PATCHED_VERSIONS:
        return False
    vce_api.add_messages_to_queue = add_messages_to_queue  # type: ignore[assignment]
    return True
