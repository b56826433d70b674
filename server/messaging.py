"""Talking to the institutions: wait for their nodes, send one request to each, collect replies."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedrisk import protocol

NODE_WAIT_SECONDS = 120.0
REPLY_TIMEOUT_SECONDS = 3600.0

FIRST_PULL_SECONDS, LAST_PULL_SECONDS = 0.005, 0.05  # replies are looked for ever less often in between

log = logging.getLogger("fedrisk.server")


class PromptGrid(Grid):
    """The grid the ServerApp is given, looking for replies soon after they arrive. Flower's
    `send_and_receive` sleeps a fixed interval between pulls: 0.1 s in a simulation, 3 s in a
    deployment, which a round with a few exchanges pays each time. This one starts at 5 ms and
    waits 1.5 times longer after each empty pull, up to 50 ms: a reply waits at most 50 ms, and a
    long round costs the SuperLink 20 small pulls a second. (Capped at 1 s, rounds of 1-14 s
    came out in whole seconds.)"""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run_id: int) -> None:
        self.grid.set_run(run_id)

    @property
    def run(self):  # type: ignore[no-untyped-def] # Flower's Run
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:  # type: ignore[no-untyped-def] # Flower's signature
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's contract: push, then pull until every reply is in or `timeout` passes."""
        waiting = set(self.push_messages(messages))
        end = time.monotonic() + (timeout or 0.0)
        replies: list[Message] = []
        pause = FIRST_PULL_SECONDS
        while timeout is None or time.monotonic() < end:
            pulled = list(self.pull_messages(waiting))
            replies += pulled
            waiting -= {m.metadata.reply_to_message_id for m in pulled}
            if not waiting:
                break
            time.sleep(pause)
            pause = min(pause * 1.5, LAST_PULL_SECONDS)
        return replies


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
