"""
The SQLite file under the job store: the lock, the schema and its upgrades,
the one writer thread and the reader threads.

- Writes go in batches: the writes asked for while the previous batch was
  committing run in one transaction, committed once, so one fsync serves many
  jobs; each Deferred fires (on the reactor thread) after that commit. Every
  commit runs on one writer thread, and so do the writes but for those of the
  delivery path (pushes, starts, finishes), whose statements the reactor
  thread runs itself in a transaction it hands over (``_Writer``).
- Reads run on a small pool of reader threads with their own connections; WAL
  lets them read while the writer writes.
- The counters for ``/stats`` live in memory, set at open and moved by each
  committed write, so ``/stats`` never counts a million rows.
- A lock file in ``data_dir`` keeps a second server off the same store.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Container
from typing import Any, TypeVar, cast

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from hq import __version__
from hq.model import JobState
from hq.store import JobExists, StoreError, StoreUnavailable, sql
from hq.store.writer import BATCH, BatchWriter

T = TypeVar("T")


#: The schema version this code writes; ``PRAGMA user_version`` of the file.
#: Each version is one entry of ``_SCHEMA``; a file of an older version is
#: upgraded in place at open, in one transaction. Never edit a released entry:
#: add a new version (tests/schema_v1.py keeps the first release's statements).
#: A step is an SQL statement, or a function of the connection for what SQL
#: alone cannot do (:func:`upgrade` runs both).
SCHEMA_VERSION = 6

DATABASE_FILE = "hq.sqlite3"
LOCK_FILE = "hq.lock"


def _fill_flow_keys(conn: sqlite3.Connection) -> None:
    # In batches through the state indexes: never the finished rows, and
    # never a million rows in memory at once.
    for batch in sql.flow_key_batches(
        lambda statement, args: conn.execute(statement, args).fetchall()
    ):
        conn.executemany("UPDATE jobs SET flow_key = ? WHERE id = ?", batch)


_SCHEMA: list[list[str | Callable[[sqlite3.Connection], None]]] = [
    # Version 1.
    [
        """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            comment TEXT NOT NULL,
            url TEXT NOT NULL,
            payload TEXT,
            headers TEXT,
            timeout INTEGER NOT NULL,
            state INTEGER NOT NULL,
            status TEXT NOT NULL,
            started_at INTEGER,
            finished_at INTEGER,
            success INTEGER NOT NULL,
            failure INTEGER NOT NULL,
            canceled INTEGER NOT NULL,
            status_code INTEGER,
            err TEXT NOT NULL,
            output TEXT NOT NULL,
            output_truncated INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            run_after INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX jobs_status ON jobs (status, id)",
        "CREATE INDEX jobs_waiting ON jobs (id) WHERE state = 0",
        "CREATE INDEX jobs_running ON jobs (id) WHERE state = 1",
        "CREATE INDEX jobs_expiry ON jobs (finished_at) WHERE state = 2",
    ],
    # Version 2: facts about the file for operators (the HQ version that created it and
    # the one that last opened it) and the row health checks write to.
    [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
    # Version 3: retries, due times, the attempt history, idempotency keys (SPEC §11).
    # ``run_after`` (there since version 1, always 0 until now) becomes the due
    # time, set for every job; the feed reads waiting jobs in (due time, id) order.
    [
        "ALTER TABLE jobs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN idempotency_key TEXT",
        "UPDATE jobs SET run_after = (id >> 22) + 1546300800000 WHERE state != 2",
        "DROP INDEX jobs_waiting",
        "CREATE INDEX jobs_due ON jobs (run_after, id) WHERE state = 0",
        """
        CREATE TABLE attempts (
            job_id INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            started_at INTEGER,
            finished_at INTEGER NOT NULL,
            status_code INTEGER,
            err TEXT NOT NULL,
            output TEXT NOT NULL,
            PRIMARY KEY (job_id, attempt)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE idempotency_keys (
            key TEXT PRIMARY KEY,
            job_id INTEGER NOT NULL,
            created_at INTEGER NOT NULL
        )
        """,
        "CREATE INDEX idempotency_keys_job ON idempotency_keys (job_id)",
    ],
    # Version 4: schedules (SPEC §14). A job a fire created carries its schedule
    # and fire time; (schedule_id, fire_at) is unique, so a fire is stored once.
    [
        "ALTER TABLE jobs ADD COLUMN schedule_id INTEGER",
        "ALTER TABLE jobs ADD COLUMN fire_at INTEGER",
        "CREATE UNIQUE INDEX jobs_fires ON jobs (schedule_id, fire_at) WHERE fire_at IS NOT NULL",
        """
        CREATE TABLE schedules (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            cron TEXT NOT NULL,
            timezone TEXT NOT NULL,
            job TEXT NOT NULL,
            paused INTEGER NOT NULL,
            next_run_at INTEGER,
            last_run_at INTEGER,
            last_job_id INTEGER
        )
        """,
        "CREATE INDEX schedules_due ON schedules (next_run_at) WHERE paused = 0",
    ],
    # Version 5: flow control and callbacks (SPEC §16). The waiting and running
    # jobs get their URL's flow key (finished ones keep NULL: read as the URL's);
    # a key's waiting jobs are read through ``jobs_flow`` in due order.
    [
        "ALTER TABLE jobs ADD COLUMN flow_key TEXT",
        "ALTER TABLE jobs ADD COLUMN callback_url TEXT",
        "ALTER TABLE jobs ADD COLUMN failure_callback_url TEXT",
        "ALTER TABLE jobs ADD COLUMN callback_job_id INTEGER",
        _fill_flow_keys,
        "CREATE INDEX jobs_flow ON jobs (flow_key, run_after, id) WHERE state = 0",
        """
        CREATE TABLE flows (
            key TEXT PRIMARY KEY,
            parallelism INTEGER NOT NULL,
            rate INTEGER NOT NULL,
            period REAL NOT NULL,
            paused INTEGER NOT NULL
        )
        """,
    ],
]

#: The search index step (``GET /job?term=``, hq/store/sqlitesearch.py): a
#: trigram index of each job's name, comment and url. Contentless and without
#: positions (``detail=none``): it answers "which rows hold all these
#: trigrams", the smallest index that can; the regexp decides.
#:
#: The index is not written by the write that changes a job: SQLite 3.40's FTS5
#: flushes its pending terms at every statement savepoint, which made each
#: indexed insert cost ~300 µs. Triggers only note what changed, in the same
#: transaction: ``jobs_search_new`` the ids to index, ``jobs_search_gone`` the
#: indexed values to take out (deleted or changed jobs, clean-up's included).
#: The writer thread moves them into the index when it has nothing else to do
#: (:meth:`SQLiteStore.index_some`), in batches; a search also reads the rows
#: still noted (:mod:`hq.store.sqlitesearch`). Upgrading notes every stored job,
#: so the upgrade itself is quick and the index fills after start-up.
#: Self-contained: it may run as any version after 4.
SEARCH_INDEX_STEP = [
    """
    CREATE VIRTUAL TABLE jobs_search USING fts5(
        name, comment, url, content='', columnsize=0, detail=none, tokenize='trigram'
    )
    """,
    "CREATE TABLE jobs_search_new (id INTEGER PRIMARY KEY)",
    """
    CREATE TABLE jobs_search_gone (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        comment TEXT NOT NULL,
        url TEXT NOT NULL
    )
    """,
    "INSERT INTO jobs_search_new (id) SELECT id FROM jobs",
    """
    CREATE TRIGGER jobs_search_insert AFTER INSERT ON jobs BEGIN
        INSERT OR IGNORE INTO jobs_search_new (id) VALUES (new.id);
    END
    """,
    # A job not indexed yet only leaves the list; an indexed one is taken out
    # later with the values it was indexed with (a contentless index needs them).
    """
    CREATE TRIGGER jobs_search_delete AFTER DELETE ON jobs BEGIN
        INSERT OR IGNORE INTO jobs_search_gone (id, name, comment, url)
        SELECT old.id, old.name, old.comment, old.url
        WHERE NOT EXISTS (SELECT 1 FROM jobs_search_new WHERE id = old.id);
        DELETE FROM jobs_search_new WHERE id = old.id;
    END
    """,
    """
    CREATE TRIGGER jobs_search_update AFTER UPDATE OF id, name, comment, url ON jobs
    WHEN old.id IS NOT new.id OR old.name IS NOT new.name OR old.comment IS NOT new.comment
        OR old.url IS NOT new.url
    BEGIN
        INSERT OR IGNORE INTO jobs_search_gone (id, name, comment, url)
        SELECT old.id, old.name, old.comment, old.url
        WHERE NOT EXISTS (SELECT 1 FROM jobs_search_new WHERE id = old.id);
        DELETE FROM jobs_search_new WHERE id = old.id;
        INSERT OR IGNORE INTO jobs_search_new (id) VALUES (new.id);
    END
    """,
]

#: Whether changes wait to be moved into the search index.
_SEARCH_PENDING = (
    "SELECT EXISTS (SELECT 1 FROM jobs_search_new) OR EXISTS (SELECT 1 FROM jobs_search_gone)"
)
#: Noted changes moved into the search index per transaction of the writer.
INDEX_BATCH = 1000
#: Seconds without writes before the writer moves noted changes into the
#: search index (sooner once INDEX_BATCH writes came since its last step).
INDEX_PAUSE = 0.05


def index_some(conn: sqlite3.Connection, limit: int = INDEX_BATCH) -> int:
    """
    Move up to ``limit`` noted changes into the search index (the caller's
    transaction); return how many. Removals go first: an id taken out and
    noted again must lose its old values before it gets its new ones.
    """
    row = conn.execute(
        "SELECT max(id), count(*) FROM (SELECT id FROM jobs_search_gone ORDER BY id LIMIT ?)",
        (limit,),
    ).fetchone()
    if row[1]:
        conn.execute(
            "INSERT INTO jobs_search (jobs_search, rowid, name, comment, url)"
            " SELECT 'delete', id, name, comment, url FROM jobs_search_gone WHERE id <= ?",
            (row[0],),
        )
        conn.execute("DELETE FROM jobs_search_gone WHERE id <= ?", (row[0],))
        return int(row[1])
    row = conn.execute(
        "SELECT max(id), count(*) FROM (SELECT id FROM jobs_search_new ORDER BY id LIMIT ?)",
        (limit,),
    ).fetchone()
    if row[1]:
        conn.execute(
            "INSERT INTO jobs_search (rowid, name, comment, url) SELECT id, name, comment, url"
            " FROM jobs WHERE id IN (SELECT id FROM jobs_search_new WHERE id <= ?)",
            (row[0],),
        )
        conn.execute("DELETE FROM jobs_search_new WHERE id <= ?", (row[0],))
    return int(row[1])


# Version 6: the search index (SEARCH_INDEX_STEP above).
_SCHEMA.append(list(SEARCH_INDEX_STEP))


def upgrade(conn: sqlite3.Connection, version: int) -> None:
    """
    Run the steps of ``_SCHEMA`` after ``version`` on ``conn`` (in the
    caller's transaction) and set ``user_version``; 0 creates the schema.
    """
    for steps in _SCHEMA[version:]:
        for step in steps:
            if isinstance(step, str):
                conn.execute(step)
            else:
                step(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


#: Rows and bytes of a batch's writes whose statements may run on the
#: reactor thread (:meth:`_Writer.flush`): about a millisecond of work at most.
INLINE_ROWS = 128
INLINE_BYTES = 256 * 1024

#: SQLite error texts that mean the storage, not the request, is at fault.
_UNAVAILABLE = ("disk", "full", "readonly", "read-only", "unable to open", "i/o", "locked")


#: How long a statement waits for a lock another process holds, ms.
BUSY_TIMEOUT_MS = 10_000

#: The writer thread's pauses between tries of a statement that found the
#: file locked by another process, s: the steps of SQLite's own busy handler
#: (the last one repeats), which the writer's connection does not use.
_BUSY_WAITS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.025, 0.025, 0.05, 0.05, 0.1)


#: The page cache of the writer's connection, KiB: the pages a batch touches
#: (the newest rows of each table and index) stay in it from batch to batch.
CACHE_KIB = 16_000

#: The page cache of each reader's connection, KiB (SQLite's default). SQLite
#: empties a reader's cache whenever another connection committed since its
#: last read, which on a server that takes jobs is nearly every time, and a
#: full scan reads each page once: a bigger cache saved no time (1,000,000
#: jobs, ``benchmarks/run.py scale``) and stayed in the server's memory after
#: one search or a few pages of the list.
READ_CACHE_KIB = 2_000


def bind_none_directly() -> None:
    """
    Have :mod:`sqlite3` bind ``None`` as ``NULL`` without looking for an
    adapter each time.

    The module binds ints, floats and strings as they are, but looks up an
    adaptation for every other value, ``None`` included: two failed attribute
    lookups, each building an ``AttributeError`` message (about 1,200
    instructions per ``None``; a new job's row has nine). An adapter
    registered for ``NoneType`` is found at once in the adapters' table; it
    returns ``None``, bound as ``NULL`` as before. Process-wide, and the same
    ``NULL`` for any other user of the module.
    """
    sqlite3.register_adapter(type(None), _NONE.get)


#: ``_NONE.get(value)`` is ``None`` for any value: an adapter in C.
_NONE: dict[Any, Any] = {}

bind_none_directly()


def _connect(
    path: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS, cache_kib: int = CACHE_KIB
) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    conn.execute(f"PRAGMA cache_size = -{cache_kib}")
    return conn


def _busy(error: sqlite3.Error) -> bool:
    """
    Whether ``error`` says that another connection holds the lock asked for.
    """
    return (getattr(error, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


def _when_free(conn: sqlite3.Connection, statement: str) -> sqlite3.Cursor:
    """
    Execute ``statement`` on the writer's connection, which never waits for a
    lock (the reactor thread uses it too, see :class:`_Writer`): here, on the
    writer thread, try it again while another process holds the lock, for up
    to :data:`BUSY_TIMEOUT_MS`, as SQLite's busy handler would.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    for wait in itertools.chain(_BUSY_WAITS, itertools.repeat(_BUSY_WAITS[-1])):
        try:
            return conn.execute(statement)
        except sqlite3.OperationalError as e:
            if not _busy(e) or time.monotonic() + wait > deadline:
                raise
        time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _unavailable(error: sqlite3.Error) -> bool:
    text = str(error).lower()
    return isinstance(error, sqlite3.OperationalError) and any(w in text for w in _UNAVAILABLE)


@attrs.define
class _Counts:
    stored: int = 0
    waiting: int = 0
    running: int = 0

    def move(self, change: _Change) -> None:
        """
        Account for ``count`` jobs changing from state ``before`` to ``after``
        (``None``: absent).
        """
        before, after, count = change
        for state, sign in ((before, -count), (after, count)):
            if state is None:
                continue
            self.stored += sign
            if state is JobState.WAITING:
                self.waiting += sign
            elif state is JobState.RUNNING:
                self.running += sign


#: What one write did, for the counters: ``count`` jobs went from the state
#: ``before`` to the state ``after`` (``None``: absent). Only states are kept,
#: so a write need not build the job before and after.
_Change = tuple[JobState | None, JobState | None, int]

_Op = Callable[[sqlite3.Connection, list[_Change]], Any]


class GroupedOp:
    """
    A write that the writer may run together with the others of its class in
    the same batch (:meth:`_Writer._run_groups`): a subclass is a write
    (``__call__(conn, changes)``, run alone when its batch runs with
    savepoints) and says how to run several at once.

    Such writes touch only the newest pages of the file (a new job, the
    start or the finish of a job being delivered), which SQLite's page cache
    holds: their statements may run on the reactor thread
    (:meth:`_Writer.flush`). ``rows`` is how many rows the write changes
    and ``size`` about how many bytes it writes, which bound that.
    """

    rows = 1
    size = 0

    def __call__(self, conn: sqlite3.Connection, changes: list[_Change]) -> Any:
        raise NotImplementedError

    @classmethod
    def run_group(cls, conn: sqlite3.Connection, ops: list[Any]) -> list[tuple[Any, list[_Change]]]:
        """
        Run ``ops`` (instances of this class) in the open transaction; return
        each one's result and changes, in order, as if each had run alone.
        """
        raise NotImplementedError


_Batch = list[tuple[_Op, "Deferred[Any]"]]


@attrs.frozen
class _MayBeLost:
    """
    A write that a power cut may lose (see :meth:`SQLiteFile.write`).
    """

    op: _Op

    def __call__(self, conn: sqlite3.Connection, changes: list[_Change]) -> Any:
        return self.op(conn, changes)


_Result = tuple["Deferred[Any]", Any, list[_Change]]


def _call_each(calls: list[Callable[[], None]]) -> None:
    """
    Call each of ``calls``; one that raises is logged and the others go on.
    """
    for call in calls:
        try:
            call()
        except Exception:
            _log.failure("A write's committed callback failed")


#: ``os.fdatasync`` where the system has it (not macOS), else ``os.fsync``.
_datasync = getattr(os, "fdatasync", os.fsync)

_log = Logger()


def _writes(batch: _Batch) -> _Batch:
    """
    Return the writes of ``batch``, those of continuations in it included.
    """
    writes: _Batch = []
    for op, d in batch:
        writes.extend(op.batch if isinstance(op, _Continuation) else [(op, d)])
    return writes


@attrs.define
class _Continuation:
    """
    A batch whose transaction the reactor thread began and whose writes it
    ran in part (:meth:`_Writer.flush`), handed to the writer thread with
    the connection: ``done`` holds the results of the writes run, by index
    in ``batch``; the thread runs the others and commits. Until the thread
    claims it, the reactor thread may add writes to it (:meth:`_Writer._join`).
    """

    batch: _Batch
    done: dict[int, tuple[Any, list[_Change]]]
    durable: bool
    #: ``False``: a write failed there; nothing is open, the connection was
    #: not handed over, and the writer thread runs each write alone.
    begun: bool = True
    #: Set by the writer thread (under ``_Writer._claim``) as it takes it.
    claimed: bool = False


def _inline_writes(
    batch: _Batch, allow_none: bool = False
) -> dict[type[GroupedOp], dict[int, GroupedOp]] | None:
    """
    Return the writes of ``batch`` whose statements the reactor thread may
    run (:class:`GroupedOp`), by kind and index; ``None`` when there are
    none (unless ``allow_none``: the others then run on the writer thread)
    or too many rows or bytes for it.
    """
    inline = _kinds(batch)
    ops = [op for each in inline.values() for op in each.values()]
    rows = sum(op.rows for op in ops)
    size = sum(op.size for op in ops)
    if (not inline and not allow_none) or rows > INLINE_ROWS or size > INLINE_BYTES:
        return None
    return inline


def _kinds(batch: _Batch, skip: Container[int] = ()) -> dict[type[GroupedOp], dict[int, GroupedOp]]:
    """
    Return the :class:`GroupedOp` writes of ``batch`` (but those at the
    indexes of ``skip``), by kind and index.
    """
    kinds: dict[type[GroupedOp], dict[int, GroupedOp]] = {}
    for index, (op, _) in enumerate(batch):
        inner = op.op if isinstance(op, _MayBeLost) else op
        if isinstance(inner, GroupedOp) and index not in skip:
            kinds.setdefault(type(inner), {})[index] = inner
    return kinds


def _run_here(
    conn: sqlite3.Connection, inline: dict[type[GroupedOp], dict[int, GroupedOp]], offset: int = 0
) -> dict[int, tuple[Any, list[_Change]]]:
    """
    Run the writes ``inline`` (:func:`_inline_writes`) in the open
    transaction, each kind's together; return their results and changes by
    index (plus ``offset``). Raises as a failing write does.
    """
    done: dict[int, tuple[Any, list[_Change]]] = {}
    for kind, ops in inline.items():
        if len(ops) > 1:
            outcomes = kind.run_group(conn, list(ops.values()))
            done.update(zip([index + offset for index in ops], outcomes, strict=True))
            continue
        for index, op in ops.items():
            changes: list[_Change] = []
            done[index + offset] = (op(conn, changes), changes)
    return done


class _Held:
    """
    Stands for the call that hands the writes over while a batch is with the
    writer thread and writes can no longer join it: writes asked for
    meanwhile schedule none (they go when its results come back).
    """

    def active(self) -> bool:
        return False

    def cancel(self) -> None:
        pass


_HELD = _Held()


class _Writer(BatchWriter[_Op]):
    """
    The SQLite writer: a batch's writes in one transaction, but for those that
    may be lost (:class:`_MayBeLost`), which commit first in one of their own.
    When no write waits, it moves noted changes into the search index.

    One batch at a time is with the thread; the writes asked for meanwhile
    join it while the thread has not taken it yet (:meth:`_join`), or wait
    on the reactor thread and make the next batch. When a batch holds
    writes of the delivery path (:class:`GroupedOp`: pushes, starts and
    finishes of the jobs being delivered, a few hundred rows at most), the
    reactor thread begins its transaction and runs their statements itself;
    the writer thread runs the other writes in the same transaction and
    commits. The statements of those writes take microseconds (the pages
    they change are in the page cache) where handing each one to the thread
    would cost far more: the two threads take the interpreter lock from each
    other at every statement. The ``BEGIN`` does not wait for a lock held by
    another process (the writer thread then runs the whole batch, and waits
    for it: the connection has no busy timeout, :func:`_when_free`), and
    every commit, ``fsync`` and checkpoint runs on the writer thread.
    """

    def __init__(self, path: str, reactor: Any, deliver: Callable[[list[Any]], None]) -> None:
        super().__init__("hq-sqlite-writer", reactor, self._batch_delivered)
        self._deliver_results = deliver
        self._path = path
        self._conn: sqlite3.Connection | None = None
        #: Held by whichever thread uses the connection: the writer thread for
        #: a batch or a step of the search index; the reactor thread while it
        #: runs statements, then the writer thread it hands the transaction to.
        self._conn_lock = threading.Lock()
        #: On the reactor thread: batches handed to the writer thread whose
        #: results have not come back (one ``deliver`` each: the reactor
        #: thread makes the batches, the writer thread merges none).
        self._in_flight = 0
        #: On the reactor thread: the continuation handed over last, which
        #: writes may join until the writer thread claims it (under ``_claim``).
        self._open: _Continuation | None = None
        self._claim = threading.Lock()
        #: Whether commits wait for the disk (``PRAGMA synchronous = FULL``).
        self._durable = True
        self._index_failed = False
        #: When the last batch ran (``time.monotonic``), and writes since the
        #: last step of the search index: it waits for a pause in the writes.
        self._last_batch = 0.0
        self._since_index = 0
        #: Set on the reactor thread, taken on the writer thread: the writes
        #: whose ``committed`` is called once their transaction is committed,
        #: before the disk has it (:meth:`write_early`), by their Deferred.
        self._early: dict[Deferred[Any], Callable[[], None]] = {}
        #: The log file (``-wal``), opened to sync it after a commit made
        #: without waiting for the disk; its inode, to notice a new file.
        self._log_fd: int | None = None
        self._log_inode = 0
        #: Whether the connection runs with the log file (WAL): only then
        #: does an early write commit without its sync (see write_early).
        self._wal = False

    def write_early(self, op: _Op, committed: Callable[[], None]) -> Deferred[Any]:
        """
        On the reactor thread: queue the durable write ``op`` as
        :meth:`write` does, and call ``committed()`` on the reactor thread as
        soon as its transaction is committed: before the log file is synced,
        so the caller may act on the write (readers see it, and a killed
        process does not lose it) while the disk catches up. The Deferred
        still fires only once the write is on disk. Without the log file
        (a rollback journal), the transaction commits with its sync and
        ``committed`` is called after it.
        """
        d = self.write(op)
        self._early[d] = committed
        return d

    def _has_early(self, batch: _Batch) -> bool:
        early = self._early
        return self._wal and bool(early) and any(d in early for _, d in _writes(batch))

    def fail_batch(self, batch: _Batch, failure: Failure) -> list[Any]:
        # Writes already answered (the first transaction of the batch) are
        # skipped by SQLiteFile._deliver.
        for _, d in _writes(batch):
            self._early.pop(d, None)
        return [(d, failure, []) for _, d in _writes(batch)]

    # On the reactor thread.

    merge_queued = False

    def submit_many(self, ops: list[tuple[_Op, Deferred[Any]]]) -> None:
        self._in_flight += 1
        super().submit_many(ops)

    def _batch_delivered(self, results: list[_Result]) -> None:
        self._in_flight -= 1
        self._open = None
        if self._flush_call is _HELD and not self._in_flight:
            self._flush_call = None
        self._deliver_results(results)
        if not self._in_flight and self._pending:
            self.flush()

    def flush(self) -> None:
        """
        Hand the writes asked for to the writer thread, unless a batch is
        with it already: they then join that batch if the thread has not
        taken it, or go when its results come back. Run the statements of
        the delivery path's writes first (see the class).
        """
        self._cancel_flush()
        if not self._pending:
            return
        if self._in_flight:
            # The writer thread may not have taken the batch yet: join it.
            if not (self._open is not None and self._join(self._open)):
                self._flush_call = _HELD
            return
        pending, self._pending = self._pending, []
        begun = self._begin(pending)
        if begun is None:
            self.submit_many(pending)
        else:
            # The writer thread tells a continuation from a write (run_batch).
            self.submit_many([(cast(_Op, begun), Deferred())])
            self._open = begun if begun.begun else None

    def flush_all(self) -> None:
        """
        Hand every write asked for to the writer thread now, behind the
        batch it has (the store closes).
        """
        super().flush()

    def _begin(self, batch: _Batch) -> _Continuation | None:
        """
        Begin ``batch``'s transaction and run its writes of the delivery
        path, here on the reactor thread; return what the writer thread is
        to finish, or ``None`` (nothing run, no transaction open) when the
        batch has none, is too big, or the connection is not free now.
        """
        inline = _inline_writes(batch)
        if inline is None:
            return None
        conn = self._conn
        if conn is None or not self._conn_lock.acquire(blocking=False):
            return None
        handed = False
        try:
            durable = not all(isinstance(op, _MayBeLost) for op, _ in batch)
            # A batch with an early write commits without a sync, then syncs
            # the log by hand (_transaction).
            conn = self._connection(durable and not self._has_early(batch))
            # Never waits here for another process's lock (the connection has
            # no busy timeout): the writer thread will, with the whole batch.
            conn.execute("BEGIN IMMEDIATE")
            done = _run_here(conn, inline)
            self._last_batch = time.monotonic()
            self._since_index += len(batch)
            handed = True
            return _Continuation(batch, done, durable)
        except Exception as e:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(e, sqlite3.Error) and _unavailable(e):
                # A busy or failing file: the writer thread runs the batch
                # as any other (and waits for the lock).
                return None
            # A write that fails (a job no longer running, a taken id): the
            # writer thread runs each write alone, so that it fails alone.
            return _Continuation(batch, {}, durable, begun=False)
        finally:
            if not handed:
                self._conn_lock.release()

    def _join(self, begun: _Continuation) -> bool:
        """
        Add the writes asked for to ``begun``, handed over but not yet taken
        by the writer thread: run their statements in its transaction (in a
        savepoint) and hand them over with it. Return whether they joined
        (else they wait for its results: it is taken, a write failed, or
        they would make it too big or change how it commits).
        """
        pending = self._pending
        inline = _inline_writes(pending, allow_none=True)
        if inline is None or len(begun.batch) + len(pending) > BATCH:
            return False
        if not begun.durable and not all(isinstance(op, _MayBeLost) for op, _ in pending):
            return False
        conn = self._conn
        assert conn is not None
        with self._claim:
            if begun.claimed:
                self._open = None
                return False
            try:
                conn.execute("SAVEPOINT more")
                try:
                    done = _run_here(conn, inline, offset=len(begun.batch))
                except BaseException:
                    conn.execute("ROLLBACK TO more")
                    raise
                finally:
                    conn.execute("RELEASE more")
            except Exception:
                # They wait, and then run as a batch of their own.
                self._open = None
                return False
            begun.done.update(done)
            begun.batch.extend(pending)
        self._pending = []
        self._last_batch = time.monotonic()
        self._since_index += len(pending)
        return True

    # On the writer thread.

    def idle(self) -> float | None:
        # Fill the search index from the changes the triggers noted
        # (SEARCH_INDEX_STEP), one short transaction at a time, once the
        # writes pause for INDEX_PAUSE seconds (or INDEX_BATCH writes came
        # since the last step): each step is a transaction and a new FTS5
        # segment to merge, too dear to pay after every batch of a burst.
        # Searches read the rows still noted, so nothing is missed meanwhile.
        conn = self._conn
        if conn is None or self._index_failed:
            return None
        if self._since_index < INDEX_BATCH:
            wait = self._last_batch + INDEX_PAUSE - time.monotonic()
            if wait > 0:
                return wait
        if not self._conn_lock.acquire(blocking=False):
            return INDEX_PAUSE  # The reactor thread runs a batch's statements.
        try:
            return self._index_step(conn)
        finally:
            self._conn_lock.release()

    def _index_step(self, conn: sqlite3.Connection) -> float | None:
        self._since_index = 0
        try:
            # One cheap read when nothing is noted: no transaction then.
            if not _when_free(conn, _SEARCH_PENDING).fetchone()[0]:
                return None
            # The index is derived from the jobs: a step a power cut loses is
            # done again from the notes it did not clear (no sync needed).
            conn = self._connection(durable=False)
            _when_free(conn, "BEGIN IMMEDIATE")
            moved = index_some(conn)
            conn.commit()
        except sqlite3.Error as e:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            # Tried again after the next write; said once.
            self._index_failed = not _unavailable(e)
            self._reactor.callFromThread(
                self.log.warn, "Cannot update the search index: {error}", error=str(e)
            )
            return None
        return 0.0 if moved > 0 else None

    def finish(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    def run_batch(self, batch: _Batch) -> list[Any]:
        results: list[_Result] = []
        plain: _Batch = []
        for op, d in batch:
            if not isinstance(op, _Continuation):
                plain.append((op, d))
                continue
            if plain:
                with self._conn_lock:
                    results += self._run_batch(plain)
                plain = []
            if not op.begun:
                with self._conn_lock:
                    results += self._transaction(op.batch, op.durable, alone=True)
                continue
            # Begun on the reactor thread, which handed the connection over
            # (and which begins none while a batch is here); from now on no
            # write joins it.
            with self._claim:
                op.claimed = True
            try:
                results += self._transaction(op.batch, op.durable, op.done)
            finally:
                self._conn_lock.release()
        if plain:
            with self._conn_lock:
                results += self._run_batch(plain)
        return results

    def _run_batch(self, batch: _Batch) -> list[Any]:
        self._last_batch = time.monotonic()
        self._since_index += len(batch)
        unsynced = [item for item in batch if isinstance(item[0], _MayBeLost)]
        if not unsynced:
            return self._transaction(batch, durable=True)
        # Committed without waiting for the disk, and answered at once: the
        # reactor goes on (posts the jobs it started) while the durable writes
        # of the batch, asked for as concurrently, commit and sync. Answered
        # only once committed: a killed process then loses no start, so the
        # jobs delivered again after a crash are those found running.
        self._reactor.callFromThread(
            self._deliver_results, self._transaction(unsynced, durable=False)
        )
        durable = [item for item in batch if not isinstance(item[0], _MayBeLost)]
        return self._transaction(durable, durable=True) if durable else []

    def _run_ops(
        self,
        conn: sqlite3.Connection,
        batch: _Batch,
        savepoints: bool,
        done: dict[int, tuple[Any, list[_Change]]] | None = None,
    ) -> list[_Result] | None:
        """
        Run the writes of ``batch`` in the open transaction; return their results.

        Without ``savepoints``, return ``None`` as soon as one fails (the
        caller rolls the transaction back): a savepoint around each write,
        which lets one fail alone, costs two more statements per write, and
        writes almost never fail. Fails as a write does when the storage
        is unavailable.
        """
        results: list[_Result] = []
        grouped: dict[int, tuple[Any, list[_Change]]] | None = {}
        if not savepoints:
            # ``done``: the writes the reactor thread ran already.
            grouped = self._run_groups(conn, batch, done or {})
        if grouped is None:
            return None
        for index, (op, d) in enumerate(batch):
            if index in grouped:
                result, changes = grouped[index]
                results.append((d, result, changes))
                continue
            changes = []
            if savepoints:
                conn.execute("SAVEPOINT op")
            try:
                result = op(conn, changes)
            except Exception as e:
                if isinstance(e, sqlite3.Error) and _unavailable(e):
                    raise
                if not savepoints:
                    return None
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                if isinstance(e, sqlite3.IntegrityError):
                    results.append((d, Failure(JobExists("a job with this id exists")), []))
                else:
                    results.append((d, Failure(), []))
            else:
                if savepoints:
                    conn.execute("RELEASE op")
                results.append((d, result, changes))
        return results

    def _connection(self, durable: bool) -> sqlite3.Connection:
        """
        Return the connection (opened on first use), its commits waiting for
        the disk when ``durable``. Outside a transaction.
        """
        if self._conn is None:
            # No busy timeout: the reactor thread must never wait on it for a
            # lock; the writer thread waits in _when_free.
            self._conn = _connect(self._path, busy_timeout_ms=0)
            # Outside any transaction: journal_mode cannot change inside one.
            mode = _when_free(self._conn, "PRAGMA journal_mode = WAL").fetchone()[0]
            # A file system without shared memory keeps the rollback journal:
            # early writes then commit with their sync, as the others.
            self._wal = str(mode).lower() == "wal"
            self._conn.execute("PRAGMA synchronous = FULL")
            self._durable = True
        if durable is not self._durable:
            # Outside a transaction, where the setting may change. Without a
            # sync the commit is still written to the log file (a killed
            # process loses nothing), and the next synced commit syncs it too
            # (the log is replayed in order up to the last synced commit).
            self._conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        return self._conn

    @staticmethod
    def _run_groups(
        conn: sqlite3.Connection, batch: _Batch, done: dict[int, tuple[Any, list[_Change]]]
    ) -> dict[int, tuple[Any, list[_Change]]] | None:
        """
        Run together the writes of ``batch`` that are :class:`GroupedOp` of
        one kind (when there are several): one statement for them all rather
        than one each, each a round of the GIL between this thread and the
        reactor's. Return their results and changes by index in ``batch``
        (``None`` when one failed: the caller runs the batch again, each write
        alone in a savepoint), with those of ``done`` (run already). The
        writes of one batch were asked for concurrently, so running a kind's
        together is one of their orders.
        """
        several = {kind: ops for kind, ops in _kinds(batch, done).items() if len(ops) > 1}
        try:
            return {**done, **_run_here(conn, several)}
        except Exception as e:
            if isinstance(e, sqlite3.Error) and _unavailable(e):
                raise
            return None

    def _transaction(
        self,
        batch: _Batch,
        durable: bool,
        done: dict[int, tuple[Any, list[_Change]]] | None = None,
        alone: bool = False,
    ) -> list[_Result]:
        """
        Run ``batch`` in one transaction and commit it, waiting for the disk
        when ``durable``; return one result per write (all failed with
        :class:`StoreUnavailable` when the storage is). With ``done``, the
        transaction is open already (:meth:`_begin`), its writes of ``done``
        run. ``alone``: each write in a savepoint from the start.
        """
        early = {d: self._early.pop(d) for _, d in batch if d in self._early} if self._early else {}
        try:
            if done is None:
                conn = self._connection(durable and not (early and self._wal))
                _when_free(conn, "BEGIN IMMEDIATE")
            else:
                assert self._conn is not None
                conn = self._conn
            results = None if alone else self._run_ops(conn, batch, False, done)
            if results is None:
                # A write failed: undo the batch and run it again with each
                # write in its own savepoint, so that it fails alone.
                if not alone:
                    conn.execute("ROLLBACK")
                    _when_free(conn, "BEGIN IMMEDIATE")
                results = self._run_ops(conn, batch, savepoints=True)
                assert results is not None
            conn.commit()
        except sqlite3.Error as e:
            if self._conn is not None and self._conn.in_transaction:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            error = StoreUnavailable(f"storage unavailable: {e}")
            return [(d, Failure(error), []) for _, d in batch]
        if early:
            calls = [
                early[d]
                for d, result, _ in results
                if d in early and not isinstance(result, Failure)
            ]
            if calls:
                self._reactor.callFromThread(_call_each, calls)
        if durable and not self._durable:
            # Committed without a sync for the early writes: now the log
            # file's, as synchronous = FULL would have made before the commit
            # returned; the results fire after it.
            try:
                self._sync_log()
            except OSError as e:
                error = StoreUnavailable(f"storage unavailable: cannot sync the log file: {e}")
                # Committed all the same (readers see them): their changes count.
                return [(d, Failure(error), changes) for d, _, changes in results]
        return results

    def _sync_log(self) -> None:
        """
        ``fdatasync`` the log file (``-wal``) on a descriptor of its own: the
        system syncs a file's data whichever descriptor asks. Opened once, and
        again if the file was replaced (SQLite deletes it when the last
        connection closes).
        """
        path = self._path + "-wal"
        inode = os.stat(path).st_ino
        if self._log_fd is None or inode != self._log_inode:
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None
            self._log_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self._log_inode = os.fstat(self._log_fd).st_ino
        _datasync(self._log_fd)


class SQLiteFile:
    """
    The database file ``<data_dir>/hq.sqlite3``: its lock, its schema, the
    writer thread and the reader threads. :class:`hq.store.sqlite.SQLiteStore`
    runs the job operations through :meth:`write` and :meth:`read`.

    :param data_dir: the directory (created if missing).
    :param reactor: provides ``callFromThread`` and thread pools.
    :param readers: reader threads.
    :param on_commit: told of every transaction, on the writer thread.
    """

    log = Logger()

    def __init__(
        self,
        data_dir: str,
        reactor: Any,
        readers: int = 2,
        on_commit: Callable[[float, int, bool], None] | None = None,
    ) -> None:
        self._data_dir = data_dir
        #: Told of every transaction, on the writer thread (see ``_Writer.on_commit``).
        self._on_commit = on_commit
        self._path = os.path.join(data_dir, DATABASE_FILE)
        self._reactor = reactor
        self._readers = readers
        #: The ``/stats`` counters, moved by each committed write.
        self.counts = _Counts()
        self._writer: _Writer | None = None
        self._pool: ThreadPool | None = None
        #: Listings that may read every row (a regexp filter, no limit) run on
        #: their own thread, so a slow search never holds up the other reads.
        self._scan_pool: ThreadPool | None = None
        self._reader_conns: list[sqlite3.Connection] = []
        self._closing = False
        self._local = threading.local()
        self._lock_fd: int | None = None

    @property
    def path(self) -> str:
        """
        The database file.
        """
        return self._path

    # Opening and closing.

    def lock(self) -> None:
        """
        Take the data_dir lock now (``open`` takes it if not taken yet).

        :raises StoreError: when another server holds it.
        :raises OSError: when data_dir cannot be created or written.
        """
        if self._lock_fd is not None:
            return
        os.makedirs(self._data_dir, exist_ok=True)
        path = os.path.join(self._data_dir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"another HQ server (pid {owner}) is using data_dir {self._data_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._lock_fd = fd

    def _migrate(
        self, conn: sqlite3.Connection, changes: list[_Change]
    ) -> tuple[int, int, int, int]:
        # Runs as the first write, inside its transaction: an upgrade is all or nothing.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = 'last_opened_by'").fetchone()
            except sqlite3.Error:
                row = None
            by = f" ({row[0]})" if row else ""
            raise StoreError(
                f"{self._path} has schema version {version}, written by a newer HQ{by}; "
                f"this HQ ({__version__}) knows schema versions up to {SCHEMA_VERSION} and will "
                "not downgrade it: run the newer HQ, or restore a backup made before the upgrade"
            )
        # A savepoint: a statement failing half-way must not leave the ones
        # before it to be committed with the batch.
        conn.execute("SAVEPOINT migrate")
        try:
            upgrade(conn, version)
            opened_by = f"HQ {__version__}"
            if version == 0:
                conn.execute("INSERT INTO meta (key, value) VALUES ('created_by', ?)", (opened_by,))
            conn.execute(
                "REPLACE INTO meta (key, value) VALUES ('last_opened_by', ?)", (opened_by,)
            )
        except sqlite3.Error as e:
            conn.execute("ROLLBACK TO migrate")
            conn.execute("RELEASE migrate")
            if _unavailable(e):
                raise
            raise StoreError(
                f"cannot upgrade {self._path} from schema version {version} to "
                f"{SCHEMA_VERSION}: {e}; the file is unchanged"
            ) from None
        conn.execute("RELEASE migrate")
        # The counts read a whole index once, pages of no use to the writes
        # after them: with a reader's cache, they do not fill the writer's 16 MB
        # (14 MB of memory kept from start-up on, with 1,000,000 jobs).
        conn.execute(f"PRAGMA cache_size = -{READ_CACHE_KIB}")
        stored = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
        waiting = conn.execute("SELECT count(*) FROM jobs WHERE state = 0").fetchone()[0]
        running = conn.execute("SELECT count(*) FROM jobs WHERE state = 1").fetchone()[0]
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        return stored, waiting, running, version

    def open(self) -> Deferred[None]:
        try:
            self.lock()
        except (OSError, StoreError):
            return fail()
        self._writer = _Writer(self._path, self._reactor, self._deliver)
        self._writer.on_commit = self._on_commit
        self._writer.start()
        self._pool = ThreadPool(minthreads=1, maxthreads=self._readers, name="hq-sqlite-read")
        self._pool.start()
        self._scan_pool = ThreadPool(minthreads=0, maxthreads=1, name="hq-sqlite-scan")
        self._scan_pool.start()
        self._closing = False

        def failed(reason: Failure) -> Failure:
            self.close()
            return reason

        def opened(counts: tuple[int, int, int, int]) -> None:
            self.counts = _Counts(*counts[:3])
            if 0 < counts[3] < SCHEMA_VERSION:
                self.log.info(
                    "Upgraded {path} from schema version {old} to {new}",
                    path=self._path,
                    old=counts[3],
                    new=SCHEMA_VERSION,
                )
            self.log.info(
                "Opened {path}: {stored} jobs stored, {waiting} waiting, {running} running",
                path=self._path,
                stored=counts[0],
                waiting=counts[1],
                running=counts[2],
            )

        return self._writer.submit(self._migrate).addCallbacks(opened, failed)

    def close(self) -> Deferred[None]:
        self._flush()
        writer, pool, scan_pool = self._writer, self._pool, self._scan_pool
        self._writer = self._pool = self._scan_pool = None
        # Stopping a pool waits for its threads: end their queries first.
        self._closing = True
        for conn in list(self._reader_conns):
            conn.interrupt()
        for each in (pool, scan_pool):
            if each is not None:
                each.stop()
        self._reader_conns.clear()
        if writer is None:
            # Never opened (a start that failed after lock()): the lock goes all the same.
            self._unlock()
            return succeed(None)
        done: Deferred[None] = Deferred()

        def wait() -> None:
            writer.join()
            self._reactor.callFromThread(done.callback, None)

        writer.stop()
        threading.Thread(target=wait, name="hq-sqlite-close", daemon=True).start()
        return done.addCallback(lambda _: self._unlock())

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # Plumbing.

    def _deliver(self, results: list[_Result]) -> None:
        move = self.counts.move
        for _, _, changes in results:
            for change in changes:
                move(change)
        for d, result, _ in results:
            if d.called:
                continue  # Answered with the first transaction of its batch.
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def write(
        self, op: _Op, durable: bool = True, committed: Callable[[], None] | None = None
    ) -> Deferred[Any]:
        """
        Run ``op(conn, changes)`` on the writer thread in the next batch; fire
        with its result once committed. Fails with :class:`StoreUnavailable`.

        ``durable=False``: a write that a power cut may lose, such as marking
        a job running (recovery handles a waiting and a running job alike).
        Such writes of a batch commit first, in a transaction of their own,
        without waiting for the disk (``synchronous = NORMAL``), and fire at
        once. A killed process does not lose them (they are in the log file),
        and the next durable commit syncs them too.

        ``committed``: called on the reactor thread once the (durable) write
        is committed, before the disk has it; the Deferred fires once it has.
        Its transaction then commits without a sync and the writer thread
        syncs the log file after, so that the caller may act on the write
        (a reserved job's POST) while the disk catches up.
        """
        if self._writer is None:
            return fail(StoreUnavailable("storage unavailable: the store is closed"))
        if committed is not None and durable:
            return self._writer.write_early(op, committed)
        return self._writer.write(op if durable else _MayBeLost(op))

    def _flush(self) -> None:
        """
        Hand every write asked for to the writer thread now.
        """
        if self._writer is not None:
            self._writer.flush_all()

    def read(self, call: Callable[[sqlite3.Connection], T], scan: bool = False) -> Deferred[T]:
        """
        Run ``call(conn)`` on a reader thread (``scan``: on the one for slow
        full scans); fire with its result. Fails with :class:`StoreUnavailable`.
        """
        pool = self._scan_pool if scan else self._pool
        if pool is None:
            return fail(StoreUnavailable("storage unavailable: the store is closed"))

        def run() -> T:
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = _connect(self._path, cache_kib=READ_CACHE_KIB)
                self._reader_conns.append(conn)
            try:
                return call(conn)
            except sqlite3.OperationalError as e:
                if _unavailable(e) or self._closing:
                    raise StoreUnavailable(f"storage unavailable: {e}") from None
                raise

        return deferToThreadPool(self._reactor, pool, run)

    def integrity_check(self) -> Deferred[list[str]]:
        """
        Run ``PRAGMA integrity_check``; fires with its messages (``["ok"]`` when sound).
        """
        return self.read(lambda conn: [row[0] for row in conn.execute("PRAGMA integrity_check")])
