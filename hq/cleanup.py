"""
Deleting finished jobs older than ``job_lifetime``, every minute and at start-up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from hq.ids import now_ms
from hq.store import IJobStore

#: Jobs deleted per store write, so other writes are never held up for long.
BATCH = 1000

#: Seconds between two clean-ups.
INTERVAL = 60.0


@attrs.define
class Cleanup:
    """
    Deletes jobs whose ``finishedAt`` is more than ``lifetime`` seconds ago.
    """

    log = Logger()

    _store: IJobStore
    _clock: IReactorTime
    _lifetime: int
    #: In a cluster: whether this node leads the clean-up now (a leader
    #: lease), so that it runs once per cluster, not once per node.
    _leader: Callable[[], Awaitable[bool]] | None = None
    _running: bool = False

    async def run_once(self) -> int:
        """
        Delete every expired job, a batch per store write; return how many.

        A run that starts while another is still going does nothing, and so
        does a run on a node of a cluster that is not the clean-up's leader.
        """
        if self._running:
            return 0
        self._running = True
        try:
            if self._leader is not None and not await self._leader():
                return 0
            cutoff = now_ms(self._clock) - self._lifetime * 1000
            total = 0
            while True:
                deleted = await self._store.delete_finished_before(cutoff, BATCH)
                total += deleted
                if deleted < BATCH:
                    break
            if total:
                self.log.info("Deleted {count} expired jobs", count=total)
            return total
        finally:
            self._running = False

    def tick(self) -> Deferred[int | None]:
        """
        Run once from a timer: errors are logged, never raised (the timer lives on).
        """

        def failed(reason: object) -> None:
            self.log.failure("Deleting expired jobs failed", reason)  # type: ignore[arg-type]

        return Deferred.fromCoroutine(self.run_once()).addErrback(failed)

    def service(self) -> TimerService:
        """
        Return a TimerService that runs ``tick`` now and every minute on the clock.
        """
        timer = TimerService(INTERVAL, self.tick)
        timer.clock = self._clock
        return timer
