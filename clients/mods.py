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
from flwr.app import Context, Error, Message, MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
)
from flwr.compat.common import recorddict_compat as compat

from fedrisk.protocol import (
    AGGREGATION_WEIGHT,
    ARRAYS,
    INPUT_ERROR,
    METRICS,
    institution_of,
)

CLIPPING_NORM = "clipping_norm"  # Flower's key for the DP wrappers' clipping norm


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


def secure_aggregation_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `secaggplus_mod` for train messages of a SecAgg+ round; others pass through."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)

    def train(inner: Message, context: Context) -> Message:
        del inner.content.config_records[RECORD_KEY_CONFIGS]  # the mod keeps its own reference
        out = call_next(inner, context)
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


def institution_clipping_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `fixedclipping_mod` when the server's DP wrapper sends a clipping norm."""
    config = msg.content.config_records.get("config")
    if config is None or CLIPPING_NORM not in config:
        return call_next(msg, ctxt)
    return fixedclipping_mod(msg, ctxt, call_next)
