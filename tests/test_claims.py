"""
The claim feed (hq/delivery/claims.py) against a fake claiming store, on a fake clock.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hq.delivery.claims import POLL_SECONDS, ClaimFeed
from hq.model import Job, JobState
from hq.store import STORE_RETRY_SECONDS, Claimed, StoreUnavailable
from tests.test_store import T0, make_job


def claimed(n: int) -> Job:
    """
    Return job ``n`` as a claim returns it: running.
    """
    return attrs.evolve(make_job(n), state=JobState.RUNNING, attempts=1)


class FakeClaims:
    """
    A claiming store whose claims are answered by the test.
    """

    def __init__(self) -> None:
        self.limits: list[int] = []
        self.pending: list[Deferred[list[Job]]] = []
        self.due: int | None = None
        self.broken = False
        self.due_broken = False
        self.due_asked = 0

    def claim(self, now: int, limit: int, caps: object = None) -> Deferred[list[Job]]:
        self.limits.append(limit)
        if self.broken:
            return fail(StoreUnavailable("storage unavailable: down"))
        d: Deferred[list[Job]] = Deferred()
        self.pending.append(d)
        return d

    def answer(self, *jobs: Job) -> None:
        self.pending.pop(0).callback(list(jobs))

    def answer_limited(self, *jobs: Job) -> None:
        """
        Answer the oldest claim as one made under flow limits.
        """
        self.pending.pop(0).callback(Claimed(jobs, limited=True))

    def answer_with_due(self, due: int | None, *jobs: Job) -> None:
        """
        Answer the oldest claim with the next due time read along.
        """
        self.pending.pop(0).callback(Claimed(jobs, due_read=True, next_due=due))

    def next_due(self, now: int) -> Deferred[int | None]:
        self.due_asked += 1
        if self.due_broken:
            return fail(StoreUnavailable("storage unavailable: down"))
        return succeed(self.due)


class ClaimFeedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0 / 1000)
        self.store = FakeClaims()
        self.feed = ClaimFeed(self.store, self.clock, capacity=4)  # type: ignore[arg-type]
        self.feed.open()
        self.addCleanup(self.feed.close)

    def take(self) -> Deferred[Any]:
        return self.feed.take()

    def test_claims_only_while_a_dispatcher_waits(self) -> None:
        """Nothing is claimed until a dispatcher asks; then as many as there are free slots."""
        self.feed.poke()
        self.clock.advance(POLL_SECONDS * 3)
        self.assertEqual(self.store.limits, [])
        waiting = self.take()
        self.assertEqual(self.store.limits, [4])
        self.store.answer(claimed(1), claimed(2))
        self.assertEqual(self.successResultOf(waiting).id, claimed(1).id)
        self.assertEqual(self.successResultOf(self.take()).id, claimed(2).id)
        self.assertTrue(self.feed.holds(claimed(1).id))

    def test_claimed_jobs_are_handed_out_even_if_the_next_due_read_fails(self) -> None:
        """Jobs claimed (running for this node) are never dropped by a later failed read."""
        self.store.due_broken = True
        waiting = self.take()
        self.store.answer(claimed(1))
        self.assertEqual(self.successResultOf(waiting).id, claimed(1).id)
        self.assertTrue(self.feed.holds(claimed(1).id))
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)
        # It tries again soon, and claims once the store answers.
        self.store.due_broken = False
        another = self.take()
        self.clock.advance(STORE_RETRY_SECONDS)
        self.store.answer(claimed(2))
        self.assertEqual(self.successResultOf(another).id, claimed(2).id)

    def test_claims_no_more_than_the_free_slots(self) -> None:
        """Jobs held count against the capacity; a released one frees its slot."""
        first = self.take()
        self.store.answer(*[claimed(n) for n in range(3)])
        self.successResultOf(first)
        self.take()
        self.take()
        waiting = self.take()
        self.assertEqual(self.store.limits[-1], 1)
        self.store.answer()
        self.feed.release(claimed(0).id)
        self.assertEqual(self.store.limits[-1], 2)
        self.store.answer(claimed(7))
        self.assertEqual(self.successResultOf(waiting).id, claimed(7).id)

    def test_release_claims_for_a_dispatcher_already_waiting(self) -> None:
        """A dispatcher waiting when every slot was held gets a claim once a run ends."""
        first = self.take()
        self.store.answer(*[claimed(n) for n in range(4)])
        self.successResultOf(first)
        for _ in range(3):
            self.successResultOf(self.take())
        waiting = self.take()  # the runner frees its slot before the run is released
        self.assertEqual(len(self.store.limits), 1)
        self.feed.release(claimed(0).id)
        self.assertEqual(self.store.limits[-1], 1)
        self.store.answer(claimed(9))
        self.assertEqual(self.successResultOf(waiting).id, claimed(9).id)

    def test_a_settled_job_frees_its_slot_and_stays_held(self) -> None:
        """
        A job whose request is over (its outcome being recorded) no longer
        counts against the capacity, but stays held (its lease renewed)
        until released; releasing it then frees nothing more.
        """
        first = self.take()
        self.store.answer(*[claimed(n) for n in range(4)])
        self.successResultOf(first)
        for _ in range(3):
            self.successResultOf(self.take())
        waiting = self.take()
        self.assertEqual(len(self.store.limits), 1)
        self.assertTrue(self.feed.settle(claimed(0).id))
        self.assertEqual(self.store.limits[-1], 1)
        self.store.answer(claimed(9))
        self.assertEqual(self.successResultOf(waiting).id, claimed(9).id)
        self.assertIn(claimed(0).id, self.feed.held_ids())
        self.assertEqual(len(self.feed.held_ids()), 5)
        # Its release frees no second slot: every slot is taken by a request.
        self.take()
        self.feed.release(claimed(0).id)
        self.assertEqual(len(self.store.limits), 2)
        self.assertNotIn(claimed(0).id, self.feed.held_ids())

    def test_settle_of_a_job_not_held(self) -> None:
        """A job this feed does not hold frees no slot."""
        self.assertFalse(self.feed.settle(claimed(3).id))

    def test_a_run_ended_during_a_claim_under_limits_claims_again(self) -> None:
        """
        Under flow limits, a claim may find a key full while one of its jobs
        ends: the feed claims again right after it, instead of leaving the
        idle dispatcher to the poll. The job's request ending (``settle``)
        or its run (``release``) both count.
        """
        first = self.take()
        self.store.answer(claimed(1), claimed(2))
        self.successResultOf(first)
        self.successResultOf(self.take())
        for end in (self.feed.settle, self.feed.release):
            with self.subTest(end=end.__name__):
                job = claimed(1) if end == self.feed.settle else claimed(2)
                waiting = self.take()
                claims = len(self.store.limits)
                end(job.id)
                self.assertEqual(len(self.store.limits), claims)  # one claim at a time
                self.store.answer_limited()
                self.assertEqual(len(self.store.limits), claims + 1)
                self.store.answer_limited(claimed(10 + claims))
                self.assertEqual(self.successResultOf(waiting).id, claimed(10 + claims).id)
                self.feed.release(claimed(10 + claims).id)

    def test_a_run_ended_during_a_claim_without_limits(self) -> None:
        """
        A claim without limits took every due job it had room for: a run
        ending during it starts no second claim (more, smaller claims cost
        more than they gain); the next due time is read instead.
        """
        first = self.take()
        self.store.answer(claimed(1))
        self.successResultOf(first)
        waiting = self.take()
        self.feed.release(claimed(1).id)
        self.store.due = T0 + 5_000
        self.store.answer()
        self.assertEqual(len(self.store.limits), 2)
        self.assertNoResult(waiting)
        # Nor does a claim under limits during which no run ended.
        self.store.due = None
        self.feed.poke()
        self.assertEqual(len(self.store.limits), 3)
        self.store.answer_limited()
        self.assertEqual(len(self.store.limits), 3)
        self.assertNoResult(waiting)

    def test_a_claim_that_read_the_next_due_time(self) -> None:
        """
        A short claim that read the next due time with it is not followed by
        a read of its own: the feed wakes at that time, or not at all.
        """
        waiting = self.take()
        self.store.answer_with_due(T0 + 500)
        self.assertEqual(self.store.due_asked, 0)
        self.clock.advance(0.499)
        self.assertEqual(len(self.store.limits), 1)
        self.clock.advance(0.001)  # before the poll, a second after the claim
        self.assertEqual(len(self.store.limits), 2)
        self.store.answer_with_due(None, claimed(1))
        self.assertEqual(self.successResultOf(waiting).id, claimed(1).id)
        self.assertEqual(self.store.due_asked, 0)

    def test_poke_during_a_claim_claims_again(self) -> None:
        """Jobs told of while a claim runs are claimed right after it."""
        waiting = self.take()
        self.feed.poke()
        self.store.answer()
        self.assertEqual(len(self.store.limits), 2)
        self.store.answer(claimed(3))
        self.assertEqual(self.successResultOf(waiting).id, claimed(3).id)

    def test_idle_dispatchers_poll(self) -> None:
        """With a dispatcher idle and nothing told, a claim is tried every poll interval."""
        self.take()
        self.store.answer()
        self.assertEqual(len(self.store.limits), 1)
        self.clock.advance(POLL_SECONDS)
        self.assertEqual(len(self.store.limits), 2)

    def test_wakes_at_the_next_due_time(self) -> None:
        """A job due later is claimed at its due time, not at the next poll."""
        self.store.due = T0 + 300
        self.take()
        self.store.answer()
        self.clock.advance(0.3)
        self.assertEqual(len(self.store.limits), 2)
        self.feed.poke(T0 + 450)
        self.store.answer()
        self.clock.advance(0.15)
        self.assertEqual(len(self.store.limits), 3)

    def test_a_failed_claim_is_tried_again_after_a_pause(self) -> None:
        """While the store fails, claims are tried again every second, not in a loop."""
        self.store.broken = True
        self.take()
        self.assertEqual(len(self.store.limits), 1)
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)
        self.feed.poke()
        self.assertEqual(len(self.store.limits), 1)
        self.store.broken = False
        self.clock.advance(1.0)
        self.assertEqual(len(self.store.limits), 2)

    def test_close_answers_idle_dispatchers_none(self) -> None:
        """Closing ends the waits of idle dispatchers with None and stops the poll."""
        waiting = self.take()
        self.store.answer()
        self.feed.close()
        self.assertIsNone(self.successResultOf(waiting))
        self.clock.advance(POLL_SECONDS * 3)
        self.assertEqual(len(self.store.limits), 1)
        self.assertFalse(self.feed.drop(1))
