"""
Tests for hq.cleanup: deleting expired finished jobs.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hq import cleanup
from hq.cleanup import Cleanup
from hq.ids import first_id_at
from hq.model import Job, Outcome
from hq.store.memory import MemoryStore

NOW = 1_700_000_000.0


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
        """More expired jobs than one batch are all deleted in one run."""
        self.patch(cleanup, "BATCH", 3)
        for n in range(10):
            self.add(n, finished_ago=100)
        self.assertEqual(self.successResultOf(Cleanup(self.store, self.clock, 60).tick()), 10)

    def test_timer_runs_at_start_and_every_minute_and_survives_errors(self) -> None:
        """The service runs at once and each minute; a failing run is logged, not fatal."""
        service = Cleanup(self.store, self.clock, 60).service()
        self.add(1, finished_ago=100)
        service.startService()
        self.assertEqual(self.successResultOf(self.store.counts(0)).stored, 0)
        self.store.writable = False
        self.clock.advance(60)
        self.assertEqual(len(self.flushLoggedErrors()), 1)
        self.store.writable = True
        self.add(2, finished_ago=0)
        self.clock.advance(120)
        self.clock.advance(60)
        self.assertEqual(self.successResultOf(self.store.counts(0)).stored, 0)
        service.stopService()
