"""
Shutdown: counting the runs in progress, waiting for them, aborting the rest.

:class:`Shutdown` knows how many runs are in progress (a delivery, or an
outcome being recorded); :meth:`Shutdown.begin` fires once none is left, or
after the timeout calls the abort hooks and fires once they have ended.
:class:`Pauses` are the waits between tries of a store call, cut short when
the engine stops or aborts.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger


class Pauses:
    """
    Waits on a clock that can all be cut short at once.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._waits: set[Deferred[None]] = set()

    async def pause(self, seconds: float) -> bool:
        """
        Wait ``seconds``; return False if the wait was cut short.
        """
        wait: Deferred[None] = deferLater(self._clock, seconds)
        self._waits.add(wait)
        try:
            await wait
        except CancelledError:
            return False
        finally:
            self._waits.discard(wait)
        return True

    def cut_short(self) -> None:
        """
        End every wait in progress (each :meth:`pause` returns False).
        """
        for wait in list(self._waits):
            wait.cancel()


class Shutdown:
    """
    The runs in progress and the graceful stop.

    :param clock: for the timeout.
    :param timeout: seconds :meth:`begin` waits before aborting.
    :param busy: whether something besides the runs must end first (a read).
    :param abort: called at the timeout; it must end every run soon.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        busy: Callable[[], bool],
        abort: Callable[[int], None],
    ) -> None:
        self._clock = clock
        self._timeout = max(0.0, timeout)
        self._busy = busy
        self._abort = abort
        self.runs = 0
        self.stopping = False
        self.aborting = False
        self._abort_call: IDelayedCall | None = None
        self._waiters: list[Deferred[None]] = []

    def reset(self) -> None:
        """
        Start afresh (the engine starts again).
        """
        self.stopping = self.aborting = False

    def run_began(self) -> None:
        """
        Count a run in progress.
        """
        self.runs += 1

    def run_ended(self) -> None:
        """
        Count a run that ended; the stop may be complete now.
        """
        self.runs -= 1
        self.check()

    def begin(self) -> Deferred[None]:
        """
        Stop: return a Deferred that fires when every run has ended, aborting
        them after the timeout.
        """
        self.stopping = True
        if self._ended():
            return succeed(None)
        if self.runs:
            self.log.info(
                "Waiting up to {timeout} s for {count} running jobs",
                timeout=self._timeout,
                count=self.runs,
            )
        done: Deferred[None] = Deferred()
        self._waiters.append(done)
        if self._abort_call is None:
            self._abort_call = self._clock.callLater(self._timeout, self._time_out)
        return done

    def check(self) -> None:
        """
        Fire the waiters of :meth:`begin` if nothing is left running.
        """
        if not self.stopping or not self._ended():
            return
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _ended(self) -> bool:
        return self.runs == 0 and not self._busy()

    def _time_out(self) -> None:
        self._abort_call = None
        self.aborting = True
        self._abort(self.runs)
