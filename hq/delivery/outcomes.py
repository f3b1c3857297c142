"""
Recording what attempts decided: the store write that finishes a job or
schedules its next attempt, tried again while the storage fails; then the
throughput history, the log and the observers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from hq.delivery.shutdown import Pauses, Shutdown
from hq.history import History, HistoryBucket
from hq.ids import now_ms
from hq.logs import debug_events
from hq.model import Attempt, Job, Outcome
from hq.policy import Retry, stopped_outcome
from hq.store import STORE_RETRY_SECONDS, IJobStore, StoreUnavailable

#: Tries to record an outcome after an unexpected store error before the job is
#: left running (recovered at next start). While the storage is unavailable
#: (``StoreUnavailable``), recording is tried again without limit.
FINISH_ATTEMPTS = 4
#: Longest wait between two tries to record an outcome.
FINISH_RETRY_MAX_SECONDS = 10.0


class Outcomes:
    """
    Record outcomes and tell who listens.

    :param store: where outcomes are recorded.
    :param clock: for the pauses between tries and the finish times.
    :param shutdown: counts the orphans being recorded as runs; its
        ``aborting`` ends the tries.
    """

    log = Logger()

    def __init__(
        self,
        store: IJobStore,
        clock: IReactorTime,
        shutdown: Shutdown,
        on_retry: Callable[[Job], None] = lambda job: None,
        on_callback: Callable[[Job], None] = lambda job: None,
    ) -> None:
        self._store = store
        self._on_retry = on_retry
        self._on_callback = on_callback
        self._clock = clock
        self._shutdown = shutdown
        self.pauses = Pauses(clock)
        self._observers: list[Callable[[Job], None]] = []
        self._attempt_observers: list[Callable[[Attempt, int | None], None]] = []
        self._history = History()
        #: Jobs stopped while running with no delivery here, being recorded.
        self._orphans: set[int] = set()

    def add_observer(self, callback: Callable[[Job], None]) -> None:
        """
        Call ``callback`` with every job that finished, once the store recorded it.
        """
        self._observers.append(callback)

    def add_attempt_observer(self, callback: Callable[[Attempt, int | None], None]) -> None:
        """
        Call ``callback(attempt, retry_at)`` for every attempt recorded in the
        store: ``retry_at`` is when the next attempt is due (ms), ``None`` when
        the attempt ended the job.
        """
        self._attempt_observers.append(callback)

    def _tell_attempt(self, attempt: Attempt | None, retry_at: int | None) -> None:
        if attempt is None:
            return
        for observer in list(self._attempt_observers):
            try:
                observer(attempt, retry_at)
            except Exception:
                self.log.failure("Attempt observer failed for job {jobID}", jobID=attempt.job_id)

    def history(self, at_ms: int) -> list[HistoryBucket]:
        """
        Return the finished-job counts per interval up to ``at_ms``, oldest first.
        """
        return self._history.buckets(at_ms)

    def recording_orphan(self, job_id: int) -> bool:
        """
        Whether ``job_id`` is being recorded by :meth:`record_orphan`.
        """
        return job_id in self._orphans

    async def record(
        self,
        job_id: int,
        outcome: Outcome,
        attempt: Attempt | None = None,
        callback_id: int | None = None,
        known: Job | None = None,
    ) -> None:
        """
        Record ``outcome`` and the ``attempt`` that ended with it (see
        :meth:`_persist`), and the callback job (id ``callback_id``) in the
        same store write when the job has a callback URL for ``outcome``;
        once recorded, count the job, tell the observers and queue the callback.
        ``known``: the running job, as started (``IJobStore.finish``).
        """

        finished = await self._persist(
            job_id, lambda: self._store.finish(job_id, outcome, attempt, callback_id, known)
        )
        if finished is not None:
            self._tell_attempt(attempt, None)
            self.finished(finished)
            url = finished.callback_for(outcome)
            if finished.callback_job_id is not None and url is not None:
                self.log.info(
                    "Job {jobID}: callback job {callbackID} pushed to {url}",
                    jobID=job_id,
                    callbackID=finished.callback_job_id,
                    url=url,
                )
                # The callback job as the store wrote it (sql.callback_of): the
                # dispatcher sends the job it is given.
                callback = finished.callback_job(finished.callback_job_id, url, outcome.finished_at)
                self._on_callback(callback)

    async def reschedule(self, job_id: int, retry: Retry, attempt: Attempt) -> None:
        """
        Record that ``job_id`` waits for its next attempt (``retry``) after
        the failed ``attempt`` (see :meth:`_persist`), and hand it back to the
        feed; a job whose stop was asked meanwhile is finished ``canceled``.
        """
        job = await self._persist(
            job_id, lambda: self._store.retry(job_id, retry.at, retry.last, attempt)
        )
        if job is None:
            return
        self._tell_attempt(attempt, retry.at if job.waiting else None)
        if job.waiting:
            self.log.info(
                "Job {jobID}: attempt {attempt} failed ({err}); attempt {next} at {at}",
                jobID=job_id,
                attempt=attempt.attempt,
                err=attempt.err,
                next=attempt.attempt + 1,
                at=retry.at,
            )
            self._on_retry(job)
        else:
            self.finished(job)

    def finished(self, job: Job) -> None:
        """
        Count a finished job in the history, log it and tell the observers.
        """
        self._history.add(job.finished_at or 0, job.status)
        if job.failure:
            self.log.info(
                "Job {jobID} failed: {err} (status code {statusCode})",
                jobID=job.id,
                err=job.err,
                statusCode=job.status_code,
            )
        elif debug_events():
            self.log.debug("Job {jobID} finished: {status}", jobID=job.id, status=job.status)
        for observer in list(self._observers):
            try:
                observer(job)
            except Exception:
                self.log.failure("Job observer failed for job {jobID}", jobID=job.id)

    def record_orphan(self, job_id: int) -> None:
        """
        Record ``job_id``, stopped while running in the store with no delivery
        here (its outcome could not be recorded earlier), as finished
        ``canceled``, so it does not stay ``canceling``. It counts as a run
        until recorded (the shutdown waits for it).
        """
        self.log.info(
            "Job {jobID} was stopped while running with no delivery in progress; "
            "recording it canceled",
            jobID=job_id,
        )
        self._shutdown.run_began()
        self._orphans.add(job_id)
        run = Deferred.fromCoroutine(self.record(job_id, stopped_outcome(now_ms(self._clock))))
        run.addErrback(
            lambda failure: self.log.failure(
                "Job {jobID}: recording the stop failed unexpectedly", failure, jobID=job_id
            )
        )
        run.addBoth(lambda _: self._orphan_ended(job_id))

    def _orphan_ended(self, job_id: int) -> None:
        self._orphans.discard(job_id)
        self._shutdown.run_ended()

    async def _persist(self, job_id: int, write: Callable[[], Awaitable[Job | None]]) -> Job | None:
        """
        Make the store ``write`` that records what an attempt of ``job_id``
        decided. While the storage is unavailable (disk full, file
        unwritable) try again, waiting a little longer each time (at most
        :data:`FINISH_RETRY_MAX_SECONDS`), keeping the job's slot, until it is
        recorded or the shutdown aborts it; after any other error give up after
        :data:`FINISH_ATTEMPTS` tries. A job given up stays running in the store
        until it is stopped (then recorded canceled by :meth:`record_orphan`)
        or delivered again after a restart.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await write()
            except StoreUnavailable as e:
                if self._shutdown.aborting:
                    self._gave_up(job_id, attempt)
                    return None
                self._log_unavailable(job_id, attempt, e)
            except Exception:
                self.log.failure(
                    "Could not record the outcome of job {jobID} (attempt {attempt})",
                    jobID=job_id,
                    attempt=attempt,
                )
                if attempt >= FINISH_ATTEMPTS or self._shutdown.aborting:
                    self._gave_up(job_id, attempt)
                    return None
            delay = min(STORE_RETRY_SECONDS * attempt, FINISH_RETRY_MAX_SECONDS)
            if not await self.pauses.pause(delay):
                self._gave_up(job_id, attempt)
                return None

    def _log_unavailable(self, job_id: int, attempt: int, error: StoreUnavailable) -> None:
        if attempt == 1:
            self.log.failure(
                "Could not record the outcome of job {jobID}: {error}; "
                "trying again until the storage is back",
                jobID=job_id,
                error=str(error),
            )
        elif attempt % 10 == 0:
            self.log.warn(
                "Still cannot record the outcome of job {jobID} after {attempt} attempts: {error}",
                jobID=job_id,
                attempt=attempt,
                error=str(error),
            )

    def _gave_up(self, job_id: int, attempts: int) -> None:
        self.log.warn(
            "Gave up recording the outcome of job {jobID} after {attempts} attempts; "
            "it stays running until it is stopped or delivered again after a restart",
            jobID=job_id,
            attempts=attempts,
        )
