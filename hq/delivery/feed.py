"""
The feed: due jobs from the store into a bounded in-memory queue.

The queue holds at most ``size`` due jobs in the order they will start; the
backlog stays in the store and is read in as room frees up (half the queue at
least, so reads come in batches). Jobs are ordered by their :func:`feed_key`,
``(due time, id)``; the feed keeps a watermark (the greatest key it has looked
at) so a read continues where the last one stopped, and a job offered while
older ones are still in the store only waits its turn behind them.

Jobs due later (a delay, a retry) stay in the store, not in memory: the feed
keeps one timer for the earliest due time it knows of (asked of the store
after each read that empties the backlog, and lowered by every offer of a job
due later) and reads when it fires. Nothing polls while nothing is due.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from hq.ids import now_ms
from hq.model import Job
from hq.store import STORE_RETRY_SECONDS, DueKey, IJobStore

#: Greater than every id, and still a 64-bit signed integer (the SQL engines' limit):
#: ``(t, _AFTER_ALL)`` comes after every key due at ``t``.
_AFTER_ALL = (1 << 63) - 1


def feed_key(job: Job) -> DueKey:
    """
    Return the key that orders ``job`` in the queue: jobs start in order of
    due time, then id.
    """
    return (job.due_at, job.id)


class Feed:
    """
    Waiting jobs in memory, in start order, fed from the store.

    Every job the feed hands out stays *held* until :meth:`release`: the
    store still shows it waiting until a dispatcher starts it, and a read in
    the meantime must not hand it out twice.

    :param store: where the backlog is.
    :param clock: for the pause after a failed read.
    :param size: jobs kept in memory at most.
    :param on_idle: called when a read ends (the shutdown waits for reads).
    """

    log = Logger()

    def __init__(
        self,
        store: IJobStore,
        clock: IReactorTime,
        size: int,
        on_idle: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._size = max(1, size)
        self._on_idle = on_idle
        self._queue: OrderedDict[int, Job] = OrderedDict()
        self._held: set[int] = set()
        #: Greatest key looked at; waiting jobs above it may be in the store only.
        self._watermark: DueKey = (0, 0)
        #: The timer for the earliest known due time after now, and that time.
        self._wake: IDelayedCall | None = None
        self._wake_time = 0
        #: True when waiting jobs may be in the store and not in memory.
        self._backlog = True
        self._reading = False
        self._missed_while_reading = False
        self._retry: IDelayedCall | None = None
        #: Dispatchers waiting for a job.
        self._idle: deque[Deferred[Job | None]] = deque()
        self._open = False

    @property
    def in_queue(self) -> int:
        """
        Jobs in memory, not yet handed out.
        """
        return len(self._queue)

    @property
    def reading(self) -> bool:
        """
        Whether a read from the store is in progress.
        """
        return self._reading

    @property
    def is_open(self) -> bool:
        """
        Whether the feed takes and hands out jobs.
        """
        return self._open

    def holds(self, job_id: int) -> bool:
        """
        Whether ``job_id`` is queued, or handed out and not released.
        """
        return job_id in self._held

    def queued(self, job_id: int) -> bool:
        """
        Whether ``job_id`` is in the queue (not handed out yet).
        """
        return job_id in self._queue

    def open(self) -> None:
        """
        Start handing out jobs, reading the backlog from the start.
        """
        self._open = True
        self._backlog = True
        self._watermark = (0, 0)
        self._maybe_read()

    def close(self) -> None:
        """
        Stop: forget the queue (its jobs stay waiting in the store, the next
        :meth:`open` reads them again) and answer the idle dispatchers ``None``.
        """
        self._open = False
        for call in (self._retry, self._wake):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._wake = None
        self._held.difference_update(self._queue)
        self._queue.clear()
        idle, self._idle = self._idle, deque()
        for waiting in idle:
            waiting.callback(None)

    def offer(self, job: Job) -> None:
        """
        Take ``job``, a waiting job just stored (or restarted, or retried): to
        an idle dispatcher, into the queue, or (older jobs may be in the store,
        or the queue is full) left for a read to bring in its turn. A job due
        later stays in the store; the feed wakes at its due time.
        """
        if not self._open or job.id in self._held:
            return
        now = now_ms(self._clock)
        if job.due_at > now:
            self._wake_at(job.due_at, now)
            return
        key = feed_key(job)
        if not self._backlog and self._idle:
            self._watermark = max(self._watermark, key)
            self._hand_out(job)
        elif not self._backlog and len(self._queue) < self._size:
            self._watermark = max(self._watermark, key)
            self._append(job)
        else:
            self._backlog = True
            if self._reading:
                self._missed_while_reading = True
            if key <= self._watermark:
                # An old key (a restart): let the next read look from there again.
                self._watermark = (key[0], key[1] - 1)
            self._maybe_read()

    def take(self) -> Deferred[Job | None]:
        """
        Return the next job to start, waiting until there is one; ``None``
        once the feed is closed.
        """
        if not self._open:
            return succeed(None)
        if self._queue:
            _, job = self._queue.popitem(last=False)
            self._maybe_read()
            return succeed(job)
        waiting: Deferred[Job | None] = Deferred(self._forget_idle)
        self._idle.append(waiting)
        self._maybe_read()
        return waiting

    def drop(self, job_id: int) -> bool:
        """
        Remove ``job_id`` from the queue; return whether it was there.
        """
        if self._queue.pop(job_id, None) is None:
            return False
        self._held.discard(job_id)
        self._maybe_read()
        return True

    def release(self, job_id: int) -> None:
        """
        Forget ``job_id``, handed out earlier, whose run has ended.
        """
        self._held.discard(job_id)

    def _append(self, job: Job) -> None:
        self._held.add(job.id)
        self._queue[job.id] = job

    def _hand_out(self, job: Job) -> None:
        self._held.add(job.id)
        self._idle.popleft().callback(job)

    def _forget_idle(self, waiting: Deferred[Job | None]) -> None:
        if waiting in self._idle:
            self._idle.remove(waiting)

    def _maybe_read(self) -> None:
        if (
            not self._open
            or not self._backlog
            or self._reading
            or self._retry is not None
            # Read in batches: wait until half the queue is free.
            or len(self._queue) > self._size // 2
        ):
            return
        self._reading = True
        self._missed_while_reading = False
        room = self._size - len(self._queue)
        d = Deferred.fromCoroutine(self._read(room))
        d.addErrback(lambda failure: self.log.failure("Feeding the queue failed", failure))

    async def _read(self, room: int) -> None:
        after = self._watermark
        now = now_ms(self._clock)
        try:
            batch = await self._store.waiting_jobs(after, now, room)
            exhausted = len(batch) < room and not self._missed_while_reading
            later = await self._store.next_due(now) if exhausted else None
        except Exception:
            self._reading = False
            self.log.failure(
                "Could not read waiting jobs from the store; trying again in {delay} s",
                delay=STORE_RETRY_SECONDS,
            )
            if self._open:
                self._retry = self._clock.callLater(STORE_RETRY_SECONDS, self._read_again)
            self._on_idle()
            return
        try:
            if self._open:
                self._take_in(batch, after, exhausted)
                if later is not None:
                    self._wake_at(later, now_ms(self._clock))
        finally:
            self._reading = False
            self._on_idle()
        self._maybe_read()

    def _take_in(self, batch: list[Job], after: DueKey, exhausted: bool) -> None:
        if batch and self._watermark == after:
            self._watermark = max(after, feed_key(batch[-1]))
        for job in batch:
            if job.id in self._held:
                continue
            if self._idle:
                self._hand_out(job)
            else:
                self._append(job)
        if exhausted and not self._missed_while_reading:
            self._backlog = False

    def _read_again(self) -> None:
        self._retry = None
        self._maybe_read()

    def _wake_at(self, due: int, now: int) -> None:
        """
        Make sure the feed reads at ``due`` (ms) at the latest.
        """
        if self._wake is not None and self._wake.active() and self._wake_time <= due:
            return
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._wake_time = due
        self._wake = self._clock.callLater(max(0.0, (due - now) / 1000), self._woken)

    def _woken(self) -> None:
        self._wake = None
        # Jobs due at the wake time may sort below keys offered since: look from there.
        self._watermark = min(self._watermark, (self._wake_time - 1, _AFTER_ALL))
        self._backlog = True
        if self._reading:
            self._missed_while_reading = True
        self._maybe_read()
