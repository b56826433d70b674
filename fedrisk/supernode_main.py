"""A SuperNode that looks for work sooner: Flower's own `flower-supernode`, with its waits cut.

Flower 1.41's SuperNode sleeps 3 s whenever a pull brings no message, and looks for the
ClientApp's reply every 0.5 s (both hard-coded in `flwr.supernode.start_client_internal`): a
deployed round paid about 2 s of them per exchange, on top of Flower's ServerApp pulling every
3 s (`server.messaging.PromptGrid`) and its SuperExec every 1 s (`FLWR_SUPEREXEC_TASK_POLL_INTERVAL`,
set by `fedrisk.federation.flower_env`). On the Flower it was read from, this entry point caps
those sleeps at `POLL_SECONDS` and then runs Flower's command unchanged; on any other, Flower's.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import flwr
from flwr.supernode import start_client_internal
from flwr.supernode.cli import flower_supernode

PATCHED_VERSIONS = ("1.41.0",)  # whose start_client_internal this was read from
POLL_SECONDS = 0.2  # a SuperNode's pulls a second when idle: 5, against the SuperLink


class _ShortSleeps:
    """`time` for the SuperNode's loop: every sleep at most POLL_SECONDS."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, POLL_SECONDS))


def install() -> bool:
    if flwr.__version__ not in PATCHED_VERSIONS:
        return False
    start_client_internal.time = _ShortSleeps()  # type: ignore[attr-defined]
    return True


def main() -> None:
    install()
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
