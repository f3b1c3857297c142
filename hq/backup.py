"""
``hq backup``: a consistent copy of an HQ database, taken while the server runs.

The copy is made from a separate read-only connection with SQLite's online
backup API in one step: one read transaction, so one consistent snapshot (the
state after some commit, never half of one). The database is in WAL mode, so
that reader does not block the server's writer: the server keeps accepting and
delivering jobs meanwhile, and jobs committed during the copy are simply not in
it. (Copying page by page instead would restart at every commit the server
makes, and might never end on a busy server.)

The copy is written beside its destination as ``DEST.partial``, switched to a
self-contained rollback-journal file (no ``-wal`` beside it), checked with
``PRAGMA integrity_check``, synced, and only then renamed to ``DEST``: a
``DEST`` that exists is a whole, checked backup.

No reactor is involved: this runs in the ``hq`` command's process, which
blocks on the copy.
"""

from __future__ import annotations

import os
import sqlite3
import time
from urllib.parse import quote

import attrs

from hq.store.sqlite import DATABASE_FILE

#: Seconds to wait for a lock the server holds for a moment (a checkpoint).
BUSY_TIMEOUT = 30


class BackupError(Exception):
    """
    The backup could not be made; the message says why, for a person.
    """


@attrs.frozen
class BackupResult:
    """
    What :func:`backup_database` wrote.
    """

    path: str
    jobs: int
    schema_version: int
    size: int
    seconds: float


def database_path(data_dir: str) -> str:
    """
    Return the database file of ``data_dir``.
    """
    return os.path.join(data_dir, DATABASE_FILE)


def backup_name(now: float) -> str:
    """
    Return the file name for a backup made at ``now`` (seconds since the epoch)
    into a directory: ``hq-20240131T120000Z.sqlite3``.
    """
    return time.strftime("hq-%Y%m%dT%H%M%SZ.sqlite3", time.gmtime(now))


def _sync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _give_back_side_files(source: str) -> None:
    """
    Reading a WAL database creates its ``-wal`` and ``-shm`` files if the
    server is not running. Made by root, they would keep the server's own
    user from opening its database: give them to the database's owner.
    """
    if os.geteuid() != 0:
        return
    owner = os.stat(source)
    for suffix in ("-wal", "-shm"):
        side = source + suffix
        try:
            st = os.stat(side)
            if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
                os.chown(side, owner.st_uid, owner.st_gid)
        except FileNotFoundError:
            pass


def backup_database(source: str, destination: str, *, overwrite: bool = False) -> BackupResult:
    """
    Copy the HQ database ``source`` to ``destination`` (a file, or an
    existing directory to put a timestamped file in) while the server may be
    writing it. Blocks until the copy is written, checked and synced.

    :raises BackupError: when the source is missing or unreadable, the
        destination exists (without ``overwrite``) or cannot be written, or the
        copy fails its integrity check.
    """
    began = time.monotonic()
    if not os.path.isfile(source):
        raise BackupError(f"no HQ database at {source}")
    if os.path.isdir(destination):
        destination = os.path.join(destination, backup_name(time.time()))
    if os.path.exists(destination) and not overwrite:
        raise BackupError(f"{destination} exists; remove it or pass --force")
    partial = destination + ".partial"
    try:
        if os.path.exists(partial):
            os.remove(partial)
        target = sqlite3.connect(partial, isolation_level=None)
    except (OSError, sqlite3.Error) as e:
        raise BackupError(f"cannot write {partial}: {e}") from None
    try:
        try:
            origin = sqlite3.connect(
                f"file:{quote(os.path.abspath(source))}?mode=ro",
                uri=True,
                isolation_level=None,
                timeout=BUSY_TIMEOUT,
            )
        except sqlite3.Error as e:
            raise BackupError(f"cannot open {source}: {e}") from None
        try:
            # One step (pages=-1): one snapshot, and no restart when the server commits.
            origin.backup(target, pages=-1)
        except sqlite3.Error as e:
            raise BackupError(f"cannot copy {source}: {e}") from None
        finally:
            origin.close()
            _give_back_side_files(source)
        try:
            target.execute("PRAGMA journal_mode = DELETE")
            problems = [row[0] for row in target.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise BackupError(
                    f"the copy of {source} failed its integrity check: {'; '.join(problems[:5])}"
                )
            version = target.execute("PRAGMA user_version").fetchone()[0]
            jobs = target.execute("SELECT count(*) FROM jobs").fetchone()[0]
        except sqlite3.Error as e:
            raise BackupError(f"the copy of {source} is not an HQ database: {e}") from None
    except BaseException:
        target.close()
        try:
            os.remove(partial)
        except OSError:
            pass
        raise
    target.close()
    try:
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, destination)
        _sync_directory(os.path.dirname(os.path.abspath(destination)))
        size = os.path.getsize(destination)
    except OSError as e:
        raise BackupError(f"cannot write {destination}: {e.strerror}") from None
    return BackupResult(
        path=destination,
        jobs=jobs,
        schema_version=version,
        size=size,
        seconds=time.monotonic() - began,
    )
