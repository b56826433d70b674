"""Institution-level DP: Flower's fixed-clipping DP wrappers around the campaign strategy.

The wrapper bounds each institution's update (clipped by the institution, or by the server)
and adds Gaussian noise of standard deviation z*C/n to the uniform average of n updates. What
this adds to Flower's wrapper:
- exclusions first: an institution's error reply is recorded and the others are averaged
  (the wrapper alone would skip the round);
- n is fixed: an institution that drops out stops the campaign (a changing divisor would
  break the accounting);
- the noised model is the campaign's model (the strategy keeps the last aggregate);
- the campaign's institution-level epsilon is logged each round by the RDP accountant used at
  the record level (Flower's own accountant needs the `flwr[dp]` extra).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MessageType, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)

from fedrisk import run_schema
from fedrisk.config import InstitutionPrivacy
from fedrisk.privacy import institution_epsilon
from server.strategy import CampaignMixin, CampaignStopped


class _Accounted:
    strategy: CampaignMixin
    noise_multiplier: float
    clipping_norm: float
    num_sampled_clients: int
    delta: float

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        campaign = self.strategy
        usable = campaign.usable_replies(list(replies), server_round)
        trained = sum(m.metadata.message_type == MessageType.TRAIN for m in usable)
        if trained != self.num_sampled_clients:  # the noise and its accounting assume n fixed
            raise CampaignStopped(f"round {server_round}: {trained} of {self.num_sampled_clients} institutions "
                                  "trained; institution-level DP is accounted for a fixed set of institutions")
        arrays, metrics = super().aggregate_train(server_round, usable)  # type: ignore[misc]
        if arrays is not None:
            campaign.latest_arrays = arrays
            rounds = campaign.round_offset + server_round  # a resumed campaign's earlier rounds count too
            epsilon = institution_epsilon(self.noise_multiplier, rounds, self.delta)
            campaign.institution_privacy = {
                "epsilon": epsilon, "delta": self.delta, "rounds": rounds, "accountant": "rdp",
                "noise_multiplier": self.noise_multiplier, "clipping_norm": self.clipping_norm,
                "noise_stddev": self.noise_multiplier * self.clipping_norm / self.num_sampled_clients,
            }
            campaign.run.log_metrics({run_schema.INSTITUTION_EPSILON_METRIC: epsilon,
                                      run_schema.INSTITUTION_NOISE_STDDEV: campaign.institution_privacy["noise_stddev"]},
                                     step=rounds)
            campaign.save_checkpoint(rounds, arrays)  # the noised model, the one the next round starts from
        return arrays, metrics


class ClientSideClipping(_Accounted, DifferentialPrivacyClientSideFixedClipping):
    """Each institution clips its own update (`clients.mods.institution_clipping_mod`)."""


class ServerSideClipping(_Accounted, DifferentialPrivacyServerSideFixedClipping):
    """The server clips each institution's update: it sees them, so no secure aggregation."""


def with_institution_dp(
    strategy: CampaignMixin, settings: InstitutionPrivacy, noise_multiplier: float, institutions: int
) -> ClientSideClipping | ServerSideClipping:
    wrapper_cls = ClientSideClipping if settings.clipping == "client" else ServerSideClipping
    wrapper = wrapper_cls(strategy, noise_multiplier, settings.clipping_norm, max(institutions, 1))
    wrapper.delta = settings.delta
    strategy.checkpoints = False  # the wrapper keeps the noised aggregate, not the strategy's
    return wrapper
