"""
Tests for hq.history: the ring of finished-job counts behind ``GET /stats/history``.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from hq.history import BUCKET_MS, BUCKETS, History, HistoryBucket

#: A time on a bucket boundary, in ms.
T0_MS = 1_700_000_000_000


class HistoryTests(SynchronousTestCase):
    """
    Counting finished jobs per interval, in fixed memory.
    """

    def test_counts_each_final_status_in_the_bucket_of_its_time(self) -> None:
        """Success, failure and canceled are counted in the bucket their time falls in."""
        history = History()
        history.add(T0_MS, "success")
        history.add(T0_MS + BUCKET_MS, "failure")
        history.add(T0_MS + BUCKET_MS + 1, "failure")
        history.add(T0_MS + 2 * BUCKET_MS - 1, "canceled")
        buckets = history.buckets(T0_MS + BUCKET_MS)
        self.assertEqual(len(buckets), BUCKETS)
        self.assertEqual(buckets[-1], HistoryBucket(T0_MS + BUCKET_MS, 0, 2, 1))
        self.assertEqual(buckets[-2], HistoryBucket(T0_MS, success=1))
        self.assertEqual(buckets[0].start, T0_MS + BUCKET_MS - (BUCKETS - 1) * BUCKET_MS)

    def test_statuses_that_are_not_final_are_ignored(self) -> None:
        """Only success, failure and canceled count."""
        history = History()
        history.add(T0_MS, "running")
        history.add(T0_MS, "waiting")
        self.assertEqual(history.buckets(T0_MS)[-1], HistoryBucket(T0_MS))

    def test_buckets_older_than_the_window_read_as_zero(self) -> None:
        """A bucket that left the window reads as zero, even when its slot is reused."""
        history = History()
        history.add(T0_MS, "success")
        later = T0_MS + BUCKETS * BUCKET_MS
        self.assertEqual(sum(b.success for b in history.buckets(later)), 0)
        history.add(later, "success")
        self.assertEqual(sum(b.success for b in history.buckets(later)), 1)

    def test_a_time_older_than_its_slot_is_ignored(self) -> None:
        """A late count for an interval whose slot already holds a newer one is dropped."""
        history = History()
        later = T0_MS + BUCKETS * BUCKET_MS
        history.add(later, "failure")
        history.add(T0_MS, "success")
        buckets = history.buckets(later)
        self.assertEqual(sum(b.success for b in buckets), 0)
        self.assertEqual(buckets[-1], HistoryBucket(later, failure=1))
