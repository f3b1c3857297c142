"""
``hq backup``: a consistent, checked copy of a database that is being written,
and the command's messages. The same against a real server under load is in
tests/test_operations.py.
"""

from __future__ import annotations

import io
import os
import sqlite3
import sys
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from hq.backup import BackupError, backup_database, backup_name, database_path
from hq.cli import run_cli
from hq.store.sqlite import SCHEMA_VERSION
from tests.schema_v1 import make_v1_data_dir, sample_rows


def make_database(data_dir: str, jobs: int = 3) -> str:
    """
    Return the path of a version-1 HQ database in ``data_dir`` with ``jobs`` rows.
    """
    rows = sample_rows("http://127.0.0.1:9/w")
    base = rows[-1]
    extra = [dict(base, id=base["id"] + n) for n in range(1, max(0, jobs - len(rows)) + 1)]
    return make_v1_data_dir(data_dir, (rows + extra)[:jobs])


class BackupDatabaseTests(SynchronousTestCase):
    """
    :func:`hq.backup.backup_database`.
    """

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.source = make_database(self.data_dir, jobs=5)
        self.out = self.mktemp()
        os.makedirs(self.out)

    def test_copy_is_whole_checked_and_self_contained(self) -> None:
        """The copy holds every job, passes integrity_check and needs no -wal file."""
        dest = os.path.join(self.out, "b.sqlite3")
        result = backup_database(self.source, dest)
        self.assertEqual((result.path, result.jobs, result.schema_version), (dest, 5, 1))
        self.assertEqual(result.size, os.path.getsize(dest))
        self.assertEqual(sorted(os.listdir(self.out)), ["b.sqlite3"])
        conn = sqlite3.connect(dest)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "delete")
        self.assertEqual(conn.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        self.assertEqual(conn.execute("SELECT count(*) FROM jobs").fetchone()[0], 5)

    def test_directory_destination_gets_a_timestamped_name(self) -> None:
        """A directory as destination gets hq-<UTC time>.sqlite3 inside it."""
        result = backup_database(self.source, self.out)
        self.assertEqual(os.path.dirname(result.path), self.out)
        self.assertRegex(os.path.basename(result.path), r"\Ahq-\d{8}T\d{6}Z\.sqlite3\Z")
        self.assertEqual(backup_name(0), "hq-19700101T000000Z.sqlite3")

    def test_existing_destination_needs_overwrite(self) -> None:
        """An existing destination is refused, and replaced with overwrite."""
        dest = os.path.join(self.out, "b.sqlite3")
        with open(dest, "w") as f:
            f.write("precious")
        with self.assertRaises(BackupError) as e:
            backup_database(self.source, dest)
        self.assertIn("exists", str(e.exception))
        with open(dest) as f:
            self.assertEqual(f.read(), "precious")
        self.assertEqual(backup_database(self.source, dest, overwrite=True).jobs, 5)

    def test_missing_source(self) -> None:
        """A data_dir without a database is named in the error."""
        with self.assertRaises(BackupError) as e:
            backup_database(database_path(self.mktemp()), os.path.join(self.out, "b"))
        self.assertIn("no HQ database at", str(e.exception))

    def test_not_a_database_leaves_nothing(self) -> None:
        """A source that is not SQLite fails clearly and leaves no partial file."""
        bogus = self.mktemp()
        with open(bogus, "wb") as f:
            f.write(b"not a database at all" * 100)
        with self.assertRaises(BackupError):
            backup_database(bogus, os.path.join(self.out, "b.sqlite3"))
        self.assertEqual(os.listdir(self.out), [])

    def test_unwritable_destination(self) -> None:
        """A destination that cannot be written is an error naming it."""
        with self.assertRaises(BackupError) as e:
            backup_database(self.source, os.path.join(self.out, "missing", "b.sqlite3"))
        self.assertIn("cannot write", str(e.exception))

    def test_snapshot_while_another_connection_commits(self) -> None:
        """
        While another connection commits row after row, the copy is one
        snapshot: a prefix of the rows with no gap, at least those committed
        before the backup began.
        """
        conn = sqlite3.connect(self.source, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE seq (n INTEGER PRIMARY KEY, pad TEXT)")
        committed = [0]
        stop = threading.Event()

        def write() -> None:
            n = 0
            while not stop.is_set():
                conn.execute("INSERT INTO seq VALUES (?, ?)", (n, "x" * 500))
                n += 1
                committed[0] = n

        writer = threading.Thread(target=write)
        writer.start()
        try:
            while committed[0] < 2000:
                time.sleep(0.01)
            before = committed[0]
            result = backup_database(self.source, os.path.join(self.out, "b.sqlite3"))
            after = committed[0]
        finally:
            stop.set()
            writer.join()
            conn.close()
        copy = sqlite3.connect(result.path)
        self.addCleanup(copy.close)
        count, low, high = copy.execute("SELECT count(*), min(n), max(n) FROM seq").fetchone()
        self.assertEqual((low, high), (0, count - 1))
        self.assertGreaterEqual(count, before)
        self.assertLessEqual(count, after)
        self.assertGreater(after, before, "the writer was not blocked by the backup")


class BackupCommandTests(SynchronousTestCase):
    """
    ``hq backup`` on the command line.
    """

    def setUp(self) -> None:
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)
        self.data_dir = os.path.abspath(self.mktemp())
        make_database(self.data_dir, jobs=3)
        self.dest = os.path.abspath(self.mktemp())

    def test_data_dir_option(self) -> None:
        """--data-dir names the directory; the copy and its job count are printed."""
        code = run_cli(["backup", "--data-dir", self.data_dir, self.dest])
        self.assertEqual(code, 0, self.err.getvalue())
        self.assertRegex(
            self.out.getvalue(),
            rf"\ABacked up 3 jobs \(schema version 1, [\d.]+ KiB\) to {self.dest} in [\d.]+ s\n\Z",
        )
        self.assertTrue(os.path.isfile(self.dest))

    def test_data_dir_from_config_file(self) -> None:
        """-c reads data_dir from the config file (as hq serve does)."""
        config = self.mktemp()
        with open(config, "w") as f:
            f.write(f'data_dir = "{self.data_dir}"\n')
        self.assertEqual(run_cli(["backup", "-c", config, self.dest]), 0, self.err.getvalue())
        self.assertIn("Backed up 3 jobs", self.out.getvalue())

    def test_data_dir_unset(self) -> None:
        """A config without data_dir is an error saying so, exit 1."""
        config = self.mktemp()
        with open(config, "w") as f:
            f.write("ui = true\n")
        self.assertEqual(run_cli(["backup", "-c", config, self.dest]), 1)
        self.assertIn(f"error: data_dir is not set in {config}", self.err.getvalue())

    def test_bad_config(self) -> None:
        """An invalid config file is reported by key, exit 1."""
        config = self.mktemp()
        with open(config, "w") as f:
            f.write("nonsense = 1\n")
        self.assertEqual(run_cli(["backup", "-c", config, self.dest]), 1)
        self.assertIn("error: unknown configuration key 'nonsense'", self.err.getvalue())

    def test_existing_destination(self) -> None:
        """A second backup to the same file needs --force."""
        self.assertEqual(run_cli(["backup", "-d", self.data_dir, self.dest]), 0)
        self.assertEqual(run_cli(["backup", "-d", self.data_dir, self.dest]), 1)
        self.assertIn("exists; remove it or pass --force", self.err.getvalue())
        self.assertEqual(run_cli(["backup", "-d", self.data_dir, "--force", self.dest]), 0)

    def test_upgraded_database_reports_current_schema(self) -> None:
        """The schema version printed is the file's own."""
        conn = sqlite3.connect(database_path(self.data_dir))
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.close()
        self.assertEqual(run_cli(["backup", "-d", self.data_dir, self.dest]), 0)
        self.assertIn(f"schema version {SCHEMA_VERSION}", self.out.getvalue())

    def test_postgresql_store_points_to_pg_dump(self) -> None:
        """A config whose store is PostgreSQL is refused, exit 1, naming pg_dump and PITR."""
        config = self.mktemp()
        with open(config, "w") as f:
            f.write('store = "postgresql://hq:secret@db.example/hq"\n')
        self.assertEqual(run_cli(["backup", "-c", config, self.dest]), 1)
        err = self.err.getvalue()
        self.assertTrue(err.startswith(f"error: the store of {config} is PostgreSQL"), err)
        self.assertIn("pg_dump", err)
        self.assertIn("point-in-time recovery", err)
        self.assertNotIn("secret", err)
        self.assertEqual(self.out.getvalue(), "")
        self.assertFalse(os.path.exists(self.dest))
