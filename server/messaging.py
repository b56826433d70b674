"""Talking to the institutions: wait for their nodes, send one request to each, collect replies."""

from __future__ import annotations

import logging
import time

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedrisk import protocol

NODE_WAIT_SECONDS = 120.0
REPLY_TIMEOUT_SECONDS = 3600.0

log = logging.getLogger("fedrisk.server")


def wait_for_nodes(grid: Grid, expected: int, timeout: float = NODE_WAIT_SECONDS) -> list[int]:
    """Wait until `expected` nodes are connected or the timeout passes."""
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    last_report = time.monotonic()
    while len(nodes) < expected and time.monotonic() < deadline:
        if time.monotonic() - last_report > 10:
            log.warning("waiting for institutions: %d of %d connected", len(nodes), expected)
            last_report = time.monotonic()
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    if len(nodes) < expected:
        log.warning("going on with %d of %d institutions connected", len(nodes), expected)
    return sorted(nodes)


def query(grid: Grid, nodes: list[int], message_type: str, config: ConfigRecord,
          arrays: ArrayRecord | None = None) -> list[Message]:
    """The same request to every node; the replies that came back within the timeout."""
    content = RecordDict({protocol.CONFIG: config})
    if arrays is not None:
        content[protocol.ARRAYS] = arrays
    messages = [Message(content, dst_node_id=n, message_type=message_type) for n in nodes]
    return list(grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_SECONDS))
