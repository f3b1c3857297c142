"""
The scheduler service (hq.scheduler), driven by a fake clock over the
in-memory store: fire times, catch-up, daylight saving, one timer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from hq.cron import CronRule
from hq.ids import IdGenerator, id_to_ms
from hq.model import Job, JobTemplate, Schedule
from hq.scheduler import MAX_SLEEP, Scheduler
from hq.store import StoreUnavailable
from hq.store.memory import MemoryStore

BERLIN = ZoneInfo("Europe/Berlin")
TEMPLATE = JobTemplate(url="http://worker.test/tick", name="tick")


def seconds(*parts: int, tz: ZoneInfo = UTC) -> float:
    return datetime(*parts, tzinfo=tz).timestamp()  # type: ignore[misc]


class FlakyStore(MemoryStore):
    """
    A MemoryStore whose next ``failures`` reads of due schedules fail.
    """

    failures = 0

    def due_schedules(self, now: int, limit: int) -> Deferred[Any]:
        if FlakyStore.failures:
            FlakyStore.failures -= 1
            return fail(StoreUnavailable("down"))
        return super().due_schedules(now, limit)


class SchedulerTests(SynchronousTestCase):
    """
    A Scheduler over a MemoryStore and a Clock; jobs it creates are recorded.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(seconds(2026, 1, 1))
        self.store = MemoryStore()
        self.ids = IdGenerator(0, self.clock)
        self.queued: list[Job] = []
        self.scheduler = Scheduler(self.store, self.ids, self.clock, self.queued.append)
        self.next_id = 1

    def add(self, cron: str, timezone: str = "UTC", paused: bool = False) -> Schedule:
        rule = CronRule.parse(cron, timezone)
        now = int(self.clock.seconds() * 1000)
        schedule = Schedule(
            id=self.ids.next_id(),
            name="s",
            cron=rule.expression,
            timezone=timezone,
            job=TEMPLATE,
            paused=paused,
            next_run_at=None if paused else rule.next_after(now),
        )
        self.successResultOf(self.store.add_schedule(schedule))
        self.scheduler.wake()
        return schedule

    def run_until(self, when: float, step: float = 0.05) -> None:
        while self.clock.seconds() < when:
            self.clock.advance(min(step, when - self.clock.seconds()))

    def lateness(self) -> list[int]:
        """ms between each job's fire time (its schedule's) and its creation."""
        return [id_to_ms(job.id) for job in self.queued]

    def test_every_second_schedule_fires_each_second_on_time(self) -> None:
        """'* * * * * *' makes a job each second, created at its second, for 10 s."""
        self.scheduler.startService()
        start = self.clock.seconds()
        schedule = self.add("* * * * * *")
        self.run_until(start + 10.001, step=0.001)
        self.assertEqual(len(self.queued), 10)
        created = [id_to_ms(job.id) for job in self.queued]
        due = [int(start * 1000) + 1000 * n for n in range(1, 11)]
        # Within 2 ms of each second (the fake clock's float steps round).
        self.assertTrue(all(0 <= c - d <= 2 for c, d in zip(created, due, strict=True)), created)
        self.assertTrue(all(job.schedule_id == schedule.id for job in self.queued))

    def test_no_drift_when_fires_are_slightly_late(self) -> None:
        """Woken 300 ms late each time, the fires keep to whole seconds: none lost."""
        self.scheduler.startService()
        start = self.clock.seconds()
        schedule = self.add("* * * * * *")
        self.clock.advance(0)
        for _ in range(10):
            (call,) = self.clock.getDelayedCalls()
            self.clock.advance(call.getTime() + 0.3 - self.clock.seconds())
        moved = self.successResultOf(self.store.get_schedule(schedule.id))
        # Every second fired once, none skipped, none doubled.
        self.assertEqual(len(self.queued), 10)
        self.assertEqual(moved.last_run_at, int(start * 1000) + 10_000)
        self.assertEqual(moved.next_run_at, int(start * 1000) + 11_000)

    def test_one_timer_for_many_schedules(self) -> None:
        """10,000 schedules: one pending timer, set for the earliest fire."""
        self.scheduler.startService()
        now = int(self.clock.seconds() * 1000)
        for n in range(10_000):
            schedule = Schedule(
                id=self.ids.next_id(),
                name="s",
                cron=f"{n % 60} * * * *",
                timezone="UTC",
                job=TEMPLATE,
                next_run_at=CronRule.parse(f"{n % 60} * * * *").next_after(now),
            )
            self.store._schedules[schedule.id] = schedule
        self.scheduler.wake()
        self.clock.advance(0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.scheduler.wakes_at, now + 60_000)
        self.clock.advance(60)
        self.assertEqual(len(self.queued), 10_000 // 60 + 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_sleeps_until_the_next_fire_without_polling(self) -> None:
        """A daily schedule: the timer is set for its time (capped at MAX_SLEEP), no earlier."""
        self.scheduler.startService()
        self.add("0 3 * * *")
        self.clock.advance(0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        (call,) = self.clock.getDelayedCalls()
        self.assertAlmostEqual(call.getTime() - self.clock.seconds(), MAX_SLEEP)

    def test_wake_sees_a_new_schedule_at_once(self) -> None:
        """A schedule added while asleep until much later fires on its own time."""
        self.scheduler.startService()
        self.add("0 3 * * *")
        self.clock.advance(0)
        self.add("* * * * * *")
        self.clock.advance(1)
        self.assertEqual(len(self.queued), 1)

    def test_paused_schedule_does_not_fire(self) -> None:
        """Paused: nothing fires."""
        self.scheduler.startService()
        self.add("* * * * * *", paused=True)
        self.run_until(self.clock.seconds() + 5)
        self.assertEqual(self.queued, [])

    def test_catch_up_after_downtime_is_one_fire(self) -> None:
        """A minutely schedule missed for an hour fires once at start, then on its rhythm."""
        schedule = self.add("* * * * *")
        self.clock.advance(3600)  # down: the scheduler is not running
        start = self.clock.seconds()
        with capturedLogs() as events:
            self.scheduler.startService()
            self.clock.advance(0)
        self.assertEqual(len(self.queued), 1)
        self.assertTrue(any("catch-up" in e.get("log_format", "") for e in events))
        moved = self.successResultOf(self.store.get_schedule(schedule.id))
        self.assertEqual(moved.next_run_at, int(start * 1000) + 60_000)
        self.run_until(start + 60.5)
        self.assertEqual(len(self.queued), 2)

    def test_daily_0230_berlin_on_spring_forward_day_fires_at_0300(self) -> None:
        """The clock at each instant of 29 March 2026: the 02:30 Berlin job is made at 03:00."""
        self.clock = Clock()
        self.clock.advance(seconds(2026, 3, 28, 12, tz=BERLIN))
        self.ids = IdGenerator(0, self.clock)
        self.scheduler = Scheduler(self.store, self.ids, self.clock, self.queued.append)
        self.scheduler.startService()
        self.add("30 2 * * *", "Europe/Berlin")
        self.run_until(seconds(2026, 3, 30, 12, tz=BERLIN), step=30)
        made = [
            datetime.fromtimestamp(id_to_ms(j.id) / 1000, UTC).astimezone(BERLIN)
            for j in self.queued
        ]
        self.assertEqual(
            [m.replace(microsecond=0).isoformat() for m in made],
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        )

    def test_daily_0230_berlin_on_fall_back_day_fires_once(self) -> None:
        """25 October 2026, 02:30 happens twice: one job, at the first."""
        self.clock = Clock()
        self.clock.advance(seconds(2026, 10, 24, 12, tz=BERLIN))
        self.ids = IdGenerator(0, self.clock)
        self.scheduler = Scheduler(self.store, self.ids, self.clock, self.queued.append)
        self.scheduler.startService()
        self.add("30 2 * * *", "Europe/Berlin")
        self.run_until(seconds(2026, 10, 25, 12, tz=BERLIN), step=30)
        self.assertEqual(len(self.queued), 1)
        made = datetime.fromtimestamp(id_to_ms(self.queued[0].id) / 1000, UTC)
        self.assertEqual(made.replace(microsecond=0), datetime(2026, 10, 25, 0, 30, tzinfo=UTC))

    def test_store_failure_is_logged_and_retried(self) -> None:
        """A failing store read is logged; the scheduler tries again and then fires."""
        self.store = FlakyStore()
        self.scheduler = Scheduler(self.store, self.ids, self.clock, self.queued.append)
        self.scheduler.startService()
        self.add("* * * * * *")
        FlakyStore.failures = 1
        with capturedLogs() as events:
            self.clock.advance(1)
            self.clock.advance(1)
        self.assertTrue(any(e.get("log_failure") for e in events))
        self.assertGreaterEqual(len(self.queued), 1)
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)

    def test_stop_cancels_the_timer(self) -> None:
        """After stopService no timer is left and nothing fires."""
        self.scheduler.startService()
        self.add("* * * * * *")
        self.clock.advance(0)
        self.successResultOf(self.scheduler.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5)
        self.assertEqual(self.queued, [])


class FailingFireStore(MemoryStore):
    """
    A MemoryStore whose fires fail while ``broken``.
    """

    broken = True

    def fire(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        if FailingFireStore.broken:
            return fail(StoreUnavailable("disk full"))
        return super().fire(*args, **kwargs)


class FailingFireTests(SynchronousTestCase):
    """
    A fire the store refuses is logged and tried again a second later, not in a busy loop.
    """

    def test_failed_fire_is_retried_after_a_pause(self) -> None:
        """While fires fail, one try a second; once they work, the schedule fires."""
        clock = Clock()
        clock.advance(seconds(2026, 1, 1))
        store = FailingFireStore()
        ids = IdGenerator(0, clock)
        queued: list[Job] = []
        scheduler = Scheduler(store, ids, clock, queued.append)
        now = int(clock.seconds() * 1000)
        schedule = Schedule(
            id=ids.next_id(),
            name="s",
            cron="* * * * * *",
            timezone="UTC",
            job=TEMPLATE,
            next_run_at=now + 1000,
        )
        store.add_schedule(schedule)
        FailingFireStore.broken = True
        scheduler.startService()
        clock.advance(1)
        (call,) = clock.getDelayedCalls()
        self.assertAlmostEqual(call.getTime() - clock.seconds(), 1.0)
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)
        FailingFireStore.broken = False
        clock.advance(1)
        # The fire a second late, then the one due now: none lost, none doubled.
        self.assertEqual(len(queued), 2)
        moved = self.successResultOf(store.get_schedule(schedule.id))
        self.assertEqual(moved.last_run_at, now + 2000)
