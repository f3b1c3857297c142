"""
The PostgreSQL job store (SPEC §13, phase one): the whole store contract on a
PostgreSQL database named by a ``postgresql://`` URL.

- Every write runs on one writer thread with its own connection. The writer
  takes all the writes that are queued and sends them in one pipeline between
  its own ``BEGIN`` and ``COMMIT`` (one wait for the server), so one commit
  and one WAL flush serve many jobs; each Deferred fires on the reactor thread
  after that commit. When a write fails, the batch is rolled back and run
  again with each write in a savepoint, so that it fails alone. The writes
  asked for in one reactor turn reach the writer together.
- Reads run on a small pool of reader threads, each with its own connection in
  autocommit mode; listings that may read every row (a regexp filter, no
  limit) run on their own thread through a server-side cursor.
- Nothing blocks the reactor thread, and nothing waits long: connections have
  a connect timeout, statements a statement timeout, the socket keepalives and
  a TCP user timeout. When PostgreSQL is down, writes and reads fail at once
  with :class:`StoreUnavailable`; the next write or read after it is back
  connects again by itself.
- The schema is created or upgraded at open under a transaction-level advisory
  lock, so that servers starting together do it once; ``meta.schema_version``
  says which version the database has.
- The counters of ``/stats`` are ``count(*)`` queries over partial indexes,
  right whichever server changed the jobs.
- Row changes that read, decide in :mod:`hq.model`, then write (stop, restart,
  delete, retry, recover) lock the row first (``SELECT ... FOR UPDATE``), so
  another connection cannot change it in between.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import attrs
import psycopg
from psycopg import conninfo
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from hq import __version__
from hq.model import Attempt, FlowLimits, Job, JobPage, JobState, ListQuery, Outcome, Schedule
from hq.store import (
    ClaimCaps,
    Claimed,
    DueKey,
    FlowCounts,
    IClaimingStore,
    IdempotencyConflict,
    IJobStore,
    IScheduleStore,
    JobExists,
    JobNotFound,
    Node,
    NodeInUse,
    Pushed,
    Recovery,
    ScheduleNotFound,
    StoreCounts,
    StoreError,
    StoreUnavailable,
    pgflow,
    sql,
)
from hq.store.sql import like_prefilter
from hq.store.writer import BATCH, BatchWriter

T = TypeVar("T")

#: The schema version this code writes (``meta.schema_version``). Each version
#: is one entry of ``_SCHEMA``; an older database is upgraded at open, in one
#: transaction. Never edit a released entry: add a version. Version 1 holds
#: the tables of SQLite's schema version 3. A step is a statement or a
#: function of the connection.
SCHEMA_VERSION = 4

#: Key of the session advisory lock on the database ("HQ" 2): the one-server
#: release of HQ took it exclusively; cluster nodes share it (:meth:`PostgresStore.lock`),
#: so the two never run on one database together.
SERVER_LOCK = 0x4851_0002
#: Key of the advisory lock held while the schema is checked or changed ("HQ" 1).
SCHEMA_LOCK = 0x4851_0001

_SCHEMA: list[list[str | Callable[[psycopg.Connection[Any]], None]]] = [
    # Version 1: the tables of the SQLite store's version 3.
    [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """
        CREATE TABLE jobs (
            id BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            comment TEXT NOT NULL,
            url TEXT NOT NULL,
            payload TEXT,
            headers TEXT,
            timeout INTEGER NOT NULL,
            state INTEGER NOT NULL,
            status TEXT NOT NULL,
            started_at BIGINT,
            finished_at BIGINT,
            success INTEGER NOT NULL,
            failure INTEGER NOT NULL,
            canceled INTEGER NOT NULL,
            status_code INTEGER,
            err TEXT NOT NULL,
            output TEXT NOT NULL,
            output_truncated INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            run_after BIGINT NOT NULL,
            retries INTEGER NOT NULL DEFAULT 0,
            idempotency_key TEXT
        )
        """,
        "CREATE INDEX jobs_status ON jobs (status, id)",
        "CREATE INDEX jobs_due ON jobs (run_after, id) WHERE state = 0",
        "CREATE INDEX jobs_running ON jobs (id) WHERE state = 1",
        "CREATE INDEX jobs_expiry ON jobs (finished_at) WHERE state = 2",
        """
        CREATE TABLE attempts (
            job_id BIGINT NOT NULL,
            attempt INTEGER NOT NULL,
            started_at BIGINT,
            finished_at BIGINT NOT NULL,
            status_code INTEGER,
            err TEXT NOT NULL,
            output TEXT NOT NULL,
            PRIMARY KEY (job_id, attempt)
        )
        """,
        """
        CREATE TABLE idempotency_keys (
            key TEXT PRIMARY KEY,
            job_id BIGINT NOT NULL,
            created_at BIGINT NOT NULL
        )
        """,
        "CREATE INDEX idempotency_keys_job ON idempotency_keys (job_id)",
    ],
    # Version 2: the cluster (SPEC §13): who runs a job and until when, the
    # nodes, and the leader leases of once-per-cluster work.
    [
        "ALTER TABLE jobs ADD COLUMN node INTEGER",
        "ALTER TABLE jobs ADD COLUMN lease_until BIGINT",
        "CREATE INDEX jobs_leases ON jobs (lease_until) WHERE state = 1",
        """
        CREATE TABLE nodes (
            server_id INTEGER PRIMARY KEY,
            address TEXT NOT NULL,
            started_at BIGINT NOT NULL,
            heartbeat_at BIGINT NOT NULL
        )
        """,
        """
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder INTEGER NOT NULL,
            until BIGINT NOT NULL
        )
        """,
    ],
    # Version 3: schedules (SPEC §14), as the SQLite store's version 4.
    [
        "ALTER TABLE jobs ADD COLUMN schedule_id BIGINT",
        "ALTER TABLE jobs ADD COLUMN fire_at BIGINT",
        "CREATE UNIQUE INDEX jobs_fires ON jobs (schedule_id, fire_at) WHERE fire_at IS NOT NULL",
        """
        CREATE TABLE schedules (
            id BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            cron TEXT NOT NULL,
            timezone TEXT NOT NULL,
            job TEXT NOT NULL,
            paused INTEGER NOT NULL,
            next_run_at BIGINT,
            last_run_at BIGINT,
            last_job_id BIGINT
        )
        """,
        "CREATE INDEX schedules_due ON schedules (next_run_at) WHERE paused = 0",
    ],
    # Version 4: flow control and callbacks (SPEC §16), as the SQLite store's
    # version 5, plus the recent starts of rated keys, shared by the nodes.
    [
        "ALTER TABLE jobs ADD COLUMN flow_key TEXT",
        "ALTER TABLE jobs ADD COLUMN callback_url TEXT",
        "ALTER TABLE jobs ADD COLUMN failure_callback_url TEXT",
        "ALTER TABLE jobs ADD COLUMN callback_job_id BIGINT",
        pgflow.fill_flow_keys,
        "CREATE INDEX jobs_flow ON jobs (flow_key, run_after, id) WHERE state = 0",
        """
        CREATE TABLE flows (
            key TEXT PRIMARY KEY,
            parallelism INTEGER NOT NULL,
            rate INTEGER NOT NULL,
            period DOUBLE PRECISION NOT NULL,
            paused INTEGER NOT NULL
        )
        """,
        "CREATE TABLE flow_starts (flow_key TEXT NOT NULL, at BIGINT NOT NULL)",
        "CREATE INDEX flow_starts_key ON flow_starts (flow_key, at)",
    ],
]

#: Seconds after a failed connection during which writes fail at once, without
#: trying again (a server that does not answer costs one connect timeout, not
#: one per write).
_DOWN_SECONDS = 0.5
#: Seconds a connection may be idle before a batch checks it is alive first.
_PROBE_AFTER = 1.0
#: How often a transaction that PostgreSQL rolled back (deadlock, serialization
#: failure) is run again before its writes fail.
_ROLLBACK_RETRIES = 3
#: What PostgreSQL raises when it rolled a transaction back, nothing written:
#: psycopg's classes for the SQLSTATEs 40000, 40001 and 40P01 (the last two
#: are not subclasses of the first).
_ROLLED_BACK = (
    psycopg.errors.TransactionRollback,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)
#: SQLSTATE classes that mean the database, not the request, is at fault:
#: connection, invalid transaction state (read-only standby), resources,
#: operator intervention (shutdown, cancel), system errors.
_UNAVAILABLE_CLASSES = ("08", "25", "53", "57", "58", "XX")

# Statements of this engine only, with psycopg's ``%s`` placeholders.
_P = sql.placeholders
_INSERT = _P(sql.INSERT)
_UPDATE = _P(sql.UPDATE)
_SELECT_ONE = _P(f"{sql.SELECT} WHERE id = ?")
_LOCK_ONE = _P(f"{sql.SELECT} WHERE id = ? FOR UPDATE")
_RAISE_MAX_ID = _P(sql.RAISE_MAX_ID)
#: ``sql.FINISH``, but a running job only by the node holding it (the last
#: ``%s``): a node whose lease ran out and was claimed again by another node
#: does not finish the other node's delivery.
_FINISH = _P(
    sql.FINISH.replace(
        "WHERE id = ? AND state = ?",
        "WHERE id = ? AND state = ? AND (state <> 1 OR node IS NULL OR node = ?)",
    )
)
_WAITING = _P(sql.WAITING)
_WAITING_OF = _P(sql.WAITING_OF)
_SET_CALLBACK_JOB = _P(sql.SET_CALLBACK_JOB)
_NEXT_DUE = _P(sql.NEXT_DUE)
_INSERT_ATTEMPT = _P(sql.INSERT_ATTEMPT)
_SELECT_ATTEMPTS = _P(sql.SELECT_ATTEMPTS)
_DELETE_ATTEMPTS = _P(sql.DELETE_ATTEMPTS)
_SELECT_KEY = _P(sql.SELECT_KEY)
_TAKE_KEY = _P(sql.TAKE_KEY)
_CLAIM_KEY = _P(sql.CLAIM_KEY)
_EXPIRED = _P(sql.EXPIRED)
#: The database's clock in ms: leases and heartbeats are compared across
#: nodes, so they are all read on one clock, not on each node's.
_DB_NOW = "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)"
#: ``sql.START``, also taking the lease for this node (node, lease ms).
_START = (
    "UPDATE jobs SET state = 1, status = 'running', started_at = %s, attempts = attempts + 1,"
    f" node = %s, lease_until = {_DB_NOW} + %s"
    f" WHERE id = %s AND state = 0 AND canceled = 0 RETURNING {sql.COLUMNS}"
)
#: Claim up to n due jobs for a node, in due-time then id order, skipping the
#: rows another node is claiming (started_at, node, lease ms, now, n).
_CLAIM = (
    "UPDATE jobs SET state = 1, status = 'running', started_at = %s, attempts = attempts + 1,"
    f" node = %s, lease_until = {_DB_NOW} + %s"
    " WHERE id IN (SELECT id FROM jobs WHERE state = 0 AND canceled = 0 AND run_after <= %s"
    " ORDER BY run_after, id LIMIT %s FOR UPDATE SKIP LOCKED)"
    f" RETURNING {sql.COLUMNS}"
)
#: :data:`_CLAIM` when no key has a limit (nor is paused): ``pgflow.ANY_LIMITS``
#: is false. Otherwise it claims nothing and the claim goes through pgflow.
_CLAIM_UNLESS_LIMITS = _CLAIM.replace(
    " ORDER BY run_after, id LIMIT %s FOR UPDATE SKIP LOCKED)",
    " AND NOT EXISTS (SELECT 1 FROM flows WHERE parallelism > 0 OR rate > 0 OR paused <> 0)"
    " ORDER BY run_after, id LIMIT %s FOR UPDATE SKIP LOCKED)",
)
#: Renew the leases of a node's running jobs in one statement (lease ms, ids,
#: node); returns the ids, and whether a stop was asked for each.
_RENEW = (
    f"UPDATE jobs SET lease_until = {_DB_NOW} + %s"
    " WHERE id = ANY(%s) AND state = 1 AND node = %s RETURNING id, canceled"
)
#: Running jobs whose lease ran out (or that never had one), locked; those
#: another node is reaping are skipped.
_EXPIRED_LEASES = (
    f"{sql.SELECT} WHERE state = 1 AND (lease_until IS NULL OR lease_until < {_DB_NOW})"
    " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)
#: At start: the running jobs of this server_id's last run, or with no live lease.
_RECOVERABLE = (
    f"{sql.SELECT} WHERE state = 1 AND (node = %s OR node IS NULL OR lease_until IS NULL"
    f" OR lease_until < {_DB_NOW}) FOR UPDATE SKIP LOCKED"
)
#: Register a node unless a node with its server_id has a heartbeat younger
#: than the lease (server_id, address, started_at, lease ms).
_REGISTER = (
    "INSERT INTO nodes (server_id, address, started_at, heartbeat_at)"
    f" VALUES (%s, %s, %s, {_DB_NOW}) ON CONFLICT (server_id) DO UPDATE SET"
    " address = excluded.address, started_at = excluded.started_at,"
    " heartbeat_at = excluded.heartbeat_at"
    f" WHERE nodes.heartbeat_at < {_DB_NOW} - %s RETURNING server_id"
)
_HEARTBEAT = (
    f"UPDATE nodes SET heartbeat_at = {_DB_NOW} WHERE server_id = %s AND started_at = %s"
    " RETURNING server_id"
)
_NODES = (
    f"SELECT server_id, address, started_at, heartbeat_at, {_DB_NOW} FROM nodes"
    f" WHERE heartbeat_at >= {_DB_NOW} - %s ORDER BY server_id"
)
#: Take or keep a leader lease (name, holder, ms); a row back: this node leads.
_LEAD = (
    f"INSERT INTO leases (name, holder, until) VALUES (%s, %s, {_DB_NOW} + %s)"
    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until"
    f" WHERE leases.holder = excluded.holder OR leases.until < {_DB_NOW} RETURNING holder"
)
#: Channels of the notifications between nodes (see :class:`hq.cluster.NotifyListener`).
PUSH_CHANNEL = "hq_push"
STOP_CHANNEL = "hq_stop"
_MAX_ID = (
    "SELECT greatest(coalesce((SELECT max(id) FROM jobs), 0),"
    " coalesce((SELECT CAST(value AS BIGINT) FROM meta WHERE key = 'max_id'), 0))"
)
_COUNTS = (
    "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM jobs WHERE state = 0),"
    " (SELECT count(*) FROM jobs WHERE state = 1), (SELECT count(*) FROM jobs WHERE id >= %s),"
    " (SELECT count(*) FROM jobs WHERE state = 0 AND run_after > %s)"
)
_PUT_META = (
    "INSERT INTO meta (key, value) VALUES (%s, %s)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def _text(value: Any) -> Any:
    # PostgreSQL text cannot hold NUL; SQLite's can. A NUL a worker sent in its
    # output (or a client in a comment) is stored as U+FFFD, not refused.
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def _values(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_text(value) for value in row)


def safe_url(url: str) -> str:
    """
    Return the database URL ``url`` without its password, for messages.
    """
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return parts._replace(netloc=f"{user}:***@{netloc}").geturl()
    except ValueError:
        return "the PostgreSQL URL"


def _unavailable(error: BaseException, conn: psycopg.Connection[Any] | None) -> bool:
    if not isinstance(error, psycopg.Error):
        return False
    if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
        return True
    if conn is not None and conn.broken:
        return True
    state = error.sqlstate or ""
    return state[:2] in _UNAVAILABLE_CLASSES


_Op = Callable[[psycopg.Connection[Any]], Any]
_Batch = list[tuple[_Op, "Deferred[Any]"]]
_Results = list[tuple["Deferred[Any]", Any]]

#: The start and end of a batch's transaction, sent in its pipeline by the
#: writer itself (:meth:`_Writer._transaction`).
_BEGIN = b"BEGIN"
_COMMIT = b"COMMIT"

#: The finishes of one batch and their attempts in one statement (the
#: columns of :data:`sql.FINISH_KNOWN`, an array each; the node holding them;
#: the columns of :data:`sql.INSERT_ATTEMPT`, an array each; the number of
#: finishes, twice). Nothing is read back, and the batch's ``COMMIT`` follows
#: in the same pipeline: when it changes fewer jobs than it has finishes (a
#: job no longer running here), the statement fails in the server, with a
#: message that says so, and the ``COMMIT`` is not run. Each statement costs
#: the writer thread a wait on the socket and the interpreter lock after it.
_FINISH_MANY = (
    "WITH f AS (UPDATE jobs SET state = 2, status = v.status, finished_at = v.finished_at,"
    " success = v.success, failure = v.failure, canceled = v.canceled,"
    " status_code = v.status_code, err = v.err, output = v.output,"
    " output_truncated = v.output_truncated"
    " FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::integer[], %s::integer[],"
    " %s::integer[], %s::integer[], %s::text[], %s::text[], %s::integer[])"
    " AS v(id, status, finished_at, success, failure, canceled, status_code, err, output,"
    " output_truncated)"
    " WHERE jobs.id = v.id AND jobs.state = 1 AND (jobs.node IS NULL OR jobs.node = %s)"
    " RETURNING 1),"
    " a AS ("
    + sql.INSERT_ATTEMPT.replace(
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        " SELECT * FROM unnest(%s::bigint[], %s::integer[], %s::bigint[], %s::bigint[],"
        " %s::integer[], %s::text[], %s::text[])",
    )
    + ")"
    " SELECT CAST(CASE WHEN count(*) = %s THEN '0'"
    " ELSE 'a grouped finish changed ' || count(*) || ' rows of ' || %s END AS integer) FROM f"
)
#: New jobs, the highest id and the notifications of the pushes of one batch
#: in one statement (the jobs' rows flat; the highest id; the payloads of the
#: notifications on :data:`PUSH_CHANNEL`, an array).
_PUSH_MANY = (
    "WITH j AS ({insert}),"
    " m AS ("
    + sql.RAISE_MAX_ID.replace("?", "%s")
    + f") SELECT pg_notify('{PUSH_CHANNEL}', due) FROM unnest(%s::text[]) AS n(due)"
)


class _Late:
    """
    A write the writer runs after the other writes of its batch: a claim,
    which then sees the outcomes recorded in the same transaction (a job
    just finished no longer counts against its flow key's limits).
    """

    def __init__(self, op: _Op) -> None:
        self.op = op

    def __call__(self, conn: psycopg.Connection[Any]) -> Any:
        return self.op(conn)


def _next_due(cursor: psycopg.Cursor[Any]) -> int | None:
    """
    Return the due time ``cursor`` (of :data:`_NEXT_DUE`) found, ``None`` for none.
    """
    row = cursor.fetchone()
    return None if row is None else int(row[0])


def _late_last(batch: _Batch) -> _Batch:
    """
    Return ``batch`` with its :class:`_Late` writes after the others (the
    writes of a batch were asked for concurrently: any order is one of theirs).
    """
    late = [item for item in batch if isinstance(item[0], _Late)]
    if not late:
        return batch
    return [item for item in batch if not isinstance(item[0], _Late)] + late


class _AfterCommit:
    """
    What a write answers when its result is read only once its batch is
    committed: its statements then cost the batch's pipeline no round trip
    of their own (a result read inside the pipeline makes it wait for the
    server there). ``read(conn)`` makes the result, on the writer thread,
    the transaction committed.
    """

    def __init__(self, read: Callable[[psycopg.Connection[Any]], Any]) -> None:
        self.read = read


#: What a plain claim reads when a key has flow limits: it claimed nothing,
#: and the claim within the limits follows (:meth:`PostgresStore.claim`).
_LIMITED = object()


class _Mismatch(Exception):
    """
    A group of writes that cannot run as one statement (one job twice); the
    writer runs the batch again write by write, where each finds out alone.
    """


class _Grouped:
    """
    A write of the delivery path that the writer runs with the others of its
    kind in a batch (:meth:`run_group`): one statement for them all, read
    nothing back, so that the batch's pipeline needs no round trip to the
    server for them. Called alone (``op(conn)``), it is the whole write, as
    when a batch runs write by write.
    """

    #: The whole write, run by itself.
    alone: _Op

    def __call__(self, conn: psycopg.Connection[Any]) -> Any:
        return self.alone(conn)

    @classmethod
    def run_group(cls, conn: psycopg.Connection[Any], ops: list[Any], server_id: int) -> list[Any]:
        """
        Queue the statements of ``ops`` on ``conn`` (in a pipeline); return
        their results. A statement fails (in the server) when a write of the
        group could not be done as asked.
        """
        raise NotImplementedError


@functools.lru_cache(maxsize=64)
def _push_many(rows: int) -> str:
    """
    Return :data:`_PUSH_MANY` for ``rows`` jobs with PostgreSQL's own
    placeholders (``$1``...), for a :class:`psycopg.RawCursor`: psycopg
    parses a query with ``%s`` placeholders again at every call when it has
    over 50 parameters, which cost more than the rest of the push.
    """
    parts = _PUSH_MANY.format(insert=_P(sql.insert_many(rows))).split("%s")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))


def _due_payloads(jobs: list[Job]) -> list[str]:
    """
    Return the payloads on :data:`PUSH_CHANNEL` that tell the nodes of new
    ``jobs``: ``""`` when one is due now, the earliest later due time (ms).
    """
    later = [job.run_at for job in jobs if job.run_at is not None]
    payloads = [""] if len(later) < len(jobs) else []
    if later:
        payloads.append(str(min(later)))
    return payloads


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """
    Return ``rows`` as ``width`` columns (the arrays of an ``unnest``), NULs in text replaced.
    """
    return [[_text(row[index]) for row in rows] for index in range(width)]


class _Finish(_Grouped):
    """
    Record the outcome of a running job the caller has, that pushes no
    callback: the finishes of a batch are one ``UPDATE`` and their attempts
    one ``INSERT``, and the finished job is made here rather than read back.
    """

    def __init__(
        self,
        job: Job,
        outcome: Outcome,
        values: tuple[Any, ...],
        attempt: Attempt | None,
        alone: _Op,
    ) -> None:
        self.job = job
        self.outcome = outcome
        self.values = values
        self.attempt = attempt
        self.alone = alone

    @classmethod
    def run_group(cls, conn: psycopg.Connection[Any], ops: list[Any], server_id: int) -> list[Any]:
        if len({op.job.id for op in ops}) < len(ops):
            raise _Mismatch("a job finished twice in one batch")
        for chunk in sql.chunks(ops):
            # values: status ... output_truncated, then the id (sql.FINISH's order).
            rows = [(op.values[-1], *op.values[:-1]) for op in chunk]
            attempts = [sql.attempt_row(op.attempt) for op in chunk if op.attempt is not None]
            count = len(chunk)
            args = (*_columns(rows, 10), server_id, *_columns(attempts, 7), count, count)
            conn.execute(_FINISH_MANY, args)
        return [op.job.finished(op.outcome) for op in ops]


class _Push(_Grouped):
    """
    Store new jobs without idempotency keys: the pushes of a batch are one
    statement per :data:`sql.GROUP_ROWS` jobs (:data:`_PUSH_MANY`: the rows, the
    raise of the highest id, the notifications to the nodes).
    """

    def __init__(self, jobs: list[Job], alone: _Op) -> None:
        self.jobs = jobs
        self.alone = alone

    @classmethod
    def run_group(cls, conn: psycopg.Connection[Any], ops: list[Any], server_id: int) -> list[Any]:
        jobs = [job for op in ops for job in op.jobs]
        for chunk in sql.chunks(jobs):
            rows = [_text(value) for job in chunk for value in sql.job_row(job)]
            args = (*rows, str(max(job.id for job in chunk)), _due_payloads(chunk))
            psycopg.RawCursor(conn).execute(cast(Any, _push_many(len(chunk))), args)
        return [[Pushed(job) for job in op.jobs] for op in ops]


class _Writer(BatchWriter[_Op]):
    """
    The PostgreSQL writer: a batch in one pipelined transaction, with a
    savepoint per write only when a write of the batch failed.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        reactor: Any,
        deliver: Callable[[_Results], None],
        on_commit: Callable[[float, int, bool], None] | None,
        server_id: int = 0,
    ) -> None:
        super().__init__("hq-postgres-writer", reactor, deliver, on_commit)
        #: The node's ``server_id``: a grouped finish changes only its jobs.
        self.server_id = server_id
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._down_until = 0.0
        #: When the connection last ran a batch (monotonic seconds).
        self._used_at = 0.0
        #: The server process of the connection (the last one): the
        #: notifications it sends at commit are this node's own.
        self.backend_pid: int | None = None

    def run_batch(self, batch: _Batch) -> list[Any]:
        return self._run_batch(batch)

    def finish(self) -> None:
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: S110 - a broken connection may fail to close; it is gone
                pass
            self._conn = None

    def _run_batch(self, batch: _Batch) -> _Results:
        rollbacks = 0
        retried_stale = False
        while True:
            if self._conn is None and time.monotonic() < self._down_until:
                return self._all_failed(batch, "PostgreSQL is unreachable")
            fresh = self._conn is None
            try:
                if self._conn is None:
                    self._conn = self._connect()
                    self.backend_pid = self._conn.info.backend_pid
            except psycopg.Error as e:
                self._down_until = time.monotonic() + _DOWN_SECONDS
                return self._all_failed(batch, str(e))
            try:
                if not fresh and time.monotonic() - self._used_at > _PROBE_AFTER:
                    # A connection idle since the server restarted fails here,
                    # before a write is sent (below, a broken connection may
                    # have committed: it is not tried again).
                    self._conn.execute("SELECT 1")
                results = self._transaction(self._conn, batch)
                self._used_at = time.monotonic()
                return results
            except _Ambiguous as e:
                self._drop()
                return self._all_failed(batch, f"the commit's outcome is unknown: {e}")
            except _ROLLED_BACK:
                # Deadlock or serialization failure: nothing was written.
                self._rollback()
                rollbacks += 1
                if rollbacks <= _ROLLBACK_RETRIES:
                    continue
                return self._all_failed(batch, "transaction rolled back repeatedly")
            except psycopg.Error as e:
                broken = self._conn is not None and self._conn.broken
                self._drop()
                # A connection idle since the server restarted fails at its
                # first statement (the probe), and nothing was committed: go
                # again once.
                if broken and not fresh and not retried_stale:
                    retried_stale = True
                    continue
                self._down_until = time.monotonic() + _DOWN_SECONDS
                return self._all_failed(batch, str(e))

    def _rollback(self) -> None:
        try:
            if self._conn is not None:
                self._conn.rollback()
        except psycopg.Error:
            self._drop()

    @staticmethod
    def _all_failed(batch: _Batch, why: str) -> _Results:
        failure = Failure(StoreUnavailable(f"storage unavailable: {why}"))
        return [(d, failure) for _, d in batch]

    def _transaction(self, conn: psycopg.Connection[Any], batch: _Batch) -> _Results:
        batch = _late_last(batch)
        # First try: BEGIN, every write and the COMMIT in one pipeline, without
        # savepoints (no round trip for a statement whose result is not read,
        # no subtransactions), the grouped writes of one kind together. A
        # statement that fails makes the server skip the rest, COMMIT included.
        # The connection is in autocommit mode and the pipeline says BEGIN and
        # COMMIT itself: psycopg's own BEGIN and ``commit()`` would each sync
        # the pipeline, and its exit syncs again, three waits for the server
        # (each with the interpreter lock taken back after it) where this one
        # pipeline has one, at its exit.
        try:
            with conn.pipeline():
                conn.execute(_BEGIN)
                results = self._run_pipelined(conn, batch)
                conn.execute(_COMMIT)
        except _ROLLED_BACK:
            raise  # deadlock or serialization failure: nothing was written
        except Exception as e:
            if conn.broken:
                # The COMMIT may have run before the connection went.
                raise _Ambiguous(str(e)) from e
            if _unavailable(e, conn):
                raise  # the server refused a statement: nothing was written
        else:
            # Committed: what fails from here fails one write, not the batch.
            return self._read_after_commit(conn, results)
        # One write failed, but which one a pipeline does not say, nor what it
        # half did: undo them all and run them one by one.
        conn.rollback()
        conn.execute(_BEGIN)
        results = self._one_by_one(conn, batch)
        try:
            conn.commit()
        except _ROLLED_BACK:
            raise
        except psycopg.Error as e:
            raise _Ambiguous(str(e)) from e
        return self._read_after_commit(conn, results)

    @staticmethod
    def _read_after_commit(conn: psycopg.Connection[Any], results: _Results) -> _Results:
        """
        Return ``results`` with each :class:`_AfterCommit` read (a failure of
        one fails that write alone: the batch is committed).
        """
        read: _Results = []
        for d, value in results:
            if isinstance(value, _AfterCommit):
                try:
                    value = value.read(conn)
                except Exception:
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        try:
                            conn.rollback()
                        except psycopg.Error:
                            pass
                    value = Failure()
            read.append((d, value))
        return read

    def _run_pipelined(self, conn: psycopg.Connection[Any], batch: _Batch) -> _Results:
        """
        Run ``batch`` on ``conn`` in its pipeline, in order, but each kind of
        :class:`_Grouped` writes together where the first of them is (the
        writes of a batch were asked for concurrently, so that is one of
        their orders). Return the results in ``batch``'s order.
        """
        kinds: dict[type[_Grouped], list[int]] = {}
        for index, (op, _) in enumerate(batch):
            if isinstance(op, _Grouped):
                kinds.setdefault(type(op), []).append(index)
        values: list[Any] = [None] * len(batch)
        for index, (op, _) in enumerate(batch):
            if not isinstance(op, _Grouped):
                values[index] = op(conn)
                continue
            indexes = kinds[type(op)]
            if indexes[0] != index:
                continue  # run with the first of its kind
            group = type(op).run_group(conn, [batch[at][0] for at in indexes], self.server_id)
            for at, value in zip(indexes, group, strict=True):
                values[at] = value
        return [(d, value) for (_, d), value in zip(batch, values, strict=True)]

    @staticmethod
    def _one_by_one(conn: psycopg.Connection[Any], batch: _Batch) -> _Results:
        results: _Results = []
        for op, d in batch:
            # Each write in its own savepoint: one that fails half-way is
            # undone alone, and the others in the batch still commit.
            conn.execute("SAVEPOINT op")
            try:
                result = op(conn)
            except Exception as e:
                if _unavailable(e, conn):
                    raise
                conn.execute("ROLLBACK TO SAVEPOINT op")
                if isinstance(e, psycopg.IntegrityError):
                    results.append((d, Failure(JobExists("a job with this id exists"))))
                else:
                    results.append((d, Failure()))
            else:
                conn.execute("RELEASE SAVEPOINT op")
                results.append((d, result))
        return results


class _Ambiguous(Exception):
    """
    The connection failed during COMMIT: the writes may or may not be stored.
    """


@implementer(IJobStore, IClaimingStore, IScheduleStore)
class PostgresStore:
    """
    Jobs in a PostgreSQL database: the operations of the job, schedule and
    cluster contracts (claims, leases, nodes), one short method each. Next
    clean-up: move the connections and threads out, as :mod:`hq.store.sqlitefile`
    does for SQLite.

    :param url: ``postgresql://user[:password]@host[:port]/database[?param=value]``
        (libpq's parameters, e.g. ``sslmode``, are honoured).
    :param reactor: provides ``callFromThread``, ``callLater`` and thread pools.
    :param readers: the size of the reader pool.
    :param on_commit: told of every transaction on the writer thread, with its
        duration in seconds, the number of writes and whether it committed.
    :param connect_timeout: seconds to wait for a connection (libpq's minimum is 2).
    :param statement_timeout: seconds one statement may take (or wait for a
        lock) before it is canceled and its call fails with :class:`StoreUnavailable`.
    :param server_id: this node's ``server_id``: whose leases its claims take.
    :param lease_timeout: seconds a claim on a running job lasts unrenewed.

    Parameters in the URL (``connect_timeout``, ``application_name``...) win
    over these defaults; its ``options`` are kept, with the timeouts added.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        reactor: Any,
        readers: int = 2,
        on_commit: Callable[[float, int, bool], None] | None = None,
        connect_timeout: int = 3,
        statement_timeout: float = 30.0,
        server_id: int = 0,
        lease_timeout: float = 30.0,
    ) -> None:
        self._url = url
        self.server_id = server_id
        self.lease_timeout = lease_timeout
        self._lease_ms = int(lease_timeout * 1000)
        #: When this node registered (ms), None before :meth:`register`.
        self._started_at: int | None = None
        self._reactor = reactor
        self._readers = readers
        self._on_commit = on_commit
        #: The connection that holds this server's lock on the database (:meth:`lock`).
        self._lock_conn: psycopg.Connection[Any] | None = None
        # HQ's timeouts, unless the URL sets its own; ``options`` are added to.
        given = conninfo.conninfo_to_dict(url)
        timeout_ms = int(statement_timeout * 1000)
        options = (
            f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
            f" -c idle_in_transaction_session_timeout={timeout_ms * 2}"
        )
        self._params: dict[str, Any] = {
            "connect_timeout": connect_timeout,
            "application_name": "hq",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            # Data unacknowledged by a vanished host fails the call after 10 s,
            # not after the kernel's retransmissions (minutes).
            "tcp_user_timeout": min(timeout_ms, 10_000),
            **given,
            "options": f"{given.get('options') or ''} {options}".strip(),
        }
        self._writer: _Writer | None = None
        self._pool: ThreadPool | None = None
        self._scan_pool: ThreadPool | None = None
        self._local = threading.local()
        self._reader_conns: list[psycopg.Connection[Any]] = []
        self._conns_lock = threading.Lock()
        self._probes = 0

    @property
    def where(self) -> str:
        """
        The database URL without its password, for messages.
        """
        return safe_url(self._url)

    def writer_pid(self) -> int | None:
        """
        Return the PostgreSQL server process of this store's writer
        connection (the last one), which sends this node's notifications:
        :class:`hq.cluster.NotifyListener` skips this node's own pushes, which
        its delivery was told of already. ``None`` before it connected.
        """
        writer = self._writer
        return None if writer is None else writer.backend_pid

    def connect(self, autocommit: bool = True) -> psycopg.Connection[Any]:
        """
        Return a new connection to the database with HQ's timeouts (blocking:
        call it off the reactor thread).

        :raises psycopg.OperationalError: when the database cannot be reached.
        """
        return psycopg.connect(autocommit=autocommit, **self._params)

    # Opening and closing.

    def lock(self) -> None:
        """
        Share the database with the other nodes of the cluster: a shared
        session advisory lock, held on a connection of its own until
        :meth:`close`. The one-server release of HQ took this lock
        exclusively, so neither starts while the other runs on the database
        (it would deliver every job and recover the cluster's running ones).

        :raises StoreError: when such a server holds it, or the database
            cannot be reached.
        """
        if self._lock_conn is not None:
            return
        try:
            conn = self.connect(autocommit=True)
        except psycopg.Error as e:
            raise StoreError(f"cannot open the PostgreSQL store {self.where}: {e}") from None
        row = conn.execute("SELECT pg_try_advisory_lock_shared(%s)", (SERVER_LOCK,)).fetchone()
        if row != (True,):
            conn.close()
            raise StoreError(
                f"an HQ server of a release without clustering is using the PostgreSQL store "
                f"{self.where}; stop it (or upgrade it) before starting cluster nodes"
            )
        self._lock_conn = conn

    def _migrate(self, conn: psycopg.Connection[Any]) -> tuple[int, int, int, int]:
        # Runs as the first write, in its transaction, under a lock held until
        # the commit: servers starting together create the schema once.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        version = 0
        if conn.execute("SELECT to_regclass('meta')").fetchone() != (None,):
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            row = conn.execute("SELECT value FROM meta WHERE key = 'last_opened_by'").fetchone()
            by = f" ({row[0]})" if row else ""
            raise StoreError(
                f"{self.where} has schema version {version}, written by a newer HQ{by}; "
                f"this HQ ({__version__}) knows schema versions up to {SCHEMA_VERSION} and will "
                "not downgrade it: run the newer HQ"
            )
        try:
            for steps in _SCHEMA[version:]:
                for step in steps:
                    if isinstance(step, str):
                        conn.execute(cast(Any, step))
                    else:
                        step(conn)
            opened_by = f"HQ {__version__}"
            if version == 0:
                conn.execute(_PUT_META, ("created_by", opened_by))
            conn.execute(_PUT_META, ("schema_version", str(SCHEMA_VERSION)))
            conn.execute(_PUT_META, ("last_opened_by", opened_by))
        except psycopg.Error as e:
            if _unavailable(e, conn):
                raise
            raise StoreError(
                f"cannot upgrade {self.where} from schema version {version} to "
                f"{SCHEMA_VERSION}: {e}; the database is unchanged"
            ) from None
        row = conn.execute(_COUNTS, (0, 0)).fetchone()
        assert row is not None
        return row[0], row[1], row[2], version

    def migrate_schema(self, conn: psycopg.Connection[Any]) -> int:
        """
        Create or upgrade the schema on ``conn``, in its open transaction and
        under the schema lock (blocking: for commands, such as ``hq migrate
        --from-sqlite``, that want it in their own transaction). Return the
        schema version the database had.

        :raises StoreError: when the schema is newer or cannot be upgraded.
        """
        return self._migrate(conn)[3]

    def open(self) -> Deferred[None]:
        self._writer = _Writer(
            # Autocommit: the writer says BEGIN and COMMIT itself (_transaction).
            lambda: self.connect(autocommit=True),
            self._reactor,
            self._deliver,
            self._on_commit,
            self.server_id,
        )
        self._writer.start()
        self._pool = ThreadPool(minthreads=1, maxthreads=self._readers, name="hq-postgres-read")
        self._pool.start()
        self._scan_pool = ThreadPool(minthreads=0, maxthreads=1, name="hq-postgres-scan")
        self._scan_pool.start()

        def failed(reason: Failure) -> Deferred[None]:
            if reason.check(StoreUnavailable):
                reason = Failure(
                    StoreUnavailable(
                        f"cannot open the PostgreSQL store {self.where}: {reason.getErrorMessage()}"
                    )
                )
            return self.close().addCallback(lambda _: reason)  # type: ignore[return-value]

        def opened(counts: tuple[int, int, int, int]) -> None:
            if 0 < counts[3] < SCHEMA_VERSION:
                self.log.info(
                    "Upgraded {where} from schema version {old} to {new}",
                    where=self.where,
                    old=counts[3],
                    new=SCHEMA_VERSION,
                )
            self.log.info(
                "Opened {where}: {stored} jobs stored, {waiting} waiting, {running} running",
                where=self.where,
                stored=counts[0],
                waiting=counts[1],
                running=counts[2],
            )

        d = self._write(self._migrate)
        self._flush()
        return d.addCallbacks(opened, failed)

    def close(self) -> Deferred[None]:
        self._flush()
        lock_conn, self._lock_conn = self._lock_conn, None
        if lock_conn is not None:
            lock_conn.close()
        writer, pools = self._writer, [self._pool, self._scan_pool]
        self._writer = self._pool = self._scan_pool = None
        if writer is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        with self._conns_lock:
            conns = list(self._reader_conns)
            self._reader_conns.clear()

        def wait() -> None:
            # Off the reactor thread: cancelling queries and joining threads block.
            for conn in conns:
                try:
                    conn.cancel_safe(timeout=1)
                except Exception:  # noqa: S110 - the query ends anyway with its connection
                    pass
            for pool in pools:
                if pool is not None:
                    pool.stop()
            for conn in conns:
                conn.close()
            writer.stop()
            writer.join()
            self._reactor.callFromThread(done.callback, None)

        threading.Thread(target=wait, name="hq-postgres-close", daemon=True).start()
        return done

    # Plumbing.

    @staticmethod
    def _deliver(results: _Results) -> None:
        for d, result in results:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def _write(self, op: _Op) -> Deferred[Any]:
        if self._writer is None:
            return fail(StoreUnavailable("storage unavailable: the store is closed"))
        return self._writer.write(op)

    def _flush(self) -> None:
        """
        Hand the writes of this reactor turn to the writer thread now.
        """
        if self._writer is not None:
            self._writer.flush()

    def _reader(self, fresh: bool) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and (fresh or conn.closed):
            self._forget(conn)
            conn = None
        if conn is None:
            conn = self._local.conn = self.connect()
            with self._conns_lock:
                self._reader_conns.append(conn)
        return conn

    def _forget(self, conn: psycopg.Connection[Any]) -> None:
        self._local.conn = None
        with self._conns_lock:
            if conn in self._reader_conns:
                self._reader_conns.remove(conn)
        try:
            conn.close()
        except Exception:  # noqa: S110 - a broken connection may fail to close; it is gone
            pass

    def _read(
        self, call: Callable[[psycopg.Connection[Any]], T], scan: bool = False
    ) -> Deferred[T]:
        pool = self._scan_pool if scan else self._pool
        if pool is None:
            return fail(StoreUnavailable("storage unavailable: the store is closed"))

        def run() -> T:
            fresh = getattr(self._local, "conn", None) is None
            for again in (False, True):
                try:
                    conn = self._reader(fresh=again)
                except psycopg.Error as e:
                    raise StoreUnavailable(f"storage unavailable: {e}") from None
                try:
                    return call(conn)
                except psycopg.Error as e:
                    if not _unavailable(e, conn):
                        raise
                    self._forget(conn)
                    # A connection idle since the server restarted: once more
                    # on a new one (reads change nothing).
                    if again or fresh:
                        raise StoreUnavailable(f"storage unavailable: {e}") from None
            raise AssertionError("unreachable")

        return deferToThreadPool(self._reactor, pool, run)

    # Writer-side helpers (run on the writer thread).

    @staticmethod
    def _fetch(conn: psycopg.Connection[Any], job_id: int, lock: bool = False) -> Job | None:
        row = conn.execute(_LOCK_ONE if lock else _SELECT_ONE, (job_id,)).fetchone()
        return None if row is None else sql.row_job(row)

    @classmethod
    def _fetch_or_fail(cls, conn: psycopg.Connection[Any], job_id: int, lock: bool = False) -> Job:
        job = cls._fetch(conn, job_id, lock)
        if job is None:
            raise JobNotFound(job_id)
        return job

    @staticmethod
    def _save(conn: psycopg.Connection[Any], job: Job) -> Job:
        conn.execute(_UPDATE, _values(sql.update_args(job)))
        return job

    @staticmethod
    def _insert(conn: psycopg.Connection[Any], job: Job, take_key: bool = True) -> None:
        conn.execute(_INSERT, _values(sql.job_row(job)))
        conn.execute(_RAISE_MAX_ID, (str(job.id),))
        if take_key and job.idempotency_key is not None:
            conn.execute(_TAKE_KEY, (_text(job.idempotency_key), job.id, job.created_at))

    # IJobStore.

    def recover(self, now: int) -> Deferred[Recovery]:
        # Only the jobs of this server_id's last run (no live node has it: see
        # register) and those whose lease expired: never a live node's jobs.
        def op(conn: psycopg.Connection[Any]) -> Recovery:
            rows = conn.execute(_RECOVERABLE, (self.server_id,)).fetchall()
            return self._give_back(conn, rows, now)

        return self._write(op)

    def _give_back(self, conn: psycopg.Connection[Any], rows: list[Any], now: int) -> Recovery:
        """
        Make the running jobs of ``rows`` (locked) waiting again, with their
        attempt recorded interrupted, or finished ``canceled`` if a stop was asked.
        """
        requeued = canceled = 0
        for row in rows:
            job = sql.row_job(row)
            recovered = self._save(conn, job.recovered(now))
            if recovered.waiting:
                interrupted = Attempt.interrupted(job, now)
                conn.execute(_INSERT_ATTEMPT, _values(sql.attempt_row(interrupted)))
                requeued += 1
            else:
                canceled += 1
        if requeued:
            self._notify_due(conn, None)
        return Recovery(requeued=requeued, canceled=canceled)

    @staticmethod
    def _notify_due(conn: psycopg.Connection[Any], due: int | None) -> None:
        """
        Tell the nodes (at commit) that jobs are waiting, due at ``due`` (ms)
        or now (``None``). Notifications alike in one transaction are sent
        once, so a batch of due pushes costs one.
        """
        conn.execute("SELECT pg_notify(%s, %s)", (PUSH_CHANNEL, "" if due is None else str(due)))

    @staticmethod
    def _notify_jobs(conn: psycopg.Connection[Any], jobs: list[Job]) -> None:
        for payload in _due_payloads(jobs):
            conn.execute("SELECT pg_notify(%s, %s)", (PUSH_CHANNEL, payload))

    # IClaimingStore.

    def claim(self, now: int, limit: int, caps: ClaimCaps | None = None) -> Deferred[list[Job]]:
        # Under flow limits (or this node's caps): hq.store.pgflow.
        args = (now, self.server_id, self._lease_ms, now, limit)

        def limited(conn: psycopg.Connection[Any]) -> Claimed:
            jobs = pgflow.claim_limited(conn, now, limit, caps, self.server_id, self._lease_ms)
            if jobs is None:
                jobs = Claimed(sql.jobs_in_due_order(conn.execute(_CLAIM, args).fetchall()))
            jobs.due_read, jobs.next_due = True, _next_due(conn.execute(_NEXT_DUE, (now,)))
            return jobs

        def op(conn: psycopg.Connection[Any]) -> Claimed | _AfterCommit:
            if not pgflow.plain(caps):
                return limited(conn)
            # Whether any key has limits, the plain claim unless one has, and
            # the next due time of the jobs left waiting, read once the batch
            # is committed (no round trip of their own; the feed would ask
            # for the due time after a short claim). Each statement has its
            # own snapshot: jobs claimed are the plain claim's.
            limits = conn.execute(pgflow.ANY_LIMITS)
            claimed = conn.execute(_CLAIM_UNLESS_LIMITS, args)
            due = conn.execute(_NEXT_DUE, (now,))

            def read(conn: psycopg.Connection[Any]) -> Claimed | object:
                rows = claimed.fetchall()
                found = limits.fetchone()
                if rows or not (found and found[0]):
                    jobs = sql.jobs_in_due_order(rows)
                    return Claimed(jobs, due_read=True, next_due=_next_due(due))
                return _LIMITED

            return _AfterCommit(read)

        def then(jobs: Any) -> Any:
            # A key has limits: claim within them, as a write of its own (run
            # again by the writer, as any write, when PostgreSQL rolled it back).
            return self._write(_Late(limited)) if jobs is _LIMITED else jobs

        if limit <= 0:
            return succeed([])
        return self._write(_Late(op)).addCallback(then)

    def renew(self, job_ids: list[int]) -> Deferred[list[int]]:
        started_at = self._started_at

        def op(conn: psycopg.Connection[Any]) -> list[int]:
            if started_at is not None:
                alive = conn.execute(_HEARTBEAT, (self.server_id, started_at)).fetchone()
                if alive is None:
                    self._reactor.callFromThread(
                        self.log.error,
                        "This node's registration (server_id {serverID}) is gone or was taken "
                        "over by another node: is a second node running with this server_id?",
                        serverID=self.server_id,
                    )
            if not job_ids:
                return []
            rows = conn.execute(_RENEW, (self._lease_ms, job_ids, self.server_id)).fetchall()
            return [row[0] for row in rows if row[1]]

        return self._write(op)

    def reap(self, now: int) -> Deferred[Recovery]:
        def op(conn: psycopg.Connection[Any]) -> Recovery:
            rows = conn.execute(_EXPIRED_LEASES, (BATCH,)).fetchall()
            return self._give_back(conn, rows, now)

        return self._write(op)

    def register(self, address: str, now: int) -> Deferred[None]:
        def op(conn: psycopg.Connection[Any]) -> None:
            args = (self.server_id, address, now, self._lease_ms)
            if conn.execute(_REGISTER, args).fetchone() is not None:
                return
            row = conn.execute(
                f"SELECT address, {_DB_NOW} - heartbeat_at FROM nodes WHERE server_id = %s",
                (self.server_id,),
            ).fetchone()
            where, ago = (row[0], row[1] / 1000) if row else ("an unknown address", 0.0)
            raise NodeInUse(
                f"server_id {self.server_id} is in use by the live HQ node at {where} "
                f"(last heartbeat {ago:.1f} s ago) on {self.where}: give each node its own "
                f"server_id (a node that died is released after lease_timeout, "
                f"{self.lease_timeout:g} s)"
            )

        def registered(_: None) -> None:
            self._started_at = now

        return self._write(op).addCallback(registered)

    def unregister(self) -> Deferred[None]:
        started_at, self._started_at = self._started_at, None

        def op(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "DELETE FROM nodes WHERE server_id = %s AND started_at = %s",
                (self.server_id, started_at),
            )
            conn.execute("DELETE FROM leases WHERE holder = %s", (self.server_id,))

        if started_at is None:
            return succeed(None)
        return self._write(op)

    def nodes(self) -> Deferred[list[Node]]:
        def call(conn: psycopg.Connection[Any]) -> list[Node]:
            rows = conn.execute(_NODES, (self._lease_ms,)).fetchall()
            return [Node(row[0], row[1], row[2], row[3]) for row in rows]

        return self._read(call)

    def lead(self, name: str, seconds: float) -> Deferred[bool]:
        def op(conn: psycopg.Connection[Any]) -> bool:
            args = (name, self.server_id, int(seconds * 1000))
            return conn.execute(_LEAD, args).fetchone() is not None

        return self._write(op)

    def max_id(self) -> Deferred[int]:
        def call(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(_MAX_ID).fetchone()
            assert row is not None
            return int(row[0])

        return self._read(call)

    def create(self, job: Job) -> Deferred[None]:
        def op(conn: psycopg.Connection[Any]) -> None:
            self._insert(conn, job)
            self._notify_jobs(conn, [job])

        return self._write(op)

    def push(
        self,
        jobs: list[Job],
        keys_since: int,
        committed: Callable[[], None] | None = None,
    ) -> Deferred[list[Pushed]]:
        # ``committed`` is not called: the push fires once committed (see IJobStore).
        # One write (one savepoint): a conflict undoes the whole push.
        def op(conn: psycopg.Connection[Any]) -> list[Pushed]:
            pushed: list[Pushed] = []
            taken: dict[str, Job] = {}
            for index, job in enumerate(jobs):
                key = job.idempotency_key
                earlier = None if key is None else taken.get(key)
                if key is not None and earlier is None:
                    earlier = self._claim_key(conn, job, keys_since)
                if earlier is None:
                    self._insert(conn, job, take_key=False)
                    pushed.append(Pushed(job))
                    if key is not None:
                        taken[key] = job
                elif not earlier.same_request(job):
                    raise IdempotencyConflict(index, key or "", earlier.id)
                else:
                    pushed.append(Pushed(earlier, replayed=True))
            self._notify_jobs(conn, [each.job for each in pushed if not each.replayed])
            return pushed

        if all(job.idempotency_key is None for job in jobs):
            return self._write(_Push(jobs, op))
        return self._write(op)

    def _claim_key(self, conn: psycopg.Connection[Any], job: Job, keys_since: int) -> Job | None:
        """
        Take ``job``'s idempotency key for it, unless a job pushed since
        ``keys_since`` holds it: return that job then, ``None`` when taken.

        The claim is one ``INSERT ... ON CONFLICT``: a concurrent claim of the
        same key on another connection waits for this transaction, then sees
        the key held and replays, so concurrent pushes store one job.
        """
        key = _text(job.idempotency_key)
        claimed = conn.execute(_CLAIM_KEY, (key, job.id, job.created_at, keys_since)).fetchone()
        if claimed is not None:
            return None
        row = conn.execute(_SELECT_KEY, (key,)).fetchone()
        holder = None if row is None else self._fetch(conn, row[0])
        if holder is None:
            # The key names a job deleted without its key: take it over.
            conn.execute(_TAKE_KEY, (key, job.id, job.created_at))
        return holder

    def get(self, job_id: int) -> Deferred[Job]:
        return self._read(lambda conn: self._fetch_or_fail(conn, job_id))

    def list_jobs(self, query: ListQuery) -> Deferred[JobPage]:
        # A regexp that is a plain string lets PostgreSQL skip the rows that
        # cannot match; the regexp still decides.
        statement, args = sql.list_statement(query, "LIKE", like_prefilter)
        statement = sql.placeholders(statement)
        scan = query.filters_text or query.limit is None

        def call(conn: psycopg.Connection[Any]) -> JobPage:
            if not scan:
                return sql.page_of(query, conn.execute(cast(Any, statement), args).fetchall())
            # A server-side cursor: rows arrive as they are read, so a search
            # over a million jobs never holds them all in memory.
            with conn.transaction(), conn.cursor(name="hq_scan") as cursor:
                cursor.itersize = 256
                cursor.execute(cast(Any, statement), args)
                return sql.page_of(query, cursor)

        return self._read(call, scan=scan)

    def start(self, job_id: int, now: int, known: Job | None = None) -> Deferred[Job | None]:
        def op(conn: psycopg.Connection[Any]) -> Job | None:
            row = conn.execute(_START, (now, self.server_id, self._lease_ms, job_id)).fetchone()
            return None if row is None else sql.row_job(row)

        return self._write(op)

    def finish(
        self,
        job_id: int,
        outcome: Outcome,
        attempt: Attempt | None = None,
        callback_id: int | None = None,
        known: Job | None = None,
    ) -> Deferred[Job | None]:
        values = _values(sql.finish_values(job_id, outcome))

        def op(conn: psycopg.Connection[Any]) -> Job | None:
            for state in (JobState.RUNNING, JobState.WAITING):
                row = conn.execute(_FINISH, (*values, int(state), self.server_id)).fetchone()
                if row is not None:
                    if attempt is not None:
                        conn.execute(_INSERT_ATTEMPT, _values(sql.attempt_row(attempt)))
                    return self._push_callback(conn, sql.row_job(row), outcome, callback_id)
            return None

        # A known running job is not read back: the batch's pipeline then
        # needs no round trip to the server for it (see _Finish).
        running = sql.groupable_finish(job_id, outcome, callback_id, known)
        if running is not None:
            # The job made here must be the one stored: NULs as stored (_text).
            stored = outcome
            if values[6] is not outcome.err or values[7] is not outcome.output:
                stored = attrs.evolve(outcome, err=values[6], output=values[7])
            return self._write(_Finish(running, stored, values, attempt, op))
        return self._write(op)

    def _push_callback(
        self,
        conn: psycopg.Connection[Any],
        finished: Job,
        outcome: Outcome,
        callback_id: int | None,
    ) -> Job:
        """
        Store the callback job ``finished`` pushes, if any, in the finish's
        transaction, and tell the nodes; return ``finished`` as stored.
        """
        callback = sql.callback_of(finished, outcome, callback_id)
        if callback is None:
            return finished
        self._insert(conn, callback)
        conn.execute(_SET_CALLBACK_JOB, (callback.id, finished.id))
        self._notify_jobs(conn, [callback])
        return attrs.evolve(finished, callback_job_id=callback.id)

    def retry(self, job_id: int, at: int, last: Outcome, attempt: Attempt) -> Deferred[Job | None]:
        def op(conn: psycopg.Connection[Any]) -> Job | None:
            job = self._fetch(conn, job_id, lock=True)
            if job is None or job.state is not JobState.RUNNING:
                return None
            node = conn.execute("SELECT node FROM jobs WHERE id = %s", (job_id,)).fetchone()
            if node is not None and node[0] not in (None, self.server_id):
                return None  # Another node claimed it after this node's lease ran out.
            conn.execute(_INSERT_ATTEMPT, _values(sql.attempt_row(attempt)))
            retried = self._save(conn, job.retried(at, last))
            if retried.waiting:
                self._notify_due(conn, at)
            return retried

        return self._write(op)

    def attempts(self, job_id: int) -> Deferred[list[Attempt]]:
        def call(conn: psycopg.Connection[Any]) -> list[Attempt]:
            self._fetch_or_fail(conn, job_id)
            rows = conn.execute(_SELECT_ATTEMPTS, (job_id,)).fetchall()
            return [sql.row_attempt(row) for row in rows]

        return self._read(call)

    def stop(self, job_id: int, now: int) -> Deferred[Job]:
        def op(conn: psycopg.Connection[Any]) -> Job:
            job = self._fetch_or_fail(conn, job_id, lock=True)
            stopped = self._save(conn, job.stopped(now))
            if stopped.state is JobState.RUNNING:
                # The node running it aborts its request (the row is the truth).
                conn.execute("SELECT pg_notify(%s, %s)", (STOP_CHANNEL, str(job_id)))
            return stopped

        return self._write(op)

    def restart(self, job_id: int) -> Deferred[Job]:
        def op(conn: psycopg.Connection[Any]) -> Job:
            job = self._fetch_or_fail(conn, job_id, lock=True)
            job.check_settled()
            conn.execute(_DELETE_ATTEMPTS, (job_id,))
            self._notify_due(conn, None)
            return self._save(conn, job.reset())

        return self._write(op)

    def delete(self, job_id: int) -> Deferred[None]:
        def op(conn: psycopg.Connection[Any]) -> None:
            job = self._fetch_or_fail(conn, job_id, lock=True)
            job.check_settled()
            self._delete_rows(conn, [job_id])

        return self._write(op)

    def waiting_jobs(self, after: DueKey, now: int, limit: int) -> Deferred[list[Job]]:
        due, job_id = after

        def call(conn: psycopg.Connection[Any]) -> list[Job]:
            rows = conn.execute(_WAITING, (due, due, job_id, now, limit)).fetchall()
            return [sql.row_job(row) for row in rows]

        return self._read(call)

    def waiting_jobs_of(
        self, flow_key: str, after: DueKey, now: int, limit: int
    ) -> Deferred[list[Job]]:
        due, job_id = after

        def call(conn: psycopg.Connection[Any]) -> list[Job]:
            args = (_text(flow_key), due, due, job_id, now, limit)
            return [sql.row_job(row) for row in conn.execute(_WAITING_OF, args).fetchall()]

        return self._read(call)

    def next_due(self, now: int) -> Deferred[int | None]:
        return self._read(lambda conn: _next_due(conn.execute(_NEXT_DUE, (now,))))

    @staticmethod
    def _delete_rows(conn: psycopg.Connection[Any], ids: list[int]) -> None:
        if not ids:
            return
        conn.execute("DELETE FROM jobs WHERE id = ANY(%s)", (ids,))
        conn.execute("DELETE FROM attempts WHERE job_id = ANY(%s)", (ids,))
        conn.execute("DELETE FROM idempotency_keys WHERE job_id = ANY(%s)", (ids,))

    def delete_finished_before(self, cutoff: int, limit: int) -> Deferred[int]:
        def op(conn: psycopg.Connection[Any]) -> int:
            ids = [row[0] for row in conn.execute(_EXPIRED, (cutoff, limit))]
            self._delete_rows(conn, ids)
            return len(ids)

        return self._write(op)

    def counts(self, since_id: int, now: int) -> Deferred[StoreCounts]:
        def call(conn: psycopg.Connection[Any]) -> StoreCounts:
            row = conn.execute(_COUNTS, (since_id, now)).fetchone()
            assert row is not None
            return StoreCounts(
                stored=row[0],
                waiting=row[1],
                running=row[2],
                created_since=row[3],
                scheduled=row[4],
            )

        return self._read(call)

    def probe_write(self) -> Deferred[None]:
        # A real change, so that the commit writes and flushes WAL.
        self._probes += 1
        value = str(self._probes)

        def op(conn: psycopg.Connection[Any]) -> None:
            conn.execute(_PUT_META, ("health_probe", value))

        return self._write(op)

    # Flow control (SPEC §16).

    def flow_limits(self) -> Deferred[list[FlowLimits]]:
        def call(conn: psycopg.Connection[Any]) -> list[FlowLimits]:
            return [sql.row_flow(row) for row in conn.execute(sql.SELECT_FLOWS).fetchall()]

        return self._read(call)

    def put_flow(self, limits: FlowLimits) -> Deferred[None]:
        def op(conn: psycopg.Connection[Any]) -> None:
            conn.execute(_P(sql.PUT_FLOW), _values(sql.flow_row(limits)))

        return self._write(op)

    def delete_flow(self, flow_key: str) -> Deferred[bool]:
        def op(conn: psycopg.Connection[Any]) -> bool:
            return bool(conn.execute(_P(sql.DELETE_FLOW), (_text(flow_key),)).fetchall())

        return self._write(op)

    def flow_counts(self) -> Deferred[dict[str, FlowCounts]]:
        def call(conn: psycopg.Connection[Any]) -> dict[str, FlowCounts]:
            return sql.flow_counts(conn.execute(sql.FLOW_COUNTS).fetchall())

        return self._read(call)

    # IScheduleStore.

    def add_schedule(self, schedule: Schedule) -> Deferred[None]:
        def op(conn: psycopg.Connection[Any]) -> None:
            conn.execute(_P(sql.INSERT_SCHEDULE), _values(sql.schedule_row(schedule)))

        return self._write(op)

    def get_schedule(self, schedule_id: int) -> Deferred[Schedule]:
        def call(conn: psycopg.Connection[Any]) -> Schedule:
            row = conn.execute(_P(sql.SELECT_ONE_SCHEDULE), (schedule_id,)).fetchone()
            if row is None:
                raise ScheduleNotFound(schedule_id)
            return sql.row_schedule(row)

        return self._read(call)

    def list_schedules(self) -> Deferred[list[Schedule]]:
        def call(conn: psycopg.Connection[Any]) -> list[Schedule]:
            return [sql.row_schedule(row) for row in conn.execute(sql.ALL_SCHEDULES).fetchall()]

        return self._read(call)

    def delete_schedule(self, schedule_id: int) -> Deferred[None]:
        def op(conn: psycopg.Connection[Any]) -> None:
            if not conn.execute(_P(sql.DELETE_SCHEDULE), (schedule_id,)).fetchall():
                raise ScheduleNotFound(schedule_id)

        return self._write(op)

    def pause_schedule(self, schedule_id: int) -> Deferred[Schedule]:
        def op(conn: psycopg.Connection[Any]) -> Schedule:
            rows = conn.execute(_P(sql.PAUSE_SCHEDULE), (schedule_id,)).fetchall()
            if not rows:
                raise ScheduleNotFound(schedule_id)
            return sql.row_schedule(rows[0])

        return self._write(op)

    def resume_schedule(self, schedule_id: int, next_run_at: int | None) -> Deferred[Schedule]:
        def op(conn: psycopg.Connection[Any]) -> Schedule:
            rows = conn.execute(_P(sql.RESUME_SCHEDULE), (next_run_at, schedule_id)).fetchall()
            if not rows:
                rows = conn.execute(_P(sql.SELECT_ONE_SCHEDULE), (schedule_id,)).fetchall()
            if not rows:
                raise ScheduleNotFound(schedule_id)
            return sql.row_schedule(rows[0])

        return self._write(op)

    def due_schedules(self, now: int, limit: int) -> Deferred[list[Schedule]]:
        def call(conn: psycopg.Connection[Any]) -> list[Schedule]:
            rows = conn.execute(_P(sql.DUE_SCHEDULES), (now, limit)).fetchall()
            return [sql.row_schedule(row) for row in rows]

        return self._read(call)

    def next_fire_at(self) -> Deferred[int | None]:
        def call(conn: psycopg.Connection[Any]) -> int | None:
            row = conn.execute(sql.NEXT_FIRE).fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return self._read(call)

    def fire(
        self, schedule_id: int, fire_at: int, job: Job, next_run_at: int | None
    ) -> Deferred[Job | None]:
        # The conditional UPDATE takes the schedule's row lock: a fire of the
        # same time on another node waits for this transaction, then finds the
        # schedule moved on and stores nothing.
        def op(conn: psycopg.Connection[Any]) -> Job | None:
            advanced = conn.execute(
                _P(sql.ADVANCE_SCHEDULE), (next_run_at, fire_at, job.id, schedule_id, fire_at)
            ).fetchall()
            if not advanced:
                return None
            if conn.execute(_P(sql.FIRED), (schedule_id, fire_at)).fetchone() is not None:
                return None
            self._insert(conn, job)
            conn.execute(_P(sql.MARK_FIRE), (fire_at, job.id))
            return job

        return self._write(op)
