"""
The job store contract, run against every engine (SQLite and the in-memory fake).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from typing import Any

import attrs
import re2
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from hq.ids import first_id_at
from hq.model import (
    CALLBACK_HEADER,
    INTERRUPTED,
    Attempt,
    FlowLimits,
    Job,
    JobState,
    ListQuery,
    Outcome,
    job_dict,
)
from hq.store import (
    FlowCounts,
    IdempotencyConflict,
    IJobStore,
    JobConflict,
    JobExists,
    JobNotFound,
    Pushed,
    StoreError,
    StoreUnavailable,
    sql,
    sqlitefile,
)
from hq.store.memory import MemoryStore
from hq.store.sqlite import SCHEMA_VERSION, SQLiteStore, glob_prefilter

T0 = 1_700_000_000_000
#: A time after every job of these tests is due.
LATER = 1 << 62


def make_job(n: int, **kwargs: object) -> Job:
    """
    Return a waiting job whose id is created ``n`` ms after ``T0``.
    """
    return Job(id=first_id_at(T0 + n), url=f"http://127.0.0.1/{n}", **kwargs)  # type: ignore[arg-type]


class StoreContractMixin:
    """
    Behaviour every IJobStore must have. Subclasses set ``self.store`` in setUp.
    """

    store: IJobStore

    async def add(self, *jobs: Job) -> None:
        for job in jobs:
            await self.store.create(job)

    def test_provides_interface(self) -> None:
        """The store provides IJobStore."""
        self.assertTrue(verifyObject(IJobStore, self.store))

    async def test_create_get_round_trip(self) -> None:
        """A created job reads back equal, all fields kept."""
        job = make_job(
            1,
            name="n",
            comment="c",
            payload='{"a":[1,2]}',
            headers={"X-A": "b"},
            timeout=5,
        )
        await self.store.create(job)
        self.assertEqual(await self.store.get(job.id), job)

    async def test_create_twice_fails(self) -> None:
        """Creating an id that exists fails with JobExists."""
        job = make_job(1)
        await self.store.create(job)
        with self.assertRaises(JobExists):
            await self.store.create(job)

    async def test_get_unknown_fails(self) -> None:
        """Getting an unknown id fails with JobNotFound naming the id."""
        with self.assertRaises(JobNotFound) as e:
            await self.store.get(42)
        self.assertEqual(str(e.exception), "The job '42' is not found")

    async def test_max_id(self) -> None:
        """max_id is 0 for an empty store, then the greatest id."""
        self.assertEqual(await self.store.max_id(), 0)
        await self.add(make_job(3), make_job(1))
        self.assertEqual(await self.store.max_id(), make_job(3).id)

    async def test_max_id_remembers_deleted_jobs(self) -> None:
        """max_id stays at the greatest id ever created after the newest job is deleted."""
        old, newest = make_job(1), make_job(2)
        await self.add(old, newest)
        await self.store.stop(newest.id, T0)
        await self.store.delete(newest.id)
        self.assertEqual(await self.store.max_id(), newest.id)

    async def test_list_forward_and_reverse_with_begin(self) -> None:
        """Listing scans in id order, begin is inclusive, next is the next id."""
        jobs = [make_job(n) for n in range(5)]
        await self.add(*jobs)
        page = await self.store.list_jobs(ListQuery(limit=2))
        self.assertEqual(page.jobs, jobs[:2])
        self.assertEqual(page.next_id, jobs[2].id)
        page = await self.store.list_jobs(ListQuery(begin=jobs[2].id, limit=2))
        self.assertEqual(page.jobs, jobs[2:4])
        page = await self.store.list_jobs(ListQuery(begin=jobs[4].id, limit=2))
        self.assertEqual((page.jobs, page.next_id), ([jobs[4]], None))
        page = await self.store.list_jobs(ListQuery(reverse=True, limit=2))
        self.assertEqual(page.jobs, [jobs[4], jobs[3]])
        self.assertEqual(page.next_id, jobs[2].id)
        page = await self.store.list_jobs(ListQuery(reverse=True, begin=jobs[1].id + 1))
        self.assertEqual((page.jobs, page.next_id), ([jobs[1], jobs[0]], None))

    async def test_list_filters_and_next_honours_them(self) -> None:
        """name, term and status filter; next points at the next matching job only."""
        await self.add(
            make_job(0, name="alpha"),
            make_job(1, name="beta", comment="find me"),
            make_job(2, name="alpha2"),
            make_job(3, name="gamma"),
        )
        page = await self.store.list_jobs(ListQuery(name="^alpha", limit=1))
        self.assertEqual([j.name for j in page.jobs], ["alpha"])
        self.assertEqual(page.next_id, make_job(2).id)
        page = await self.store.list_jobs(ListQuery(name="^alpha", begin=make_job(2).id, limit=1))
        self.assertEqual(page.next_id, None)
        page = await self.store.list_jobs(ListQuery(term="find"))
        self.assertEqual([j.name for j in page.jobs], ["beta"])
        await self.store.finish(make_job(3).id, Outcome(finished_at=T0, failure=True))
        page = await self.store.list_jobs(ListQuery(status="failure"))
        self.assertEqual([j.name for j in page.jobs], ["gamma"])
        page = await self.store.list_jobs(ListQuery(status="waiting", reverse=True, limit=2))
        self.assertEqual([j.name for j in page.jobs], ["alpha2", "beta"])
        self.assertEqual(page.next_id, make_job(0).id)

    async def test_start_then_finish(self) -> None:
        """start marks a waiting job running once; finish records the outcome once."""
        job = make_job(1)
        await self.store.create(job)
        started = await self.store.start(job.id, T0 + 5)
        assert started is not None
        self.assertEqual(
            (started.state, started.started_at, started.attempts), (JobState.RUNNING, T0 + 5, 1)
        )
        self.assertIsNone(await self.store.start(job.id, T0 + 6))
        outcome = Outcome(finished_at=T0 + 9, success=True, status_code=200, output="ok")
        finished = await self.store.finish(job.id, outcome)
        assert finished is not None
        self.assertEqual(finished.status, "success")
        self.assertIsNone(await self.store.finish(job.id, outcome))
        self.assertEqual(await self.store.get(job.id), finished)

    async def test_stop_waiting_job_finishes_canceled(self) -> None:
        """Stopping a waiting job finishes it canceled; it can no longer start."""
        job = make_job(1)
        await self.store.create(job)
        stopped = await self.store.stop(job.id, T0 + 1)
        self.assertEqual((stopped.status, stopped.finished_at), ("canceled", T0 + 1))
        self.assertIsNone(await self.store.start(job.id, T0 + 2))

    async def test_stop_running_job_is_canceling(self) -> None:
        """Stopping a running job marks it canceling until finish."""
        job = make_job(1)
        await self.store.create(job)
        await self.store.start(job.id, T0)
        stopped = await self.store.stop(job.id, T0 + 1)
        self.assertEqual(stopped.status, "canceling")
        again = await self.store.stop(job.id, T0 + 2)
        self.assertEqual(again.status, "canceling")
        done = await self.store.finish(job.id, Outcome(finished_at=T0 + 3, canceled=True))
        assert done is not None
        self.assertEqual(done.status, "canceled")

    async def test_stop_finished_job_conflicts(self) -> None:
        """Stopping a finished job fails: not active."""
        job = make_job(1)
        await self.store.create(job)
        await self.store.finish(job.id, Outcome(finished_at=T0, success=True))
        with self.assertRaises(JobConflict) as e:
            await self.store.stop(job.id, T0)
        self.assertEqual(str(e.exception), f"The job {job.id} is not active")

    async def test_restart_and_delete_guards(self) -> None:
        """Waiting and running jobs cannot be restarted or deleted."""
        job = make_job(1)
        await self.store.create(job)
        for call in (self.store.restart, self.store.delete):
            with self.assertRaises(JobConflict) as e:
                await call(job.id)
            self.assertEqual(str(e.exception), f"The job {job.id} is waiting now")
        await self.store.start(job.id, T0)
        for call in (self.store.restart, self.store.delete):
            with self.assertRaises(JobConflict) as e:
                await call(job.id)
            self.assertEqual(str(e.exception), f"The job {job.id} is running now")

    async def test_restart_resets_outcome(self) -> None:
        """Restart of a finished job clears the outcome and makes it waiting again."""
        job = make_job(1)
        await self.store.create(job)
        await self.store.start(job.id, T0)
        await self.store.finish(
            job.id, Outcome(finished_at=T0 + 1, failure=True, status_code=500, err="x", output="y")
        )
        restarted = await self.store.restart(job.id)
        # Restarted in place: afresh, attempts 0 (SPEC §11).
        self.assertEqual(restarted, attrs.evolve(job, attempts=0))
        self.assertEqual(await self.store.waiting_jobs((0, 0), LATER, 10), [restarted])

    async def test_delete(self) -> None:
        """A finished job can be deleted; then it is not found."""
        job = make_job(1)
        await self.store.create(job)
        await self.store.stop(job.id, T0)
        await self.store.delete(job.id)
        with self.assertRaises(JobNotFound):
            await self.store.get(job.id)
        with self.assertRaises(JobNotFound):
            await self.store.delete(job.id)

    async def test_waiting_jobs_in_id_order_after_id(self) -> None:
        """waiting_jobs returns waiting, not canceled jobs above after_id, in order."""
        jobs = [make_job(n) for n in range(6)]
        await self.add(*reversed(jobs))
        await self.store.start(jobs[1].id, T0)
        await self.store.stop(jobs[2].id, T0)
        found = await self.store.waiting_jobs((jobs[0].due_at, jobs[0].id), LATER, 2)
        self.assertEqual(found, [jobs[3], jobs[4]])

    async def test_recover_requeues_running_and_cancels_stopping(self) -> None:
        """recover makes running jobs waiting, and stopping ones canceled."""
        a, b, c = make_job(1), make_job(2), make_job(3)
        await self.add(a, b, c)
        await self.store.start(a.id, T0)
        await self.store.start(b.id, T0)
        await self.store.stop(b.id, T0)
        recovery = await self.store.recover(T0 + 10)
        self.assertEqual((recovery.requeued, recovery.canceled), (1, 1))
        requeued = await self.store.get(a.id)
        self.assertEqual((requeued.status, requeued.started_at), ("waiting", None))
        self.assertEqual((await self.store.get(b.id)).status, "canceled")
        self.assertEqual(
            [j.id for j in await self.store.waiting_jobs((0, 0), LATER, 10)], [a.id, c.id]
        )

    async def test_delete_finished_before_cutoff(self) -> None:
        """Only finished jobs that finished before the cutoff are deleted, in batches."""
        jobs = [make_job(n) for n in range(5)]
        await self.add(*jobs)
        for n, job in enumerate(jobs[:4]):
            await self.store.finish(job.id, Outcome(finished_at=T0 + n * 10, success=True))
        self.assertEqual(await self.store.delete_finished_before(T0 + 25, 2), 2)
        self.assertEqual(await self.store.delete_finished_before(T0 + 25, 2), 1)
        self.assertEqual(await self.store.delete_finished_before(T0 + 25, 2), 0)
        page = await self.store.list_jobs(ListQuery())
        self.assertEqual([j.id for j in page.jobs], [jobs[3].id, jobs[4].id])
        counts = await self.store.counts(0, 0)
        self.assertEqual((counts.stored, counts.waiting), (2, 1))

    async def test_counts(self) -> None:
        """counts follows creates, starts, finishes and deletes."""
        jobs = [make_job(n) for n in range(4)]
        await self.add(*jobs)
        await self.store.start(jobs[0].id, T0)
        await self.store.start(jobs[1].id, T0)
        await self.store.finish(jobs[1].id, Outcome(finished_at=T0, success=True))
        await self.store.delete(jobs[1].id)
        counts = await self.store.counts(jobs[2].id, 0)
        self.assertEqual(
            (counts.stored, counts.waiting, counts.running, counts.created_since), (3, 2, 1, 2)
        )

    async def test_plain_string_search_matches_as_the_regexp(self) -> None:
        """A term or name of plain characters, dots and escapes finds what the regexp finds."""
        jobs = [
            make_job(0, name="abc"),
            make_job(1, name="a.c"),
            make_job(2, name="ac"),
            make_job(3, name="x", comment="zzaQcz"),
            attrs.evolve(make_job(4, name="y"), url="http://127.0.0.1/a*c?[x]"),
            make_job(5, name="Abc"),
        ]
        await self.add(*jobs)
        await self.store.start(jobs[5].id, T0)

        async def names(**query: object) -> list[str]:
            page = await self.store.list_jobs(ListQuery(**query))  # type: ignore[arg-type]
            return [job.name for job in page.jobs]

        self.assertEqual(await names(term="a.c"), ["abc", "a.c", "x", "y"])
        self.assertEqual(await names(term=r"a\.c"), ["a.c"])
        self.assertEqual(await names(term=r"a\*c\?\[x"), ["y"])
        self.assertEqual(await names(name="c"), ["abc", "a.c", "ac", "Abc"])
        self.assertEqual(await names(name="^a"), ["abc", "a.c", "ac"])
        self.assertEqual(await names(term="running"), ["Abc"])
        self.assertEqual(await names(term=str(jobs[2].id)[-6:]), ["ac"])
        self.assertEqual(await names(term="bc", reverse=True, limit=1), ["Abc"])

    # Retries, due times, the attempt history, idempotent pushes (SPEC §11, §15).

    async def failed_attempt(self, job: Job, at: int, code: int = 500) -> Job | None:
        """
        Start ``job`` at ``T0`` and record a failed attempt that retries at ``at``.
        """
        started = await self.store.start(job.id, T0)
        assert started is not None
        last = Outcome(finished_at=T0 + 10, failure=True, status_code=code, err="boom", output="o")
        return await self.store.retry(job.id, at, last, Attempt.of(started, last))

    async def test_push_stores_every_job_in_one_call(self) -> None:
        """A push stores every job and answers them in order, none replayed."""
        jobs = [make_job(n) for n in range(3)]
        pushed = await self.store.push(jobs, keys_since=0)
        self.assertEqual(pushed, [Pushed(job) for job in jobs])
        for job in jobs:
            self.assertEqual(await self.store.get(job.id), job)

    async def test_push_is_all_or_nothing(self) -> None:
        """A push whose second job cannot be stored stores none."""
        old = make_job(1)
        await self.add(old)
        new = make_job(2)
        with self.assertRaises(JobExists):
            await self.store.push([new, old], keys_since=0)
        with self.assertRaises(JobNotFound):
            await self.store.get(new.id)

    async def test_push_with_a_known_key_replays_the_stored_job(self) -> None:
        """The same key, url, name and payload (as JSON values) answers the stored job."""
        first = make_job(1, payload='{"a":1,"b":2}', idempotency_key="k")
        await self.store.push([first], keys_since=0)
        again = attrs.evolve(
            make_job(2, payload='{"b":2,"a":1}', idempotency_key="k"), url=first.url
        )
        pushed = await self.store.push([again], keys_since=0)
        self.assertEqual(pushed, [Pushed(first, replayed=True)])
        with self.assertRaises(JobNotFound):
            await self.store.get(again.id)

    async def test_push_with_a_known_key_and_another_url_is_a_conflict(self) -> None:
        """A key reused for other work fails the whole push, naming the index."""
        await self.store.push([make_job(1, idempotency_key="k")], keys_since=0)
        fresh = make_job(2)
        other = make_job(3, idempotency_key="k")
        with self.assertRaises(IdempotencyConflict) as e:
            await self.store.push([fresh, other], keys_since=0)
        self.assertEqual(e.exception.index, 1)
        with self.assertRaises(JobNotFound):
            await self.store.get(fresh.id)

    async def test_an_expired_key_is_taken_by_the_new_job(self) -> None:
        """A key older than ``keys_since`` no longer replays: the new job takes it."""
        old = make_job(1, idempotency_key="k")
        await self.store.push([old], keys_since=0)
        new = make_job(5, idempotency_key="k")
        self.assertEqual(await self.store.push([new], keys_since=T0 + 3), [Pushed(new)])
        again = attrs.evolve(make_job(9, idempotency_key="k"), url=new.url)
        self.assertEqual(
            await self.store.push([again], keys_since=T0 + 3), [Pushed(new, replayed=True)]
        )

    async def test_one_key_twice_in_a_push_replays_the_first(self) -> None:
        """Two jobs with one key in one push: the second is the first, replayed."""
        a = make_job(1, idempotency_key="k")
        b = attrs.evolve(make_job(2, idempotency_key="k"), url=a.url)
        self.assertEqual(
            await self.store.push([a, b], keys_since=0), [Pushed(a), Pushed(a, replayed=True)]
        )

    async def test_retry_makes_the_job_wait_showing_the_failed_attempt(self) -> None:
        """A retry: waiting, due at ``at``, the last status code and err shown, history kept."""
        job = make_job(1, retries=2)
        await self.add(job)
        retried = await self.failed_attempt(job, at=T0 + 5000)
        assert retried is not None
        self.assertEqual(
            (retried.status, retried.run_at, retried.attempts, retried.status_code, retried.err),
            ("waiting", T0 + 5000, 1, 500, "boom"),
        )
        self.assertTrue(retried.scheduled(T0 + 4999))
        self.assertEqual(await self.store.get(job.id), retried)
        history = await self.store.attempts(job.id)
        self.assertEqual(
            [(a.attempt, a.started_at, a.status_code, a.err) for a in history],
            [(1, T0, 500, "boom")],
        )

    async def test_a_scheduled_job_is_fed_only_once_due(self) -> None:
        """waiting_jobs skips jobs due later; next_due names the earliest of them."""
        job = make_job(1, retries=1)
        await self.add(job)
        await self.failed_attempt(job, at=T0 + 5000)
        self.assertEqual(await self.store.waiting_jobs((0, 0), T0 + 4999, 10), [])
        self.assertEqual(await self.store.next_due(T0 + 4999), T0 + 5000)
        due = await self.store.waiting_jobs((0, 0), T0 + 5000, 10)
        self.assertEqual([j.id for j in due], [job.id])
        self.assertIsNone(await self.store.next_due(T0 + 5000))

    async def test_waiting_jobs_come_in_due_time_then_id_order(self) -> None:
        """A job due earlier comes first whatever its id; reads continue after a key."""
        late = make_job(1, run_at=T0 + 300)
        early = make_job(2, run_at=T0 + 100)
        plain = make_job(3)  # due at its creation, T0 + 3
        await self.add(late, early, plain)
        found = await self.store.waiting_jobs((0, 0), T0 + 1000, 10)
        self.assertEqual([j.id for j in found], [plain.id, early.id, late.id])
        rest = await self.store.waiting_jobs((early.due_at, early.id), T0 + 1000, 10)
        self.assertEqual([j.id for j in rest], [late.id])

    async def test_retry_of_a_job_stopped_while_running_finishes_it_canceled(self) -> None:
        """A stop asked during the attempt wins over the retry."""
        job = make_job(1, retries=3)
        await self.add(job)
        started = await self.store.start(job.id, T0)
        assert started is not None
        await self.store.stop(job.id, T0 + 5)
        last = Outcome(finished_at=T0 + 10, failure=True, status_code=500)
        done = await self.store.retry(job.id, T0 + 5000, last, Attempt.of(started, last))
        assert done is not None
        self.assertEqual(done.status, "canceled")

    async def test_retry_of_a_job_not_running_does_nothing(self) -> None:
        """retry answers None for a job that is not running (and changes nothing)."""
        job = make_job(1)
        await self.add(job)
        last = Outcome(finished_at=T0, failure=True)
        self.assertIsNone(await self.store.retry(job.id, T0, last, Attempt.of(job, last)))
        self.assertEqual(await self.store.get(job.id), job)

    async def test_finish_records_the_attempt_after_earlier_ones(self) -> None:
        """The history lists every attempt, oldest first, the last from finish."""
        job = make_job(1, retries=1)
        await self.add(job)
        await self.failed_attempt(job, at=T0 + 100)
        started = await self.store.start(job.id, T0 + 100)
        assert started is not None
        outcome = Outcome(finished_at=T0 + 150, success=True, status_code=200, output="ok")
        done = await self.store.finish(job.id, outcome, Attempt.of(started, outcome))
        assert done is not None
        self.assertEqual((done.status, done.attempts), ("success", 2))
        history = await self.store.attempts(job.id)
        self.assertEqual([(a.attempt, a.status_code) for a in history], [(1, 500), (2, 200)])

    async def test_restart_clears_the_history(self) -> None:
        """Restart in place starts afresh: no attempts, no history, due now."""
        job = make_job(1, retries=1)
        await self.add(job)
        started = await self.store.start(job.id, T0)
        assert started is not None
        outcome = Outcome(finished_at=T0 + 1, failure=True)
        await self.store.finish(job.id, outcome, Attempt.of(started, outcome))
        restarted = await self.store.restart(job.id)
        self.assertEqual((restarted.attempts, restarted.run_at), (0, None))
        self.assertEqual(await self.store.attempts(job.id), [])

    async def test_delete_and_cleanup_remove_the_history(self) -> None:
        """A deleted or expired job takes its history (and its key) with it."""
        jobs = [make_job(n, idempotency_key=f"k{n}") for n in (1, 2)]
        await self.store.push(jobs, keys_since=0)
        for job in jobs:
            started = await self.store.start(job.id, T0)
            assert started is not None
            outcome = Outcome(finished_at=T0 + 1, success=True)
            await self.store.finish(job.id, outcome, Attempt.of(started, outcome))
        await self.store.delete(jobs[0].id)
        self.assertEqual(await self.store.delete_finished_before(T0 + 2, 10), 1)
        for job in jobs:
            with self.assertRaises(JobNotFound):
                await self.store.attempts(job.id)
        # The keys went with their jobs: a new job may take them.
        again = make_job(7, idempotency_key="k1")
        self.assertEqual(await self.store.push([again], keys_since=0), [Pushed(again)])

    async def test_counts_and_listing_tell_scheduled_from_waiting(self) -> None:
        """Jobs due later count as scheduled and list under status=scheduled."""
        now = T0 + 1000
        due = make_job(1)
        later = make_job(2, run_at=now + 60_000)
        await self.add(due, later)
        counts = await self.store.counts(0, now)
        self.assertEqual((counts.waiting, counts.scheduled), (2, 1))
        for status, expected in (("scheduled", [later.id]), ("waiting", [due.id])):
            page = await self.store.list_jobs(ListQuery(status=status, now=now))
            self.assertEqual([j.id for j in page.jobs], expected, status)

    async def test_recovery_keeps_the_attempt_that_was_running(self) -> None:
        """A job running when the process died waits again, its attempt counted."""
        job = make_job(1, retries=2)
        await self.add(job)
        await self.store.start(job.id, T0)
        await self.store.recover(T0 + 50)
        recovered = await self.store.get(job.id)
        self.assertEqual((recovered.status, recovered.attempts), ("waiting", 1))
        history = await self.store.attempts(job.id)
        self.assertEqual([(a.attempt, a.err) for a in history], [(1, INTERRUPTED)])
        started = await self.store.start(job.id, T0 + 60)
        assert started is not None
        self.assertEqual(started.attempts, 2)

    # Flow control and callbacks (SPEC §16).

    async def test_flow_key_and_callback_urls_round_trip(self) -> None:
        """A job's flow key and callback URLs are stored; without a key it has its URL's."""
        given = make_job(
            1,
            flow_key="tenant-a",
            callback_url="http://cb.example/ok",
            failure_callback_url="https://cb.example/ko",
        )
        plain = make_job(2)
        await self.store.push([given, plain], 0)
        self.assertEqual(await self.store.get(given.id), given)
        self.assertEqual((await self.store.get(plain.id)).flow_key, "127.0.0.1:80")
        self.assertIsNone((await self.store.get(given.id)).callback_job_id)

    async def success_with_callback(self, job: Job, callback_id: int) -> Job:
        await self.store.create(job)
        await self.store.start(job.id, T0 + 5)
        outcome = Outcome(finished_at=T0 + 9, success=True, status_code=200, output="ok")
        finished = await self.store.finish(job.id, outcome, None, callback_id)
        assert finished is not None
        return finished

    async def test_success_pushes_a_callback_job_in_the_finishing_commit(self) -> None:
        """
        finish() with a callback id stores the callback job to callbackUrl,
        waiting, with the finished job (as GET /job shows it) as its payload.
        """
        job = make_job(1, callback_url="http://cb.example/done", retries=2, timeout=7)
        callback_id = make_job(50).id
        finished = await self.success_with_callback(job, callback_id)
        self.assertEqual((finished.status, finished.callback_job_id), ("success", callback_id))
        self.assertEqual(await self.store.get(job.id), finished)
        callback = await self.store.get(callback_id)
        self.assertEqual(
            callback, finished.callback_job(callback_id, "http://cb.example/done", T0 + 9)
        )
        self.assertEqual(
            (callback.state, callback.url), (JobState.WAITING, "http://cb.example/done")
        )
        self.assertEqual(callback.headers, {CALLBACK_HEADER: str(job.id)})
        self.assertEqual((callback.retries, callback.timeout), (2, 7))
        self.assertEqual(callback.flow_key, "cb.example:80")
        assert callback.payload is not None
        self.assertEqual(json.loads(callback.payload), job_dict(finished, T0 + 9))
        self.assertEqual(json.loads(callback.payload)["callbackJobId"], str(callback_id))
        self.assertEqual(
            [j.id for j in await self.store.waiting_jobs((0, 0), LATER, 10)], [callback_id]
        )

    async def test_finishes_with_the_running_job_known_still_push_their_callbacks(self) -> None:
        """
        finish() given the running job (as the runner gives it) and a callback
        id stores the callback job too, also when finishes are asked for
        together: such a finish is not one that a batch runs grouped, without
        reading anything back.
        """
        from twisted.internet.defer import gatherResults

        jobs = [make_job(n, callback_url=f"http://cb.example/{n}") for n in (1, 2)]
        await self.add(*jobs)
        running = [await self.store.start(job.id, T0 + 5) for job in jobs]
        outcome = Outcome(finished_at=T0 + 9, success=True, status_code=200, output="ok")
        callback_ids = [make_job(50).id, make_job(51).id]
        finished = await gatherResults(
            [
                self.store.finish(job.id, outcome, Attempt.of(job, outcome), callback_id, job)
                for job, callback_id in zip(running, callback_ids, strict=True)
                if job is not None
            ]
        )
        for job, done, callback_id in zip(jobs, finished, callback_ids, strict=True):
            self.assertEqual((done.status, done.callback_job_id), ("success", callback_id))
            self.assertEqual(await self.store.get(job.id), done)
            self.assertEqual((await self.store.get(callback_id)).url, job.callback_url)
            self.assertEqual([a.attempt for a in await self.store.attempts(job.id)], [1])

    async def test_final_failure_pushes_to_the_failure_callback_url(self) -> None:
        """A failure finish pushes to failureCallbackUrl, not callbackUrl."""
        job = make_job(
            1, callback_url="http://cb.example/ok", failure_callback_url="http://cb.example/ko"
        )
        await self.store.create(job)
        await self.store.start(job.id, T0 + 5)
        outcome = Outcome(finished_at=T0 + 9, failure=True, status_code=500, err="boom")
        finished = await self.store.finish(job.id, outcome, None, make_job(50).id)
        assert finished is not None
        callback = await self.store.get(make_job(50).id)
        self.assertEqual(callback.url, "http://cb.example/ko")
        assert callback.payload is not None
        self.assertEqual(json.loads(callback.payload)["status"], "failure")

    async def test_no_callback_when_canceled_without_url_or_without_id(self) -> None:
        """A stop, a success without callbackUrl, or no callback id push nothing."""
        urls = {"callback_url": "http://cb/ok", "failure_callback_url": "http://cb/ko"}
        canceled, no_url, no_id = make_job(1, **urls), make_job(2), make_job(3, **urls)
        await self.store.push([canceled, no_url, no_id], 0)
        for job in (canceled, no_url, no_id):
            await self.store.start(job.id, T0 + 5)
        stop = Outcome(finished_at=T0 + 9, canceled=True, err="stopped")
        ok = Outcome(finished_at=T0 + 9, success=True)
        done = [
            await self.store.finish(canceled.id, stop, None, make_job(50).id),
            await self.store.finish(no_url.id, ok, None, make_job(51).id),
            await self.store.finish(no_id.id, ok),
        ]
        self.assertEqual([j.callback_job_id for j in done if j is not None], [None] * 3)
        for n in (50, 51):
            with self.assertRaises(JobNotFound):
                await self.store.get(make_job(n).id)
        self.assertEqual(await self.store.waiting_jobs((0, 0), LATER, 10), [])

    async def test_a_taken_callback_id_fails_the_finish_and_changes_nothing(self) -> None:
        """finish() with the id of a stored job fails with JobExists; the job still runs."""
        job, other = make_job(1, callback_url="http://cb/ok"), make_job(2)
        await self.store.push([job, other], 0)
        await self.store.start(job.id, T0 + 5)
        with self.assertRaises(JobExists):
            await self.store.finish(
                job.id, Outcome(finished_at=T0 + 9, success=True), None, other.id
            )
        self.assertEqual((await self.store.get(job.id)).status, "running")

    async def test_restart_keeps_flow_key_and_urls_and_clears_the_callback_job(self) -> None:
        """A restarted job keeps its flow key and callback URLs; its callbackJobId is cleared."""
        job = make_job(1, flow_key="k", callback_url="http://cb/ok")
        finished = await self.success_with_callback(job, make_job(50).id)
        self.assertIsNotNone(finished.callback_job_id)
        restarted = await self.store.restart(job.id)
        self.assertEqual(
            (restarted.flow_key, restarted.callback_url, restarted.callback_job_id),
            ("k", "http://cb/ok", None),
        )
        self.assertEqual(await self.store.get(job.id), restarted)

    async def test_waiting_jobs_of_one_key_in_due_time_then_id_order(self) -> None:
        """waiting_jobs_of reads one key's due jobs only, by due time then id, after a key."""
        a = [make_job(n, flow_key="a") for n in range(4)]
        a[0] = attrs.evolve(a[0], run_at=T0 + 100)
        a[3] = attrs.evolve(a[3], run_at=T0 + 10**6)
        b = [make_job(n, flow_key="b") for n in range(4, 6)]
        await self.store.push([*a, *b], 0)
        await self.store.stop(a[2].id, T0)
        got = await self.store.waiting_jobs_of("a", (0, 0), T0 + 1000, 10)
        self.assertEqual([j.id for j in got], [a[1].id, a[0].id])
        got = await self.store.waiting_jobs_of("a", (a[1].due_at, a[1].id), T0 + 1000, 10)
        self.assertEqual([j.id for j in got], [a[0].id])
        got = await self.store.waiting_jobs_of("b", (0, 0), T0 + 1000, 1)
        self.assertEqual([j.id for j in got], [b[0].id])
        self.assertEqual(await self.store.waiting_jobs_of("c", (0, 0), LATER, 10), [])

    async def test_flow_limits_are_set_replaced_and_deleted(self) -> None:
        """put_flow inserts or replaces a key's limits; delete_flow says whether it had any."""
        self.assertEqual(await self.store.flow_limits(), [])
        await self.store.put_flow(FlowLimits("b", parallelism=2))
        await self.store.put_flow(FlowLimits("a", rate=5, period=0.5, paused=True))
        await self.store.put_flow(FlowLimits("b", parallelism=3, rate=1, period=60.0))
        self.assertEqual(
            await self.store.flow_limits(),
            [
                FlowLimits("a", rate=5, period=0.5, paused=True),
                FlowLimits("b", parallelism=3, rate=1, period=60.0),
            ],
        )
        self.assertTrue(await self.store.delete_flow("a"))
        self.assertFalse(await self.store.delete_flow("a"))
        self.assertEqual([f.key for f in await self.store.flow_limits()], ["b"])

    async def test_flow_counts_count_waiting_and_running_jobs_per_key(self) -> None:
        """flow_counts: per key with active jobs, waiting (due or not) and running; not finished."""
        jobs = [
            make_job(0, flow_key="a"),
            make_job(1, flow_key="a", run_at=T0 + 10**6),
            make_job(2, flow_key="a"),
            make_job(3, flow_key="b"),
            make_job(4, flow_key="c"),
            make_job(5),
        ]
        await self.store.push(jobs, 0)
        await self.store.start(jobs[2].id, T0 + 5)
        await self.store.start(jobs[3].id, T0 + 5)
        await self.store.stop(jobs[4].id, T0 + 6)
        self.assertEqual(
            await self.store.flow_counts(),
            {
                "127.0.0.1:80": FlowCounts(waiting=1),
                "a": FlowCounts(waiting=2, running=1),
                "b": FlowCounts(running=1),
            },
        )


class MemoryStoreTests(StoreContractMixin, TestCase):
    """
    The contract, on the in-memory fake.
    """

    def setUp(self) -> None:
        self.store = MemoryStore()

    async def test_unwritable_fails_writes(self) -> None:
        """With writable False, writes fail with StoreUnavailable and reads work."""
        await self.store.create(make_job(1))
        self.store.writable = False
        with self.assertRaises(StoreUnavailable):
            await self.store.create(make_job(2))
        self.assertEqual((await self.store.get(make_job(1).id)).id, make_job(1).id)


class SQLiteStoreTests(StoreContractMixin, TestCase):
    """
    The contract, on SQLite, plus what only a file store can do.
    """

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.store = SQLiteStore(self.data_dir, reactor)
        self.addCleanup(lambda: self.store.close())
        return self.store.open()

    async def test_counters_match_the_table_after_random_operations(self) -> None:
        """After 400 random operations (all kinds, failures included) the counters match SQL."""
        rng = random.Random(20261128)
        ids: list[int] = []
        for step in range(400):
            action = rng.choice(
                ["create", "push", "start", "finish", "stop", "restart", "delete", "expire"]
            )
            target = rng.choice(ids) if ids else 0
            try:
                if action == "create":
                    job = make_job(step)
                    await self.store.create(job)
                    ids.append(job.id)
                elif action == "push":
                    # Several jobs in one write, some stored running (a reserved push).
                    jobs = [make_job(1000 + step * 10 + k) for k in range(rng.randint(2, 5))]
                    jobs = [
                        (job.started(T0 + step) or job) if rng.random() < 0.3 else job
                        for job in jobs
                    ]
                    await self.store.push(jobs, 0)
                    ids.extend(job.id for job in jobs)
                elif action == "start":
                    await self.store.start(target, T0 + step)
                elif action == "finish":
                    outcome = Outcome(finished_at=T0 + step, success=rng.random() < 0.5)
                    await self.store.finish(target, outcome)
                elif action == "stop":
                    await self.store.stop(target, T0 + step)
                elif action == "restart":
                    await self.store.restart(target)
                elif action == "delete":
                    await self.store.delete(target)
                    ids.remove(target)
                else:
                    await self.store.delete_finished_before(T0 + step - 50, 3)
            except (JobConflict, JobNotFound):
                pass
            if step % 100 == 50:
                await self.store.recover(T0 + step)
        counts = await self.store.counts(0, 0)
        conn = sqlite3.connect(self.store.path)
        self.addCleanup(conn.close)
        by_state = dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        self.assertEqual(len(by_state), 3, "every state should be present at the end")
        self.assertEqual(
            (counts.stored, counts.waiting, counts.running),
            (sum(by_state.values()), by_state.get(0, 0), by_state.get(1, 0)),
        )

    async def test_writer_survives_an_unexpected_error(self) -> None:
        """A write that fails with a non-SQLite error fails alone; the writer goes on."""
        job = make_job(1)
        await self.store.create(job)
        await self.store.start(job.id, T0)
        huge = Outcome(finished_at=T0, failure=True, status_code=10**30)
        with self.assertRaises(OverflowError):
            await self.store.finish(job.id, huge)
        await self.store.create(make_job(2))
        done = await self.store.finish(job.id, Outcome(finished_at=T0, success=True))
        assert done is not None
        self.assertEqual(done.status, "success")
        counts = await self.store.counts(0, 0)
        self.assertEqual((counts.stored, counts.waiting, counts.running), (2, 1, 0))

    async def test_survives_reopen(self) -> None:
        """Jobs and counters are there after close and open."""
        await self.add(make_job(1), make_job(2))
        await self.store.close()
        self.store = SQLiteStore(self.data_dir, reactor)
        await self.store.open()
        self.assertEqual((await self.store.counts(0, 0)).stored, 2)
        self.assertEqual((await self.store.get(make_job(2).id)).url, make_job(2).url)

    async def test_second_store_on_same_dir_refused(self) -> None:
        """A second store on the same data_dir fails to open, naming the directory."""
        other = SQLiteStore(self.data_dir, reactor)
        with self.assertRaises(StoreError) as e:
            await other.open()
        self.assertIn("another HQ server", str(e.exception))
        self.assertIn(self.data_dir, str(e.exception))

    async def test_wal_and_schema_version(self) -> None:
        """The file is in WAL mode and carries the schema version."""
        conn = sqlite3.connect(self.store.path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)

    async def test_newer_schema_refused(self) -> None:
        """A file written by a newer schema is refused with a clear message."""
        await self.store.close()
        conn = sqlite3.connect(os.path.join(self.data_dir, "hq.sqlite3"))
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
        self.store = SQLiteStore(self.data_dir, reactor)
        with self.assertRaises(StoreError) as e:
            await self.store.open()
        self.assertIn("newer HQ", str(e.exception))

    async def test_concurrent_writes_all_land_with_right_counters(self) -> None:
        """Many concurrent creates all land, and the batch keeps every counter right."""
        from twisted.internet.defer import gatherResults

        jobs = [make_job(n) for n in range(300)]
        await gatherResults([self.store.create(job) for job in jobs])
        self.assertEqual((await self.store.counts(0, 0)).stored, 300)
        self.assertEqual(len((await self.store.list_jobs(ListQuery())).jobs), 300)

    async def test_duplicate_in_batch_fails_alone(self) -> None:
        """A duplicate id in a batch fails that create only."""
        from twisted.internet.defer import DeferredList

        job = make_job(1)
        results = await DeferredList(
            [self.store.create(job), self.store.create(job), self.store.create(make_job(2))],
            consumeErrors=True,
        )
        self.assertEqual([ok for ok, _ in results], [True, False, True])
        self.assertEqual((await self.store.counts(0, 0)).stored, 2)

    async def test_integrity_check(self) -> None:
        """integrity_check reports ok on a sound file."""
        await self.add(make_job(1))
        self.assertEqual(await self.store.integrity_check(), ["ok"])

    async def test_concurrent_writes_are_batched_into_fewer_commits(self) -> None:
        """300 concurrent creates commit in fewer transactions than writes, all committed."""
        from twisted.internet.defer import gatherResults

        await self.store.close()
        commits: list[tuple[int, bool]] = []
        self.store = SQLiteStore(
            self.data_dir,
            reactor,
            on_commit=lambda seconds, writes, committed: commits.append((writes, committed)),
        )
        await self.store.open()
        del commits[:]  # the schema check at open is a transaction of its own
        await gatherResults([self.store.create(make_job(n)) for n in range(300)])
        self.assertEqual(sum(writes for writes, _ in commits), 300)
        self.assertTrue(all(committed for _, committed in commits))
        self.assertLess(len(commits), 300)
        self.assertEqual((await self.store.counts(0, 0)).stored, 300)

    async def test_scheduled_count_past_the_due_cap_counts_the_scheduled(self) -> None:
        """With more due jobs than the cap, scheduled is counted directly, still exact."""
        import hq.store.sqlite as sqlite_store

        self.patch(sqlite_store, "COUNT_CAP", 1)
        now = T0 + 1000
        await self.add(make_job(1), make_job(2), make_job(3, run_at=now + 5))
        counts = await self.store.counts(0, now)
        self.assertEqual((counts.waiting, counts.scheduled), (3, 1))

    async def test_close_releases_a_lock_taken_without_opening(self) -> None:
        """lock() then close() (a start that failed before open) frees the data_dir."""
        directory = self.mktemp()
        other = SQLiteStore(directory, reactor)
        other.lock()
        await other.close()
        again = SQLiteStore(directory, reactor)
        again.lock()  # raises StoreError if the first lock were still held
        await again.close()

    async def test_writer_connection_runs_synchronous_full(self) -> None:
        """The writer commits with PRAGMA synchronous = FULL (2): a 200 push is on disk."""
        seen = await self.store._write(
            lambda conn, changes: conn.execute("PRAGMA synchronous").fetchone()[0]
        )
        self.assertEqual(seen, 2)

    async def test_page_caches_are_big_only_for_the_writer(self) -> None:
        """
        The writer keeps 16 MB of pages between batches; readers and the scan
        thread keep SQLite's default 2 MB, since their caches are emptied by
        nearly every commit and would only hold the server's memory.
        """
        size = "PRAGMA cache_size"
        writer = await self.store._write(lambda conn, changes: conn.execute(size).fetchone()[0])
        reader = await self.store._read(lambda conn: conn.execute(size).fetchone()[0])
        scan = await self.store._read(lambda conn: conn.execute(size).fetchone()[0], scan=True)
        self.assertEqual((writer, reader, scan), (-16_000, -2_000, -2_000))

    def gate_commits(self) -> _GatedCommits:
        """
        Put the writer's connection behind a :class:`_GatedCommits` (the
        connection is made by the first write: the open has made it).
        """
        writer = self.store.file._writer
        assert writer is not None and writer._conn is not None
        gated = _GatedCommits(writer._conn)
        writer._conn = gated  # type: ignore[assignment]
        self.addCleanup(gated.release.set)
        return gated

    async def test_starts_commit_first_and_fire_before_the_durable_writes_sync(self) -> None:
        """In a batch, starts commit first without a sync and fire; the other writes then commit."""
        job, other = make_job(1), make_job(2)
        await self.add(job)
        gated = self.gate_commits()
        started = self.store.start(job.id, T0)
        created = self.store.create(other)
        job_started = await started
        assert job_started is not None
        self.assertEqual(job_started.state, JobState.RUNNING)
        self.assertFalse(created.called, "the create waits for its (gated) commit")
        self.assertEqual(
            [t for t in gated.statements if not t.startswith("PRAGMA")][:3],
            ["BEGIN IMMEDIATE", sql.START, "COMMIT"],
        )
        self.assertFalse(gated.synced[0])
        # Committed already: a read sees the start.
        self.assertEqual((await self.store.get(job.id)).state, JobState.RUNNING)
        gated.release.set()
        await created
        self.assertEqual(gated.synced, [False, True])
        counts = await self.store.counts(0, 0)
        self.assertEqual((counts.stored, counts.waiting, counts.running), (2, 1, 1))

    def hold_syncs(self, error: OSError | None = None) -> tuple[threading.Event, list[int]]:
        """
        Make the writer's syncs of the log file by hand wait for the event
        returned (or fail with ``error``); return it and the inodes synced.
        """
        release = threading.Event()
        self.addCleanup(release.set)
        synced: list[int] = []

        def datasync(fd: int) -> None:
            synced.append(os.fstat(fd).st_ino)
            if error is not None:
                raise error
            release.wait(10)

        self.patch(sqlitefile, "_datasync", datasync)
        return release, synced

    async def test_early_push_acts_before_its_sync(self) -> None:
        """
        A push with ``committed`` commits without a sync, calls it (the job
        is readable then), syncs the log file by hand and only then fires.
        """
        job = make_job(1).started(T0)
        assert job is not None
        gated = self.gate_commits()
        release, synced = self.hold_syncs()
        committed: Deferred[None] = Deferred()
        pushed = self.store.push([job], 0, lambda: committed.callback(None))
        await committed
        self.assertEqual(gated.synced, [False])
        self.assertEqual((await self.store.get(job.id)).state, JobState.RUNNING)
        self.assertFalse(pushed.called, "answered only once on disk")
        release.set()
        (done,) = await pushed
        self.assertEqual(done.job.id, job.id)
        self.assertEqual(synced, [os.stat(self.store.path + "-wal").st_ino])
        # A push without it commits with a sync, as before (not by hand).
        gated.release.set()
        await self.store.push([make_job(2)], 0)
        self.assertEqual(gated.synced[:2], [False, True])
        self.assertEqual(len(synced), 1)

    async def test_early_push_without_the_log_file(self) -> None:
        """
        With a rollback journal (no ``-wal`` file: a file system without
        shared memory), an early push commits with its sync; ``committed``
        is called after it, and nothing is synced by hand.
        """
        writer = self.store.file._writer
        assert writer is not None
        self.assertTrue(writer._wal)
        writer._wal = False
        job = make_job(1).started(T0)
        assert job is not None
        gated = self.gate_commits()
        gated.release.set()
        _, synced = self.hold_syncs()
        called: list[bool] = []
        await self.store.push([job], 0, lambda: called.append(True))
        self.assertEqual((called, gated.synced[:1], synced), ([True], [True], []))

    async def test_early_push_whose_sync_fails(self) -> None:
        """
        When the log file cannot be synced, the push fails (it was committed
        and acted on: it stays, and is counted).
        """
        job = make_job(1).started(T0)
        assert job is not None
        self.hold_syncs(OSError(5, "Input/output error"))
        called: list[bool] = []
        with self.assertRaises(StoreUnavailable) as caught:
            await self.store.push([job], 0, lambda: called.append(True))
        self.assertIn("cannot sync the log file", str(caught.exception))
        self.assertEqual(called, [True])
        counts = await self.store.counts(0, 0)
        self.assertEqual((counts.stored, counts.running), (1, 1))

    async def test_early_push_not_called_for_a_failed_or_keyed_push(self) -> None:
        """
        ``committed`` is not called for a push that fails (a taken id), nor
        for one with an idempotency key, which commits with its sync.
        """
        await self.add(make_job(1))
        called: list[int] = []
        with self.assertRaises(JobExists):
            await self.store.push([make_job(1)], 0, lambda: called.append(1))
        gated = self.gate_commits()
        gated.release.set()
        await self.store.push([make_job(2, idempotency_key="k")], 0, lambda: called.append(2))
        self.assertEqual(called, [])
        self.assertEqual(gated.synced[:1], [True])
        self.assertEqual(self.store.file._writer._early, {})  # type: ignore[union-attr]

    async def test_a_start_that_cannot_commit_fails_alone(self) -> None:
        """When the starts' commit fails, the start fails; the batch's other writes commit."""
        job, other = make_job(1), make_job(2)
        await self.add(job)
        gated = self.gate_commits()
        gated.fail_unsynced = True
        gated.release.set()
        started = self.store.start(job.id, T0)
        created = self.store.create(other)
        with self.assertRaises(StoreUnavailable):
            await started
        await created
        counts = await self.store.counts(0, 0)
        self.assertEqual((counts.stored, counts.waiting, counts.running), (2, 2, 0))
        self.assertEqual((await self.store.get(job.id)).state, JobState.WAITING)

    async def test_a_start_and_finish_with_the_known_job_read_back_nothing(self) -> None:
        """
        Given the job, a start and a finish return no row (the rows changed
        are counted); a start whose attempt count differs reads it back.
        """
        job = make_job(1, headers={"X-A": "b"})
        await self.add(job)
        gated = self.gate_commits()
        gated.release.set()
        started = await self.store.start(job.id, T0 + 5, job)
        self.assertIn(sql.START_KNOWN, gated.statements)
        self.assertNotIn(sql.START_ATTEMPTS, gated.statements)
        self.assertEqual(started, await self.store.get(job.id))
        self.assertEqual(
            (started.state, started.started_at, started.attempts), (JobState.RUNNING, T0 + 5, 1)
        )
        self.assertIsNone(await self.store.start(job.id, T0 + 6, job))
        outcome = Outcome(finished_at=T0 + 9, success=True, status_code=200, output="ok")
        finished = await self.store.finish(job.id, outcome, None, None, started)
        self.assertIn(sql.FINISH_KNOWN, gated.statements)
        self.assertEqual(finished, await self.store.get(job.id))
        self.assertEqual((finished.status, finished.output), ("success", "ok"))
        self.assertIsNone(await self.store.finish(job.id, outcome, None, None, started))

        # The caller's attempt count is stale: the store's is used.
        other = make_job(2)
        await self.add(other)
        stale = attrs.evolve(other, attempts=3)
        again = await self.store.start(other.id, T0 + 10, stale)
        self.assertIn(sql.START_ATTEMPTS, gated.statements)
        self.assertEqual(again, await self.store.get(other.id))
        assert again is not None
        self.assertEqual(again.attempts, 1)

    async def test_savepoints_only_when_a_write_of_the_batch_fails(self) -> None:
        """A batch runs without savepoints; with a failing write, again with one per write."""
        from twisted.internet.defer import DeferredList, gatherResults

        gated = self.gate_commits()
        gated.release.set()
        await gatherResults([self.store.create(make_job(n)) for n in range(5)])
        self.assertNotIn("SAVEPOINT op", gated.statements)
        self.assertEqual(gated.statements.count("ROLLBACK"), 0)
        results = await DeferredList(
            [self.store.create(make_job(10)), self.store.create(make_job(1))],
            consumeErrors=True,
        )
        self.assertEqual([ok for ok, _ in results], [True, False])
        self.assertEqual(gated.statements.count("ROLLBACK"), 1)
        self.assertEqual(gated.statements.count("SAVEPOINT op"), 2)
        self.assertEqual((await self.store.counts(0, 0)).stored, 6)

    async def test_starts_and_finishes_of_a_batch_run_as_one_statement_each(self) -> None:
        """
        The starts (and the finishes) of known jobs asked for together run as
        one statement, with the results each would have alone. When a job is
        no longer waiting (or running), the batch runs again write by write:
        that one does not start (or finishes alone), the others do.
        """
        from twisted.internet.defer import gatherResults

        jobs = [make_job(n) for n in range(1, 6)]
        await self.add(*jobs)
        await self.store.stop(jobs[4].id, T0)  # no longer waiting
        gated = self.gate_commits()
        gated.release.set()
        started = await gatherResults([self.store.start(job.id, T0 + 7, job) for job in jobs[:4]])
        self.assertEqual(gated.statements.count(sql.start_many(4)), 1)
        self.assertNotIn(sql.START_ATTEMPTS, gated.statements)
        self.assertNotIn("ROLLBACK", gated.statements)
        self.assertIsNone(await self.store.start(jobs[4].id, T0 + 7, jobs[4]))
        for job, running in zip(jobs[:4], started[:4], strict=True):
            assert running is not None
            self.assertEqual(running, await self.store.get(job.id))
            self.assertEqual(
                (running.state, running.started_at, running.attempts), (JobState.RUNNING, T0 + 7, 1)
            )
        counts = await self.store.counts(0, 0)
        self.assertEqual((counts.waiting, counts.running), (0, 4))

        await self.store.stop(jobs[3].id, T0 + 8)  # marked canceled, still running
        await self.store.finish(jobs[2].id, Outcome(finished_at=T0 + 8, failure=True, err="x"))
        del gated.statements[:]
        outcome = Outcome(finished_at=T0 + 9, success=True, status_code=200, output="ok")
        finished = await gatherResults(
            [
                self.store.finish(job.id, outcome, Attempt.of(job, outcome), None, job)
                for job in started[:4]
                if job is not None
            ]
        )
        # One statement changed 3 rows of 4: the batch ran again, each alone.
        self.assertEqual(gated.statements.count(sql.finish_many(4)), 1)
        self.assertEqual(gated.statements.count("ROLLBACK"), 1)
        self.assertEqual(gated.statements.count("SAVEPOINT op"), 4)
        # Finished already: not finished again.
        self.assertIsNone(finished[2])
        for job, done in zip(jobs[:2] + jobs[3:4], finished[:2] + finished[3:], strict=True):
            self.assertEqual(done, await self.store.get(job.id))
            self.assertEqual((done.status, done.output), ("success", "ok"))
            self.assertEqual(
                [(a.attempt, a.status_code) for a in await self.store.attempts(job.id)], [(1, 200)]
            )
        counts = await self.store.counts(0, 0)
        self.assertEqual((counts.stored, counts.waiting, counts.running), (5, 0, 0))

        # All found running: one statement each for the finishes and their attempts.
        more = [make_job(n) for n in range(6, 9)]
        await self.add(*more)
        running = await gatherResults([self.store.start(job.id, T0 + 10, job) for job in more])
        del gated.statements[:]
        done = await gatherResults(
            [self.store.finish(j.id, outcome, Attempt.of(j, outcome), None, j) for j in running]
        )
        self.assertEqual(gated.statements.count(sql.finish_many(3)), 1)
        self.assertEqual(gated.statements.count(sql.insert_attempts_many(3)), 1)
        self.assertNotIn("ROLLBACK", gated.statements)
        for job in done:
            self.assertEqual(job, await self.store.get(job.id))
        counts = await self.store.counts(0, 0)
        self.assertEqual((counts.stored, counts.waiting, counts.running), (8, 0, 0))

    async def test_pushes_of_a_batch_insert_together_and_a_taken_id_fails_alone(self) -> None:
        """
        Pushes without idempotency keys asked for together insert their jobs
        in one statement; a push whose id is taken fails alone (JobExists).
        """
        from twisted.internet.defer import DeferredList

        await self.add(make_job(1))
        gated = self.gate_commits()
        gated.release.set()
        first = await DeferredList(
            [self.store.push([make_job(2), make_job(3)], 0), self.store.push([make_job(4)], 0)],
            consumeErrors=True,
        )
        self.assertEqual([ok for ok, _ in first], [True, True])
        self.assertEqual(gated.statements.count(sql.insert_many(3)), 1)
        self.assertEqual([p.job.id for p in first[0][1]], [make_job(2).id, make_job(3).id])
        results = await DeferredList(
            [self.store.push([make_job(5)], 0), self.store.push([make_job(6), make_job(1)], 0)],
            consumeErrors=True,
        )
        self.assertEqual([ok for ok, _ in results], [True, False])
        results[1][1].trap(JobExists)
        self.assertEqual(gated.statements.count("SAVEPOINT op"), 2)
        stored = [job.id for job in (await self.store.list_jobs(ListQuery())).jobs]
        self.assertEqual(sorted(stored), [make_job(n).id for n in (1, 2, 3, 4, 5)])
        self.assertEqual((await self.store.counts(0, 0)).stored, 5)

    async def test_the_reactor_thread_runs_the_delivery_paths_statements(self) -> None:
        """
        Pushes, starts and finishes of known jobs asked for together: the
        reactor thread begins the transaction and runs their statements; the
        writer thread runs the batch's other writes and commits, once.
        """
        from twisted.internet.defer import gatherResults

        waiting, running, other = make_job(1), make_job(2), make_job(3)
        await self.add(waiting, running, other)
        started = await self.store.start(running.id, T0, running)
        assert started is not None
        gated = self.gate_commits()
        gated.release.set()
        outcome = Outcome(finished_at=T0 + 5, success=True, status_code=200, output="ok")
        new = [make_job(10), make_job(11)]
        results = await gatherResults(
            [
                self.store.push(new, 0),
                self.store.start(waiting.id, T0 + 5, waiting),
                self.store.finish(running.id, outcome, Attempt.of(started, outcome), None, started),
                self.store.stop(other.id, T0 + 5),
            ]
        )
        main = threading.current_thread().name
        self.assertEqual(gated.on(sql.insert_many(2)), {main})
        self.assertEqual(gated.on(sql.START_KNOWN), {main})
        self.assertEqual(gated.on(sql.FINISH_KNOWN), {main})
        self.assertEqual(gated.on("BEGIN IMMEDIATE"), {main})
        self.assertEqual(gated.on("COMMIT"), {"hq-sqlite-writer"})
        self.assertEqual(gated.statements.count("COMMIT"), 1)
        self.assertEqual(gated.synced, [True])
        # The stop reads and rewrites its job on the writer thread.
        self.assertEqual(gated.on(sql.UPDATE), {"hq-sqlite-writer"})
        self.assertEqual([p.job.id for p in results[0]], [job.id for job in new])
        for job in (*new, waiting, running, other):
            self.assertEqual(
                (await self.store.get(job.id)).status,
                {waiting.id: "running", running.id: "success", other.id: "canceled"}.get(
                    job.id, "waiting"
                ),
            )
        counts = await self.store.counts(0, 0)
        self.assertEqual((counts.stored, counts.waiting, counts.running), (5, 2, 1))

    async def test_a_batch_too_big_for_the_reactor_thread_runs_on_the_writer(self) -> None:
        """More rows than INLINE_ROWS: every statement runs on the writer thread."""
        gated = self.gate_commits()
        gated.release.set()
        jobs = [make_job(n) for n in range(1, sqlitefile.INLINE_ROWS + 2)]
        await self.store.push(jobs, 0)
        self.assertEqual(gated.on(sql.insert_many(len(jobs))), {"hq-sqlite-writer"})
        self.assertEqual(set(gated.threads), {"hq-sqlite-writer"})
        self.assertEqual((await self.store.counts(0, 0)).stored, len(jobs))

    async def test_the_reactor_thread_never_waits_for_a_locked_file(self) -> None:
        """
        Another process holds the write lock: the reactor thread does not
        wait for it (the writer thread does, and then commits the batch).
        """
        other = sqlite3.connect(self.store.file.path, check_same_thread=False)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        writer = self.store.file._writer
        assert writer is not None
        pushed = self.store.push([make_job(1)], 0)
        began = time.monotonic()
        writer.flush()
        self.assertLess(time.monotonic() - began, 1.0)
        threading.Timer(0.3, other.rollback).start()
        (result,) = await pushed
        self.assertEqual(result.job.id, make_job(1).id)
        self.assertEqual((await self.store.counts(0, 0)).stored, 1)

    async def test_the_reactor_thread_leaves_a_connection_in_use(self) -> None:
        """
        While the writer thread uses the connection (a step of the search
        index), the reactor thread hands the batch over whole.
        """
        gated = self.gate_commits()
        gated.release.set()
        writer = self.store.file._writer
        assert writer is not None
        writer._conn_lock.acquire()
        pushed = self.store.push([make_job(1)], 0)
        writer.flush()
        self.assertEqual(gated.statements, [])
        writer._conn_lock.release()
        await pushed
        self.assertEqual(gated.on(sql.INSERT), {"hq-sqlite-writer"})

    async def test_writes_asked_for_while_a_batch_commits_make_the_next_batch(self) -> None:
        """
        One batch at a time is with the writer thread: the writes asked for
        while it commits wait, then run together.
        """
        self.patch(sqlitefile, "INDEX_PAUSE", 3600)  # no index step meanwhile
        gated = self.gate_commits()
        first = self.store.push([make_job(1)], 0)
        await self.committing(gated)
        more = [self.store.push([make_job(n)], 0) for n in (2, 3, 4)]
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(gated.statements.count("BEGIN IMMEDIATE"), 1)
        gated.release.set()
        await first
        for each in more:
            await each
        self.assertEqual(gated.statements.count(sql.insert_many(3)), 1)
        self.assertEqual(gated.statements.count("COMMIT"), 2)
        self.assertEqual((await self.store.counts(0, 0)).stored, 4)

    async def committing(self, gated: _GatedCommits) -> None:
        """Wait until the writer thread is in a ``COMMIT`` of ``gated``."""
        for _ in range(100):
            if gated.statements.count("COMMIT"):
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail("no COMMIT began")

    def hold_the_writer(self) -> threading.Event:
        """
        Make the writer thread wait, before each batch, until the returned
        event is set (a batch handed over and not yet taken).
        """
        writer = self.store.file._writer
        assert writer is not None
        gate = threading.Event()
        run_batch = writer.run_batch

        def held(batch: Any) -> Any:
            gate.wait(10)
            return run_batch(batch)

        writer.run_batch = held  # type: ignore[method-assign]
        self.addCleanup(gate.set)
        return gate

    async def test_writes_join_a_batch_the_writer_thread_has_not_taken(self) -> None:
        """
        Writes asked for after a batch was handed over, before the writer
        thread takes it, join its transaction: one commit for all.
        """
        from twisted.internet.defer import DeferredList

        self.patch(sqlitefile, "INDEX_PAUSE", 3600)  # no index step meanwhile
        await self.add(make_job(1))
        gated = self.gate_commits()
        gated.release.set()
        gate = self.hold_the_writer()
        first = self.store.push([make_job(2)], 0)
        await deferLater(reactor, 0, lambda: None)
        more = [self.store.push([make_job(n)], 0) for n in (3, 4)]
        await deferLater(reactor, 0, lambda: None)
        taken = self.store.push([make_job(1)], 0)  # its id is taken: it fails alone
        await deferLater(reactor, 0, lambda: None)
        main = threading.current_thread().name
        self.assertEqual(gated.on(sql.insert_many(2)), {main})
        self.assertEqual(gated.statements.count("SAVEPOINT more"), 2)
        self.assertEqual(gated.statements.count("ROLLBACK TO more"), 1)
        self.assertEqual(gated.statements.count("COMMIT"), 0)
        gate.set()
        results = await DeferredList([first, *more, taken], consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True, True, True, False])
        results[3][1].trap(JobExists)
        # The first three in one commit; the taken id in a batch of its own.
        self.assertEqual(gated.statements.count("COMMIT"), 2)
        counts = await self.store.counts(0, 0)
        self.assertEqual(counts.stored, 4)
        stored = [job.id for job in (await self.store.list_jobs(ListQuery())).jobs]
        self.assertEqual(sorted(stored), [make_job(n).id for n in (1, 2, 3, 4)])

    async def test_a_write_that_must_sync_does_not_join_a_batch_of_starts(self) -> None:
        """
        A batch of starts commits without a sync: a push asked for before
        the writer thread takes it does not join it, and commits synced.
        """
        self.patch(sqlitefile, "INDEX_PAUSE", 3600)  # no index step meanwhile
        job = make_job(1)
        await self.add(job)
        gated = self.gate_commits()
        gated.release.set()
        gate = self.hold_the_writer()
        started = self.store.start(job.id, T0, job)
        await deferLater(reactor, 0, lambda: None)
        pushed = self.store.push([make_job(2)], 0)
        await deferLater(reactor, 0, lambda: None)
        self.assertNotIn("SAVEPOINT more", gated.statements)
        gate.set()
        await started
        await pushed
        self.assertEqual(gated.synced, [False, True])
        self.assertEqual((await self.store.counts(0, 0)).stored, 2)

    async def test_writes_held_while_a_batch_commits_are_committed_at_close(self) -> None:
        """
        Closing while a batch commits and later writes wait for it: they are
        handed over behind it and committed before the store closes.
        """
        gated = self.gate_commits()
        first = self.store.push([make_job(1)], 0)
        await self.committing(gated)
        held = [self.store.push([make_job(n)], 0) for n in (2, 3)]
        await deferLater(reactor, 0, lambda: None)
        closed = self.store.close()
        threading.Timer(0.1, gated.release.set).start()
        await closed
        for each in (first, *held):
            self.assertEqual(len(await each), 1)
        self.store = SQLiteStore(self.data_dir, reactor)
        await self.store.open()
        self.assertEqual((await self.store.counts(0, 0)).stored, 3)

    async def test_the_search_index_waits_for_a_pause_in_the_writes(self) -> None:
        """
        Noted jobs are moved into the search index only once the writes pause
        (INDEX_PAUSE), or after INDEX_BATCH writes; searches find them meanwhile.
        """
        while await self.store.search_backlog():
            await deferLater(reactor, 0.005, lambda: None)
        self.patch(sqlitefile, "INDEX_PAUSE", 3600)
        await self.add(make_job(1, name="needle"), make_job(2))
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(await self.store.search_backlog(), 2)
        page = await self.store.list_jobs(ListQuery(term="needle"))
        self.assertEqual([job.id for job in page.jobs], [make_job(1).id])
        self.patch(sqlitefile, "INDEX_BATCH", 3)
        await self.add(make_job(3))
        for _ in range(200):
            if not await self.store.search_backlog():
                break
            await deferLater(reactor, 0.005, lambda: None)
        self.assertEqual(await self.store.search_backlog(), 0)
        page = await self.store.list_jobs(ListQuery(term="needle"))
        self.assertEqual([job.id for job in page.jobs], [make_job(1).id])

    async def test_a_grouped_write_that_fails_runs_again_alone(self) -> None:
        """When a grouped statement fails, the batch runs again write by write."""
        from twisted.internet.defer import gatherResults

        jobs = [make_job(n) for n in range(1, 4)]
        await self.add(*jobs)
        gated = self.gate_commits()
        gated.release.set()
        gated.fail_statement = sql.start_many(3)
        started = await gatherResults([self.store.start(job.id, T0, job) for job in jobs])
        self.assertEqual([job.state for job in started], [JobState.RUNNING] * 3)
        self.assertEqual(gated.statements.count(sql.START_KNOWN), 3)
        self.assertEqual(gated.statements.count("SAVEPOINT op"), 3)

    async def test_a_batch_of_starts_alone_commits_without_waiting_for_the_disk(self) -> None:
        """Starts commit first with synchronous = NORMAL, other writes with FULL."""
        from twisted.internet.defer import gatherResults

        jobs = [make_job(1), make_job(2)]
        await self.add(*jobs)
        # Let the writer index them first: its idle work is other statements.
        while await self.store.search_backlog():
            await deferLater(reactor, 0.005, lambda: None)
        # No step of the search index meanwhile: it is not the batches'.
        self.patch(sqlitefile, "INDEX_PAUSE", 3600)
        gated = self.gate_commits()
        gated.release.set()

        async def statements(*writes: Deferred[object]) -> tuple[list[str], list[bool]]:
            del gated.statements[:], gated.synced[:]
            await gatherResults(list(writes))
            await self.store.counts(0, 0)  # a read: once the batch has committed
            return [s for s in gated.statements if not s.startswith("PRAGMA")], gated.synced

        self.assertEqual(
            await statements(self.store.start(jobs[0].id, T0)),
            (["BEGIN IMMEDIATE", sql.START, "COMMIT"], [False]),
        )
        self.assertEqual(
            await statements(self.store.start(jobs[1].id, T0), self.store.create(make_job(3))),
            (
                ["BEGIN IMMEDIATE", sql.START, "COMMIT", "BEGIN IMMEDIATE", sql.INSERT, "COMMIT"],
                [False, True],
            ),
        )
        finish = self.store.finish(jobs[0].id, Outcome(finished_at=T0, success=True))
        self.assertEqual((await statements(finish))[1], [True])
        seen = await self.store._write(
            lambda conn, changes: conn.execute("PRAGMA synchronous").fetchone()[0]
        )
        self.assertEqual(seen, 2)


class _GatedCommits:
    """
    The writer's connection, recording every statement; a ``COMMIT`` that
    syncs waits for ``release``; with ``fail_unsynced``, a ``COMMIT`` that
    does not sync fails as a full disk does; ``fail_statement`` fails.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.release = threading.Event()
        self.fail_unsynced = False
        #: A statement that fails (as a bug would make it).
        self.fail_statement: str | None = None
        self._syncs = conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        #: Every statement run, in order.
        self.statements: list[str] = []
        #: Whether each ``COMMIT`` waited for the disk, in order.
        self.synced: list[bool] = []
        #: The thread that ran each statement, in order.
        self.threads: list[str] = []

    def on(self, statement: str) -> set[str]:
        """Return the threads that ran ``statement``."""
        return {t for s, t in zip(self.statements, self.threads, strict=True) if s == statement}

    def execute(self, statement: str, *args: object) -> sqlite3.Cursor:
        self._run(statement)
        return self._conn.execute(statement, *args)

    def commit(self) -> None:
        """The writer thread commits with ``Connection.commit()``: a ``COMMIT`` here."""
        self._run("COMMIT")
        self._conn.commit()

    def _run(self, statement: str) -> None:
        self.statements.append(statement)
        self.threads.append(threading.current_thread().name)
        if statement.startswith("PRAGMA synchronous = "):
            self._syncs = statement.endswith("FULL")
        elif statement == "COMMIT":
            self.synced.append(self._syncs)
            if self._syncs:
                self.release.wait(10)
        if statement == self.fail_statement:
            raise sqlite3.OperationalError("no such thing")
        if statement == "COMMIT" and self.fail_unsynced and not self._syncs:
            raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)


class WhenFreeTests(SynchronousTestCase):
    """
    The writer's connection has no busy timeout (the reactor thread must
    never wait on it); the writer thread waits for another process's lock in
    ``sqlitefile._when_free``.
    """

    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp() + ".sqlite3")
        self.conn = sqlitefile._connect(self.path, busy_timeout_ms=0)
        self.addCleanup(self.conn.close)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("CREATE TABLE t (x)")
        self.other = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.addCleanup(self.other.close)

    def test_the_connection_does_not_wait(self) -> None:
        """A BEGIN on a file another connection writes fails at once."""
        self.assertEqual(self.conn.execute("PRAGMA busy_timeout").fetchone()[0], 0)
        self.other.execute("BEGIN IMMEDIATE")
        began = time.monotonic()
        with self.assertRaises(sqlite3.OperationalError) as raised:
            self.conn.execute("BEGIN IMMEDIATE")
        self.assertLess(time.monotonic() - began, 0.5)
        self.assertTrue(sqlitefile._busy(raised.exception))

    def test_it_waits_until_the_lock_goes(self) -> None:
        """The statement runs once the other connection commits."""
        self.other.execute("BEGIN IMMEDIATE")
        self.other.execute("INSERT INTO t VALUES (1)")
        timer = threading.Timer(0.2, self.other.commit)
        timer.start()
        self.addCleanup(timer.cancel)
        began = time.monotonic()
        sqlitefile._when_free(self.conn, "BEGIN IMMEDIATE")
        self.assertGreaterEqual(time.monotonic() - began, 0.15)
        self.assertEqual(self.conn.execute("SELECT x FROM t").fetchall(), [(1,)])
        self.conn.execute("ROLLBACK")

    def test_it_gives_up_after_the_busy_timeout(self) -> None:
        """Past BUSY_TIMEOUT_MS it raises the busy error."""
        self.patch(sqlitefile, "BUSY_TIMEOUT_MS", 100)
        self.other.execute("BEGIN IMMEDIATE")
        began = time.monotonic()
        with self.assertRaises(sqlite3.OperationalError) as raised:
            sqlitefile._when_free(self.conn, "BEGIN IMMEDIATE")
        self.assertTrue(sqlitefile._busy(raised.exception))
        self.assertLess(time.monotonic() - began, 1.0)
        self.assertTrue(sqlitefile._unavailable(raised.exception))

    def test_other_errors_are_not_tried_again(self) -> None:
        """An error that is not a lock raises at once."""
        began = time.monotonic()
        with self.assertRaises(sqlite3.OperationalError) as raised:
            sqlitefile._when_free(self.conn, "SELECT * FROM nowhere")
        self.assertFalse(sqlitefile._busy(raised.exception))
        self.assertLess(time.monotonic() - began, 0.5)


class SyncLogTests(SynchronousTestCase):
    """
    The writer syncs the log file (``-wal``) of an early write by hand, on a
    descriptor of its own (``_Writer._sync_log``), and follows the file when
    SQLite replaces it.
    """

    def setUp(self) -> None:
        self.path = self.mktemp() + ".sqlite3"
        self.synced: list[int] = []
        self.patch(sqlitefile, "_datasync", lambda fd: self.synced.append(os.fstat(fd).st_ino))
        # What _sync_log reads of its writer.
        self.writer: Any = attrs.make_class("Writer", ["_path", "_log_fd", "_log_inode"])(
            self.path, None, 0
        )
        self.addCleanup(lambda: self.writer._log_fd is not None and os.close(self.writer._log_fd))

    def open_and_write(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        return conn

    def wal_inode(self) -> int:
        return os.stat(self.path + "-wal").st_ino

    def test_one_descriptor_while_the_file_stays(self) -> None:
        """Syncs of the same log file reuse the descriptor opened for the first."""
        conn = self.open_and_write()
        self.addCleanup(conn.close)
        sqlitefile._Writer._sync_log(self.writer)
        fd = self.writer._log_fd
        sqlitefile._Writer._sync_log(self.writer)
        self.assertEqual(self.writer._log_fd, fd)
        self.assertEqual(self.synced, [self.wal_inode()] * 2)

    def test_a_replaced_log_file_is_opened_again(self) -> None:
        """
        When the last connection closes, SQLite deletes the log file and the
        next one makes a new file: the next sync is of the new file (the old
        descriptor, which kept the deleted file's inode from being reused, is
        closed).
        """
        conn = self.open_and_write()
        sqlitefile._Writer._sync_log(self.writer)
        first = self.wal_inode()
        conn.close()
        self.assertFalse(os.path.exists(self.path + "-wal"))
        conn = self.open_and_write()
        self.addCleanup(conn.close)
        second = self.wal_inode()
        self.assertNotEqual(first, second)
        sqlitefile._Writer._sync_log(self.writer)
        self.assertEqual(self.synced, [first, second])
        self.assertEqual(self.writer._log_inode, second)
        self.assertEqual(os.fstat(self.writer._log_fd).st_ino, second)

    def test_no_log_file(self) -> None:
        """Without a log file the sync fails (the push then answers 503)."""
        with self.assertRaises(FileNotFoundError):
            sqlitefile._Writer._sync_log(self.writer)
        self.assertEqual(self.synced, [])


class GlobPrefilterTests(SynchronousTestCase):
    """
    The GLOB that lets SQLite skip rows for a plain-string regexp.
    """

    def test_plain_strings_become_globs(self) -> None:
        """Characters stay, '.' is any character, escapes and GLOB wildcards are literal."""
        self.assertEqual(glob_prefilter("abc"), "*abc*")
        self.assertEqual(glob_prefilter("a.c"), "*a?c*")
        self.assertEqual(glob_prefilter(r"a\.c"), "*a.c*")
        self.assertEqual(glob_prefilter(r"a\*b\?c\[d"), "*a[*]b[?]c[[]d*")

    def test_other_regexps_have_none(self) -> None:
        """Anchors, classes, repeats, groups and alternations are left to the regexp."""
        for pattern in ("^a", "a$", "a|b", "a*", "a+", "a?", "(a)", "[ab]", "a{2}", r"\d", "a\\"):
            self.assertIsNone(glob_prefilter(pattern), pattern)

    @given(
        pattern=st.text(alphabet="ab.*?[]\\é\n", min_size=1, max_size=6),
        text=st.text(alphabet="ab.*?[]\\é\nc", max_size=12),
    )
    def test_every_regexp_match_passes_the_glob(self, pattern: str, text: str) -> None:
        """Whenever the RE2 regexp finds a match, the GLOB matches too (never a miss)."""
        glob = glob_prefilter(pattern)
        try:
            regexp = re2.compile(pattern)
        except re2.error:
            return
        if glob is None or not regexp.search(text):
            return
        conn = sqlite3.connect(":memory:")
        self.addCleanup(conn.close)
        self.assertTrue(conn.execute("SELECT ? GLOB ?", (text, glob)).fetchone()[0])


class BindNoneTests(SynchronousTestCase):
    """
    ``None`` is bound as ``NULL`` through the adapter that saves sqlite3's
    search for one (hq.store.sqlitefile.bind_none_directly, called when the
    module is imported, as this module does through hq.store.sqlite).
    """

    def test_none_has_an_adapter_and_is_still_null(self) -> None:
        """
        Importing the store registered the adapter, and a None still reads
        back as SQL NULL.
        """
        adapter = sqlite3.adapters.get((type(None), sqlite3.PrepareProtocol))
        self.assertIsNotNone(adapter)
        self.assertIsNone(adapter(None))  # type: ignore[misc]
        conn = sqlite3.connect(":memory:")
        self.addCleanup(conn.close)
        conn.execute("CREATE TABLE t (a, b)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(None, 1), (None, None)])
        self.assertEqual(
            conn.execute("SELECT typeof(a), typeof(b) FROM t ORDER BY rowid").fetchall(),
            [("null", "integer"), ("null", "null")],
        )
