"""
The throughput history: how many jobs finished, per status, in each
:data:`BUCKET_MS` interval of the last ten minutes (``GET /stats/history``).

:class:`History` is a fixed ring of :data:`BUCKETS` counters that the
dispatcher updates as jobs finish; :class:`HistoryBucket` is one interval as
it is read back.
"""

from __future__ import annotations

import attrs

#: Width of one throughput bucket, and how many are kept (the last 10 minutes).
BUCKET_MS = 10_000
BUCKETS = 60
_HISTORY_COLUMNS = {"success": 0, "failure": 1, "canceled": 2}


@attrs.frozen
class HistoryBucket:
    """
    Jobs that finished in one interval of :data:`BUCKET_MS` starting at ``start``
    (ms since the Unix epoch).
    """

    start: int
    success: int = 0
    failure: int = 0
    canceled: int = 0


class History:
    """
    A ring of :data:`BUCKETS` counters: O(1) per finished job, fixed memory.
    """

    def __init__(self) -> None:
        self._bucket = [-1] * BUCKETS
        self._counts = [[0, 0, 0] for _ in range(BUCKETS)]

    def add(self, at_ms: int, status: str) -> None:
        """
        Count a job that finished at ``at_ms`` with ``status``; other statuses
        and times older than the window this slot holds are ignored.
        """
        column = _HISTORY_COLUMNS.get(status)
        if column is None:
            return
        bucket = at_ms // BUCKET_MS
        slot = bucket % BUCKETS
        if self._bucket[slot] != bucket:
            if bucket < self._bucket[slot]:
                return  # older than the window this slot holds now
            self._bucket[slot] = bucket
            self._counts[slot] = [0, 0, 0]
        self._counts[slot][column] += 1

    def buckets(self, now_ms: int) -> list[HistoryBucket]:
        """
        Return the :data:`BUCKETS` intervals up to ``now_ms``, oldest first
        (zero for an interval with no finished job).
        """
        last = now_ms // BUCKET_MS
        result = []
        for bucket in range(last - BUCKETS + 1, last + 1):
            slot = bucket % BUCKETS
            if self._bucket[slot] == bucket:
                success, failure, canceled = self._counts[slot]
                result.append(HistoryBucket(bucket * BUCKET_MS, success, failure, canceled))
            else:
                result.append(HistoryBucket(bucket * BUCKET_MS))
        return result
