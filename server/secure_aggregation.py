"""Secure aggregation (Flower's SecAgg+) under the Message-API strategy.

Flower 1.41 ships SecAgg+ only as a legacy workflow (`SecAggPlusWorkflow`, driven by a legacy
strategy), while `Strategy.start()` sends one batch of messages per round. `SecureAggregationGrid`
wraps the grid handed to `start()`: a round's train messages run through the workflow's four
stages (set-up, key sharing, masked vectors, unmasking) unchanged; the other messages pass
through. Each institution's reply then comes back with the unmasked weighted average in place
of its weights, so the strategy averages as usual and its exclusions, metrics and DP wrapper
work as without SecAgg+. What the server still sees per institution: its reply's metrics and
evaluation statistics, and its aggregation weight (its training rows, or 1).

The workflow's stages are not public API: this module is pinned to flwr 1.41 (constraints.txt).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from fedrisk.config import SecureAggregation


class SecureAggregationFailed(Exception):
    """Too few institutions completed a round's protocol to unmask the sum."""


class _Node:  # the legacy ClientProxy, of which the workflow reads only node_id
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


class _Nodes:  # the legacy ClientManager, of which the workflow reads only the count
    def __init__(self, count: int) -> None:
        self.count = count

    def num_available(self) -> int:
        return self.count


class _Sum:
    """The legacy strategy the workflow drives: it samples the round's nodes and keeps the sum."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids
        self.average: list | None = None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        empty = Parameters(tensors=[], tensor_type="")
        return [(_Node(n), FitIns(empty, {})) for n in self.node_ids]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple:
        parameters = results[0][1].parameters  # the workflow gives every result the unmasked average
        self.average = parameters_to_ndarrays(parameters)
        return parameters, {}


class _Recorder:
    """The grid as the workflow sees it: every reply kept, to return the errors."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.replies: list[list[Message]] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.replies.append(replies)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


class SecureAggregationGrid:
    """A grid whose train rounds run Flower's SecAgg+ protocol."""

    def __init__(self, grid: Grid, settings: SecureAggregation, max_weight: float) -> None:
        self.grid = grid
        self.settings = settings
        self.max_weight = max_weight
        self.round = 0
        self.seconds: list[float] = []  # protocol time of each round

    def __getattr__(self, name: str) -> Any:  # get_node_ids, push_messages, ...
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        batch = list(messages)
        train = [m for m in batch if m.metadata.message_type == MessageType.TRAIN]
        if not train:
            return list(self.grid.send_and_receive(batch, timeout=timeout))
        started = time.perf_counter()
        self.round += 1
        replies = self._secure_round(train)
        self.seconds.append(time.perf_counter() - started)
        others = [m for m in batch if m.metadata.message_type != MessageType.TRAIN]
        if others:  # institutions resting this round evaluate only
            replies += list(self.grid.send_and_receive(others, timeout=timeout))
        return replies

    def _secure_round(self, train: list[Message]) -> list[Message]:
        s = self.settings
        workflow = SecAggPlusWorkflow(
            num_shares=s.num_shares, reconstruction_threshold=s.reconstruction_threshold,
            max_weight=self.max_weight, clipping_range=s.clipping_range,
            quantization_range=s.quantization_range, timeout=s.timeout,
        )
        nodes = [m.metadata.dst_node_id for m in train]
        total = _Sum(nodes)
        context = LegacyContext(
            Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
            strategy=total, client_manager=_Nodes(len(nodes)),
        )
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({"current_round": self.round})
        context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        grid = _Recorder(self.grid)
        state = WorkflowState()
        done = workflow.setup_stage(grid, context, state)
        if done:
            # the strategy's own content goes out with the key shares, one copy per node:
            # the workflow adds each node's protocol record to it
            state.nid_to_fitins = {m.metadata.dst_node_id: RecordDict(dict(m.content.items())) for m in train}
            done = (workflow.share_keys_stage(grid, context, state)
                    and workflow.collect_masked_vectors_stage(grid, context, state)
                    and workflow.unmask_stage(grid, context, state))
        errors = [r for replies in grid.replies for r in replies if r.has_error()]
        if not done or total.average is None:
            if errors:  # the strategy excludes them and decides whether the campaign goes on
                return errors
            raise SecureAggregationFailed(
                f"secure aggregation round {self.round}: fewer than reconstruction_threshold "
                f"{s.reconstruction_threshold} institutions completed the protocol")
        names = list(train[0].content["arrays"].keys())
        average = ArrayRecord({k: Array(v) for k, v in zip(names, total.average, strict=True)})
        masked = grid.replies[2]  # the stage that carried the strategy's content
        replies = [r for replies in grid.replies[:2] for r in replies if r.has_error()]
        for reply in masked:
            if not reply.has_error():
                if any(len(record) for record in reply.content.array_records.values()):
                    raise SecureAggregationFailed(  # the institution's ClientApp lacks the SecAgg+ mod
                        f"secure aggregation round {self.round}: node {reply.metadata.src_node_id} sent its "
                        "weights in plaintext")
                reply.content = RecordDict({
                    key: average if isinstance(record, ArrayRecord) else record
                    for key, record in reply.content.items()
                    if not key.startswith("fitres.") and key != RECORD_KEY_CONFIGS
                })
            replies.append(reply)
        return replies
