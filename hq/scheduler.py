"""
The scheduler: fires the stored schedules (SPEC §14) and hands their jobs to
the delivery engine.

- One timer, set for the earliest next fire of any schedule (the store keeps
  the times, indexed): 10,000 schedules cost one timer and no memory here.
  :meth:`Scheduler.wake` re-reads it at once when the API changes a schedule;
  it also re-reads it at least every ``max_sleep`` seconds, for schedules
  another node of a cluster changed.
- Each fire is one store transaction (:meth:`hq.store.IScheduleStore.fire`)
  that stores the job and moves the schedule on, only if the schedule still
  waits for that fire time: a crash never loses or doubles a fire, and of the
  nodes of a cluster that try the same fire exactly one stores a job.
- A fire more than :data:`LATE_MS` late (the server was down) is a catch-up:
  one job for all the times missed, and the next fire is the first time
  after now. A fire less late keeps the rhythm: the next fire is the first
  time after the one just fired, so a `* * * * * *` schedule does not drift.
- In a cluster the scheduler fires only on the node holding the
  ``schedules`` leader lease (``leader``): the conditional fire already makes
  each fire happen once, the lease spares the other nodes the attempts (one
  read and one losing write per fire per node). The leader renews it at each
  pass, at least every :data:`LEADER_CHECK` seconds; the others ask for it as
  often, and take it over once a dead leader's lease ran out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from hq.cron import CronError, cached_rule
from hq.ids import IdGenerator, now_ms
from hq.model import Job, Schedule
from hq.store import STORE_RETRY_SECONDS, IScheduleStore

#: A fire later than this (ms) is a catch-up: the times missed are skipped.
LATE_MS = 1000
#: Schedules fired per store read (their fires share a commit).
BATCH = 500
#: The longest sleep, seconds, even with no fire due (schedules changed on another node).
MAX_SLEEP = 60.0
#: In a cluster: seconds between two looks at the leader lease (a leader
#: renews it, the others ask for it), and the lease's length.
LEADER_CHECK = 5.0
LEADER_SECONDS = 3 * LEADER_CHECK


class Scheduler(Service):
    """
    Fires due schedules through ``store`` and passes each job created to ``enqueue``.

    :param store: the schedules and jobs.
    :param ids: makes the ids of the jobs.
    :param clock: the time and the one timer.
    :param enqueue: queues a stored job for delivery (``Delivery.enqueue``).
    :param leader: in a cluster, answers whether this node leads the
        schedules now (takes or renews the leader lease); ``None`` alone.
    """

    log = Logger()

    def __init__(
        self,
        store: IScheduleStore,
        ids: IdGenerator,
        clock: IReactorTime,
        enqueue: Callable[[Job], object],
        max_sleep: float = MAX_SLEEP,
        leader: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._store = store
        self._ids = ids
        self._clock = clock
        self._enqueue = enqueue
        self._max_sleep = max_sleep
        self._leader = leader
        #: Whether this node fires the schedules (always true alone).
        self.leading = leader is None
        self._timer: IDelayedCall | None = None
        self._pass: Deferred[None] | None = None
        self._again = False
        #: When the timer is set to go off (ms), or ``None``.
        self.wakes_at: int | None = None
        #: Jobs created by fires since the start.
        self.fired = 0

    def startService(self) -> None:
        super().startService()
        # At once: the catch-up fires of the schedules missed while HQ was down.
        self.wake()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._cancel_timer()
        running = self._pass
        if running is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        running.addBoth(lambda _: done.callback(None))
        return done

    def wake(self) -> None:
        """
        Look at the schedules now (one was added, paused, resumed or deleted).
        """
        if not self.running:
            return
        if self._pass is not None:
            self._again = True
            return
        self._cancel_timer()
        # Set before the pass runs: with a store that answers at once, the
        # pass is over before fromCoroutine returns.
        running: Deferred[None] = Deferred()
        self._pass = running
        work = Deferred.fromCoroutine(self._run())
        work.addErrback(lambda f: self.log.failure("The scheduler failed", f))
        work.chainDeferred(running)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.wakes_at = None

    def _sleep(self, seconds: float) -> None:
        self._cancel_timer()
        self.wakes_at = now_ms(self._clock) + int(seconds * 1000)
        self._timer = self._clock.callLater(seconds, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.wake()

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    delay = await self._fire_due()
                except Exception:
                    self.log.failure("Firing schedules failed; trying again shortly")
                    delay = STORE_RETRY_SECONDS
                if not self.running:
                    return
                if not self._again:
                    self._sleep(delay)
                    return
        finally:
            self._pass = None

    async def _fire_due(self) -> float:
        """
        Fire every due schedule; return the seconds until the next fire.

        In a cluster, a node not holding the leader lease fires nothing and
        asks again in :data:`LEADER_CHECK` seconds.
        """
        if self._leader is not None:
            leading = await self._leader()
            if leading != self.leading:
                self.log.info(
                    "This node {change} the schedules' leader",
                    change="is now" if leading else "is no longer",
                )
            self.leading = leading
            if not leading:
                return LEADER_CHECK
        longest = self._max_sleep if self._leader is None else min(self._max_sleep, LEADER_CHECK)
        while True:
            now = now_ms(self._clock)
            due = await self._store.due_schedules(now, BATCH)
            if not self.running:
                return 0.0
            # Together: the store commits the fires of one reactor turn at once.
            results = await DeferredList(
                [Deferred.fromCoroutine(self._fire(schedule, now)) for schedule in due],
                consumeErrors=True,
            )
            failed = [result for ok, result in results if not ok]
            for failure in failed:
                self.log.failure("A schedule could not fire; trying again shortly", failure)
            if failed:
                return STORE_RETRY_SECONDS
            if len(due) < BATCH:
                break
        next_fire = await self._store.next_fire_at()
        now = now_ms(self._clock)
        if next_fire is None:
            return longest
        return min(longest, max(0.0, (next_fire - now) / 1000))

    async def _fire(self, schedule: Schedule, now: int) -> None:
        fire_at = schedule.next_run_at
        assert fire_at is not None
        try:
            rule = cached_rule(schedule.cron, schedule.timezone)
            late = now - fire_at > LATE_MS
            next_run_at = rule.next_after(now if late else fire_at)
        except CronError as e:
            # A time zone the system lost since the schedule was made: pause it.
            self.log.error(
                "Schedule {scheduleID} cannot fire ({error}); paused",
                scheduleID=schedule.id,
                error=e.message,
            )
            await self._store.pause_schedule(schedule.id)
            return
        job = schedule.job_for(self._ids.next_id())
        stored = await self._store.fire(schedule.id, fire_at, job, next_run_at)
        if stored is None:
            return  # another node (or a pause) came first
        self.fired += 1
        self._enqueue(stored)
        self.log.debug(
            "Schedule {scheduleID} fired for {fireAt}: job {jobID}{catchUp}",
            scheduleID=schedule.id,
            fireAt=fire_at,
            jobID=stored.id,
            catchUp=" (catch-up)" if late else "",
        )
        if late:
            self.log.info(
                "Schedule {scheduleID} missed its fire at {fireAt}: one catch-up job {jobID}",
                scheduleID=schedule.id,
                fireAt=fire_at,
                jobID=stored.id,
            )
