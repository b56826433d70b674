"""fedrisk ClientApp: reads this node's own data, calls the library, replies with records.

Every handler opens the node's session for the campaign (config parsed and data loaded once
per campaign), calls one function of `fedrisk.institution` and encodes its result with
`fedrisk.protocol`. A train message also evaluates the model it carries on the validation
rows, so one exchange per round brings back both. Input errors and budget refusals become
error replies carrying one line; the server excludes the institution and goes on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients.mods import institution_clipping_mod, secure_aggregation_mod
from fedrisk import institution, protocol
from fedrisk.errors import FedriskInputError
from fedrisk.session import NodeSession, open_session

torch.set_num_threads(1)
app = ClientApp(mods=[secure_aggregation_mod])


def _handle(msg: Message, context: Context, work: Callable[[NodeSession, protocol.Request], Message]) -> Message:
    """Open the node's session for the request and run `work`; a fedrisk error becomes a reply."""
    try:
        request = protocol.read_request(msg)
        session = open_session(request.campaign_config, dict(context.node_config), request.institutions)
        return work(session, request)
    except FedriskInputError as err:
        return protocol.error_reply(msg, err)


@app.query("statistics")
def statistics(msg: Message, context: Context) -> Message:
    return _handle(msg, context, lambda session, request: protocol.statistics_reply(
        msg, session.name, institution.statistics(session)))


@app.train(mods=[institution_clipping_mod])
def train(msg: Message, context: Context) -> Message:
    def work(session: NodeSession, request: protocol.Request) -> Message:
        received = protocol.model_of(msg)
        validation = institution.evaluate_split(session, request.shared, received, "validation")
        result = institution.train_round(session, request.shared, received, request.server_round,
                                         request.campaign, request.proximal_mu)
        return protocol.train_reply(msg, session.name, result, validation)

    return _handle(msg, context, work)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    def work(session: NodeSession, request: protocol.Request) -> Message:
        received = protocol.model_of(msg)
        return protocol.evaluate_reply(msg, session.name, {
            split: institution.evaluate_split(session, request.shared, received, split)
            for split in request.splits})

    return _handle(msg, context, work)


@app.query("importance")
def importance(msg: Message, context: Context) -> Message:
    return _handle(msg, context, lambda session, request: protocol.importance_reply(
        msg, session.name, institution.importance_histograms(session, request.shared,
                                                             protocol.model_of(msg))))


@app.query("reference")
def reference(msg: Message, context: Context) -> Message:
    return _handle(msg, context, lambda session, request: protocol.counts_reply(
        msg, session.name, institution.reference_counts(session, request.shared, protocol.model_of(msg))))


@app.query("monitor")
def monitor(msg: Message, context: Context) -> Message:
    def work(session: NodeSession, request: protocol.Request) -> Message:
        counts, window = institution.window_statistics(session, request.shared, protocol.model_of(msg),
                                                       request.edges or {}, request.window_days)
        return protocol.counts_reply(msg, session.name, counts, window)

    return _handle(msg, context, work)
