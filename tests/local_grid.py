"""A Flower Grid that delivers each message to the real ClientApp in this process.

The transport is the only stand-in: messages are real Flower `Message` objects, serialised
with Flower's own protobuf serde on the way in and out (each node gets its own copy, as over
a network), the ClientApp is the project's, with its mods, and each node keeps its own
`Context` across messages (SecAgg+ keeps its protocol state there). A whole campaign runs in seconds,
without Ray, so the fast test tier covers the server's phases and the ClientApp handlers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class LocalGrid(Grid):
    def __init__(self, client_app: ClientApp, node_configs: list[dict[str, Any]]) -> None:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
        self.client_app = client_app
        self.contexts = {
            100 + i: Context(run_id=1, node_id=100 + i, node_config=dict(node), state=RecordDict(), run_config={})
            for i, node in enumerate(node_configs)
        }
        self.replies: dict[str, Message] = {}
        self.delivered: list[Message] = []  # every request, for tests that inspect the wire
        self.answered: list[Message] = []  # every reply, as the server received it
        self.silent: set[int] = set()  # nodes that never answer (a dropped institution)
        self._run: Any = None

    @classmethod
    def simulation(cls, client_app: ClientApp, institutions: int) -> LocalGrid:
        """Nodes as Flower's simulation engine numbers them: one partition each."""
        return cls(client_app, [{"partition-id": i, "num-partitions": institutions} for i in range(institutions)])

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.delivered.append(msg)
            if msg.metadata.dst_node_id not in self.silent:
                self.replies[msg.metadata.message_id] = self._deliver(msg)
                self.answered.append(self.replies[msg.metadata.message_id])
            ids.append(msg.metadata.message_id)
        return ids

    def _deliver(self, msg: Message) -> Message:
        received = _wire(msg)
        try:
            reply = self.client_app(received, self.contexts[msg.metadata.dst_node_id])
        except Exception as exc:  # what Flower's runtime sends back when a ClientApp raises
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc).__name__}: {exc}"),
                            reply_to=received)
        return _wire(reply)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))


def _wire(msg: Message) -> Message:
    """The message as the other side receives it: through Flower's protobuf serde."""
    return message_from_proto(message_to_proto(msg))
