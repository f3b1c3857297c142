"""
``hq migrate --from-sqlite``: copy a single-node SQLite store into an empty
PostgreSQL store, for moving from one node to a cluster.

This is a command, not the server: it blocks (a plain :mod:`sqlite3`
connection, a plain :mod:`psycopg` one) and the server never imports it. The
copy is one PostgreSQL transaction, so the target gets everything or nothing;
the SQLite file is only read, under the data_dir lock that keeps a server off
it meanwhile.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import attrs
import psycopg

from hq.store import StoreError, sql
from hq.store.postgres import SERVER_LOCK, PostgresStore
from hq.store.sqlitefile import DATABASE_FILE, LOCK_FILE
from hq.store.sqlitefile import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION

#: Rows per COPY statement, and how often the reader fetches from SQLite.
BATCH_ROWS = 5000
#: A progress line every so many jobs.
PROGRESS_EVERY = 50_000

#: The tables copied and their columns, the same names on both engines. The
#: PostgreSQL columns of the cluster (``node``, ``lease_until``) stay NULL: a
#: running job without a node is given back by the first node's recovery.
TABLES = {
    "jobs": (
        "id, name, comment, url, payload, headers, timeout, state, status, started_at, "
        "finished_at, success, failure, canceled, status_code, err, output, output_truncated, "
        "attempts, run_after, retries, idempotency_key, schedule_id, fire_at, flow_key, "
        "callback_url, failure_callback_url, callback_job_id"
    ),
    "attempts": "job_id, attempt, started_at, finished_at, status_code, err, output",
    "idempotency_keys": "key, job_id, created_at",
    "schedules": ("id, name, cron, timezone, job, paused, next_run_at, last_run_at, last_job_id"),
    "flows": sql.FLOW_COLUMNS,
}

#: SQLite's ``IJobStore.max_id``: the greatest id ever created, deleted or not.
_SQLITE_MAX_ID = (
    "SELECT max(coalesce((SELECT max(id) FROM jobs), 0), "
    "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'max_id'), 0))"
)


class MigrationError(Exception):
    """
    The copy was refused or failed; the message says why, and the target is
    unchanged.
    """


@attrs.frozen
class Copied:
    """
    What :func:`copy_sqlite` copied: rows per table, the jobs that were
    running, the greatest id, and how long it took.
    """

    rows: dict[str, int]
    running: int
    max_id: int
    seconds: float


def _lock(data_dir: str) -> int:
    """
    Take the data_dir lock a server takes (:meth:`hq.store.sqlitefile.SQLiteFile.lock`);
    return its file descriptor, to close when done.

    :raises MigrationError: when a server holds it.
    """
    fd = os.open(os.path.join(data_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise MigrationError(
            f"an HQ server (pid {owner}) is using data_dir {data_dir}: stop it first, "
            "so that no job changes after the copy"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode("ascii"))
    return fd


def _clean(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # PostgreSQL text cannot hold NUL; SQLite's can. Stored as U+FFFD, as the
    # PostgreSQL store does for what it is sent.
    return tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in row)


def _batches(source: sqlite3.Connection, table: str) -> Iterator[list[tuple[Any, ...]]]:
    cursor = source.execute(f"SELECT {TABLES[table]} FROM {table}")
    while rows := cursor.fetchmany(BATCH_ROWS):
        yield rows


def _check_source(source: sqlite3.Connection, path: str) -> None:
    version = source.execute("PRAGMA user_version").fetchone()[0]
    if version > SQLITE_SCHEMA_VERSION:
        raise MigrationError(
            f"{path} has schema version {version}, written by a newer HQ; this HQ knows "
            f"versions up to {SQLITE_SCHEMA_VERSION}: run the newer HQ's hq migrate --from-sqlite"
        )
    if version < SQLITE_SCHEMA_VERSION:
        raise MigrationError(
            f"{path} has schema version {version}{' (not an HQ store?)' if not version else ''};"
            f" upgrade it to {SQLITE_SCHEMA_VERSION} first: start this HQ on it once, or run "
            "hq migrate -c FILE with a FILE naming its data_dir"
        )


def _check_target(conn: psycopg.Connection[Any], store: PostgresStore) -> None:
    # Cluster nodes hold this lock shared for as long as they run.
    if conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SERVER_LOCK,)).fetchone() != (True,):
        raise MigrationError(
            f"HQ nodes are running on the PostgreSQL store {store.where}: stop them; "
            "--from-sqlite copies into a store no node uses"
        )
    store.migrate_schema(conn)
    row = conn.execute(
        "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM schedules),"
        " (SELECT count(*) FROM attempts), (SELECT count(*) FROM idempotency_keys),"
        " (SELECT count(*) FROM flows)"
    ).fetchone()
    assert row is not None
    if any(row):
        raise MigrationError(
            f"the PostgreSQL store {store.where} is not empty ({row[0]} jobs, {row[1]} "
            f"schedules, {row[4]} flow limits): --from-sqlite copies into an empty store "
            "only, so that no id is used twice; use a new database, or empty this one"
        )


def copy_sqlite(data_dir: str, url: str, progress: Callable[[str], None]) -> Copied:
    """
    Copy the SQLite store of ``data_dir`` into the PostgreSQL database of
    ``url``: create or upgrade its schema, then copy every job (ids, fields,
    outcomes), attempt, idempotency key, schedule and flow limit, and the
    greatest id ever issued, in one transaction. Tell ``progress`` how far it got.
    Return what was copied.

    :raises MigrationError: when a server holds ``data_dir``, its schema is
        not this HQ's, the target is not empty or has nodes running, or either
        database fails; the target is then unchanged.
    """
    started = time.monotonic()
    path = os.path.join(data_dir, DATABASE_FILE)
    if not os.path.isfile(path):
        raise MigrationError(f"no SQLite store in {data_dir}: {path} does not exist")
    lock_fd = _lock(data_dir)
    try:
        source = sqlite3.connect(path, isolation_level=None)
        try:
            # One read transaction: one snapshot of the whole file.
            source.execute("BEGIN")
            _check_source(source, path)
            return _copy(source, url, progress, started)
        except sqlite3.Error as e:
            raise MigrationError(f"cannot read {path}: {e}") from None
        finally:
            source.close()
    finally:
        os.close(lock_fd)


def _copy(
    source: sqlite3.Connection, url: str, progress: Callable[[str], None], started: float
) -> Copied:
    # A long COPY of large outputs must not hit the server's 30 s statement timeout.
    store = PostgresStore(url, None, statement_timeout=600)
    try:
        conn = store.connect(autocommit=False)
    except psycopg.Error as e:
        raise MigrationError(f"cannot open the PostgreSQL store {store.where}: {e}") from None
    try:
        with conn.transaction():
            _check_target(conn, store)
            rows: dict[str, int] = {}
            for table, columns in TABLES.items():
                copied = 0
                statement = f"COPY {table} ({columns}) FROM STDIN"
                for batch in _batches(source, table):
                    with conn.cursor() as cursor, cursor.copy(cast(Any, statement)) as copy:
                        for row in batch:
                            copy.write_row(_clean(row))
                    before, copied = copied, copied + len(batch)
                    if table == "jobs" and copied // PROGRESS_EVERY > before // PROGRESS_EVERY:
                        progress(f"copied {copied} jobs ...")
                rows[table] = copied
            max_id = source.execute(_SQLITE_MAX_ID).fetchone()[0]
            if max_id:
                conn.execute(sql.placeholders(sql.RAISE_MAX_ID), (str(max_id),))
            running = source.execute("SELECT count(*) FROM jobs WHERE state = 1").fetchone()[0]
    except StoreError as e:
        raise MigrationError(str(e)) from None
    except psycopg.Error as e:
        raise MigrationError(
            f"copy into the PostgreSQL store {store.where} failed, nothing was kept: {e}"
        ) from None
    finally:
        conn.close()
    return Copied(rows, running, max_id, time.monotonic() - started)
