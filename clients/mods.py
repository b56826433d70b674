"""Client mods: Flower's SecAgg+ and DP clipping mods, switched on by what the server sends.

Flower 1.41 ships SecAgg+ only for legacy apps: `secaggplus_mod` reads the update from
`fitres.*` records. `secure_aggregation_mod` runs it around the Message-API train handler:
it hides the protocol's record from the handler, hands the mod the reply's weights and
aggregation weight in the legacy form, and checks first that they fit the protocol's fixed
range, which the mod would otherwise clip silently. The mod then masks the weights and
empties every ArrayRecord of the reply: no plaintext weights leave the institution.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.compat.common import recorddict_compat as compat

from fedrisk.protocol import (
    AGGREGATION_WEIGHT,
    ARRAYS,
    INPUT_ERROR,
    METRICS,
    POLICY_REFUSED,
    institution_of,
)

CLIPPING_NORM = "clipping_norm"  # Flower's key for the DP wrappers' clipping norm
SECURE_ROUND = "fedrisk.secure-round"  # in the node's own state while SecAgg+ masks the handler's reply


class _Refused(Exception):
    """The train handler refused (or its reply does not fit the protocol): reply with that."""

    def __init__(self, reply: Message) -> None:
        super().__init__()
        self.reply = reply


def _range_error(msg: Message, ctxt: Context, out: Message) -> Message | None:
    """An error reply when the update would be clipped by SecAgg+'s fixed range."""
    protocol = ctxt.state.config_records[RECORD_KEY_STATE]
    clipping_range, max_weight = float(protocol["clipping_range"]), float(protocol["max_weight"])
    name = institution_of(out)
    weight = float(out.content[METRICS][AGGREGATION_WEIGHT])
    if weight > max_weight:
        reason = (f"institution {name}: aggregation weight {weight:g} exceeds the round's max_weight "
                  f"{max_weight:g} for secure aggregation")
        return Message(Error(code=INPUT_ERROR, reason=reason), reply_to=msg)
    largest = max((float(np.max(np.abs(a.numpy()))) for a in out.content[ARRAYS].values()), default=0.0)
    if not np.isfinite(largest) or largest > clipping_range:
        reason = (f"institution {name}: a model weight of magnitude {largest:.3g} is outside "
                  f"secure_aggregation.clipping_range {clipping_range:g}; raise it")
        return Message(Error(code=INPUT_ERROR, reason=reason), reply_to=msg)
    return None


MIN_SECURE_INSTITUTIONS = 3  # with two, each could subtract its own update from the sum and read the other's


def _unsound_round(msg: Message, ctxt: Context) -> Message | None:
    """A refusal of a SecAgg+ stage that would let the server unmask one institution's reply: a
    round of fewer than three institutions, a threshold a minority of shares reaches, or an
    unmasking that asks for a node's mask and its secret key at once (listed alive and dead).
    SecAgg+ still assumes the server does not invent institutions whose keys it holds."""
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    stage = configs.get(Key.STAGE)
    why = ""
    if stage == Stage.SETUP:
        sample, shares, threshold = (int(configs.get(k, 0)) for k in (Key.SAMPLE_NUMBER, Key.SHARE_NUMBER,
                                                                       Key.THRESHOLD))
        if sample < MIN_SECURE_INSTITUTIONS or shares < MIN_SECURE_INSTITUTIONS or 2 * threshold <= shares:
            why = (f"a secure aggregation round of {sample} institutions, {shares} shares and threshold {threshold} "
                   f"(at least {MIN_SECURE_INSTITUTIONS} of each, and a threshold above half the shares)")
    elif stage == Stage.UNMASK:
        alive = set(configs.get(Key.ACTIVE_NODE_ID_LIST, []))
        if alive & set(configs.get(Key.DEAD_NODE_ID_LIST, [])):
            why = "an unmasking that lists a node both alive and dead"
    if not why:
        return None
    who = f"institution {ctxt.node_config['institution']}: " if "institution" in ctxt.node_config else ""
    return Message(Error(code=POLICY_REFUSED, reason=f"{who}refused {why}"), reply_to=msg)


def secure_aggregation_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `secaggplus_mod` for train messages of a SecAgg+ round; others pass through."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)
    refused = _unsound_round(msg, ctxt)
    if refused is not None:
        return refused

    def train(inner: Message, context: Context) -> Message:
        del inner.content.config_records[RECORD_KEY_CONFIGS]  # the mod keeps its own reference
        context.state.config_records[SECURE_ROUND] = ConfigRecord({"on": 1})  # the node's, not the server's
        try:
            out = call_next(inner, context)
        finally:
            del context.state.config_records[SECURE_ROUND]
        if out.has_error():
            raise _Refused(out)
        refused = _range_error(msg, context, out)
        if refused is not None:
            raise _Refused(refused)
        fitres = FitRes(
            status=Status(Code.OK, ""),
            parameters=compat.arrayrecord_to_parameters(out.content[ARRAYS], keep_input=True),
            num_examples=int(round(float(out.content[METRICS][AGGREGATION_WEIGHT]))),
            metrics={},
        )
        for key, record in compat.fitres_to_recorddict(fitres, keep_input=True).items():
            out.content[key] = record
        return out

    try:
        return secaggplus_mod(msg, ctxt, train)
    except _Refused as refused:
        return refused.reply


def under_secure_aggregation(context: Context) -> bool:
    """The reply being built will be masked by SecAgg+: the mod said so in the node's own state,
    which no message can write."""
    return SECURE_ROUND in context.state.config_records


def institution_clipping_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `fixedclipping_mod` when the server's DP wrapper sends a clipping norm."""
    config = msg.content.config_records.get("config")
    if config is None or CLIPPING_NORM not in config:
        return call_next(msg, ctxt)
    return fixedclipping_mod(msg, ctxt, call_next)
