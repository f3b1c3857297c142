"""
Recording outcomes: the store write that finishes a job, tried again while
the storage fails, then the throughput history, the log and the observers.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from hq.delivery.shutdown import Pauses, Shutdown
from hq.history import History, HistoryBucket
from hq.ids import now_ms
from hq.model import Job, Outcome
from hq.policy import stopped_outcome
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

    def __init__(self, store: IJobStore, clock: IReactorTime, shutdown: Shutdown) -> None:
        self._store = store
        self._clock = clock
        self._shutdown = shutdown
        self.pauses = Pauses(clock)
        self._observers: list[Callable[[Job], None]] = []
        self._history = History()
        #: Jobs stopped while running with no delivery here, being recorded.
        self._orphans: set[int] = set()

    def add_observer(self, callback: Callable[[Job], None]) -> None:
        """
        Call ``callback`` with every job that finished, once the store recorded it.
        """
        self._observers.append(callback)

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

    async def record(self, job_id: int, outcome: Outcome) -> None:
        """
        Record ``outcome`` (see :meth:`_finish`); once recorded, count the job
        and tell the observers.
        """
        finished = await self._finish(job_id, outcome)
        if finished is not None:
            self.finished(finished)

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
        else:
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

    async def _finish(self, job_id: int, outcome: Outcome) -> Job | None:
        """
        Record ``outcome``. While the storage is unavailable (disk full, file
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
                return await self._store.finish(job_id, outcome)
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
