"""
Tests for hq.cleanup: deleting expired finished jobs.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hq import cleanup
from hq.cleanup import Cleanup
from hq.ids import first_id_at
from hq.model import Job, Outcome
from hq.store.memory import MemoryStore

NOW = 1_700_000_000.0


class BatchCountingStore(MemoryStore):
    """
    A memory store that records each ``delete_finished_before`` batch as
    ``(limit, deleted)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[int, int]] = []

    def delete_finished_before(self, cutoff: int, limit: int) -> Deferred[int]:
        """Delete as the memory store does, and record the batch."""
        d = super().delete_finished_before(cutoff, limit)

        def record(deleted: int) -> int:
            self.batches.append((limit, deleted))
            return deleted

        return d.addCallback(record)


class CleanupTests(SynchronousTestCase):
    """
    The job_lifetime clean-up.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryStore()

    def add(self, n: int, finished_ago: float | None) -> Job:
        job = Job(id=first_id_at(int(NOW * 1000) - 10**9) + n, url="u")
        self.successResultOf(self.store.create(job))
        if finished_ago is not None:
            outcome = Outcome(finished_at=int((NOW - finished_ago) * 1000), success=True)
            self.successResultOf(self.store.finish(job.id, outcome))
        return job

    def test_deletes_by_finish_time_not_creation(self) -> None:
        """Jobs finished longer ago than the lifetime go; recent and active ones stay."""
        old = self.add(1, finished_ago=120)
        recent = self.add(2, finished_ago=30)
        waiting = self.add(3, finished_ago=None)
        deleted = self.successResultOf(Cleanup(self.store, self.clock, 60).tick())
        self.assertEqual(deleted, 1)
        self.failureResultOf(self.store.get(old.id))
        self.successResultOf(self.store.get(recent.id))
        self.successResultOf(self.store.get(waiting.id))

    def test_deletes_in_batches(self) -> None:
        """10 expired jobs with a batch of 3 are deleted by 4 store calls of at most 3 each."""
        self.patch(cleanup, "BATCH", 3)
        self.store = BatchCountingStore()
        for n in range(10):
            self.add(n, finished_ago=100)
        self.assertEqual(self.successResultOf(Cleanup(self.store, self.clock, 60).tick()), 10)
        self.assertEqual(self.store.batches, [(3, 3), (3, 3), (3, 3), (3, 1)])
        self.assertEqual(self.successResultOf(self.store.counts(0, 0)).stored, 0)

    def test_timer_runs_at_start_and_every_minute_and_survives_errors(self) -> None:
        """The service runs at once and each minute; a failing run is logged, not fatal."""
        service = Cleanup(self.store, self.clock, 60).service()
        self.add(1, finished_ago=100)
        service.startService()
        self.assertEqual(self.successResultOf(self.store.counts(0, 0)).stored, 0)
        self.store.writable = False
        self.clock.advance(60)
        self.assertEqual(len(self.flushLoggedErrors()), 1)
        self.store.writable = True
        self.add(2, finished_ago=0)
        self.clock.advance(120)
        self.clock.advance(60)
        self.assertEqual(self.successResultOf(self.store.counts(0, 0)).stored, 0)
        service.stopService()
