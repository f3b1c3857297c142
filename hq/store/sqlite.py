"""
The embedded job store: SQLite (standard library) in WAL mode, in ``data_dir``.

The job operations are here; the file, its schema, the writer thread that
batches writes into one commit and the reader threads are in
:mod:`hq.store.sqlitefile`. The SQL shared with other engines is in
:mod:`hq.store.sql`; the job rules are the model's (:mod:`hq.model`).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from hq.model import Attempt, FlowLimits, Job, JobPage, JobState, ListQuery, Outcome, Schedule
from hq.store import (
    DueKey,
    FlowCounts,
    IdempotencyConflict,
    IJobStore,
    IScheduleStore,
    JobNotFound,
    Pushed,
    Recovery,
    ScheduleNotFound,
    StoreCounts,
    sql,
)
from hq.store.sql import glob_prefilter
from hq.store.sqlitefile import (
    _SCHEMA,
    DATABASE_FILE,
    LOCK_FILE,
    SCHEMA_VERSION,
    GroupedOp,
    SQLiteFile,
    _Change,
    _Op,
)
from hq.store.sqlitesearch import search_page

__all__ = [
    "DATABASE_FILE",
    "LOCK_FILE",
    "SCHEMA_VERSION",
    "_SCHEMA",
    "SQLiteStore",
    "glob_prefilter",
]

T = TypeVar("T")

#: Due waiting jobs counted at most for ``/stats`` (see ``counts``).
COUNT_CAP = 10_000


@implementer(IJobStore, IScheduleStore)
class SQLiteStore:
    """
    Jobs in ``<data_dir>/hq.sqlite3`` (:class:`hq.store.sqlitefile.SQLiteFile`):
    one short method per operation of the job and schedule contracts, hence
    its length; the file, schema and threads are in :mod:`hq.store.sqlitefile`.

    :param data_dir: the directory (created if missing).
    :param reactor: provides ``callFromThread`` and thread pools.
    :param readers: reader threads.
    :param on_commit: told of every transaction, on the writer thread
        (seconds, writes in it, whether it committed).
    """

    log = Logger()

    def __init__(
        self,
        data_dir: str,
        reactor: Any,
        readers: int = 2,
        on_commit: Callable[[float, int, bool], None] | None = None,
    ) -> None:
        self.file = SQLiteFile(data_dir, reactor, readers, on_commit)
        self._probes = 0

    @property
    def path(self) -> str:
        """
        The database file.
        """
        return self.file.path

    def lock(self) -> None:
        """
        Take the data_dir lock now (``open`` takes it if not taken yet).

        :raises StoreError: when another server holds it.
        :raises OSError: when data_dir cannot be created or written.
        """
        self.file.lock()

    def open(self) -> Deferred[None]:
        return self.file.open()

    def close(self) -> Deferred[None]:
        return self.file.close()

    def integrity_check(self) -> Deferred[list[str]]:
        """
        Run ``PRAGMA integrity_check``; fires with its messages (``["ok"]`` when sound).
        """
        return self.file.integrity_check()

    def _write(
        self, op: _Op, durable: bool = True, committed: Callable[[], None] | None = None
    ) -> Deferred[Any]:
        return self.file.write(op, durable, committed)

    def _read(self, call: Callable[[sqlite3.Connection], T], scan: bool = False) -> Deferred[T]:
        return self.file.read(call, scan)

    # Writer-side helpers (run on the writer thread).

    @staticmethod
    def _fetch(conn: sqlite3.Connection, job_id: int) -> Job | None:
        row = conn.execute(f"{sql.SELECT} WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else sql.row_job(row)

    @classmethod
    def _fetch_or_fail(cls, conn: sqlite3.Connection, job_id: int) -> Job:
        job = cls._fetch(conn, job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    @staticmethod
    def _save(conn: sqlite3.Connection, changes: list[_Change], before: Job, after: Job) -> Job:
        conn.execute(sql.UPDATE, sql.update_args(after))
        changes.append((before.state, after.state, 1))
        return after

    # IJobStore.

    def recover(self, now: int) -> Deferred[Recovery]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> Recovery:
            requeued = canceled = 0
            for row in conn.execute(sql.RUNNING).fetchall():
                job = sql.row_job(row)
                recovered = self._save(conn, changes, job, job.recovered(now))
                if recovered.waiting:
                    conn.execute(sql.INSERT_ATTEMPT, sql.attempt_row(Attempt.interrupted(job, now)))
                    requeued += 1
                else:
                    canceled += 1
            return Recovery(requeued=requeued, canceled=canceled)

        return self._write(op)

    def max_id(self) -> Deferred[int]:
        # The greatest id ever created, deleted or not (kept in ``meta``), so an
        # id is not issued twice when the newest jobs are gone and the clock
        # was set back.
        sql = (
            "SELECT max(coalesce((SELECT max(id) FROM jobs), 0), "
            "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'max_id'), 0))"
        )
        return self._read(lambda conn: cast(int, conn.execute(sql).fetchone()[0]))

    @staticmethod
    def _insert(conn: sqlite3.Connection, changes: list[_Change], job: Job) -> None:
        # The greatest id is the greatest row's: ``meta`` learns it only when
        # that row is deleted (``_delete_rows``), not with every insert.
        conn.execute(sql.INSERT, sql.job_row(job))
        if job.idempotency_key is not None:
            conn.execute(sql.TAKE_KEY, (job.idempotency_key, job.id, job.created_at))
        changes.append((None, job.state, 1))

    def create(self, job: Job) -> Deferred[None]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> None:
            self._insert(conn, changes, job)

        return self._write(op)

    def push(
        self,
        jobs: list[Job],
        keys_since: int,
        committed: Callable[[], None] | None = None,
    ) -> Deferred[list[Pushed]]:
        if all(job.idempotency_key is None for job in jobs):
            # Nothing to look up: inserted as they are, many rows a statement,
            # with the other such pushes of the batch.
            return self._write(_Push(jobs), committed=committed)

        # One write (one savepoint): a conflict undoes the whole push.
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> list[Pushed]:
            pushed: list[Pushed] = []
            taken: dict[str, Job] = {}
            for index, job in enumerate(jobs):
                key = job.idempotency_key
                earlier = None if key is None else taken.get(key)
                if key is not None and earlier is None:
                    row = conn.execute(sql.SELECT_KEY, (key,)).fetchone()
                    if row is not None and row[1] >= keys_since:
                        earlier = self._fetch(conn, row[0])
                if earlier is None:
                    self._insert(conn, changes, job)
                    pushed.append(Pushed(job))
                    if key is not None:
                        taken[key] = job
                elif not earlier.same_request(job):
                    raise IdempotencyConflict(index, key or "", earlier.id)
                else:
                    pushed.append(Pushed(earlier, replayed=True))
            return pushed

        return self._write(op)

    def get(self, job_id: int) -> Deferred[Job]:
        return self._read(lambda conn: self._fetch_or_fail(conn, job_id))

    def list_jobs(self, query: ListQuery) -> Deferred[JobPage]:
        # A regexp that is a plain string lets SQLite skip, in C and without
        # the GIL, the rows that cannot match; the regexp still decides.
        statement, args = sql.list_statement(query, "GLOB", glob_prefilter)

        def call(conn: sqlite3.Connection) -> JobPage:
            if query.filters_text:
                # The trigram index and chunked scans (hq/store/sqlitesearch.py);
                # None: a regexp its analysis is not sure of, read row by row.
                page = search_page(conn, query)
                if page is not None:
                    return page
            cursor = conn.execute(statement, args)
            try:
                return sql.page_of(query, cursor)
            finally:
                cursor.close()

        return self._read(call, scan=query.filters_text or query.limit is None)

    def start(self, job_id: int, now: int, known: Job | None = None) -> Deferred[Job | None]:
        # One UPDATE, not a read, a Job built twice and a REPLACE (which rewrites
        # every index): this runs once per delivery, on the writer thread. With
        # ``known`` it returns only the attempt count (the whole row costs
        # ~30 µs more to return and turn into a Job).
        # Committed without waiting for the disk, before the other writes of
        # its batch, so the job is posted without waiting for an fsync: a
        # power cut may lose the mark (a killed process does not), and
        # recovery then finds the job waiting instead of running; either way
        # it is delivered again (at-least-once), only the interrupted attempt
        # is not counted.
        if known is not None and known.id == job_id:
            return self._write(_Start(known, now), durable=False)

        def op(conn: sqlite3.Connection, changes: list[_Change]) -> Job | None:
            rows = conn.execute(sql.START, (now, job_id)).fetchall()
            if not rows:
                return None
            changes.append((JobState.WAITING, JobState.RUNNING, 1))
            return sql.row_job(rows[0])

        return self._write(op, durable=False)

    def finish(
        self,
        job_id: int,
        outcome: Outcome,
        attempt: Attempt | None = None,
        callback_id: int | None = None,
        known: Job | None = None,
    ) -> Deferred[Job | None]:
        values = sql.finish_values(job_id, outcome)
        running = sql.known_running(job_id, known)

        def op(conn: sqlite3.Connection, changes: list[_Change]) -> Job | None:
            # Almost always running; the state is in the WHERE clause so that the
            # counters learn the state before the change without a read. A
            # known running job is not read back (~30 µs less per delivery).
            for state in (JobState.RUNNING, JobState.WAITING):
                if running is not None and state is JobState.RUNNING:
                    done = conn.execute(sql.FINISH_KNOWN, (*values, int(state))).rowcount
                    rows = [running.finished(outcome)] if done else []
                else:
                    rows = [
                        sql.row_job(row) for row in conn.execute(sql.FINISH, (*values, int(state)))
                    ]
                if rows:
                    changes.append((state, JobState.FINISHED, 1))
                    if attempt is not None:
                        conn.execute(sql.INSERT_ATTEMPT, sql.attempt_row(attempt))
                    finished = rows[0]
                    callback = sql.callback_of(finished, outcome, callback_id)
                    if callback is None:
                        return finished
                    # In the finish's savepoint and commit: both or neither.
                    self._insert(conn, changes, callback)
                    conn.execute(sql.SET_CALLBACK_JOB, (callback.id, job_id))
                    return attrs.evolve(finished, callback_job_id=callback.id)
            return None

        grouped = sql.groupable_finish(job_id, outcome, callback_id, known)
        if grouped is not None:
            return self._write(_Finish(grouped, outcome, values, attempt, op))
        return self._write(op)

    def retry(self, job_id: int, at: int, last: Outcome, attempt: Attempt) -> Deferred[Job | None]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> Job | None:
            job = self._fetch(conn, job_id)
            if job is None or job.state is not JobState.RUNNING:
                return None
            conn.execute(sql.INSERT_ATTEMPT, sql.attempt_row(attempt))
            return self._save(conn, changes, job, job.retried(at, last))

        return self._write(op)

    def attempts(self, job_id: int) -> Deferred[list[Attempt]]:
        def call(conn: sqlite3.Connection) -> list[Attempt]:
            self._fetch_or_fail(conn, job_id)
            return [sql.row_attempt(row) for row in conn.execute(sql.SELECT_ATTEMPTS, (job_id,))]

        return self._read(call)

    def stop(self, job_id: int, now: int) -> Deferred[Job]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> Job:
            job = self._fetch_or_fail(conn, job_id)
            return self._save(conn, changes, job, job.stopped(now))

        return self._write(op)

    def restart(self, job_id: int) -> Deferred[Job]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> Job:
            job = self._fetch_or_fail(conn, job_id)
            job.check_settled()
            conn.execute(sql.DELETE_ATTEMPTS, (job_id,))
            return self._save(conn, changes, job, job.reset())

        return self._write(op)

    def delete(self, job_id: int) -> Deferred[None]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> None:
            job = self._fetch_or_fail(conn, job_id)
            job.check_settled()
            self._delete_rows(conn, [job_id])
            changes.append((job.state, None, 1))

        return self._write(op)

    def waiting_jobs(self, after: DueKey, now: int, limit: int) -> Deferred[list[Job]]:
        due, job_id = after

        def call(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(sql.WAITING, (due, due, job_id, now, limit)).fetchall()
            return [sql.row_job(row) for row in rows]

        return self._read(call)

    def waiting_jobs_of(
        self, flow_key: str, after: DueKey, now: int, limit: int
    ) -> Deferred[list[Job]]:
        due, job_id = after

        def call(conn: sqlite3.Connection) -> list[Job]:
            args = (flow_key, due, due, job_id, now, limit)
            return [sql.row_job(row) for row in conn.execute(sql.WAITING_OF, args).fetchall()]

        return self._read(call)

    def next_due(self, now: int) -> Deferred[int | None]:
        def call(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(sql.NEXT_DUE, (now,)).fetchone()
            return None if row is None else cast(int, row[0])

        return self._read(call)

    @staticmethod
    def _delete_rows(conn: sqlite3.Connection, ids: list[int]) -> None:
        if not ids:
            return
        # max_id() is the greater of the greatest row and meta's max_id: keep
        # the greatest id deleted there, so it is never issued again.
        conn.execute(sql.RAISE_MAX_ID, (str(max(ids)),))
        rows = [(job_id,) for job_id in ids]
        conn.executemany("DELETE FROM jobs WHERE id = ?", rows)
        conn.executemany(sql.DELETE_ATTEMPTS, rows)
        conn.executemany(sql.DELETE_KEYS, rows)

    def delete_finished_before(self, cutoff: int, limit: int) -> Deferred[int]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> int:
            ids = [row[0] for row in conn.execute(sql.EXPIRED, (cutoff, limit))]
            self._delete_rows(conn, ids)
            changes.append((JobState.FINISHED, None, len(ids)))
            return len(ids)

        return self._write(op)

    def counts(self, since_id: int, now: int) -> Deferred[StoreCounts]:
        # Read the counters here, on the reactor thread that moves them.
        stored, waiting, running = (
            self.file.counts.stored,
            self.file.counts.waiting,
            self.file.counts.running,
        )

        def call(conn: sqlite3.Connection) -> StoreCounts:
            (created,) = conn.execute(
                "SELECT count(*) FROM jobs WHERE id >= ?", (since_id,)
            ).fetchone()
            # Waiting jobs are due now or scheduled: count the side that is
            # small (usually the due one), not a million scheduled rows.
            (due,) = conn.execute(sql.COUNT_DUE_CAPPED, (now, COUNT_CAP + 1)).fetchone()
            if due <= COUNT_CAP:
                scheduled = max(0, waiting - due)
            else:
                (scheduled,) = conn.execute(sql.COUNT_SCHEDULED, (now,)).fetchone()
            return StoreCounts(
                stored=stored,
                waiting=waiting,
                running=running,
                created_since=created,
                scheduled=scheduled,
            )

        return self._read(call)

    def search_backlog(self) -> Deferred[int]:
        """
        Fire with how many job changes wait to be moved into the search index
        (the writer moves them while it has no writes to do; see
        ``SEARCH_INDEX_STEP`` in :mod:`hq.store.sqlitefile`).
        """

        def call(conn: sqlite3.Connection) -> int:
            return cast(
                int,
                conn.execute(
                    "SELECT (SELECT count(*) FROM jobs_search_new)"
                    " + (SELECT count(*) FROM jobs_search_gone)"
                ).fetchone()[0],
            )

        return self._read(call)

    def probe_write(self) -> Deferred[None]:
        # A real change (one row of ``meta``) so that the commit writes and syncs
        # a page: an empty transaction would succeed on a full or failed disk.
        self._probes += 1
        value = str(self._probes)

        def op(conn: sqlite3.Connection, changes: list[_Change]) -> None:
            conn.execute("REPLACE INTO meta (key, value) VALUES ('health_probe', ?)", (value,))

        return self._write(op)

    # Flow control (SPEC §16).

    def flow_limits(self) -> Deferred[list[FlowLimits]]:
        return self._read(
            lambda conn: [sql.row_flow(row) for row in conn.execute(sql.SELECT_FLOWS)]
        )

    def put_flow(self, limits: FlowLimits) -> Deferred[None]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> None:
            conn.execute(sql.PUT_FLOW, sql.flow_row(limits))

        return self._write(op)

    def delete_flow(self, flow_key: str) -> Deferred[bool]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> bool:
            return bool(conn.execute(sql.DELETE_FLOW, (flow_key,)).fetchall())

        return self._write(op)

    def flow_counts(self) -> Deferred[dict[str, FlowCounts]]:
        return self._read(lambda conn: sql.flow_counts(conn.execute(sql.FLOW_COUNTS)))

    # IScheduleStore.

    def add_schedule(self, schedule: Schedule) -> Deferred[None]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> None:
            conn.execute(sql.INSERT_SCHEDULE, sql.schedule_row(schedule))

        return self._write(op)

    def get_schedule(self, schedule_id: int) -> Deferred[Schedule]:
        def call(conn: sqlite3.Connection) -> Schedule:
            row = conn.execute(sql.SELECT_ONE_SCHEDULE, (schedule_id,)).fetchone()
            if row is None:
                raise ScheduleNotFound(schedule_id)
            return sql.row_schedule(row)

        return self._read(call)

    def list_schedules(self) -> Deferred[list[Schedule]]:
        return self._read(
            lambda conn: [sql.row_schedule(row) for row in conn.execute(sql.ALL_SCHEDULES)]
        )

    def delete_schedule(self, schedule_id: int) -> Deferred[None]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> None:
            if not conn.execute(sql.DELETE_SCHEDULE, (schedule_id,)).fetchall():
                raise ScheduleNotFound(schedule_id)

        return self._write(op)

    def pause_schedule(self, schedule_id: int) -> Deferred[Schedule]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> Schedule:
            rows = conn.execute(sql.PAUSE_SCHEDULE, (schedule_id,)).fetchall()
            if not rows:
                raise ScheduleNotFound(schedule_id)
            return sql.row_schedule(rows[0])

        return self._write(op)

    def resume_schedule(self, schedule_id: int, next_run_at: int | None) -> Deferred[Schedule]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> Schedule:
            rows = conn.execute(sql.RESUME_SCHEDULE, (next_run_at, schedule_id)).fetchall()
            if not rows:
                rows = conn.execute(sql.SELECT_ONE_SCHEDULE, (schedule_id,)).fetchall()
            if not rows:
                raise ScheduleNotFound(schedule_id)
            return sql.row_schedule(rows[0])

        return self._write(op)

    def due_schedules(self, now: int, limit: int) -> Deferred[list[Schedule]]:
        def call(conn: sqlite3.Connection) -> list[Schedule]:
            rows = conn.execute(sql.DUE_SCHEDULES, (now, limit)).fetchall()
            return [sql.row_schedule(row) for row in rows]

        return self._read(call)

    def next_fire_at(self) -> Deferred[int | None]:
        def call(conn: sqlite3.Connection) -> int | None:
            return cast("int | None", conn.execute(sql.NEXT_FIRE).fetchone()[0])

        return self._read(call)

    def fire(
        self, schedule_id: int, fire_at: int, job: Job, next_run_at: int | None
    ) -> Deferred[Job | None]:
        def op(conn: sqlite3.Connection, changes: list[_Change]) -> Job | None:
            advanced = conn.execute(
                sql.ADVANCE_SCHEDULE, (next_run_at, fire_at, job.id, schedule_id, fire_at)
            ).fetchall()
            if not advanced:
                return None
            if conn.execute(sql.FIRED, (schedule_id, fire_at)).fetchone() is not None:
                # Cannot happen while each fire is one transaction; if it did,
                # the schedule still moves on rather than trying for ever.
                return None
            self._insert(conn, changes, job)
            conn.execute(sql.MARK_FIRE, (fire_at, job.id))
            return job

        return self._write(op)


class _Start(GroupedOp):
    """
    Mark a waiting job the caller has running (``SQLiteStore.start`` with
    ``known``): nothing is read back when its attempt count is the one the
    caller has (:data:`sql.START_KNOWN`); the starts of one batch run as one
    statement.
    """

    def __init__(self, job: Job, now: int) -> None:
        self.job = job
        self.now = now

    def __call__(self, conn: sqlite3.Connection, changes: list[_Change]) -> Job | None:
        job = self.job
        if conn.execute(sql.START_KNOWN, (self.now, job.id, job.attempts)).rowcount:
            return self._started(job.attempts + 1, changes)
        # No longer waiting, or its attempts are not those the caller has.
        rows = conn.execute(sql.START_ATTEMPTS, (self.now, job.id)).fetchall()
        return self._started(rows[0][0] if rows else None, changes)

    def _started(self, attempts: int | None, changes: list[_Change]) -> Job | None:
        if attempts is None:
            return None
        changes.append((JobState.WAITING, JobState.RUNNING, 1))
        return self.job.marked_running(self.now, attempts)

    @classmethod
    def run_group(cls, conn: sqlite3.Connection, ops: list[Any]) -> list[tuple[Any, list[_Change]]]:
        if len({op.job.id for op in ops}) < len(ops):
            return _one_by_one(conn, ops)
        for chunk in sql.chunks(ops):
            args = [value for op in chunk for value in (op.job.id, op.now, op.job.attempts)]
            _all_changed(conn.execute(sql.start_many(len(chunk)), args), chunk)
        results: list[tuple[Any, list[_Change]]] = []
        for op in ops:
            changes: list[_Change] = []
            results.append((op._started(op.job.attempts + 1, changes), changes))
        return results


class _Finish(GroupedOp):
    """
    Record the outcome of a running job the caller has, that pushes no
    callback (``SQLiteStore.finish`` with ``known``): the finishes of one
    batch run as one statement, their attempts as another. Run by itself,
    it is ``alone``: the whole finish, which also handles a job found no
    longer running.
    """

    def __init__(
        self,
        job: Job,
        outcome: Outcome,
        values: tuple[Any, ...],
        attempt: Attempt | None,
        alone: Callable[[sqlite3.Connection, list[_Change]], Job | None],
    ) -> None:
        self.job = job
        self.outcome = outcome
        self.values = values
        self.attempt = attempt
        self.alone = alone
        # The output is written twice: in the job and in its attempt.
        self.size = 2 * (len(outcome.output) + len(outcome.err))

    def __call__(self, conn: sqlite3.Connection, changes: list[_Change]) -> Job | None:
        return self.alone(conn, changes)

    @classmethod
    def run_group(cls, conn: sqlite3.Connection, ops: list[Any]) -> list[tuple[Any, list[_Change]]]:
        if len({op.job.id for op in ops}) < len(ops):
            return _one_by_one(conn, ops)
        for chunk in sql.chunks(ops):
            # values: status ... output_truncated, then the id (sql.FINISH's order).
            args = [value for op in chunk for value in (op.values[-1], *op.values[:-1])]
            _all_changed(conn.execute(sql.finish_many(len(chunk)), args), chunk)
        attempts = [op.attempt for op in ops if op.attempt is not None]
        for chunk in sql.chunks(attempts):
            args = [value for attempt in chunk for value in sql.attempt_row(attempt)]
            conn.execute(sql.insert_attempts_many(len(chunk)), args)
        return [
            (op.job.finished(op.outcome), [(JobState.RUNNING, JobState.FINISHED, 1)]) for op in ops
        ]


class GroupMismatch(Exception):
    """
    A grouped statement changed fewer rows than it had writes: a job was no
    longer in the state its write expected (stopped or deleted meanwhile).
    The writer then runs the batch again write by write, where each write
    finds out alone (``_Writer._run_groups`` and ``_Writer._begin`` in
    :mod:`hq.store.sqlitefile`).
    """


def _all_changed(cursor: sqlite3.Cursor, ops: list[Any]) -> None:
    # Counting the rows changed, rather than returning them, saves a step of
    # the statement per row (see sql.START_KNOWN).
    if cursor.rowcount != len(ops):
        raise GroupMismatch(f"{cursor.rowcount} of {len(ops)} rows changed")


class _Push(GroupedOp):
    """
    Store new jobs without idempotency keys (``SQLiteStore.push``): a few
    hundred rows per ``INSERT``, the pushes of one batch together. A job
    whose id exists fails the statement; the batch then runs again write by
    write, and only that push fails (:class:`JobExists`).
    """

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.rows = len(jobs)
        self.size = sum(len(job.payload or "") for job in jobs)

    def __call__(self, conn: sqlite3.Connection, changes: list[_Change]) -> list[Pushed]:
        _insert_jobs(conn, self.jobs)
        changes.extend(_created(self.jobs))
        return [Pushed(job) for job in self.jobs]

    @classmethod
    def run_group(cls, conn: sqlite3.Connection, ops: list[Any]) -> list[tuple[Any, list[_Change]]]:
        _insert_jobs(conn, [job for op in ops for job in op.jobs])
        return [([Pushed(job) for job in op.jobs], _created(op.jobs)) for op in ops]


def _created(jobs: list[Job]) -> list[_Change]:
    """
    Return the changes of the counts that storing ``jobs`` makes: one per
    state (a batch's 10,000 jobs are one change, not 10,000).
    """
    return [(None, state, count) for state, count in Counter(job.state for job in jobs).items()]


def _insert_jobs(conn: sqlite3.Connection, jobs: list[Job]) -> None:
    if len(jobs) == 1:
        conn.execute(sql.INSERT, sql.job_row(jobs[0]))
        return
    for chunk in sql.chunks(jobs):
        conn.execute(sql.insert_many(len(chunk)), [v for job in chunk for v in sql.job_row(job)])


def _one_by_one(conn: sqlite3.Connection, ops: list[Any]) -> list[tuple[Any, list[_Change]]]:
    results: list[tuple[Any, list[_Change]]] = []
    for op in ops:
        changes: list[_Change] = []
        results.append((op(conn, changes), changes))
    return results
