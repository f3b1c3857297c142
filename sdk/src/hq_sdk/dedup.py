"""
De-duplication for workers: HQ delivers a job at least once (a retry after a lost answer,
a crash, a restart in place all send the same job id again), so a worker that must do a
job once remembers the ids it has done.

A :class:`DedupStore` has three calls, made by :class:`hq_sdk.receiver.Receiver`:

- ``claim(job_id)`` before the work: :attr:`Claim.NEW` (do it), :attr:`Claim.DONE` (done
  before: answer 200 without doing it again) or :attr:`Claim.BUSY` (another delivery of it
  is being done now: answer "try later");
- ``complete(job_id)`` after the work succeeded;
- ``release(job_id)`` after it failed, so the next delivery does it.

:class:`MemoryDedupStore` keeps a bounded number of ids in memory (one process; forgotten
on restart). :class:`SQLiteDedupStore` keeps them in a table of the application's SQLite
database, and is the pattern for any SQL database (docs/sdk.md shows PostgreSQL). The
strongest form writes the job id in the same transaction as the work itself
(examples/dedup_worker.py): then no crash can separate the two.

Standard library only.
"""

from __future__ import annotations

import enum
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol


class Claim(enum.Enum):
    """What :meth:`DedupStore.claim` found."""

    NEW = "new"
    DONE = "done"
    BUSY = "busy"


class DedupStore(Protocol):
    """
    Remembers which jobs were done (see the module's text). Calls may come from several
    threads at once: ``claim`` must be atomic (two claims of one id: one ``NEW``).
    """

    def claim(self, job_id: str) -> Claim: ...

    def complete(self, job_id: str) -> None: ...

    def release(self, job_id: str) -> None: ...


class MemoryDedupStore:
    """
    Job ids in memory: the ``max_done`` most recently done (older ones are forgotten
    first, so memory stays bounded) and those being done now. Thread-safe.

    Keep ``max_done`` above the number of jobs done while HQ may still redeliver one
    (its retries' total wait); use a database-backed store to survive restarts.
    """

    def __init__(self, max_done: int = 100_000) -> None:
        if max_done < 1:
            raise ValueError(f"max_done must be 1 or more, not {max_done}")
        self._max_done = max_done
        self._done: OrderedDict[str, None] = OrderedDict()
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, job_id: str) -> Claim:
        """Return whether ``job_id`` is new (now claimed), done or being done."""
        with self._lock:
            if job_id in self._done:
                self._done.move_to_end(job_id)
                return Claim.DONE
            if job_id in self._busy:
                return Claim.BUSY
            self._busy.add(job_id)
            return Claim.NEW

    def complete(self, job_id: str) -> None:
        """Remember ``job_id`` as done (forgetting the oldest beyond ``max_done``)."""
        with self._lock:
            self._busy.discard(job_id)
            self._done[job_id] = None
            self._done.move_to_end(job_id)
            while len(self._done) > self._max_done:
                self._done.popitem(last=False)

    def release(self, job_id: str) -> None:
        """Forget the claim on ``job_id``: its next delivery does it."""
        with self._lock:
            self._busy.discard(job_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._done)


#: The table :class:`SQLiteDedupStore` keeps (the same shape works on PostgreSQL).
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS hq_jobs_done (
    job_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,            -- 'busy' while being done, then 'done'
    claimed_at REAL NOT NULL        -- Unix time of the claim or of completion
)
"""


class SQLiteDedupStore:
    """
    Job ids in a table (``hq_jobs_done``) of the SQLite database at ``path``: they survive
    restarts and are shared by every process of the worker.

    A claim older than ``stale_after`` seconds (a process that died in the middle of a job)
    is taken over by the next delivery. :meth:`prune` forgets ids done more than some
    seconds ago, to keep the table bounded (run it now and then). Each call opens its own
    connection, so the store is safe from any thread.
    """

    def __init__(
        self,
        path: str,
        *,
        stale_after: float = 600,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._stale_after = stale_after
        self._now = now
        conn = self._connect()
        try:
            conn.execute(SQLITE_SCHEMA)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        # autocommit off, BEGIN IMMEDIATE taken by hand: claims are serialized.
        return sqlite3.connect(self._path, timeout=30, isolation_level=None)

    def claim(self, job_id: str) -> Claim:
        """Return whether ``job_id`` is new (now claimed), done or being done."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "SELECT state, claimed_at FROM hq_jobs_done WHERE job_id = ?", (job_id,)
            ).fetchone()
            now = self._now()
            if row is None:
                conn.execute(
                    "INSERT INTO hq_jobs_done (job_id, state, claimed_at) VALUES (?, 'busy', ?)",
                    (job_id, now),
                )
                claim = Claim.NEW
            elif row[0] == "done":
                claim = Claim.DONE
            elif now - row[1] > self._stale_after:
                conn.execute(
                    "UPDATE hq_jobs_done SET claimed_at = ? WHERE job_id = ?", (now, job_id)
                )
                claim = Claim.NEW
            else:
                claim = Claim.BUSY
            conn.execute("COMMIT")
            return claim
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def complete(self, job_id: str) -> None:
        """Remember ``job_id`` as done."""
        conn = self._connect()
        try:
            conn.execute(
                "INSERT INTO hq_jobs_done (job_id, state, claimed_at) VALUES (?, 'done', ?) "
                "ON CONFLICT (job_id) DO UPDATE "
                "SET state = 'done', claimed_at = excluded.claimed_at",
                (job_id, self._now()),
            )
        finally:
            conn.close()

    def release(self, job_id: str) -> None:
        """Forget the claim on ``job_id`` (not a completion): its next delivery does it."""
        conn = self._connect()
        try:
            conn.execute("DELETE FROM hq_jobs_done WHERE job_id = ? AND state = 'busy'", (job_id,))
        finally:
            conn.close()

    def prune(self, older_than: float) -> int:
        """Forget ids done more than ``older_than`` seconds ago; return how many."""
        conn = self._connect()
        try:
            cursor = conn.execute(
                "DELETE FROM hq_jobs_done WHERE state = 'done' AND claimed_at < ?",
                (self._now() - older_than,),
            )
            return cursor.rowcount
        finally:
            conn.close()
