"""
The delivery engine: the service that puts the feed, the runner, the
outcomes and the shutdown together, and the API's view of it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import cast

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from hq.delivery.claims import ClaimFeed
from hq.delivery.feed import Feed
from hq.delivery.outcomes import Outcomes
from hq.delivery.runner import Runner
from hq.delivery.shutdown import Shutdown
from hq.flow import FlowControl
from hq.history import HistoryBucket
from hq.ids import now_ms
from hq.model import Attempt, Job, JobState
from hq.policy import RetryRules
from hq.store import IClaimingStore, IJobStore
from hq.worker import Sender


@attrs.frozen
class Reservation:
    """
    A dispatcher taken for a job being pushed (:meth:`Delivery.reserve`):
    ``job`` is the job to store, already running.
    """

    job: Job
    dispatcher: Deferred[Job | None]


class Delivery(Service):
    """
    Deliver waiting jobs to their workers.

    :param store: the job store, the source of truth: a job the store will
        not start (stopped or deleted meanwhile) is skipped, and a job left
        running by a dead process is queued again by ``store.recover()``. A
        store shared by a cluster (:class:`hq.store.IClaimingStore`) is fed
        from by claims (:class:`hq.delivery.claims.ClaimFeed`).
    :param worker: runs the exchanges with workers.
    :param clock: for timeouts, pauses and finish times.
    :param dispatchers: how many dispatch loops.
    :param workers_per_dispatcher: jobs one loop runs at a time.
    :param queue_size: jobs kept in memory at most (the rest stays in the store).
    :param shutdown_timeout: seconds :meth:`stopService` waits for running jobs.
    :param rules: the backoff between attempts (SPEC §11).
    :param jitter: returns a number in [0, 1] that spreads each backoff.
    :param flow: the flow limits (SPEC §16); ``None``: none.
    :param new_id: makes the ids of callback jobs; ``None``: no callbacks.
    """

    log = Logger()

    def __init__(
        self,
        store: IJobStore,
        worker: Sender,
        clock: IReactorTime,
        dispatchers: int,
        workers_per_dispatcher: int,
        queue_size: int,
        shutdown_timeout: float,
        rules: RetryRules | None = None,
        jitter: Callable[[], float] = random.random,
        flow: FlowControl | None = None,
        new_id: Callable[[], int] | None = None,
    ) -> None:
        self._dispatchers = max(1, dispatchers)
        self._clock = clock
        self.flow = flow or FlowControl(clock)
        self._feed: Feed | ClaimFeed
        #: Whether jobs are claimed from a store other nodes share.
        self.claims = IClaimingStore.providedBy(store)
        if self.claims:
            capacity = self._dispatchers * max(1, workers_per_dispatcher)
            claiming = cast(IClaimingStore, store)
            self._feed = ClaimFeed(
                claiming, clock, capacity, on_idle=self._check_stopped, flow=self.flow
            )
        else:
            self._feed = Feed(store, clock, queue_size, on_idle=self._check_stopped, flow=self.flow)
        self._shutdown = Shutdown(clock, shutdown_timeout, lambda: self._feed.reading, self._abort)
        # A retried job is still held by its run: enqueue() takes it back once the run ends.
        self._outcomes = Outcomes(
            store, clock, self._shutdown, on_retry=self.enqueue, on_callback=self.enqueue
        )
        self._runner = Runner(
            store,
            worker,
            clock,
            self._feed,
            self._outcomes,
            self._shutdown,
            workers_per_dispatcher,
            rules or RetryRules(),
            jitter,
            self.flow,
            new_id,
        )
        #: Jobs queued again (restart) while their previous run was ending.
        self._requeue: dict[int, Job] = {}

    @property
    def num_workers(self) -> int:
        """
        Requests to workers in flight, all dispatchers together.
        """
        return self._runner.num_workers

    @property
    def runs(self) -> int:
        """
        Runs in progress: jobs being started, sent or recorded.
        """
        return self._shutdown.runs

    @property
    def in_queue(self) -> int:
        """
        Jobs in the in-memory queue (not yet handed to a dispatcher).
        """
        return self._feed.in_queue

    def add_observer(self, callback: Callable[[Job], None]) -> None:
        """
        Call ``callback`` with every job that finished, once the store recorded it.
        """
        self._outcomes.add_observer(callback)

    def add_attempt_observer(self, callback: Callable[[Attempt, int | None], None]) -> None:
        """
        Call ``callback(attempt, retry_at)`` for every attempt recorded:
        ``retry_at`` is when the next one is due (ms), ``None`` when the
        attempt ended the job.
        """
        self._outcomes.add_attempt_observer(callback)

    def add_start_observer(self, callback: Callable[[Job], None]) -> None:
        """
        Call ``callback`` with every job marked running, as the store returned it.
        """
        self._runner.add_start_observer(callback)

    def history(self, now_ms: int) -> list[HistoryBucket]:
        """
        Return the finished-job counts per interval up to ``now_ms``, oldest first.
        """
        return self._outcomes.history(now_ms)

    def enqueue(self, job: Job) -> None:
        """
        Queue ``job``, a waiting job that was just stored. Never blocks or fails:
        a job that does not fit in memory stays in the store and is fed in later.
        """
        try:
            if self._feed.holds(job.id) and not self._feed.queued(job.id):
                # Its previous run is still ending; queue it once that is done.
                self._requeue[job.id] = job
            else:
                self._feed.offer(job)
        except Exception:
            self.log.failure("Could not queue job {jobID}", jobID=job.id)

    def reserve(self, job: Job) -> Reservation | None:
        """
        When ``job``, about to be stored, would start at once, take a
        dispatcher for it and return the job to store: already running
        (:meth:`hq.model.Job.started`), to hand over with :meth:`deliver`
        once stored, or back with :meth:`unreserve`. ``None``: store it
        waiting and :meth:`enqueue` it, as usual.
        """
        if not isinstance(self._feed, Feed) or self._shutdown.stopping:
            return None
        waiting = self._feed.reserve(job)
        if waiting is None:
            return None
        started = job.started(now_ms(self._clock))
        if started is None:  # Not a new waiting job: nothing to start.
            self._feed.unreserve(job, waiting)
            return None
        return Reservation(started, waiting)

    def claim_with_push(self, jobs: Sequence[Job]) -> int | None:
        """
        On a store a cluster shares: ``jobs``' push was just asked of the
        store, not committed yet. Claim now, if a dispatcher is idle: the
        claim goes to the database in the push's transaction, after the push
        (claims run last in a batch), so it takes the jobs due now with no
        transaction, round trip and sync of its own. Return the time (ms)
        up to which the pushed jobs are due and taken care of so: they need
        no :meth:`enqueue` once stored (an idle dispatcher claimed them, or
        the next one to be free will). ``None`` on the embedded store:
        enqueue them all, as usual.
        """
        if not isinstance(self._feed, ClaimFeed) or not jobs:
            return None
        now = now_ms(self._clock)
        if any(job.due_at <= now for job in jobs):
            self._feed.poke()
        return now

    def deliver(self, reservation: Reservation) -> None:
        """
        The reserved job is stored (running): its dispatcher sends it now.
        """
        reservation.dispatcher.callback(reservation.job)

    def unreserve(self, reservation: Reservation) -> None:
        """
        The reserved job was not stored so: give its dispatcher back.
        """
        assert isinstance(self._feed, Feed)
        self._feed.unreserve(reservation.job, reservation.dispatcher)

    def poke(self, due: int | None = None) -> None:
        """
        Jobs wait in the store, due at ``due`` (ms) or now: another node said so.
        """
        if isinstance(self._feed, ClaimFeed):
            self._feed.poke(due)

    def held_ids(self) -> list[int]:
        """
        The ids of the jobs this node claimed and runs (whose leases it renews).
        """
        return self._feed.held_ids() if isinstance(self._feed, ClaimFeed) else []

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
            delivering = self._feed.holds(job_id) or self._outcomes.recording_orphan(job_id)
            if self._feed.drop(job_id) or self._requeue.pop(job_id, None) is not None:
                pass
            elif self._feed.holds(job_id):
                self._runner.ask_stop(job_id)
            if stopped is None:
                return
            if stopped.state is JobState.FINISHED:
                self._outcomes.finished(stopped)
            elif stopped.state is JobState.RUNNING and stopped.canceled and not delivering:
                # In a cluster another node may be running it: that node
                # aborts it (told by the store); if none is, its lease runs
                # out and the reaper finishes it canceled.
                if not self.claims:
                    self._outcomes.record_orphan(job_id)
        except Exception:
            self.log.failure("Could not cancel job {jobID}", jobID=job_id)

    def startService(self) -> None:
        """
        Start the dispatch loops and load the waiting jobs from the store.
        """
        super().startService()
        self._shutdown.reset()
        self._feed.open()
        self._runner.start(self._dispatchers, self._run_ended)

    def stopService(self) -> Deferred[None]:
        """
        Take no more jobs; wait up to ``shutdown_timeout`` seconds for running
        ones, then abort the rest without recording an outcome (they stay
        running in the store and ``store.recover()`` queues them again at the
        next start). Return a Deferred that fires when every delivery has ended.
        """
        super().stopService()
        self._shutdown.stopping = True
        self._feed.close()
        self._runner.stop()
        return self._shutdown.begin()

    def _run_ended(self, job_id: int) -> None:
        self._feed.release(job_id)
        requeue = self._requeue.pop(job_id, None)
        if requeue is not None:
            self.enqueue(requeue)

    def _check_stopped(self) -> None:
        self._shutdown.check()

    def _abort(self, runs: int) -> None:
        aborted = self._runner.abort_all()
        if aborted:
            self.log.info(
                "Shutdown timeout: aborting {count} running jobs; "
                "they will be delivered again after the next start",
                count=aborted,
            )
        self._outcomes.pauses.cut_short()
