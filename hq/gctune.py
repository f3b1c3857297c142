"""
The garbage collector's settings of HQ's long-running processes: the server
(:mod:`hq.tap`) and its sender process (:mod:`hq.sender`).
"""

from __future__ import annotations

import gc

#: Allocations between two collections of the youngest generation, and
#: collections of a generation between two of the next (Python's defaults:
#: 700, 10, 10).
THRESHOLDS = (10_000, 20, 100)


def settle() -> None:
    """
    Call once start-up is done: what exists now lives as long as the process.
    Keep the collector from walking it again and again (``gc.freeze``), and
    collect young objects less often: garbage collection was about 60 µs of
    each delivered job's cost, and about a fifth of a 10,000-job batch
    push's time (docs/performance.md, round eleven).
    """
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
