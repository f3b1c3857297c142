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

from hq.model import Job, JobPage, JobState, ListQuery, Outcome
from hq.store import (
    IJobStore,
    JobExists,
    JobNotFound,
    Recovery,
    StoreCounts,
    StoreUnavailable,
)

T = TypeVar("T")


def _answer(call: Callable[[], T]) -> Deferred[T]:
    try:
        return succeed(call())
    except Exception:
        return fail()


@implementer(IJobStore)
@attrs.define
class MemoryStore:
    """
    Jobs in a dict, ids in a sorted list.

    Set ``writable`` to False to make every write fail with
    :class:`StoreUnavailable`, as a full disk would.
    """

    _jobs: dict[int, Job] = attrs.Factory(dict)
    _ids: list[int] = attrs.Factory(list)
    writable: bool = True
    _max_id: int = 0

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

    def recover(self, now: int) -> Deferred[Recovery]:
        def call() -> Recovery:
            requeued = canceled = 0
            for job in list(self._jobs.values()):
                if job.state is JobState.RUNNING:
                    recovered = self._put(job.recovered(now))
                    if recovered.waiting:
                        requeued += 1
                    else:
                        canceled += 1
            return Recovery(requeued=requeued, canceled=canceled)

        return self._write(call)

    def max_id(self) -> Deferred[int]:
        return succeed(self._max_id)

    def create(self, job: Job) -> Deferred[None]:
        def call() -> None:
            if job.id in self._jobs:
                raise JobExists(f"The job {job.id} already exists")
            self._put(job)
            self._max_id = max(self._max_id, job.id)
            if not self._ids or job.id > self._ids[-1]:
                self._ids.append(job.id)
            else:
                bisect.insort(self._ids, job.id)

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

    def start(self, job_id: int, now: int) -> Deferred[Job | None]:
        def call() -> Job | None:
            job = self._jobs.get(job_id)
            started = None if job is None else job.started(now)
            return None if started is None else self._put(started)

        return self._write(call)

    def finish(self, job_id: int, outcome: Outcome) -> Deferred[Job | None]:
        def call() -> Job | None:
            job = self._jobs.get(job_id)
            if job is None or job.state is JobState.FINISHED:
                return None
            return self._put(job.finished(outcome))

        return self._write(call)

    def stop(self, job_id: int, now: int) -> Deferred[Job]:
        return self._write(lambda: self._put(self._job(job_id).stopped(now)))

    def restart(self, job_id: int) -> Deferred[Job]:
        def call() -> Job:
            job = self._job(job_id)
            job.check_settled()
            return self._put(job.reset())

        return self._write(call)

    def delete(self, job_id: int) -> Deferred[None]:
        def call() -> None:
            self._job(job_id).check_settled()
            del self._jobs[job_id]
            del self._ids[bisect.bisect_left(self._ids, job_id)]

        return self._write(call)

    def waiting_jobs(self, after_id: int, limit: int) -> Deferred[list[Job]]:
        def call() -> list[Job]:
            found: list[Job] = []
            for job_id in self._scan(after_id + 1, reverse=False):
                job = self._jobs[job_id]
                if job.state is JobState.WAITING and not job.canceled:
                    found.append(job)
                    if len(found) >= limit:
                        break
            return found

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
                del self._jobs[job_id]
                del self._ids[bisect.bisect_left(self._ids, job_id)]
            return len(expired)

        return self._write(call)

    def counts(self, since_id: int) -> Deferred[StoreCounts]:
        def call() -> StoreCounts:
            states = [job.state for job in self._jobs.values()]
            return StoreCounts(
                stored=len(states),
                waiting=states.count(JobState.WAITING),
                running=states.count(JobState.RUNNING),
                created_since=len(self._ids) - bisect.bisect_left(self._ids, since_id),
            )

        return _answer(call)
