"""
The schedule store contract (IScheduleStore), run against the in-memory fake,
SQLite and a real PostgreSQL: the fire is exactly once.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from hq.ids import first_id_at
from hq.model import JobTemplate, Schedule
from hq.store import IScheduleStore, ScheduleNotFound
from hq.store.memory import MemoryStore
from hq.store.postgres import PostgresStore
from hq.store.sqlite import SQLiteStore
from tests import pgserver
from tests.test_store import T0

TEMPLATE = JobTemplate(url="http://worker.test/tick", name="tick", payload='{"a":1}', retries=2)


def make_schedule(n: int, **kwargs: Any) -> Schedule:
    """
    Return a running schedule (id made ``n`` ms after T0) next firing at T0 + 1 min.
    """
    values: dict[str, Any] = {
        "id": first_id_at(T0 + n),
        "name": f"s{n}",
        "cron": "* * * * *",
        "timezone": "UTC",
        "job": TEMPLATE,
        "next_run_at": T0 + 60_000,
    }
    values.update(kwargs)
    return Schedule(**values)


class ScheduleStoreContractMixin:
    """
    Behaviour every IScheduleStore must have. Subclasses set ``self.store``.
    """

    store: Any

    def job_id(self, n: int) -> int:
        return first_id_at(T0 + 10_000 + n)

    def test_provides_interface(self) -> None:
        """The store provides IScheduleStore."""
        self.assertTrue(verifyObject(IScheduleStore, self.store))  # type: ignore[attr-defined]

    async def test_add_get_list_round_trip(self) -> None:
        """A schedule reads back equal; the list is in id order."""
        second, first = make_schedule(2, paused=True, next_run_at=None), make_schedule(1)
        await self.store.add_schedule(second)
        await self.store.add_schedule(first)
        self.assertEqual(await self.store.get_schedule(first.id), first)
        self.assertEqual(await self.store.list_schedules(), [first, second])

    async def test_unknown_schedule_fails_not_found(self) -> None:
        """Get, delete, pause and resume of an unknown id fail with ScheduleNotFound."""
        for call in (
            lambda: self.store.get_schedule(42),
            lambda: self.store.delete_schedule(42),
            lambda: self.store.pause_schedule(42),
            lambda: self.store.resume_schedule(42, T0),
        ):
            with self.assertRaises(ScheduleNotFound):  # type: ignore[attr-defined]
                await call()

    async def test_delete(self) -> None:
        """A deleted schedule is gone; deleting it again fails."""
        schedule = make_schedule(1)
        await self.store.add_schedule(schedule)
        await self.store.delete_schedule(schedule.id)
        self.assertEqual(await self.store.list_schedules(), [])
        with self.assertRaises(ScheduleNotFound):  # type: ignore[attr-defined]
            await self.store.delete_schedule(schedule.id)

    async def test_pause_and_resume_are_idempotent(self) -> None:
        """Pausing twice stays paused; resuming a running schedule keeps its next fire."""
        schedule = make_schedule(1)
        await self.store.add_schedule(schedule)
        paused = await self.store.pause_schedule(schedule.id)
        self.assertEqual((paused.paused, paused.next_run_at), (True, None))
        self.assertEqual(await self.store.pause_schedule(schedule.id), paused)
        resumed = await self.store.resume_schedule(schedule.id, T0 + 120_000)
        self.assertEqual((resumed.paused, resumed.next_run_at), (False, T0 + 120_000))
        again = await self.store.resume_schedule(schedule.id, T0 + 999_000)
        self.assertEqual(again, resumed)

    async def test_due_and_next_fire(self) -> None:
        """Due schedules come earliest first, paused ones never; next_fire_at is the earliest."""
        late = make_schedule(1, next_run_at=T0 + 3000)
        early = make_schedule(2, next_run_at=T0 + 1000)
        paused = make_schedule(3, paused=True, next_run_at=None)
        for each in (late, early, paused):
            await self.store.add_schedule(each)
        self.assertEqual(await self.store.next_fire_at(), T0 + 1000)
        self.assertEqual(await self.store.due_schedules(T0, 10), [])
        self.assertEqual(await self.store.due_schedules(T0 + 5000, 10), [early, late])
        self.assertEqual(await self.store.due_schedules(T0 + 5000, 1), [early])

    async def test_next_fire_none_without_running_schedules(self) -> None:
        """No running schedule: no next fire."""
        self.assertIsNone(await self.store.next_fire_at())
        await self.store.add_schedule(make_schedule(1, paused=True, next_run_at=None))
        self.assertIsNone(await self.store.next_fire_at())

    async def test_fire_stores_the_job_and_moves_the_schedule_on(self) -> None:
        """A fire stores the job (with its scheduleId) and advances next/last run and last job."""
        schedule = make_schedule(1)
        await self.store.add_schedule(schedule)
        job = schedule.job_for(self.job_id(1))
        stored = await self.store.fire(schedule.id, T0 + 60_000, job, T0 + 120_000)
        self.assertEqual(stored, job)
        self.assertEqual((await self.store.get(job.id)).schedule_id, schedule.id)
        after = await self.store.get_schedule(schedule.id)
        self.assertEqual(
            (after.next_run_at, after.last_run_at, after.last_job_id),
            (T0 + 120_000, T0 + 60_000, job.id),
        )

    async def test_firing_the_same_time_twice_creates_one_job(self) -> None:
        """A second fire of the same (schedule, time) stores nothing and returns None."""
        schedule = make_schedule(1)
        await self.store.add_schedule(schedule)
        first = schedule.job_for(self.job_id(1))
        second = schedule.job_for(self.job_id(2))
        self.assertIsNotNone(await self.store.fire(schedule.id, T0 + 60_000, first, T0 + 120_000))
        self.assertIsNone(await self.store.fire(schedule.id, T0 + 60_000, second, T0 + 120_000))
        with self.assertRaises(Exception):  # type: ignore[attr-defined]  # noqa: B017
            await self.store.get(second.id)
        self.assertEqual((await self.store.get_schedule(schedule.id)).last_job_id, first.id)

    async def test_concurrent_fires_of_one_time_create_one_job(self) -> None:
        """Twenty fires of one time issued together: exactly one job."""
        schedule = make_schedule(1)
        await self.store.add_schedule(schedule)
        jobs = [schedule.job_for(self.job_id(n)) for n in range(20)]
        results = await gatherResults(
            [self.store.fire(schedule.id, T0 + 60_000, job, T0 + 120_000) for job in jobs]
        )
        self.assertEqual(len([r for r in results if r is not None]), 1)
        counts = await self.store.counts(0, T0)
        self.assertEqual(counts.stored, 1)

    async def test_paused_or_deleted_schedule_does_not_fire(self) -> None:
        """A fire of a paused or deleted schedule stores nothing."""
        paused, deleted = make_schedule(1), make_schedule(2)
        for each in (paused, deleted):
            await self.store.add_schedule(each)
        await self.store.pause_schedule(paused.id)
        await self.store.delete_schedule(deleted.id)
        for n, each in enumerate((paused, deleted)):
            job = each.job_for(self.job_id(n))
            self.assertIsNone(await self.store.fire(each.id, T0 + 60_000, job, T0 + 120_000))
        self.assertEqual((await self.store.counts(0, T0)).stored, 0)

    async def test_fired_job_restarts_and_deletes_like_any(self) -> None:
        """A fired job can finish, be restarted in place and be deleted."""
        schedule = make_schedule(1)
        await self.store.add_schedule(schedule)
        job = schedule.job_for(self.job_id(1))
        await self.store.fire(schedule.id, T0 + 60_000, job, T0 + 120_000)
        await self.store.stop(job.id, T0 + 61_000)
        restarted = await self.store.restart(job.id)
        self.assertEqual(restarted.schedule_id, schedule.id)
        await self.store.stop(job.id, T0 + 62_000)
        await self.store.delete(job.id)
        self.assertEqual((await self.store.counts(0, T0)).stored, 0)


class MemoryScheduleStoreTests(ScheduleStoreContractMixin, TestCase):
    """
    The contract, on the in-memory fake.
    """

    def setUp(self) -> None:
        self.store = MemoryStore()


class SQLiteScheduleStoreTests(ScheduleStoreContractMixin, TestCase):
    """
    The contract, on SQLite.
    """

    def setUp(self) -> Any:
        self.store = SQLiteStore(self.mktemp(), reactor)
        self.addCleanup(lambda: self.store.close())
        return self.store.open()

    async def test_schedules_survive_reopening(self) -> None:
        """A schedule and its fire are there after the store is closed and opened again."""
        schedule = make_schedule(1)
        await self.store.add_schedule(schedule)
        job = schedule.job_for(self.job_id(1))
        await self.store.fire(schedule.id, T0 + 60_000, job, T0 + 120_000)
        path = self.store.file._data_dir
        await self.store.close()
        self.store = SQLiteStore(path, reactor)
        await self.store.open()
        moved = attrs.evolve(
            schedule, next_run_at=T0 + 120_000, last_run_at=T0 + 60_000, last_job_id=job.id
        )
        self.assertEqual(await self.store.get_schedule(schedule.id), moved)
        self.assertEqual((await self.store.get(job.id)).schedule_id, schedule.id)


class PostgresScheduleStoreTests(ScheduleStoreContractMixin, TestCase):
    """
    The contract, on PostgreSQL; and fires of one time from two stores (two
    nodes) make one job.
    """

    skip = pgserver.skip_reason()

    def setUp(self) -> Any:
        self.url = pgserver.server().new_database()
        self.store = self.make_store()
        return self.store.open()

    def make_store(self) -> PostgresStore:
        store = PostgresStore(self.url, reactor)
        self.addCleanup(store.close)
        return store

    async def test_two_nodes_fire_one_time_once(self) -> None:
        """Two stores on one database fire the same 30 times together: 30 jobs, not 60."""
        other = self.make_store()
        await other.open()
        schedule = make_schedule(1)
        await self.store.add_schedule(schedule)
        made = 0
        for n in range(30):
            fire_at, next_at = T0 + 60_000 * (n + 1), T0 + 60_000 * (n + 2)
            a = schedule.job_for(self.job_id(2 * n))
            b = schedule.job_for(self.job_id(2 * n + 1))
            results = await gatherResults(
                [
                    self.store.fire(schedule.id, fire_at, a, next_at),
                    other.fire(schedule.id, fire_at, b, next_at),
                ]
            )
            made += len([r for r in results if r is not None])
        self.assertEqual(made, 30)
        self.assertEqual((await self.store.counts(0, T0)).stored, 30)
