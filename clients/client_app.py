"""fedrisk ClientApp: the institution's guard first, then its own data, the library, the reply.

Every handler opens the node's session for the campaign (config parsed and data loaded once
per campaign), checks the request against the institution's own policy before reading any
data (`NodeSession.guard`), calls one function of `fedrisk.institution` (which charges each
release to the ledger before noising it) and encodes the result with `fedrisk.protocol`.
Bad input, a spent budget and a policy refusal become error replies carrying one line (a data
error's numbers replaced by N: `fedrisk.protocol.released_reason`; in full in the node's own
log); the server excludes the institution and goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients.mods import institution_clipping_mod, secure_aggregation_mod, under_secure_aggregation
from fedrisk import drill, institution, protocol, witness
from fedrisk.errors import FedriskInputError
from fedrisk.guard import check_histograms
from fedrisk.session import NodeSession, open_session

torch.set_num_threads(1)
app = ClientApp(mods=[secure_aggregation_mod])
log = logging.getLogger("fedrisk")


def _handle(msg: Message, context: Context, message_type: str,
            work: Callable[[NodeSession, protocol.Request], Message], monitoring: bool = False) -> Message:
    """Open the node's session, guard it, run `work`; a fedrisk error becomes a one-line reply."""
    session: NodeSession | None = None
    try:
        request = protocol.read_request(msg)
        session = open_session(request.campaign_config, dict(context.node_config), request.institutions)
        drill.refuse_deployed(session.config, session.name, session.deployed)
        for kind in protocol.implied_messages(message_type, session.config):
            session.guard(kind, monitoring)
        check_histograms(session.policy, request.grid, request.edges, session.name)
        if not monitoring:  # what the coordinator's log said when this message left, or that it said nothing
            witness.record(session.home, session.name, request.audit_head, request.campaign, request.server_round)
        if request.preprocessor is not None:  # checked before anything is charged
            session.preprocessor(request.preprocessor, monitoring)
        if not monitoring:  # the consortium's columns, once its terminal table has been shared
            session.attach_table(request.campaign, request.table)
        return work(session, request)
    except FedriskInputError as err:
        if session is not None and err.institution is None:  # every refusal names the institution it speaks for
            err.institution = session.name
        log.warning("%s refused: %s", message_type, err.one_line())  # in full, in the institution's own log
        return protocol.error_reply(msg, err)


def _privacy(session: NodeSession, request: protocol.Request) -> dict:
    return institution.privacy_summary(session, request.campaign)


@app.query("bounds")
def bounds(msg: Message, context: Context) -> Message:
    def work(session: NodeSession, request: protocol.Request) -> Message:
        admission = institution.admit(session, request.campaign)
        return protocol.admission_reply(msg, session.name, admission, _privacy(session, request))

    return _handle(msg, context, protocol.BOUNDS, work)


@app.query("terminals")
def terminals(msg: Message, context: Context) -> Message:
    monitoring = protocol.is_monitoring(msg)  # a monitoring window's table, or a campaign's

    def work(session: NodeSession, request: protocol.Request) -> Message:
        if monitoring:
            table, noise = institution.window_terminal_counts(
                session, request.shared, request.campaign, request.edges or {}, request.score_grid, request.window_days,
                request.window, request.windows)
        else:
            table, noise = institution.terminal_counts(session, request.campaign), session.plan(request.campaign).shared_counts
        return protocol.terminals_reply(msg, session.name, table, noise, _privacy(session, request))

    return _handle(msg, context, protocol.TERMINALS, work, monitoring=monitoring)


def _table_round(msg: Message, context: Context) -> Message:
    secure = under_secure_aggregation(context)

    def work(session: NodeSession, request: protocol.Request) -> Message:
        table = institution.terminal_counts(session, request.campaign, secure=secure)
        noise = session.plan(request.campaign).shared_counts
        return protocol.table_round_reply(msg, session.name, table, noise, _privacy(session, request))

    return _handle(msg, context, protocol.TERMINALS, work)


@app.query("statistics")
def statistics(msg: Message, context: Context) -> Message:
    def work(session: NodeSession, request: protocol.Request) -> Message:
        if request.bounds is None:
            raise FedriskInputError("a statistics request without the consortium's bounds", institution=session.name)
        stats = institution.statistics(session, request.campaign, request.bounds)
        return protocol.statistics_reply(msg, session.name, stats, _privacy(session, request))

    return _handle(msg, context, protocol.STATISTICS, work)


@app.train(mods=[institution_clipping_mod])
def train(msg: Message, context: Context) -> Message:
    if protocol.is_table_round(msg):  # the terminal table under SecAgg+, not a model round
        return _table_round(msg, context)

    def work(session: NodeSession, request: protocol.Request) -> Message:
        received = protocol.model_of(msg)
        validation = None
        if session.config.evaluation.every_round:  # the model this round starts from, on the validation rows
            validation = institution.evaluate_split(session, request.shared, received, "validation", request.campaign,
                                                    request.score_grid, request.groups or {}, request.server_round)
        result = institution.train_round(session, request.shared, received, request.server_round, request.campaign,
                                         request.proximal_mu)
        return protocol.train_reply(msg, session.name, result, validation, _privacy(session, request))

    return _handle(msg, context, protocol.TRAIN, work)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    def work(session: NodeSession, request: protocol.Request) -> Message:
        received = protocol.model_of(msg)
        stats = {split: institution.evaluate_split(session, request.shared, received, split, request.campaign,
                                                   request.score_grid, request.groups or {}, request.server_round)
                 for split in request.splits}
        return protocol.evaluate_reply(msg, session.name, stats, _privacy(session, request))

    return _handle(msg, context, protocol.EVALUATE, work)


@app.query("importance")
def importance(msg: Message, context: Context) -> Message:
    def work(session: NodeSession, request: protocol.Request) -> Message:
        histograms = institution.importance_histograms(session, request.shared, protocol.model_of(msg),
                                                       request.campaign, request.score_grid)
        return protocol.importance_reply(msg, session.name, histograms, _privacy(session, request))

    return _handle(msg, context, protocol.IMPORTANCE, work)


@app.query("reference")
def reference(msg: Message, context: Context) -> Message:
    def work(session: NodeSession, request: protocol.Request) -> Message:
        counts = institution.reference_counts(session, request.shared, protocol.model_of(msg), request.campaign,
                                              request.edges or {})
        noise = session.plan(request.campaign).statistics
        return protocol.counts_reply(msg, session.name, counts, _privacy(session, request), noise=noise)

    return _handle(msg, context, protocol.REFERENCE, work)


@app.query("monitor")
def monitor(msg: Message, context: Context) -> Message:
    def work(session: NodeSession, request: protocol.Request) -> Message:
        counts, window = institution.window_statistics(
            session, request.shared, protocol.model_of(msg), request.campaign, request.edges or {}, request.score_grid,
            request.window_days, request.window, request.windows, request.table)
        noise = float(session.ledger().plans[request.campaign]["noise"]["monitoring"])
        return protocol.counts_reply(msg, session.name, counts, _privacy(session, request), window, noise)

    return _handle(msg, context, protocol.MONITOR, work, monitoring=True)
