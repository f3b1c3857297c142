"""
Delivery: the in-memory queue, the dispatcher loops and running each job.

:class:`Dispatch` is a service. It keeps at most ``queue_size`` waiting jobs in
memory, in id order, and feeds more from the store as room frees up (the
backlog stays on disk). ``dispatchers`` loops take jobs from that queue, each
running at most ``workers_per_dispatcher`` at a time under its own
``DeferredSemaphore``. Running a job means: mark it running in the store, run
the exchange with its worker (:class:`hq.worker.WorkerClient`: the request,
redirects, timeout and body cap), record the outcome in the store, count it
in the throughput history (:mod:`hq.history`), and tell the observers.

The store is the source of truth: a job the store will not start (stopped or
deleted meanwhile) is skipped, and a job that was running when the process
stopped is re-queued by ``store.recover()`` at the next start.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from hq.history import History, HistoryBucket
from hq.model import Job, JobState, Outcome
from hq.store import IJobStore, StoreUnavailable
from hq.worker import Exchange, WorkerClient

T = TypeVar("T")

#: Seconds before a failed store read or write is tried again.
STORE_RETRY_SECONDS = 1.0
#: Attempts to record an outcome after an unexpected store error before the job is
#: left running (recovered at next start). While the storage is unavailable
#: (``StoreUnavailable``), recording is tried again without limit.
FINISH_ATTEMPTS = 4
#: Longest wait between two attempts to record an outcome.
FINISH_RETRY_MAX_SECONDS = 10.0
#: The ``err`` of a job whose delivery failed on an unexpected error in HQ
#: (the details are in the server's log).
INTERNAL_ERROR = "internal error in HQ while delivering the job (see the server log)"


class Dispatch(Service):
    """
    Deliver waiting jobs to their workers.

    :param store: the job store.
    :param http: the treq client (:func:`hq.worker.make_http_client` in
        production); it must keep no cookies.
    :param clock: the clock for timeouts, retries and finish times.
    :param dispatchers: how many dispatch loops.
    :param workers_per_dispatcher: jobs one loop runs at a time.
    :param queue_size: jobs kept in memory at most (the rest stays in the store).
    :param max_output_bytes: response bytes kept in ``output``.
    :param shutdown_timeout: seconds :meth:`stopService` waits for running jobs.
    :param user_agent: the ``User-Agent`` sent to workers.
    """

    log = Logger()

    def __init__(
        self,
        store: IJobStore,
        http: HTTPClient,
        clock: IReactorTime,
        dispatchers: int,
        workers_per_dispatcher: int,
        queue_size: int,
        max_output_bytes: int,
        shutdown_timeout: float,
        user_agent: str,
    ) -> None:
        self._store = store
        self._worker = WorkerClient(http, clock, user_agent, max_output_bytes)
        self._clock = clock
        self._dispatchers = max(1, dispatchers)
        self._workers_per_dispatcher = max(1, workers_per_dispatcher)
        self._queue_size = max(1, queue_size)
        self._shutdown_timeout = max(0.0, shutdown_timeout)

        #: Waiting jobs in memory, in the order they will start.
        self._queue: OrderedDict[int, Job] = OrderedDict()
        #: Ids in the queue or handed to a dispatcher and not yet ended.
        self._known: set[int] = set()
        #: Highest id the feed has looked at; waiting jobs above it may be in the store only.
        self._watermark = 0
        #: True when waiting jobs may be in the store and not in memory.
        self._backlog = True
        self._feeding = False
        self._missed_while_feeding = False
        self._feed_retry: IDelayedCall | None = None
        #: Dispatchers waiting for a job.
        self._idle: deque[Deferred[Job | None]] = deque()
        #: Everything a loop waits on, cancelled at stop.
        self._parked: set[Deferred[Any]] = set()
        #: Job id -> the Deferred of its exchange with the worker.
        self._exchanges: dict[int, Deferred[Exchange]] = {}
        #: Job id -> a wait before retrying ``store.start`` / ``store.finish``.
        self._start_waits: dict[int, Deferred[None]] = {}
        self._finish_waits: dict[int, Deferred[None]] = {}
        self._stop_asked: set[int] = set()
        #: Jobs queued again (restart) while their previous run was ending.
        self._requeue: dict[int, Job] = {}
        self._runs = 0
        self._num_workers = 0
        self._observers: list[Callable[[Job], None]] = []
        self._history = History()
        self._stopping = False
        self._aborting = False
        self._abort_call: IDelayedCall | None = None
        self._stopped: list[Deferred[None]] = []

    # -- public API

    @property
    def num_workers(self) -> int:
        """
        Requests to workers in flight, all dispatchers together.
        """
        return self._num_workers

    @property
    def in_queue(self) -> int:
        """
        Jobs in the in-memory queue (not yet handed to a dispatcher).
        """
        return len(self._queue)

    def add_observer(self, callback: Callable[[Job], None]) -> None:
        """
        Call ``callback`` with every job that finished, once the store recorded it.
        """
        self._observers.append(callback)

    def history(self, now_ms: int) -> list[HistoryBucket]:
        """
        Return the finished-job counts of the :data:`BUCKETS` intervals up to
        ``now_ms``, oldest first.
        """
        return self._history.buckets(now_ms)

    def enqueue(self, job: Job) -> None:
        """
        Queue ``job``, a waiting job that was just stored. Never blocks or fails:
        a job that does not fit in memory stays in the store and is fed in later.
        """
        try:
            self._enqueue(job)
        except Exception:
            self.log.failure("Could not queue job {jobID}", jobID=job.id)

    def cancel(self, job_id: int, stopped: Job | None = None) -> None:
        """
        Forget or abort the delivery of ``job_id``, which the store just stopped:
        drop it from the queue, keep it from being sent, or abort its request
        (the job then finishes ``canceled``).

        ``stopped`` is the job as the store's stop returned it: when the stop
        finished it (it was waiting), it is counted and told to the observers
        like any other finished job. When it is running in the store but not
        being delivered here (its outcome could not be recorded, or its run
        failed unexpectedly), it is recorded finished ``canceled`` now, so it
        does not stay ``canceling``.
        """
        try:
            delivering = job_id in self._known
            self._cancel(job_id)
            if stopped is None:
                return
            if stopped.state is JobState.FINISHED:
                self._finished(stopped)
            elif stopped.state is JobState.RUNNING and stopped.canceled and not delivering:
                self._finish_orphan(job_id)
        except Exception:
            self.log.failure("Could not cancel job {jobID}", jobID=job_id)

    def startService(self) -> None:
        """
        Start the dispatch loops and load the waiting jobs from the store.
        """
        super().startService()
        self._stopping = self._aborting = False
        self._backlog = True
        self._watermark = 0
        for index in range(self._dispatchers):
            self._background(self._dispatch_loop(index), "Dispatcher {index} stopped", index=index)
        self._maybe_feed()

    def stopService(self) -> Deferred[None]:
        """
        Take no more jobs; wait up to ``shutdown_timeout`` seconds for running
        ones, then abort the rest without recording an outcome (they stay
        running in the store and ``store.recover()`` queues them again at the
        next start). Return a Deferred that fires when every delivery has ended.
        """
        super().stopService()
        self._stopping = True
        if self._feed_retry is not None and self._feed_retry.active():
            self._feed_retry.cancel()
        self._feed_retry = None
        for waiting in [*self._parked, *self._start_waits.values()]:
            waiting.cancel()
        # Queued jobs stay waiting in the store; the next start loads them again.
        self._known.difference_update(self._queue)
        self._queue.clear()
        if self._all_ended():
            return succeed(None)
        if self._runs:
            self.log.info(
                "Waiting up to {timeout} s for {count} running jobs",
                timeout=self._shutdown_timeout,
                count=self._runs,
            )
        done: Deferred[None] = Deferred()
        self._stopped.append(done)
        self._abort_call = self._clock.callLater(self._shutdown_timeout, self._abort_all)
        return done

    # -- queue and feed

    def _enqueue(self, job: Job) -> None:
        if not self.running or self._stopping:
            # Still waiting in the store: the start-up feed will load it.
            return
        if job.id in self._known:
            if job.id not in self._queue:
                # Its previous run is still ending; queue it once that is done.
                self._requeue[job.id] = job
            return
        if not self._backlog and self._idle:
            self._watermark = max(self._watermark, job.id)
            self._hand_out(job)
        elif not self._backlog and len(self._queue) < self._queue_size:
            self._watermark = max(self._watermark, job.id)
            self._append(job)
        else:
            # Older waiting jobs may be in the store only: the feed brings this
            # one in after them, in id order (FIFO), even to an idle dispatcher.
            self._backlog = True
            if self._feeding:
                self._missed_while_feeding = True
            if job.id <= self._watermark:
                # An old id (a restart): let the feed look from there again.
                self._watermark = job.id - 1
            self._maybe_feed()

    def _append(self, job: Job) -> None:
        self._known.add(job.id)
        self._queue[job.id] = job

    def _hand_out(self, job: Job) -> None:
        self._known.add(job.id)
        self._idle.popleft().callback(job)

    def _take(self) -> Deferred[Job | None]:
        """
        Return the next job for a dispatcher, waiting until there is one;
        ``None`` when the service stops.
        """
        if self._stopping:
            return succeed(None)
        if self._queue:
            _, job = self._queue.popitem(last=False)
            self._maybe_feed()
            return succeed(job)
        waiting: Deferred[Job | None] = Deferred(self._forget_idle)
        self._idle.append(waiting)
        self._maybe_feed()
        return waiting

    def _forget_idle(self, waiting: Deferred[Job | None]) -> None:
        if waiting in self._idle:
            self._idle.remove(waiting)

    def _cancel(self, job_id: int) -> None:
        if job_id in self._queue:
            del self._queue[job_id]
            self._known.discard(job_id)
            self._maybe_feed()
            return
        if self._requeue.pop(job_id, None) is not None:
            return
        if job_id in self._known:
            self._stop_asked.add(job_id)
            exchange = self._exchanges.get(job_id)
            if exchange is not None:
                exchange.cancel()

    def _maybe_feed(self) -> None:
        if (
            not self.running
            or self._stopping
            or not self._backlog
            or self._feeding
            or self._feed_retry is not None
            # Load in batches: wait until half the queue is free.
            or len(self._queue) > self._queue_size // 2
        ):
            return
        self._feeding = True
        self._missed_while_feeding = False
        room = self._queue_size - len(self._queue)
        self._background(self._feed(room), "Feeding the queue failed")

    async def _feed(self, room: int) -> None:
        after = self._watermark
        try:
            batch = await self._store.waiting_jobs(after_id=after, limit=room)
        except Exception:
            self._feeding = False
            self.log.failure(
                "Could not read waiting jobs from the store; trying again in {delay} s",
                delay=STORE_RETRY_SECONDS,
            )
            if not self._stopping:
                self._feed_retry = self._clock.callLater(STORE_RETRY_SECONDS, self._retry_feed)
            self._check_stopped()
            return
        try:
            if self._stopping:
                return
            if batch and self._watermark == after:
                self._watermark = max(after, batch[-1].id)
            for job in batch:
                if job.id in self._known or self._stopping:
                    continue
                if self._idle:
                    self._hand_out(job)
                else:
                    self._append(job)
            if len(batch) < room and not self._missed_while_feeding:
                self._backlog = False
        finally:
            self._feeding = False
            self._check_stopped()
        self._maybe_feed()

    def _retry_feed(self) -> None:
        self._feed_retry = None
        self._maybe_feed()

    # -- dispatcher loops

    def _background(
        self, coroutine: Coroutine[Any, Any, None], message: str, **fields: Any
    ) -> None:
        d = Deferred.fromCoroutine(coroutine)
        d.addErrback(lambda failure: self.log.failure(message, failure, **fields))

    def _park(self, waiting: Deferred[T]) -> Deferred[T]:
        self._parked.add(waiting)

        def unpark(result: object) -> object:
            self._parked.discard(waiting)
            return result

        waiting.addBoth(unpark)
        return waiting

    async def _dispatch_loop(self, index: int) -> None:
        semaphore = DeferredSemaphore(self._workers_per_dispatcher)
        while not self._stopping:
            try:
                await self._park(semaphore.acquire())
            except CancelledError:
                return
            try:
                job = await self._park(self._take())
            except CancelledError:
                return
            except Exception:
                semaphore.release()
                self.log.failure("Dispatcher {index} could not take a job", index=index)
                continue
            if job is None:
                semaphore.release()
                return
            self._launch(job, semaphore)

    def _launch(self, job: Job, semaphore: DeferredSemaphore) -> None:
        self._runs += 1
        run = Deferred.fromCoroutine(self._run(job))
        run.addErrback(
            lambda failure: self.log.failure(
                "Job {jobID}: delivery failed unexpectedly", failure, jobID=job.id
            )
        )
        run.addBoth(lambda _: self._run_ended(job.id, semaphore))

    def _finish_orphan(self, job_id: int) -> None:
        """
        Record ``job_id``, stopped while running in the store with no delivery
        here, as finished ``canceled``. It counts as a run until recorded (the
        shutdown waits for it), and as known, so a second stop does not record
        it twice.
        """
        self.log.info(
            "Job {jobID} was stopped while running with no delivery in progress; "
            "recording it canceled",
            jobID=job_id,
        )
        self._runs += 1
        self._known.add(job_id)
        outcome = Outcome(finished_at=self._now_ms(), canceled=True, err="stopped")
        run = Deferred.fromCoroutine(self._record(job_id, outcome))
        run.addErrback(
            lambda failure: self.log.failure(
                "Job {jobID}: recording the stop failed unexpectedly", failure, jobID=job_id
            )
        )
        run.addBoth(lambda _: self._orphan_ended(job_id))

    def _orphan_ended(self, job_id: int) -> None:
        self._runs -= 1
        self._known.discard(job_id)
        self._stop_asked.discard(job_id)
        self._check_stopped()

    def _run_ended(self, job_id: int, semaphore: DeferredSemaphore) -> None:
        self._runs -= 1
        self._known.discard(job_id)
        self._stop_asked.discard(job_id)
        requeue = self._requeue.pop(job_id, None)
        semaphore.release()
        if requeue is not None:
            self.enqueue(requeue)
        self._check_stopped()

    # -- one job

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def _run(self, job: Job) -> None:
        started = await self._start(job)
        if started is None:
            self.log.debug("Job {jobID} is no longer waiting: skipped", jobID=job.id)
            return
        if self._stopping:
            # Shutting down: leave it running in the store; recover() re-queues it.
            return
        try:
            if job.id in self._stop_asked or started.canceled:
                outcome: Outcome | None = Outcome(
                    finished_at=self._now_ms(), canceled=True, err="stopped"
                )
            else:
                outcome = await self._deliver(started)
        except Exception:
            # A bug, not the worker: log it, and record a failure rather than
            # leave the job running with nothing delivering it.
            self.log.failure("Job {jobID}: delivery failed unexpectedly", jobID=job.id)
            outcome = Outcome(finished_at=self._now_ms(), failure=True, err=INTERNAL_ERROR)
        if outcome is None:
            return
        await self._record(job.id, outcome)

    async def _record(self, job_id: int, outcome: Outcome) -> None:
        """
        Record ``outcome`` (see :meth:`_finish`); once recorded, count the job
        and tell the observers.
        """
        finished = await self._finish(job_id, outcome)
        if finished is not None:
            self._finished(finished)

    def _finished(self, finished: Job) -> None:
        """
        Count a finished job in the history, log it and tell the observers.
        """
        self._history.add(finished.finished_at or 0, finished.status)
        if finished.failure:
            self.log.info(
                "Job {jobID} failed: {err} (status code {statusCode})",
                jobID=finished.id,
                err=finished.err,
                statusCode=finished.status_code,
            )
        else:
            self.log.debug(
                "Job {jobID} finished: {status}", jobID=finished.id, status=finished.status
            )
        for observer in list(self._observers):
            try:
                observer(finished)
            except Exception:
                self.log.failure("Job observer failed for job {jobID}", jobID=finished.id)

    async def _start(self, job: Job) -> Job | None:
        """
        Mark ``job`` running in the store; return it, or ``None`` when it must
        not run (no longer waiting, or the service stops).

        While the store fails, try again every :data:`STORE_RETRY_SECONDS`,
        keeping this dispatcher slot (so a broken store is not hammered).
        """
        attempt = 0
        while not self._stopping:
            attempt += 1
            try:
                return await self._store.start(job.id, self._now_ms())
            except Exception:
                if attempt == 1:
                    self.log.failure(
                        "Could not start job {jobID}; trying again every {delay} s",
                        jobID=job.id,
                        delay=STORE_RETRY_SECONDS,
                    )
                elif attempt % 60 == 0:
                    self.log.warn(
                        "Still cannot start job {jobID} after {attempt} attempts",
                        jobID=job.id,
                        attempt=attempt,
                    )
            if not await self._sleep(job.id, STORE_RETRY_SECONDS, self._start_waits):
                return None
        return None

    async def _sleep(self, job_id: int, seconds: float, waits: dict[int, Deferred[None]]) -> bool:
        """
        Wait ``seconds`` on the clock; return False if the wait was cancelled.
        """
        sleep: Deferred[None] = deferLater(self._clock, seconds)
        waits[job_id] = sleep
        try:
            await sleep
        except CancelledError:
            return False
        finally:
            waits.pop(job_id, None)
        return True

    async def _finish(self, job_id: int, outcome: Outcome) -> Job | None:
        """
        Record ``outcome``. While the storage is unavailable (disk full, file
        unwritable) try again, waiting a little longer each time (at most
        :data:`FINISH_RETRY_MAX_SECONDS`), keeping the job's slot, until it is
        recorded or the shutdown aborts it; after any other error give up after
        :data:`FINISH_ATTEMPTS` tries. A job given up stays running in the store
        until it is stopped (:meth:`cancel` then records it canceled) or it is
        delivered again after a restart.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._store.finish(job_id, outcome)
            except StoreUnavailable as e:
                if self._aborting:
                    self._gave_up(job_id, attempt)
                    return None
                if attempt == 1:
                    self.log.failure(
                        "Could not record the outcome of job {jobID}: {error}; "
                        "trying again until the storage is back",
                        jobID=job_id,
                        error=str(e),
                    )
                elif attempt % 10 == 0:
                    self.log.warn(
                        "Still cannot record the outcome of job {jobID} "
                        "after {attempt} attempts: {error}",
                        jobID=job_id,
                        attempt=attempt,
                        error=str(e),
                    )
            except Exception:
                self.log.failure(
                    "Could not record the outcome of job {jobID} (attempt {attempt})",
                    jobID=job_id,
                    attempt=attempt,
                )
                if attempt >= FINISH_ATTEMPTS or self._aborting:
                    self._gave_up(job_id, attempt)
                    return None
            delay = min(STORE_RETRY_SECONDS * attempt, FINISH_RETRY_MAX_SECONDS)
            if not await self._sleep(job_id, delay, self._finish_waits):
                self._gave_up(job_id, attempt)
                return None

    def _gave_up(self, job_id: int, attempts: int) -> None:
        self.log.warn(
            "Gave up recording the outcome of job {jobID} after {attempts} attempts; "
            "it stays running until it is stopped or delivered again after a restart",
            jobID=job_id,
            attempts=attempts,
        )

    async def _deliver(self, job: Job) -> Outcome | None:
        """
        Send ``job`` to its worker; return the outcome, or ``None`` when the
        shutdown aborted it (nothing is recorded then).
        """
        self.log.debug("Job {jobID} started: POST {url}", jobID=job.id, url=job.url)
        running = self._worker.post(job)
        self._exchanges[job.id] = running
        self._num_workers += 1
        try:
            exchange = await running
        finally:
            self._num_workers -= 1
            self._exchanges.pop(job.id, None)
        if exchange.error is None:
            return self._outcome(exchange, canceled=False)
        if job.id in self._stop_asked:
            return self._outcome(exchange, canceled=True)
        if self._aborting:
            return None
        if exchange.unusual_error:
            self.log.debug(
                "Job {jobID}: request error {error!r}", jobID=job.id, error=exchange.error
            )
        return self._outcome(exchange, canceled=False)

    def _outcome(self, exchange: Exchange, canceled: bool) -> Outcome:
        """
        Return the outcome to record for ``exchange``: ``canceled`` (stopped)
        or, if not, a success or a failure with the exchange's reason.
        """
        success = exchange.success
        return Outcome(
            finished_at=self._now_ms(),
            success=success,
            canceled=canceled,
            failure=not (success or canceled),
            status_code=exchange.status_code,
            err="stopped" if canceled else exchange.reason(),
            output=exchange.output(),
            output_truncated=exchange.truncated,
        )

    # -- stopping

    def _all_ended(self) -> bool:
        return self._runs == 0 and not self._feeding

    def _check_stopped(self) -> None:
        if not self._stopping or not self._all_ended():
            return
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        waiters, self._stopped = self._stopped, []
        for waiter in waiters:
            waiter.callback(None)

    def _abort_all(self) -> None:
        self._abort_call = None
        self._aborting = True
        if self._exchanges:
            self.log.info(
                "Shutdown timeout: aborting {count} running jobs; "
                "they will be delivered again after the next start",
                count=len(self._exchanges),
            )
        for exchange in list(self._exchanges.values()):
            exchange.cancel()
        for waiting in list(self._finish_waits.values()):
            waiting.cancel()
