"""
Bulk actions: restart, stop or delete every job matching the filters of
``GET /job`` (``POST /jobs/restart``, ``/jobs/stop``, ``/jobs/delete``).

The matches are read one page at a time (:data:`PAGE_SIZE` jobs, the cursor
being the next matching id), so memory holds one page however many jobs
match; the jobs of a page are acted on together (the SQLite writer commits
them in few transactions), and the reactor gets a turn between pages, so a
million matches never block the API. Each job goes through the same store
call (and dispatcher call) as the single-job route; a job in the wrong state
for the action, or deleted meanwhile, is skipped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from hq.ids import now_ms
from hq.model import Job, ListQuery
from hq.store import IJobStore, JobConflict, JobNotFound

if TYPE_CHECKING:
    from hq.api import JobDispatch

#: Jobs read and acted on per step: as many as a search reads per chunk
#: (``hq.store.sqlitesearch.CHUNK_ROWS``), so that a regexp filter matching
#: most jobs reads each row once, not once per page of its chunk (500 a page:
#: a bulk action over 20,000 waiting jobs took 9 s instead of 1.5 s).
PAGE_SIZE = 4096


@attrs.define
class BulkActions:
    """
    Restart, stop or delete the jobs a :class:`~hq.model.ListQuery` matches.
    Each method returns a Deferred-compatible coroutine of the number of jobs
    acted on, and fails only with the store's errors other than
    :class:`JobConflict` and :class:`JobNotFound` (for example
    :class:`~hq.store.StoreUnavailable`).
    """

    log = Logger()

    _store: IJobStore
    _dispatch: JobDispatch
    _clock: IReactorTime
    _page_size: int = PAGE_SIZE

    async def restart(self, query: ListQuery) -> int:
        """
        Restart in place every finished job matching ``query`` and queue it.
        """

        async def restart(job: Job) -> None:
            restarted = await self._store.restart(job.id)
            self._dispatch.enqueue(restarted)

        return await self._each(query, restart, lambda job: not (job.waiting or job.running))

    async def stop(self, query: ListQuery) -> int:
        """
        Stop every active (waiting, scheduled or running) job matching ``query``.
        """

        async def stop(job: Job) -> None:
            stopped = await self._store.stop(job.id, now_ms(self._clock))
            self._dispatch.cancel(job.id, stopped)

        return await self._each(query, stop, lambda job: job.waiting or job.running)

    async def delete(self, query: ListQuery) -> int:
        """
        Delete every finished job matching ``query``.
        """

        async def delete(job: Job) -> None:
            await self._store.delete(job.id)

        return await self._each(query, delete, lambda job: not (job.waiting or job.running))

    async def _each(
        self,
        query: ListQuery,
        act: Callable[[Job], Awaitable[None]],
        applies: Callable[[Job], bool],
    ) -> int:
        # Jobs pushed after the action began are not part of it: the scan
        # ends at the greatest id stored now, so steady pushes cannot keep it going.
        last_id = await self._store.max_id()
        begin = query.begin
        if query.reverse:
            begin = last_id if begin is None else min(begin, last_id)
        remaining = query.limit
        count = 0
        while remaining is None or remaining > 0:
            size = self._page_size if remaining is None else min(self._page_size, remaining)
            page_query = attrs.evolve(query, begin=begin, limit=size, now=now_ms(self._clock))
            page = await self._store.list_jobs(page_query)
            jobs = [job for job in page.jobs if job.id <= last_id]
            count += await self._act_on(jobs, act, applies)
            if remaining is not None:
                remaining -= len(page.jobs)
            if page.next_id is None or page.next_id > last_id or len(jobs) < len(page.jobs):
                break
            begin = page.next_id
            # Let the reactor answer other requests between pages.
            await deferLater(self._clock, 0)
        return count

    async def _act_on(
        self,
        jobs: list[Job],
        act: Callable[[Job], Awaitable[None]],
        applies: Callable[[Job], bool],
    ) -> int:
        async def one(job: Job) -> bool:
            try:
                await act(job)
            except (JobConflict, JobNotFound):
                # Its state changed since the page was read: not ours to act on.
                return False
            return True

        pending = [Deferred.fromCoroutine(one(job)) for job in jobs if applies(job)]
        acted = 0
        error: Exception | None = None
        # Every call is awaited (none is left failing unhandled); the first error wins.
        for d in pending:
            try:
                acted += await d
            except Exception as e:
                error = error or e
        if error is not None:
            raise error
        return acted
