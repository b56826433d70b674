"""Peak memory of a process and everything it started (Ray's GCS, raylet and workers), sampled.

Proportional set size (Pss, from /proc/<pid>/smaps_rollup): each shared page (torch's
libraries, mapped by every worker) counts once over the processes that share it, so the sum is
what the tree takes from the machine; the sum of RSS would count torch once per worker.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def _pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_pss(root: int) -> int:
    """Pss of `root` and all its descendants now."""
    tree, todo, total = _children(), [root], 0
    while todo:
        pid = todo.pop()
        total += _pss_bytes(pid)
        todo += tree.get(pid, [])
    return total


class PeakMemory:
    """`with PeakMemory() as peak: ...; peak.bytes`: the largest tree Pss seen every `every` s."""

    def __init__(self, every: float = 0.5, root: int | None = None) -> None:
        self.every, self.root, self.bytes = every, root or os.getpid(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.bytes = max(self.bytes, tree_pss(self.root))

    def __enter__(self) -> PeakMemory:
        self.bytes = tree_pss(self.root)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
