"""
The job store: the interface every storage engine implements, and its errors.

The store is the source of truth for a job's state. Every method that changes
a job checks and changes it in one atomic step (so a stop and a finish, or a
restart and a delete, cannot interleave), and every method returns a
``Deferred``; none blocks the reactor thread.

Engines: :mod:`hq.store.sqlite` (the embedded default),
:mod:`hq.store.postgres` (config ``store = "postgresql://..."``) and
:mod:`hq.store.memory` (a fake for tests, with the same behaviour);
:func:`open_store` picks the one the configuration names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
from zope.interface import Interface

from hq.model import Job, JobRuleError

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from hq.config import Config
    from hq.model import Attempt, FlowLimits, JobPage, ListQuery, Outcome, Schedule
    from hq.store.postgres import PostgresStore
    from hq.store.sqlite import SQLiteStore


#: Seconds before a store call that failed is tried again by the delivery engine.
STORE_RETRY_SECONDS = 1.0


class StoreError(Exception):
    """
    Base of the store's errors.
    """


class JobNotFound(StoreError):
    """
    No job has this id.
    """

    def __init__(self, job_id: int) -> None:
        super().__init__(f"The job '{job_id}' is not found")
        self.job_id = job_id


class ScheduleNotFound(StoreError):
    """
    No schedule has this id.
    """

    def __init__(self, schedule_id: int) -> None:
        super().__init__(f"The schedule '{schedule_id}' is not found")
        self.schedule_id = schedule_id


#: The job is in a state that forbids the operation (delete while running, stop
#: a finished job): the model's rules raise it (:meth:`hq.model.Job.stopped`,
#: :meth:`hq.model.Job.check_settled`); a store only lets it through.
JobConflict = JobRuleError


class JobExists(StoreError):
    """
    A job with this id is already stored.
    """


class StoreUnavailable(StoreError):
    """
    The storage cannot be written now (disk full, file unwritable, closed).
    """


@attrs.frozen
class StoreCounts:
    """
    Job counters for ``/stats``.
    """

    stored: int
    waiting: int
    running: int
    created_since: int
    #: Waiting jobs due after the time asked about (delays and retries).
    scheduled: int = 0


class IdempotencyConflict(StoreError):
    """
    A job pushed with an idempotency key differs from the stored job with
    that key in its ``url``, ``name`` or ``payload``.
    """

    def __init__(self, index: int, key: str, job_id: int) -> None:
        super().__init__(
            f"the idempotency key {key!r} was used for the job {job_id} with another "
            "url, name or payload"
        )
        self.index = index
        self.key = key
        self.job_id = job_id


@attrs.frozen
class Pushed:
    """
    One job of a push as stored: ``replayed`` when its idempotency key matched
    a job pushed before (which ``job`` then is), and nothing was created.
    """

    job: Job
    replayed: bool = False


#: The feed's position: ``(due time, id)`` of the last job looked at.
DueKey = tuple[int, int]


@attrs.frozen
class Recovery:
    """
    What :meth:`IJobStore.recover` did at start-up.
    """

    #: Jobs that were running when the last process died, waiting again.
    requeued: int
    #: Jobs that were being stopped when the last process died, now canceled.
    canceled: int


@attrs.frozen
class FlowCounts:
    """
    A flow key's active jobs in the store (``GET /flow``).
    """

    waiting: int = 0
    running: int = 0


@attrs.frozen
class ClaimCaps:
    """
    What a node's claim must respect beyond the limits stored for each flow
    key (SPEC §16): ``default_parallelism`` (config ``host_parallelism``, 0 =
    none) for keys with no limits of their own, and ``local``: per key, how
    many more jobs this node may start now (its adaptive limits less what it
    runs); a key not in ``local`` has no cap of this node's.
    """

    default_parallelism: int = 0
    local: dict[str, int] = attrs.Factory(dict)


class Claimed(list[Job]):
    """
    The jobs a claim took (:meth:`IClaimingStore.claim`), and what the
    claim learnt besides:

    - ``limited``: flow limits applied to it. A key may then have had no
      room for its due jobs, and a job of that key that ends while the
      claim is read makes room the claim did not see, so the claim feed
      claims again after it (:class:`hq.delivery.claims.ClaimFeed`);
    - ``due_read`` and ``next_due``: the claim also read, after taking its
      jobs, the earliest due time after its ``now`` of a job left waiting
      (``None``: none), which :meth:`IClaimingStore.next_due` would
      answer, so the feed need not ask.

    A plain list is a claim without limits that read no due time.
    """

    def __init__(
        self,
        jobs: Iterable[Job] = (),
        *,
        limited: bool = False,
        due_read: bool = False,
        next_due: int | None = None,
    ) -> None:
        super().__init__(jobs)
        self.limited = limited
        self.due_read = due_read
        self.next_due = next_due


@attrs.frozen
class Node:
    """
    One server of a cluster as the store knows it (``GET /nodes``); times in ms.
    """

    server_id: int
    address: str
    started_at: int
    heartbeat_at: int


class NodeInUse(StoreError):
    """
    A live node already uses this ``server_id``: a second one must not start.
    """


class IJobStore(Interface):
    """
    Durable storage of jobs. All methods return Deferreds.
    """

    def open() -> Deferred[None]:
        """
        Open (and if needed create) the storage.
        """

    def close() -> Deferred[None]:
        """
        Finish pending writes and release the storage.
        """

    def recover(now: int) -> Deferred[Recovery]:
        """
        Make the jobs a dead process left running runnable again: those with a
        stop requested finish ``canceled`` at ``now``, the others are waiting again.
        """

    def max_id() -> Deferred[int]:
        """
        Return the greatest stored id, 0 when there is none.
        """

    def push(
        jobs: list[Job], keys_since: int, committed: Callable[[], None] | None = None
    ) -> Deferred[list[Pushed]]:
        """
        Store new jobs in one commit, all or none, honouring idempotency keys:
        a job whose key belongs to a stored job created at or after
        ``keys_since`` (ms) is not stored; that job is answered instead
        (``replayed``), or, when their ``url``, ``name`` or ``payload``
        differ, the push fails with :class:`IdempotencyConflict` naming the
        job's index and nothing is stored. An older key is taken over by the
        new job. Two jobs with one key in the same push: the second replays
        the first. Concurrent pushes with one key store one job.

        Fails with :class:`JobExists`, :class:`IdempotencyConflict` or
        :class:`StoreUnavailable`.

        ``committed``, when given, may be called (on the reactor thread) once
        the jobs are committed and readable but before the disk has them, so
        that the caller can act on them (deliver a job reserved for an idle
        dispatcher) while the commit is synced; the Deferred still fires only
        once they are durable, and the caller must not answer the push
        before. A store need not call it (a push with idempotency keys, or a
        store whose commit and sync are one step): the caller then acts when
        the Deferred fires. It is never called for a push that fails before its
        commit.
        """

    def create(job: Job) -> Deferred[None]:
        """
        Store a new job. Fires once it is durable.

        Fails with :class:`JobExists` or :class:`StoreUnavailable`.
        """

    def get(job_id: int) -> Deferred[Job]:
        """
        Return the job. Fails with :class:`JobNotFound`.
        """

    def list_jobs(query: ListQuery) -> Deferred[JobPage]:
        """
        Return the jobs matching ``query``, in id order (descending if
        ``query.reverse``), from ``query.begin`` inclusive, at most
        ``query.limit``; ``next_id`` is the next matching id after the page.
        """

    def start(job_id: int, now: int, known: Job | None = None) -> Deferred[Job | None]:
        """
        Mark a waiting job running (``started_at = now``, one more attempt).

        Return the running job, or ``None`` when it is no longer waiting (it was
        stopped or deleted meanwhile) and must not be sent. ``known`` is the
        waiting job as the caller read it from this store (its fields do not
        change while it waits); a store may build the running job from it
        rather than read the row back.
        """

    def finish(
        job_id: int,
        outcome: Outcome,
        attempt: Attempt | None = None,
        callback_id: int | None = None,
        known: Job | None = None,
    ) -> Deferred[Job | None]:
        """
        Record the outcome of a job that is not finished yet, and ``attempt``
        (the attempt that ended it, if one ran) in its history; return the
        job, or ``None`` if it was already finished or deleted.

        When ``callback_id`` is given and the finished job has a callback URL
        for ``outcome`` (:meth:`hq.model.Job.callback_for`), the callback job
        (:meth:`hq.model.Job.callback_job`, id ``callback_id``, created at
        ``outcome.finished_at``) is stored waiting, and the finished job's
        ``callback_job_id`` set, in the same commit (SPEC §16): a crash never
        loses or doubles a callback. The callback's payload is the finished
        job as ``GET /job/{id}`` shows it after that commit, at
        ``outcome.finished_at``: ``callbackJobId`` is already ``callback_id``
        (:func:`hq.store.sql.callback_of`). On PostgreSQL the nodes are told,
        as for a push. Fails with :class:`JobExists` (nothing changed) when
        ``callback_id`` is taken.

        ``known`` is the running job as the caller had it from :meth:`start`
        (its fields do not change while it runs but for a stop, which the
        outcome overrides); a store may build the finished job from it rather
        than read the row back.
        """

    def stop(job_id: int, now: int) -> Deferred[Job]:
        """
        Cancel an active job: a waiting one finishes ``canceled`` at ``now``; a
        running one gets ``canceled`` set and finishes when its request ends.

        Return the job after the change. Fails with :class:`JobNotFound`, or
        :class:`JobConflict` (``The job <id> is not active``).
        """

    def restart(job_id: int) -> Deferred[Job]:
        """
        Reset a finished job to run again under the same id (its attempt
        history cleared, :meth:`hq.model.Job.reset`); return it waiting.

        Fails with :class:`JobNotFound`, or :class:`JobConflict`
        (``The job <id> is running now`` / ``... is waiting now``).
        """

    def delete(job_id: int) -> Deferred[None]:
        """
        Delete a job that is neither waiting nor running, with its attempt history.

        Fails with :class:`JobNotFound` or :class:`JobConflict`.
        """

    def waiting_jobs(after: DueKey, now: int, limit: int) -> Deferred[list[Job]]:
        """
        Return up to ``limit`` waiting, not canceled jobs due at ``now`` or
        before whose ``(due_at, id)`` is above ``after``, in that order (the
        queue's backlog).
        """

    def next_due(now: int) -> Deferred[int | None]:
        """
        Return the earliest due time after ``now`` of a waiting, not canceled
        job, or ``None`` when no job waits for a later time.
        """

    def retry(job_id: int, at: int, last: Outcome, attempt: Attempt) -> Deferred[Job | None]:
        """
        Make a running job wait for its next attempt, due at ``at``, showing
        ``last``, the outcome of the failed ``attempt`` (kept in the history):
        :meth:`hq.model.Job.retried`.
        A job whose stop was asked meanwhile finishes ``canceled`` instead.
        Return it, or ``None`` if it is not running (deleted, finished).
        """

    def attempts(job_id: int) -> Deferred[list[Attempt]]:
        """
        Return the attempt history of a job, oldest first. Fails with
        :class:`JobNotFound`.
        """

    def delete_finished_before(cutoff: int, limit: int) -> Deferred[int]:
        """
        Delete up to ``limit`` finished jobs whose ``finished_at`` is before
        ``cutoff``; return how many were deleted.
        """

    def counts(since_id: int, now: int) -> Deferred[StoreCounts]:
        """
        Return the counters; ``created_since`` counts jobs with ids >= ``since_id``,
        ``scheduled`` the waiting jobs due after ``now``.
        """

    def probe_write() -> Deferred[None]:
        """
        Make a small durable write that changes no job, to check that the
        storage can be written now (the health check). Fails with
        :class:`StoreUnavailable` when it cannot.
        """

    # Flow control (SPEC §16).

    def waiting_jobs_of(flow_key: str, after: DueKey, now: int, limit: int) -> Deferred[list[Job]]:
        """
        :meth:`waiting_jobs`, of the jobs with ``flow_key`` only (served by an
        index on ``(flow_key, due time, id)`` of the waiting jobs, so a key's
        backlog is read without looking at other keys' jobs).
        """

    def flow_limits() -> Deferred[list[FlowLimits]]:
        """
        Return the limits set for flow keys (``PUT /flow/{key}``), by key.
        """

    def put_flow(limits: FlowLimits) -> Deferred[None]:
        """
        Set (insert or replace) the limits of ``limits.key``; durable when it fires.
        """

    def delete_flow(flow_key: str) -> Deferred[bool]:
        """
        Remove the limits of ``flow_key``; return whether it had any.
        """

    def flow_counts() -> Deferred[dict[str, FlowCounts]]:
        """
        Return, per flow key with active jobs (in key order), how many wait
        (not canceled, due now or later) and how many run; read through the
        state indexes, never the finished jobs.
        """


class IClaimingStore(IJobStore):
    """
    A store that several servers (nodes) share, each with its ``server_id``
    (SPEC §13): a node claims due jobs with a lease instead of starting the
    jobs it read, renews the leases of the jobs it runs, and any node gives
    the jobs of expired leases back (at-least-once). Times of leases and
    heartbeats are the store's own clock.
    """

    lease_timeout: float

    def claim(now: int, limit: int, caps: ClaimCaps | None = None) -> Deferred[list[Job]]:
        """
        Mark up to ``limit`` due waiting jobs (due at ``now`` or before, not
        canceled) running for this node at ``now``, with a lease; return them
        in due time, then id order. Jobs another node is claiming are skipped,
        so no job is claimed twice.

        The stored flow limits hold across all nodes together, and ``caps``
        on top (:class:`ClaimCaps`): a paused key starts nothing; a key's
        room is the least of its parallelism less its running jobs (all
        nodes), its rate less its starts in the last ``period`` (the
        database's clock) and ``caps.local``; a key without a stored row has
        ``caps.default_parallelism``. A key without room holds back no other
        key's jobs. The result may be a :class:`Claimed`: a claim under
        limits says so, and a claim may read the next due time with it.
        """

    def renew(job_ids: list[int]) -> Deferred[list[int]]:
        """
        Renew this node's heartbeat and the leases of ``job_ids`` (its running
        jobs) in one write; return the ids among them whose stop was asked.
        """

    def reap(now: int) -> Deferred[Recovery]:
        """
        Give back the running jobs whose lease has expired (their node died):
        like :meth:`IJobStore.recover`, the attempt counts and is recorded
        interrupted, and a job whose stop was asked finishes ``canceled``.
        """

    def register(address: str, now: int) -> Deferred[None]:
        """
        Register this node (its ``server_id``) at ``address``, started at ``now``.
        Fails with :class:`NodeInUse` when a node with this ``server_id`` has
        a heartbeat younger than the lease timeout.
        """

    def unregister() -> Deferred[None]:
        """
        Remove this node's registration and its leader leases (a clean stop).
        """

    def nodes() -> Deferred[list[Node]]:
        """
        Return the live nodes (a heartbeat younger than the lease timeout),
        in ``server_id`` order.
        """

    def lead(name: str, seconds: float) -> Deferred[bool]:
        """
        Take or keep the leader lease ``name`` for ``seconds``; return whether
        this node holds it (work done once per cluster runs where it does).
        """


class IScheduleStore(Interface):
    """
    Durable storage of schedules (SPEC §14), kept by the job store's engines
    beside the jobs, so that a fire is one transaction. All methods return
    Deferreds.
    """

    def add_schedule(schedule: Schedule) -> Deferred[None]:
        """
        Store a new schedule. Fails with :class:`StoreUnavailable`.
        """

    def get_schedule(schedule_id: int) -> Deferred[Schedule]:
        """
        Return the schedule. Fails with :class:`ScheduleNotFound`.
        """

    def list_schedules() -> Deferred[list[Schedule]]:
        """
        Return every schedule, in id order.
        """

    def delete_schedule(schedule_id: int) -> Deferred[None]:
        """
        Delete the schedule (the jobs it created stay). Fails with
        :class:`ScheduleNotFound`.
        """

    def pause_schedule(schedule_id: int) -> Deferred[Schedule]:
        """
        Pause the schedule (no next fire until resumed); return it. Pausing a
        paused schedule changes nothing. Fails with :class:`ScheduleNotFound`.
        """

    def resume_schedule(schedule_id: int, next_run_at: int | None) -> Deferred[Schedule]:
        """
        Resume a paused schedule, next firing at ``next_run_at``; return it.
        Resuming a running schedule changes nothing (its next fire stays).
        Fails with :class:`ScheduleNotFound`.
        """

    def due_schedules(now: int, limit: int) -> Deferred[list[Schedule]]:
        """
        Return up to ``limit`` running schedules whose next fire is at ``now``
        or before, earliest first.
        """

    def next_fire_at() -> Deferred[int | None]:
        """
        Return the earliest next fire of a running schedule, or ``None``.
        """

    def fire(
        schedule_id: int, fire_at: int, job: Job, next_run_at: int | None
    ) -> Deferred[Job | None]:
        """
        Fire the schedule once, in one transaction: store ``job`` (a new
        waiting job of the schedule, marked with the fire time ``fire_at``)
        and move the schedule on (``next_run_at``, ``last_run_at = fire_at``,
        ``last_job_id``), only if the schedule runs and its next fire is still
        ``fire_at``. Return the stored job, or ``None`` when the schedule had
        moved on, was paused or deleted (another node or call fired it): so
        each (schedule, fire time) makes at most one job, whatever the races.

        Fails with :class:`StoreUnavailable` (then nothing was stored).
        """


def open_store(
    config: Config,
    reactor: Any,
    data_dir: str | None = None,
    on_commit: Callable[[float, int, bool], None] | None = None,
) -> SQLiteStore | PostgresStore:
    """
    Return the store (an :class:`IJobStore`) ``config`` names, not opened yet: PostgreSQL for a
    ``store`` URL, otherwise SQLite in ``data_dir`` (default: ``config.data_dir``).

    ``on_commit`` is told of every transaction on the writer thread (seconds,
    writes, committed). Either store has ``lock()`` (SQLite's data_dir lock;
    for PostgreSQL a lock shared by the nodes of a cluster), then ``open()``.
    """
    url = config.postgres_url
    if url is not None:
        from hq.store.postgres import PostgresStore

        return PostgresStore(
            url,
            reactor,
            on_commit=on_commit,
            server_id=config.server_id,
            lease_timeout=config.lease_timeout,
        )
    from hq.store.sqlite import SQLiteStore

    return SQLiteStore(
        config.data_dir if data_dir is None else data_dir, reactor, on_commit=on_commit
    )
