"""
An in-memory job store: the fake for tests, with the SQLite store's behaviour.

Nothing survives the process. Every method answers at once with a fired Deferred.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from hq.model import Attempt, FlowLimits, Job, JobPage, JobState, ListQuery, Outcome, Schedule
from hq.store import (
    DueKey,
    FlowCounts,
    IdempotencyConflict,
    IJobStore,
    IScheduleStore,
    JobExists,
    JobNotFound,
    Pushed,
    Recovery,
    ScheduleNotFound,
    StoreCounts,
    StoreUnavailable,
)
from hq.store.sql import callback_of

T = TypeVar("T")


def _answer(call: Callable[[], T]) -> Deferred[T]:
    try:
        return succeed(call())
    except Exception:
        return fail()


@implementer(IJobStore, IScheduleStore)
@attrs.define
class MemoryStore:
    """
    Jobs in a dict, ids in a sorted list: one short method per operation of
    the store contracts (jobs and schedules), hence its length.

    Set ``writable`` to False to make every write fail with
    :class:`StoreUnavailable`, as a full disk would.
    """

    _jobs: dict[int, Job] = attrs.Factory(dict)
    _ids: list[int] = attrs.Factory(list)
    writable: bool = True
    _max_id: int = 0
    _attempts: dict[int, list[Attempt]] = attrs.Factory(dict)
    #: Idempotency key -> (job id, when the key was taken, ms).
    _keys: dict[str, tuple[int, int]] = attrs.Factory(dict)
    _schedules: dict[int, Schedule] = attrs.Factory(dict)
    #: (schedule id, fire time) of every stored job a fire created.
    _fires: set[tuple[int, int]] = attrs.Factory(set)
    #: Job id -> its (schedule id, fire time).
    _fire_of: dict[int, tuple[int, int]] = attrs.Factory(dict)
    #: Flow key -> its limits (SPEC §16).
    _flows: dict[str, FlowLimits] = attrs.Factory(dict)

    def open(self) -> Deferred[None]:
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)

    def probe_write(self) -> Deferred[None]:
        return self._write(lambda: None)

    def _write(self, call: Callable[[], T]) -> Deferred[T]:
        if not self.writable:
            return fail(StoreUnavailable("storage unavailable: not writable"))
        return _answer(call)

    def _job(self, job_id: int) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    def _put(self, job: Job) -> Job:
        self._jobs[job.id] = job
        return job

    def _remove(self, job_id: int) -> None:
        job = self._jobs.pop(job_id)
        del self._ids[bisect.bisect_left(self._ids, job_id)]
        self._attempts.pop(job_id, None)
        key = job.idempotency_key
        if key is not None and self._keys.get(key, (None,))[0] == job_id:
            del self._keys[key]
        fire = self._fire_of.pop(job_id, None)
        if fire is not None:
            self._fires.discard(fire)

    def recover(self, now: int) -> Deferred[Recovery]:
        def call() -> Recovery:
            requeued = canceled = 0
            for job in list(self._jobs.values()):
                if job.state is JobState.RUNNING:
                    recovered = self._put(job.recovered(now))
                    if recovered.waiting:
                        self._record(Attempt.interrupted(job, now))
                        requeued += 1
                    else:
                        canceled += 1
            return Recovery(requeued=requeued, canceled=canceled)

        return self._write(call)

    def max_id(self) -> Deferred[int]:
        return succeed(self._max_id)

    def _insert(self, job: Job) -> None:
        if job.id in self._jobs:
            raise JobExists(f"The job {job.id} already exists")
        self._put(job)
        self._max_id = max(self._max_id, job.id)
        if not self._ids or job.id > self._ids[-1]:
            self._ids.append(job.id)
        else:
            bisect.insort(self._ids, job.id)

    def create(self, job: Job) -> Deferred[None]:
        return self._write(lambda: self._insert(job))

    def push(
        self,
        jobs: list[Job],
        keys_since: int,
        committed: Callable[[], None] | None = None,
    ) -> Deferred[list[Pushed]]:
        # ``committed`` is not called: the push fires once committed (see IJobStore).
        def call() -> list[Pushed]:
            # Check everything first: all or nothing.
            pushed: list[Pushed] = []
            taken: dict[str, Job] = {}
            for index, job in enumerate(jobs):
                if job.id in self._jobs:
                    raise JobExists(f"The job {job.id} already exists")
                key = job.idempotency_key
                earlier = None if key is None else taken.get(key)
                if key is not None and earlier is None and key in self._keys:
                    job_id, since = self._keys[key]
                    if since >= keys_since and job_id in self._jobs:
                        earlier = self._jobs[job_id]
                if earlier is None:
                    pushed.append(Pushed(job))
                    if key is not None:
                        taken[key] = job
                elif not earlier.same_request(job):
                    raise IdempotencyConflict(index, job.idempotency_key or "", earlier.id)
                else:
                    pushed.append(Pushed(earlier, replayed=True))
            for each in pushed:
                if not each.replayed:
                    self._insert(each.job)
                    if each.job.idempotency_key is not None:
                        self._keys[each.job.idempotency_key] = (each.job.id, each.job.created_at)
            return pushed

        return self._write(call)

    def get(self, job_id: int) -> Deferred[Job]:
        return _answer(lambda: self._job(job_id))

    def _scan(self, begin: int | None, reverse: bool) -> Iterator[int]:
        ids = self._ids
        if reverse:
            end = len(ids) if begin is None else bisect.bisect_right(ids, begin)
            return (ids[i] for i in range(end - 1, -1, -1))
        start = 0 if begin is None else bisect.bisect_left(ids, begin)
        return (ids[i] for i in range(start, len(ids)))

    def list_jobs(self, query: ListQuery) -> Deferred[JobPage]:
        def call() -> JobPage:
            jobs: list[Job] = []
            for job_id in self._scan(query.begin, query.reverse):
                job = self._jobs[job_id]
                if not query.matches(job):
                    continue
                if query.limit is not None and len(jobs) >= query.limit:
                    return JobPage(jobs=jobs, next_id=job.id)
                jobs.append(job)
            return JobPage(jobs=jobs, next_id=None)

        return _answer(call)

    def start(self, job_id: int, now: int, known: Job | None = None) -> Deferred[Job | None]:
        def call() -> Job | None:
            job = self._jobs.get(job_id)
            started = None if job is None else job.started(now)
            if started is None:
                return None
            stored = self._put(started)
            if known is not None and known.id == job_id:
                # As the SQLite store: the running job is built from the one given.
                return known.marked_running(now, stored.attempts)
            return stored

        return self._write(call)

    def _record(self, attempt: Attempt | None) -> None:
        if attempt is not None:
            history = self._attempts.setdefault(attempt.job_id, [])
            history[:] = [a for a in history if a.attempt != attempt.attempt] + [attempt]

    def finish(
        self,
        job_id: int,
        outcome: Outcome,
        attempt: Attempt | None = None,
        callback_id: int | None = None,
        known: Job | None = None,
    ) -> Deferred[Job | None]:
        def call() -> Job | None:
            job = self._jobs.get(job_id)
            if job is None or job.state is JobState.FINISHED:
                return None
            finished = job.finished(outcome)
            callback = callback_of(finished, outcome, callback_id)
            if callback is not None:
                self._insert(callback)  # first: a JobExists changes nothing
                finished = attrs.evolve(finished, callback_job_id=callback.id)
            self._record(attempt)
            return self._put(finished)

        return self._write(call)

    def retry(self, job_id: int, at: int, last: Outcome, attempt: Attempt) -> Deferred[Job | None]:
        def call() -> Job | None:
            job = self._jobs.get(job_id)
            if job is None or job.state is not JobState.RUNNING:
                return None
            self._record(attempt)
            return self._put(job.retried(at, last))

        return self._write(call)

    def attempts(self, job_id: int) -> Deferred[list[Attempt]]:
        def call() -> list[Attempt]:
            self._job(job_id)
            return sorted(self._attempts.get(job_id, []), key=lambda a: a.attempt)

        return _answer(call)

    def stop(self, job_id: int, now: int) -> Deferred[Job]:
        return self._write(lambda: self._put(self._job(job_id).stopped(now)))

    def restart(self, job_id: int) -> Deferred[Job]:
        def call() -> Job:
            job = self._job(job_id)
            job.check_settled()
            self._attempts.pop(job_id, None)
            return self._put(job.reset())

        return self._write(call)

    def delete(self, job_id: int) -> Deferred[None]:
        def call() -> None:
            self._job(job_id).check_settled()
            self._remove(job_id)

        return self._write(call)

    def _due(self, now: int) -> Iterator[Job]:
        for job in self._jobs.values():
            if job.state is JobState.WAITING and not job.canceled:
                yield job

    def waiting_jobs(self, after: DueKey, now: int, limit: int) -> Deferred[list[Job]]:
        return self._waiting(None, after, now, limit)

    def waiting_jobs_of(
        self, flow_key: str, after: DueKey, now: int, limit: int
    ) -> Deferred[list[Job]]:
        return self._waiting(flow_key, after, now, limit)

    def _waiting(
        self, flow_key: str | None, after: DueKey, now: int, limit: int
    ) -> Deferred[list[Job]]:
        def call() -> list[Job]:
            found = sorted(
                (job.due_at, job.id)
                for job in self._due(now)
                if job.due_at <= now
                and (job.due_at, job.id) > tuple(after)
                and flow_key in (None, job.flow_key)
            )
            return [self._jobs[job_id] for _, job_id in found[:limit]]

        return _answer(call)

    def next_due(self, now: int) -> Deferred[int | None]:
        def call() -> int | None:
            later = [job.due_at for job in self._due(now) if job.due_at > now]
            return min(later) if later else None

        return _answer(call)

    def delete_finished_before(self, cutoff: int, limit: int) -> Deferred[int]:
        def call() -> int:
            expired = [
                job.id
                for job in self._jobs.values()
                if job.state is JobState.FINISHED
                and job.finished_at is not None
                and job.finished_at < cutoff
            ][:limit]
            for job_id in expired:
                self._remove(job_id)
            return len(expired)

        return self._write(call)

    def counts(self, since_id: int, now: int) -> Deferred[StoreCounts]:
        def call() -> StoreCounts:
            jobs = list(self._jobs.values())
            return StoreCounts(
                stored=len(jobs),
                waiting=sum(1 for job in jobs if job.state is JobState.WAITING),
                running=sum(1 for job in jobs if job.state is JobState.RUNNING),
                created_since=len(self._ids) - bisect.bisect_left(self._ids, since_id),
                scheduled=sum(1 for job in jobs if job.scheduled(now)),
            )

        return _answer(call)

    # Flow control (SPEC §16).

    def flow_limits(self) -> Deferred[list[FlowLimits]]:
        return succeed([self._flows[key] for key in sorted(self._flows)])

    def put_flow(self, limits: FlowLimits) -> Deferred[None]:
        def call() -> None:
            self._flows[limits.key] = limits

        return self._write(call)

    def delete_flow(self, flow_key: str) -> Deferred[bool]:
        return self._write(lambda: self._flows.pop(flow_key, None) is not None)

    def flow_counts(self) -> Deferred[dict[str, FlowCounts]]:
        def call() -> dict[str, FlowCounts]:
            found: dict[str, FlowCounts] = {}
            for job in self._jobs.values():
                waiting = job.state is JobState.WAITING and not job.canceled
                running = job.state is JobState.RUNNING
                if waiting or running:
                    was = found.get(job.flow_key, FlowCounts())
                    found[job.flow_key] = FlowCounts(
                        waiting=was.waiting + waiting, running=was.running + running
                    )
            return dict(sorted(found.items()))

        return _answer(call)

    # IScheduleStore.

    def _schedule(self, schedule_id: int) -> Schedule:
        try:
            return self._schedules[schedule_id]
        except KeyError:
            raise ScheduleNotFound(schedule_id) from None

    def add_schedule(self, schedule: Schedule) -> Deferred[None]:
        def call() -> None:
            self._schedules[schedule.id] = schedule

        return self._write(call)

    def get_schedule(self, schedule_id: int) -> Deferred[Schedule]:
        return _answer(lambda: self._schedule(schedule_id))

    def list_schedules(self) -> Deferred[list[Schedule]]:
        return _answer(lambda: [self._schedules[key] for key in sorted(self._schedules)])

    def delete_schedule(self, schedule_id: int) -> Deferred[None]:
        def call() -> None:
            self._schedule(schedule_id)
            del self._schedules[schedule_id]

        return self._write(call)

    def pause_schedule(self, schedule_id: int) -> Deferred[Schedule]:
        def call() -> Schedule:
            paused = attrs.evolve(self._schedule(schedule_id), paused=True, next_run_at=None)
            self._schedules[schedule_id] = paused
            return paused

        return self._write(call)

    def resume_schedule(self, schedule_id: int, next_run_at: int | None) -> Deferred[Schedule]:
        def call() -> Schedule:
            schedule = self._schedule(schedule_id)
            if schedule.paused:
                schedule = attrs.evolve(schedule, paused=False, next_run_at=next_run_at)
                self._schedules[schedule_id] = schedule
            return schedule

        return self._write(call)

    def _running_schedules(self) -> list[Schedule]:
        return [s for s in self._schedules.values() if not s.paused and s.next_run_at is not None]

    def due_schedules(self, now: int, limit: int) -> Deferred[list[Schedule]]:
        def call() -> list[Schedule]:
            due = [s for s in self._running_schedules() if (s.next_run_at or 0) <= now]
            return sorted(due, key=lambda s: (s.next_run_at, s.id))[:limit]

        return _answer(call)

    def next_fire_at(self) -> Deferred[int | None]:
        def call() -> int | None:
            times = [s.next_run_at for s in self._running_schedules() if s.next_run_at is not None]
            return min(times) if times else None

        return _answer(call)

    def fire(
        self, schedule_id: int, fire_at: int, job: Job, next_run_at: int | None
    ) -> Deferred[Job | None]:
        def call() -> Job | None:
            schedule = self._schedules.get(schedule_id)
            if schedule is None or schedule.paused or schedule.next_run_at != fire_at:
                return None
            if (schedule_id, fire_at) in self._fires:
                return None
            self._insert(job)
            self._fires.add((schedule_id, fire_at))
            self._fire_of[job.id] = (schedule_id, fire_at)
            self._schedules[schedule_id] = attrs.evolve(
                schedule, next_run_at=next_run_at, last_run_at=fire_at, last_job_id=job.id
            )
            return job

        return self._write(call)
