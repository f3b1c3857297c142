"""
The runner: dispatcher loops, their semaphores, and one attempt of a job.

Each of ``dispatchers`` loops takes jobs from the feed and runs at most
``workers_per_dispatcher`` of them at a time under its own
``DeferredSemaphore``. Running a job is one attempt: mark it running in the
store, exchange with its worker (:class:`hq.worker.WorkerClient`), ask the
policy (:func:`hq.policy.after_attempt`) what follows, and record that.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hq.delivery.claims import ClaimFeed
from hq.delivery.feed import Feed
from hq.delivery.outcomes import Outcomes
from hq.delivery.shutdown import Pauses, Shutdown
from hq.flow import FlowControl, signal_of
from hq.ids import now_ms
from hq.logs import debug_events
from hq.model import Attempt, Job, JobState, Outcome
from hq.policy import AttemptResult, Finish, RetryRules, after_attempt, stopped_outcome
from hq.store import STORE_RETRY_SECONDS, IJobStore
from hq.worker import Exchange, Sender, TimedOut

#: The ``err`` of a job whose delivery failed on an unexpected error in HQ
#: (the details are in the server's log).
INTERNAL_ERROR = "internal error in HQ while delivering the job (see the server log)"


def attempt_result(exchange: Exchange, stopped: bool) -> AttemptResult:
    """
    Return what the policy needs to know of ``exchange``; ``stopped`` when a
    stop aborted it.
    """
    return AttemptResult(
        success=exchange.success,
        status_code=exchange.status_code,
        err="" if stopped else exchange.reason(),
        output=exchange.output(),
        output_truncated=exchange.truncated,
        stopped=stopped,
        retry_after=exchange.retry_after,
    )


class Runner:
    """
    The dispatcher loops and the runs they start.

    :param feed: where the loops take jobs.
    :param outcomes: records what the runs decide.
    :param shutdown: counts the runs; a run does not start while it stops.
    """

    log = Logger()

    def __init__(
        self,
        store: IJobStore,
        worker: Sender,
        clock: IReactorTime,
        feed: Feed | ClaimFeed,
        outcomes: Outcomes,
        shutdown: Shutdown,
        workers_per_dispatcher: int,
        rules: RetryRules,
        jitter: Callable[[], float] = random.random,
        flow: FlowControl | None = None,
        new_id: Callable[[], int] | None = None,
    ) -> None:
        self._store = store
        self._flow = flow
        #: Makes the id of a callback job (SPEC §16); ``None``: no callbacks.
        self._new_id = new_id
        self._rules = rules
        self._jitter = jitter
        self._worker = worker
        self._clock = clock
        self._feed = feed
        self._outcomes = outcomes
        self._shutdown = shutdown
        self._workers_per_dispatcher = max(1, workers_per_dispatcher)
        #: Job id -> the Deferred of its exchange with the worker.
        self._exchanges: dict[int, Deferred[Exchange]] = {}
        self._stop_asked: set[int] = set()
        #: Semaphore waits of the loops, cancelled when the engine stops.
        self._acquiring: set[Deferred[Any]] = set()
        self.start_pauses = Pauses(clock)
        self.num_workers = 0
        self._start_observers: list[Callable[[Job], None]] = []
        self._on_ended: Callable[[int], None] = lambda job_id: None

    def start(self, dispatchers: int, on_ended: Callable[[int], None]) -> None:
        """
        Start ``dispatchers`` loops; ``on_ended(job_id)`` is called after each run.
        """
        self._on_ended = on_ended
        for index in range(max(1, dispatchers)):
            loop = Deferred.fromCoroutine(self._loop(index))
            loop.addErrback(self._loop_failed, index)

    def _loop_failed(self, failure: Failure, index: int) -> None:
        self.log.failure("Dispatcher {index} stopped", failure, index=index)

    def add_start_observer(self, callback: Callable[[Job], None]) -> None:
        """
        Call ``callback`` with every job as the store marked it running
        (``started_at - due_at`` is how late it started).
        """
        self._start_observers.append(callback)

    def stop(self) -> None:
        """
        End the loops: no run starts any more (runs in progress go on).
        """
        for waiting in list(self._acquiring):
            waiting.cancel()
        self.start_pauses.cut_short()

    def ask_stop(self, job_id: int) -> None:
        """
        A stop was asked for ``job_id``, which a run holds: keep it from being
        sent, or abort its request (the job then finishes ``canceled``).
        """
        self._stop_asked.add(job_id)
        exchange = self._exchanges.get(job_id)
        if exchange is not None:
            exchange.cancel()

    def abort_all(self) -> int:
        """
        Abort every request in progress (the shutdown timed out); return how many.
        """
        exchanges = list(self._exchanges.values())
        for exchange in exchanges:
            exchange.cancel()
        return len(exchanges)

    async def _loop(self, index: int) -> None:
        semaphore = DeferredSemaphore(self._workers_per_dispatcher)
        while not self._shutdown.stopping:
            acquire = semaphore.acquire()
            self._acquiring.add(acquire)
            try:
                await acquire
            except CancelledError:
                return
            finally:
                self._acquiring.discard(acquire)
            try:
                job = await self._feed.take()
            except Exception:
                semaphore.release()
                self.log.failure("Dispatcher {index} could not take a job", index=index)
                continue
            if job is None:
                semaphore.release()
                return
            self._launch(job, semaphore)

    def _launch(self, job: Job, semaphore: DeferredSemaphore) -> None:
        self._shutdown.run_began()
        slot = _Slot(job.id, self._feed, semaphore)
        run = Deferred.fromCoroutine(self._run(job, slot))
        run.addErrback(
            lambda failure: self.log.failure(
                "Job {jobID}: delivery failed unexpectedly", failure, jobID=job.id
            )
        )
        run.addBoth(lambda _: self._ended(job.id, slot))

    def _ended(self, job_id: int, slot: _Slot) -> None:
        self._stop_asked.discard(job_id)
        slot.free()
        self._on_ended(job_id)
        self._shutdown.run_ended()

    async def _run(self, job: Job, slot: _Slot) -> None:
        started = await self._start(job)
        if started is None:
            self.log.debug("Job {jobID} is no longer waiting: skipped", jobID=job.id)
            return
        if self._shutdown.stopping:
            # Shutting down: leave it running in the store; recover() re-queues it.
            return
        for observer in list(self._start_observers):
            try:
                observer(started)
            except Exception:
                self.log.failure("Start observer failed for job {jobID}", jobID=job.id)
        if job.id in self._stop_asked or started.canceled:
            await self._outcomes.record(job.id, stopped_outcome(now_ms(self._clock)))
            return
        try:
            exchange = await self._attempt(started)
        except Exception:
            # A bug, not the worker: log it, and record a failure rather than
            # leave the job running with nothing delivering it.
            self.log.failure("Job {jobID}: delivery failed unexpectedly", jobID=job.id)
            exchange = None
        # The request is over: on a shared store the slot claims the next
        # job while this one's outcome is recorded (ClaimFeed.settle).
        slot.settle()
        await self._decide(started, exchange)

    async def _decide(self, job: Job, exchange: Exchange | None) -> None:
        """
        Ask the policy what follows the attempt of ``job`` that ended with
        ``exchange`` (``None``: a bug in HQ ended it), and record that.
        """
        now = now_ms(self._clock)
        decision = None
        if exchange is not None:
            stopped = exchange.error is not None and job.id in self._stop_asked
            if exchange.error is not None and not stopped and self._shutdown.aborting:
                return  # Left running in the store: delivered again after the next start.
            try:
                result = attempt_result(exchange, stopped)
                decision = after_attempt(job, result, now, self._rules, self._jitter())
            except Exception:
                # A bug, not the worker: never leave the job running with nobody on it.
                self.log.failure("Job {jobID}: deciding after the attempt failed", jobID=job.id)
        if exchange is not None and self._flow is not None:
            # What the worker's answer tells the key's adaptive limit.
            timed_out = isinstance(exchange.error, TimedOut)
            if exchange.error is None or timed_out:
                signal = signal_of(exchange.success, exchange.status_code, timed_out)
                self._flow.observe(job.flow_key, signal)
        if decision is None:
            outcome = Outcome(finished_at=now, failure=True, err=INTERNAL_ERROR)
            await self._outcomes.record(
                job.id, outcome, Attempt.of(job, outcome), self._callback_id(job, outcome), job
            )
        elif isinstance(decision, Finish):
            attempt = Attempt.of(job, decision.outcome)
            await self._outcomes.record(
                job.id, decision.outcome, attempt, self._callback_id(job, decision.outcome), job
            )
        else:
            await self._outcomes.reschedule(job.id, decision, Attempt.of(job, decision.last))

    def _callback_id(self, job: Job, outcome: Outcome) -> int | None:
        """
        Return the id for the callback job that ``job`` ending with
        ``outcome`` pushes, or ``None`` when it pushes none.
        """
        if self._new_id is None or job.callback_for(outcome) is None:
            return None
        return self._new_id()

    async def _start(self, job: Job) -> Job | None:
        """
        Mark ``job`` running in the store; return it, or ``None`` when it must
        not run (no longer waiting, or the engine stops).

        While the store fails, try again every :data:`STORE_RETRY_SECONDS`,
        keeping this dispatcher slot (so a broken store is not hammered).
        """
        if job.state is JobState.RUNNING:
            return job  # Claimed from a shared store: the claim started it.
        attempt = 0
        while not self._shutdown.stopping:
            attempt += 1
            try:
                return await self._store.start(job.id, now_ms(self._clock), job)
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
            if not await self.start_pauses.pause(STORE_RETRY_SECONDS):
                return None
        return None

    async def _attempt(self, job: Job) -> Exchange:
        """
        Send ``job`` to its worker; return the exchange.
        """
        if debug_events():
            self.log.debug("Job {jobID} started: POST {url}", jobID=job.id, url=job.url)
        running = self._worker.post(job)
        self._exchanges[job.id] = running
        self.num_workers += 1
        try:
            exchange = await running
        finally:
            self.num_workers -= 1
            self._exchanges.pop(job.id, None)
        if exchange.unusual_error:
            self.log.debug(
                "Job {jobID}: request error {error!r}", jobID=job.id, error=exchange.error
            )
        return exchange


class _Slot:
    """
    The dispatcher slot (a count of its semaphore) a run holds, freed once:
    when the run ends, or, if the feed says so (:meth:`ClaimFeed.settle`),
    as soon as its request to the worker is over.
    """

    def __init__(self, job_id: int, feed: Feed | ClaimFeed, semaphore: DeferredSemaphore) -> None:
        self._job_id = job_id
        self._feed = feed
        self._semaphore: DeferredSemaphore | None = semaphore

    def settle(self) -> None:
        """
        The run's request is over and its outcome is about to be recorded.
        """
        if self._semaphore is not None and self._feed.settle(self._job_id):
            self.free()

    def free(self) -> None:
        semaphore, self._semaphore = self._semaphore, None
        if semaphore is not None:
            semaphore.release()
