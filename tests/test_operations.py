"""
Running HQ in production: readiness notification, JSON logs, log rotation,
schema upgrades, health under an unwritable store, backup under load and the
shipped contrib/ files. Most tests run the real server process on 127.0.0.1.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from twisted.internet import reactor
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from hq import __version__
from hq.config import load_config
from hq.logs import JSONLineObserver, ReopenableFile, app_observer
from hq.model import JobTemplate, Schedule
from hq.store import StoreError
from hq.store.sqlite import _SCHEMA, SCHEMA_VERSION, SQLiteStore
from hq.systemd import notify_address, sd_notify
from tests.schema_v1 import T0_MS, V1_STATEMENTS, make_v1_data_dir, sample_rows
from tests.schema_v2 import V2_STATEMENTS, V2_WRITER, make_v2_data_dir
from tests.schema_v2 import sample_rows as v2_rows
from tests.schema_v3 import V3_STATEMENTS, make_v3_data_dir
from tests.schema_v3 import sample_rows as v3_rows
from tests.serverprocess import ROOT, RecordingWorker, ServerProcess, wait_for

CONTRIB = os.path.join(ROOT, "contrib")


def _normalised(statement: str) -> str:
    return " ".join(statement.split())


# -- sd_notify ------------------------------------------------------------------


class NotifyTests(SynchronousTestCase):
    """
    :func:`hq.systemd.sd_notify` over a real unix datagram socket.
    """

    def receiver(self, address: str | bytes) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(address)
        sock.settimeout(5)
        return sock

    def test_path_socket(self) -> None:
        """A NOTIFY_SOCKET path gets the state as one datagram."""
        directory = tempfile.mkdtemp(prefix="hqn")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "notify")
        sock = self.receiver(path)
        self.assertTrue(sd_notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": path}))
        self.assertEqual(sock.recv(4096), b"READY=1\nSTATUS=up")

    def test_abstract_socket(self) -> None:
        """A leading @ names the abstract namespace."""
        name = f"hq-test-{os.getpid()}-{time.monotonic_ns()}"
        sock = self.receiver(b"\0" + name.encode())
        self.assertEqual(notify_address({"NOTIFY_SOCKET": "@" + name}), b"\0" + name.encode())
        self.assertTrue(sd_notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(sock.recv(4096), b"STOPPING=1")

    def test_no_socket_is_a_no_op(self) -> None:
        """Without NOTIFY_SOCKET (not under systemd) nothing is sent."""
        self.assertFalse(sd_notify("READY=1", {}))
        self.assertIsNone(notify_address({"NOTIFY_SOCKET": "relative/path"}))

    def test_unreachable_socket_does_not_raise(self) -> None:
        """A socket that is gone makes sd_notify return False, not raise."""
        self.assertFalse(sd_notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/hq/notify"}))


# -- JSON logs -------------------------------------------------------------------


class MemoryFile(ReopenableFile):
    """
    A ReopenableFile that keeps what is written.
    """

    def __init__(self) -> None:
        self.path = ""
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)

    def flush(self) -> None:
        pass


class JSONLogTests(SynchronousTestCase):
    """
    ``log_format = "json"``: one JSON object per event.
    """

    def test_structured_fields_and_message(self) -> None:
        """An event becomes a line with time, level, namespace, message and its own fields."""
        out = MemoryFile()
        log = Logger(namespace="hq.test", observer=JSONLineObserver(out))
        log.info("Job {jobID} failed: {err}", jobID=123, err="boom", other=object())
        self.assertEqual(len(out.lines), 1)
        self.assertTrue(out.lines[0].endswith("\n"))
        self.assertEqual(out.lines[0].count("\n"), 1)
        record = json.loads(out.lines[0])
        self.assertEqual(list(record)[:4], ["time", "level", "namespace", "message"])
        self.assertRegex(record["time"], r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["namespace"], "hq.test")
        self.assertEqual(record["message"], "Job 123 failed: boom")
        self.assertEqual((record["jobID"], record["err"]), (123, "boom"))
        self.assertIn("object object", record["other"])
        self.assertFalse([key for key in record if key.startswith("log_")])

    def test_unserialisable_fields_do_not_lose_the_event(self) -> None:
        """A field json cannot encode (tuple keys) is written as text; the line stays."""
        out = MemoryFile()
        log = Logger(namespace="hq.test", observer=JSONLineObserver(out))
        log.info("odd {value}", value={(1, 2): "x"})
        record = json.loads(out.lines[0])
        self.assertEqual(record["value"], "{(1, 2): 'x'}")
        self.assertEqual(record["message"], "odd {(1, 2): 'x'}")

    def test_failure_has_error_and_traceback(self) -> None:
        """A logged failure carries the error and its traceback."""
        out = MemoryFile()
        log = Logger(namespace="hq.test", observer=JSONLineObserver(out))
        try:
            raise ValueError("bad value\nsecond line")
        except ValueError:
            log.failure("Could not do {thing}", thing="it")
        record = json.loads(out.lines[0])
        self.assertEqual(record["level"], "critical")
        self.assertEqual(record["message"], "Could not do it")
        self.assertEqual(record["error"], "ValueError: bad value\nsecond line")
        self.assertIn("Traceback", record["traceback"])

    def test_level_filter_applies(self) -> None:
        """The json app observer keeps log_level filtering."""
        out = MemoryFile()
        log = Logger(namespace="hq.test", observer=app_observer("warn", out, "json"))
        log.info("hidden")
        log.warn("shown")
        self.assertEqual([json.loads(line)["message"] for line in out.lines], ["shown"])
        self.assertEqual(json.loads(out.lines[0])["level"], LogLevel.warn.name)


# -- Schema upgrades (in process) ------------------------------------------------


class SchemaUpgradeTests(TestCase):
    """
    A data_dir of the first released schema, opened by this HQ.
    """

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.rows = sample_rows("http://127.0.0.1:9/waiting")
        self.path = make_v1_data_dir(self.data_dir, self.rows)

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(query).fetchall()
        finally:
            conn.close()

    def test_version_1_statements_are_frozen(self) -> None:
        """The store's version-1 statements are still those of the first release."""
        self.assertEqual(
            [_normalised(s) for s in _SCHEMA[0]], [_normalised(s) for s in V1_STATEMENTS]
        )
        self.assertEqual(len(_SCHEMA), SCHEMA_VERSION)

    async def test_upgrade_in_place_keeps_every_job(self) -> None:
        """Opening a version-1 file upgrades it to the current version, jobs intact."""
        store = SQLiteStore(self.data_dir, reactor)
        await store.open()
        try:
            for row in self.rows:
                job = await store.get(row["id"])
                self.assertEqual(
                    (job.url, job.status, job.status_code, job.output, job.attempts),
                    (row["url"], row["status"], row["status_code"], row["output"], row["attempts"]),
                )
            first = await store.get(self.rows[0]["id"])
            self.assertEqual((first.payload, first.headers), ('{"n":1}', {"X-A": "b"}))
            counts = await store.counts(0, 0)
            self.assertEqual((counts.stored, counts.waiting, counts.running), (3, 1, 0))
            waiting = await store.waiting_jobs((0, 0), 1 << 62, 10)
            self.assertEqual([j.id for j in waiting], [self.rows[2]["id"]])
        finally:
            await store.close()
        self.assertEqual(self.sql("PRAGMA user_version"), [(SCHEMA_VERSION,)])
        self.assertEqual(
            dict(self.sql("SELECT key, value FROM meta")), {"last_opened_by": f"HQ {__version__}"}
        )
        self.assertEqual(self.sql("PRAGMA integrity_check"), [("ok",)])

    async def test_failed_upgrade_changes_nothing(self) -> None:
        """An upgrade that fails half-way rolls back: still version 1, jobs untouched."""
        conn = sqlite3.connect(self.path)
        # In the way of version 2's CREATE TABLE meta.
        conn.execute("CREATE TABLE meta (x)")
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
        conn.close()
        store = SQLiteStore(self.data_dir, reactor)
        with self.assertRaises(StoreError) as e:
            await store.open()
        self.assertEqual(
            str(e.exception),
            f"cannot upgrade {self.path} from schema version 1 to {SCHEMA_VERSION}: "
            "table meta already exists; the file is unchanged",
        )
        self.assertEqual(self.sql("PRAGMA user_version"), [(1,)])
        self.assertEqual(self.sql("SELECT count(*) FROM jobs"), [(3,)])

    async def test_upgrade_is_all_or_nothing(self) -> None:
        """
        A later migration whose second statement fails leaves none of its
        statements, nor the versions before it, in the file.
        """
        import hq.store.sqlitefile as sqlite_store

        broken = [
            "CREATE TABLE added_by_next_version (x)",
            "CREATE INDEX broken ON no_such_table (x)",
        ]
        self.patch(sqlite_store, "_SCHEMA", [*_SCHEMA, broken])
        self.patch(sqlite_store, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
        store = SQLiteStore(self.data_dir, reactor)
        with self.assertRaises(StoreError) as e:
            await store.open()
        self.assertIn("no such table: main.no_such_table", str(e.exception))
        self.assertEqual(self.sql("PRAGMA user_version"), [(1,)])
        tables = {row[0] for row in self.sql("SELECT name FROM sqlite_master WHERE type='table'")}
        self.assertEqual(tables, {"jobs"})
        self.assertEqual(self.sql("SELECT count(*) FROM jobs"), [(3,)])

    async def test_newer_schema_refused_naming_versions(self) -> None:
        """A file from a newer HQ is refused, naming both versions and the HQ that wrote it."""
        store = SQLiteStore(self.data_dir, reactor)
        await store.open()
        await store.close()
        conn = sqlite3.connect(self.path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.execute("REPLACE INTO meta VALUES ('last_opened_by', 'HQ 9.9.9')")
        conn.commit()
        conn.close()
        store = SQLiteStore(self.data_dir, reactor)
        with self.assertRaises(StoreError) as e:
            await store.open()
        message = str(e.exception)
        self.assertIn(
            f"schema version {SCHEMA_VERSION + 1}, written by a newer HQ (HQ 9.9.9)", message
        )
        self.assertIn(f"knows schema versions up to {SCHEMA_VERSION}", message)
        self.assertIn("will not downgrade", message)
        self.assertEqual(self.sql("PRAGMA user_version"), [(SCHEMA_VERSION + 1,)])


class SchemaUpgradeFromV2Tests(TestCase):
    """
    A data_dir of the second released schema (HQ 0.1.0), jobs in every
    state, opened by this HQ.
    """

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.rows = v2_rows("http://127.0.0.1:9")
        self.path = make_v2_data_dir(self.data_dir, self.rows)

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(query).fetchall()
        finally:
            conn.close()

    def test_version_2_statements_are_frozen(self) -> None:
        """The store's version-1 and -2 statements are still those of HQ 0.1.0."""
        self.assertEqual(
            [_normalised(s) for s in [*_SCHEMA[0], *_SCHEMA[1]]],
            [_normalised(s) for s in V2_STATEMENTS],
        )

    async def test_upgrade_in_place_keeps_every_job(self) -> None:
        """
        Opening a version-2 file upgrades it to version 3: finished jobs keep
        every field, no job has retries or an attempt history, waiting jobs
        are due at their creation and come out in id order after recovery.
        """
        store = SQLiteStore(self.data_dir, reactor)
        await store.open()
        try:
            for row in self.rows:
                job = await store.get(row["id"])
                self.assertEqual(
                    (
                        job.url,
                        job.status,
                        job.status_code,
                        job.err,
                        job.output,
                        job.output_truncated,
                        job.started_at,
                        job.finished_at,
                        job.attempts,
                    ),
                    (
                        row["url"],
                        row["status"],
                        row["status_code"],
                        row["err"],
                        row["output"],
                        bool(row["output_truncated"]),
                        row["started_at"],
                        row["finished_at"],
                        row["attempts"],
                    ),
                )
                self.assertEqual((job.retries, job.run_at, job.idempotency_key), (0, None, None))
                self.assertEqual(await store.attempts(row["id"]), [])
            first = await store.get(self.rows[0]["id"])
            self.assertEqual((first.payload, first.headers), ('{"n":1}', {"X-A": "b"}))
            counts = await store.counts(0, 1 << 62)
            self.assertEqual(
                (counts.stored, counts.waiting, counts.running, counts.scheduled), (7, 2, 2, 0)
            )
            recovery = await store.recover(T0_MS + 100)
            self.assertEqual((recovery.requeued, recovery.canceled), (1, 1))
            self.assertEqual((await store.get(self.rows[4]["id"])).status, "canceled")
            waiting = await store.waiting_jobs((0, 0), 1 << 62, 10)
            self.assertEqual(
                [j.id for j in waiting], [r["id"] for r in self.rows[3:4] + self.rows[5:]]
            )
            self.assertEqual([j.attempts for j in waiting], [1, 0, 0])
            # Nothing is scheduled: every waiting job is due since its creation.
            self.assertIsNone(await store.next_due(T0_MS + 5))
        finally:
            await store.close()
        self.assertEqual(self.sql("PRAGMA user_version"), [(SCHEMA_VERSION,)])
        meta = dict(self.sql("SELECT key, value FROM meta"))
        self.assertEqual(meta["created_by"], V2_WRITER)
        self.assertEqual(meta["last_opened_by"], f"HQ {__version__}")
        self.assertEqual(meta["max_id"], str(self.rows[-1]["id"]))
        indexes = {row[0] for row in self.sql("SELECT name FROM sqlite_master WHERE type='index'")}
        self.assertIn("jobs_due", indexes)
        self.assertNotIn("jobs_waiting", indexes)
        # The job running at the crash: its attempt is recorded as interrupted.
        self.assertEqual(
            self.sql("SELECT count(*) FROM attempts WHERE err LIKE 'interrupted%'"), [(1,)]
        )
        self.assertEqual(self.sql("SELECT count(*) FROM attempts"), [(1,)])
        self.assertEqual(self.sql("SELECT count(*) FROM idempotency_keys"), [(0,)])
        self.assertEqual(self.sql("PRAGMA integrity_check"), [("ok",)])

    async def test_failed_upgrade_keeps_version_2(self) -> None:
        """A version-3 upgrade that fails half-way rolls back: still version 2, jobs untouched."""
        conn = sqlite3.connect(self.path)
        # In the way of version 3's CREATE TABLE attempts, after its ALTER TABLEs.
        conn.execute("CREATE TABLE attempts (x)")
        conn.commit()
        conn.close()
        store = SQLiteStore(self.data_dir, reactor)
        with self.assertRaises(StoreError) as e:
            await store.open()
        self.assertEqual(
            str(e.exception),
            f"cannot upgrade {self.path} from schema version 2 to {SCHEMA_VERSION}: "
            "table attempts already exists; the file is unchanged",
        )
        self.assertEqual(self.sql("PRAGMA user_version"), [(2,)])
        columns = {row[1] for row in self.sql("PRAGMA table_info(jobs)")}
        self.assertNotIn("retries", columns)
        self.assertEqual(self.sql("SELECT count(*), sum(run_after) FROM jobs"), [(7, 0)])


# -- The real server ---------------------------------------------------------------


class StdoutServer(ServerProcess):
    """
    A server that logs to standard output (read by a thread), with extra
    environment variables.
    """

    def __init__(self, directory: str, env: dict[str, str] | None = None, **config: Any) -> None:
        config.setdefault("log_file", "")
        config.setdefault("access_log_file", "")
        super().__init__(directory, **config)
        self.env = dict(os.environ, **(env or {}))
        self.output: list[str] = []

    def start(self, wait: bool = True) -> StdoutServer:
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env
        )
        stdout = self.process.stdout
        assert stdout is not None

        def read() -> None:
            for line in iter(stdout.readline, b""):
                self.output.append(line.decode("utf-8", "replace"))

        threading.Thread(target=read, daemon=True).start()
        if wait:
            match = wait_for(self._listening, 20, "the server to listen")
            self.base = f"http://{match.group(1)}:{match.group(2)}"
        return self

    def _listening(self) -> re.Match[str] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            time.sleep(0.2)
            raise AssertionError(f"server exited: {''.join(self.output)}")
        return re.search(r"listening on http://([\d.]+):(\d+)", "".join(self.output))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def http(method: str, url: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
    """
    Call ``url``; return the status and the decoded JSON body.
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Pusher:
    """
    Threads that push jobs to ``server`` until stopped, recording the id and
    the time of every push answered 200.
    """

    def __init__(self, base: str, url: str, threads: int = 2) -> None:
        self.base = base
        self.url = url
        self.acked: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, job = http("POST", self.base + "/job", {"url": self.url})
            except OSError as e:
                self.errors.append(str(e))
                continue
            if status == 200:
                with self._lock:
                    self.acked.append((time.monotonic(), job["id"]))
            else:
                self.errors.append(f"{status} {job}")

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def ids_before(self, moment: float) -> set[str]:
        """
        The ids of the pushes answered before ``moment`` (``time.monotonic``).
        """
        with self._lock:
            return {job_id for at, job_id in self.acked if at < moment}

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


class ProcessTests(SynchronousTestCase):
    """
    HQ as an operator runs it.
    """

    def setUp(self) -> None:
        self.worker = RecordingWorker()
        self.addCleanup(self.worker.close)

    def server(self, **config: Any) -> ServerProcess:
        server = ServerProcess(self.mktemp(), **config)
        self.addCleanup(server.stop)
        return server

    # -- readiness

    def test_ready_notification_comes_when_the_api_answers(self) -> None:
        """With NOTIFY_SOCKET, READY=1 arrives once GET / answers; SIGTERM sends STOPPING=1."""
        name = f"hq-ready-{os.getpid()}-{time.monotonic_ns()}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(b"\0" + name.encode())
        sock.settimeout(20)
        directory = os.path.abspath(self.mktemp())
        log_file = os.path.join(directory, "hq.log")
        server = StdoutServer(directory, env={"NOTIFY_SOCKET": "@" + name}, log_file=log_file)
        self.addCleanup(server.stop)
        server.start(wait=False)
        ready = sock.recv(4096).decode()
        self.assertTrue(ready.startswith("READY=1\n"), ready)
        # The port accepts connections before the "listening" line is logged.
        with open(log_file) as f:
            self.assertIn("listening on", f.read())
        match = re.search(r"STATUS=Listening on (http://127\.0\.0\.1:\d+)", ready)
        assert match is not None, ready
        # Right away, with no retry: the API answers by the time READY=1 is sent.
        status, info = http("GET", match.group(1) + "/")
        self.assertEqual((status, info["version"]), (200, __version__))
        self.assertEqual(http("GET", match.group(1) + "/health")[0], 200)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        self.assertEqual(sock.recv(4096), b"STOPPING=1")
        server.process.wait(15)

    # -- health

    def test_health_flips_to_503_when_the_store_cannot_be_written(self) -> None:
        """
        A file size limit of 1 byte on the running server (as a full disk)
        makes /health 503 naming the store; lifting it makes it 200 again.
        """
        if not hasattr(resource, "prlimit"):
            raise SkipTest("resource.prlimit is Linux only")
        # Logs go to a pipe: the limit applies to regular files only.
        server = StdoutServer(self.mktemp())
        self.addCleanup(server.stop)
        server.start()
        assert server.process is not None
        pid = server.process.pid
        self.assertEqual(http("GET", server.base + "/health")[0], 200)
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))
        try:
            status, body = http("GET", server.base + "/health")
            self.assertEqual(status, 503, body)
            self.assertTrue(body["error"].startswith("unhealthy: store: storage unavailable"))
            self.assertNotIn("dispatchers", body["error"])
            self.assertEqual(http("POST", server.base + "/job", {"url": self.worker.url})[0], 503)
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
        status, body = http("GET", server.base + "/health")
        self.assertEqual(status, 200, body)
        self.assertEqual(http("POST", server.base + "/job", {"url": self.worker.url})[0], 200)

    # -- logs

    def count_lines(self, *paths: str) -> int:
        total = 0
        for path in paths:
            with open(path) as f:
                total += sum(1 for _ in f)
        return total

    def test_sigusr1_after_rename_loses_no_line(self) -> None:
        """Logs renamed under traffic, then SIGUSR1: each request's line is in one of the files."""
        server = self.server(log_level="debug").start()
        access = os.path.join(server.directory, "access.log")
        pusher = Pusher(server.base, self.worker.url + "/ok", threads=1)
        self.addCleanup(pusher.stop)
        wait_for(lambda: pusher.count() >= 50, 20, "50 pushes")
        os.rename(access, access + ".1")
        os.rename(server.log_path, server.log_path + ".1")
        wait_for(lambda: pusher.count() >= 100, 20, "more pushes after the rename")
        assert server.process is not None
        server.process.send_signal(signal.SIGUSR1)
        wait_for(lambda: os.path.exists(access), 10, "the access log to be reopened")
        seen = pusher.count()
        wait_for(lambda: pusher.count() >= seen + 50, 20, "pushes after the reopen")
        pusher.stop()
        self.assertEqual(pusher.errors, [])
        requests = pusher.count()

        def logged() -> bool:
            return self.count_lines(access, access + ".1") == requests

        wait_for(logged, 10, f"{requests} access log lines")
        self.assertGreater(self.count_lines(access), 0)
        with open(server.log_path) as f:
            new_log = f.read()
        with open(server.log_path + ".1") as f:
            old_log = f.read()
        self.assertIn("Reopened the log files", new_log)
        self.assertIn("listening on", old_log)
        pushed = len(re.findall(r"Job \d+ pushed", old_log + new_log))
        self.assertEqual(pushed, pusher.count())

    def test_shipped_logrotate_config_loses_no_line(self) -> None:
        """
        logrotate with contrib/logrotate/hq (paths and signal adapted) rotates
        JSON logs under traffic: every line is kept, every line is JSON.
        """
        logrotate = shutil.which("logrotate")
        if logrotate is None:
            raise SkipTest("logrotate is not installed")
        server = self.server(log_level="debug", log_format="json").start()
        assert server.process is not None
        conf = os.path.join(server.directory, "logrotate.conf")
        with open(os.path.join(CONTRIB, "logrotate", "hq")) as f:
            text = f.read()
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        text = text.replace("/var/log/hq/*.log", os.path.join(server.directory, "*.log"))
        text = text.replace(
            "systemctl kill --signal=USR1 hq.service", f"kill -USR1 {server.process.pid}"
        )
        text = text.replace("hq hq", f"{user} {group}")
        if os.getuid() != 0:
            text = re.sub(r"\n\s*su .*", "", text)
        self.assertIn(f"kill -USR1 {server.process.pid}", text)
        with open(conf, "w") as f:
            f.write(text)
        pusher = Pusher(server.base, self.worker.url + "/ok", threads=1)
        self.addCleanup(pusher.stop)
        wait_for(lambda: pusher.count() >= 50, 20, "50 pushes")
        state = os.path.join(server.directory, "logrotate.state")
        rotated = subprocess.run(
            [logrotate, "-f", "-s", state, conf], capture_output=True, text=True, timeout=30
        )
        self.assertEqual(rotated.returncode, 0, rotated.stderr)
        access = os.path.join(server.directory, "access.log")
        wait_for(lambda: os.path.exists(access), 10, "the access log to be reopened")
        seen = pusher.count()
        wait_for(lambda: pusher.count() >= seen + 50, 20, "pushes after the rotation")
        pusher.stop()
        self.assertEqual(pusher.errors, [])
        requests = pusher.count()
        # delaycompress: the rotated files stay plain until the next rotation.
        wait_for(
            lambda: self.count_lines(access, access + ".1") == requests,
            10,
            f"{requests} access log lines",
        )
        records = []
        for path in (access + ".1", access, server.log_path + ".1", server.log_path):
            with open(path) as f:
                records.extend(json.loads(line) for line in f)
        pushed = [
            r for r in records if r.get("namespace") == "hq.api.HQApi" and "pushed" in r["message"]
        ]
        self.assertEqual(len(pushed), pusher.count())
        self.assertEqual({r["method"] for r in records if "method" in r}, {"POST"})
        self.assertTrue(all("time" in r for r in records))

    # -- upgrades

    def test_server_upgrades_a_version_1_data_dir(self) -> None:
        """hq serve on a version-1 data_dir upgrades it in place, keeps and delivers its jobs."""
        directory = self.mktemp()
        data_dir = os.path.join(os.path.abspath(directory), "data")
        rows = sample_rows(self.worker.url + "/after-upgrade")
        make_v1_data_dir(data_dir, rows)
        # job_lifetime 0: the finished jobs of 2024 must not be cleaned up at start.
        server = self.server(data_dir=data_dir, job_lifetime=0)
        server.start()
        waiting_id = str(rows[2]["id"])
        wait_for(lambda: self.worker.received[waiting_id] == 1, 20, "the waiting job's delivery")
        jobs = {job["id"]: job for job in server.jobs()}
        self.assertEqual(set(jobs), {str(row["id"]) for row in rows})
        first = jobs[str(rows[0]["id"])]
        self.assertEqual(
            (first["status"], first["payload"], first["headers"], first["output"]),
            ("success", {"n": 1}, {"X-A": "b"}, "ok"),
        )
        self.assertEqual(jobs[str(rows[1]["id"])]["err"], "Internal Server Error")
        self.assertIn(
            f"Upgraded {data_dir}/hq.sqlite3 from schema version 1 to {SCHEMA_VERSION}",
            server.log_text(),
        )
        server.stop()
        conn = sqlite3.connect(os.path.join(data_dir, "hq.sqlite3"))
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)

    def test_server_upgrades_a_version_2_data_dir(self) -> None:
        """
        hq serve on a version-2 data_dir (jobs in every state) upgrades it in
        place to version 3: the job running at the crash and the waiting ones
        are delivered in id order, the finished ones keep their fields, no
        job has retries or an attempt history.
        """
        directory = self.mktemp()
        data_dir = os.path.join(os.path.abspath(directory), "data")
        rows = v2_rows(self.worker.url)
        make_v2_data_dir(data_dir, rows)
        # One delivery at a time, so the order is the start order.
        server = self.server(data_dir=data_dir, job_lifetime=0, max_workers=1)
        server.start()
        delivered = [str(row["id"]) for row in rows[3:4] + rows[5:]]
        wait_for(lambda: len(self.worker.requests) >= 3, 20, "the three deliveries")
        self.assertEqual([r["headers"]["X-Hq-Job-Id"] for r in self.worker.requests], delivered)
        self.assertEqual(
            [r["path"] for r in self.worker.requests], ["/running", "/waiting-1", "/waiting-2"]
        )
        jobs = wait_for(
            lambda: (
                (jobs := {job["id"]: job for job in server.jobs()})
                and all(jobs[i]["status"] == "success" for i in delivered)
                and jobs
            ),
            10,
            "the deliveries recorded",
        )
        self.assertEqual(set(jobs), {str(row["id"]) for row in rows})
        for row in rows[:3]:
            job = jobs[str(row["id"])]
            self.assertEqual(
                (job["status"], job["statusCode"], job["err"], job["output"], job["attempts"]),
                (row["status"], row["status_code"], row["err"], row["output"], row["attempts"]),
            )
        first = jobs[str(rows[0]["id"])]
        self.assertEqual((first["payload"], first["headers"]), ({"n": 1}, {"X-A": "b"}))
        self.assertEqual(jobs[str(rows[4]["id"])]["status"], "canceled")
        # The crashed delivery counts: attempts 1 before the upgrade, 2 after.
        self.assertEqual([jobs[i]["attempts"] for i in delivered], [2, 1, 1])
        for job in jobs.values():
            self.assertEqual((job["retries"], job["runAt"], job["idempotencyKey"]), (0, None, None))
        status, _ = server.request("GET", f"/job/{rows[0]['id']}/attempts")
        if status == 200:
            for row in rows[:3]:
                status, body = server.request("GET", f"/job/{row['id']}/attempts")
                self.assertEqual((status, body), (200, {"attempts": []}))
        self.assertIn(
            f"Upgraded {data_dir}/hq.sqlite3 from schema version 2 to {SCHEMA_VERSION}",
            server.log_text(),
        )
        server.stop()
        conn = sqlite3.connect(os.path.join(data_dir, "hq.sqlite3"))
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
        self.assertEqual(conn.execute("PRAGMA integrity_check").fetchall(), [("ok",)])

    def test_server_refuses_a_newer_schema(self) -> None:
        """hq serve on a data_dir of a newer schema exits 1 saying it will not downgrade."""
        server = self.server()
        data_dir = os.path.join(server.directory, "data")
        make_v1_data_dir(data_dir, [])
        conn = sqlite3.connect(os.path.join(data_dir, "hq.sqlite3"))
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
        conn.close()
        server.start(wait=False)
        code, output = server.wait_exit()
        self.assertEqual(code, 1, output)
        self.assertIn("has schema version 99, written by a newer HQ", output)
        self.assertIn("will not downgrade", output)

    # -- backup

    def test_backup_under_load_restores_every_acknowledged_job(self) -> None:
        """
        hq backup of a server taking pushes and delivering: the copy passes
        integrity_check, holds every job acknowledged before the backup began,
        and a server started on it serves them.
        """
        server = self.server(max_workers=8).start()
        pusher = Pusher(server.base, self.worker.url + "/ok", threads=3)
        self.addCleanup(pusher.stop)
        wait_for(lambda: pusher.count() >= 300, 30, "300 pushes")
        began = time.monotonic()
        dest = os.path.join(os.path.abspath(self.mktemp()))
        backup = subprocess.run(
            [sys.executable, "-m", "hq.cli", "backup", "-c", server.config_path, dest],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        during = pusher.count()
        wait_for(lambda: pusher.count() >= during + 50, 20, "pushes after the backup")
        pusher.stop()
        self.assertEqual(backup.returncode, 0, backup.stderr)
        self.assertIn("Backed up", backup.stdout)
        self.assertEqual(pusher.errors, [])
        acknowledged = pusher.ids_before(began)
        self.assertGreaterEqual(len(acknowledged), 300)

        conn = sqlite3.connect(dest)
        self.assertEqual(conn.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
        saved = {str(row[0]) for row in conn.execute("SELECT id FROM jobs")}
        conn.close()
        self.assertEqual(acknowledged - saved, set())

        # Restore: a new data_dir holding the copy as its database.
        restored_dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(restored_dir, "data"))
        shutil.copy(dest, os.path.join(restored_dir, "data", "hq.sqlite3"))
        restored = ServerProcess(restored_dir)
        self.addCleanup(restored.stop)
        restored.start()
        served = {job["id"] for job in restored.jobs()}
        self.assertEqual(served, saved)
        self.assertEqual(http("GET", restored.base + "/health")[0], 200)


# -- contrib/ ----------------------------------------------------------------------


def unit_settings(path: str) -> dict[str, list[str]]:
    """
    Return the ``[Service]`` settings of a unit file: key -> values in order.
    """
    settings: dict[str, list[str]] = {}
    section = ""
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]":
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
    return settings


class ContribTests(SynchronousTestCase):
    """
    The unit file, the example config and the logrotate file.
    """

    unit = os.path.join(CONTRIB, "systemd", "hq.service")

    def test_unit_passes_systemd_analyze_verify(self) -> None:
        """systemd-analyze verify finds nothing wrong (ExecStart pointed at this checkout's hq)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed (apt-get install systemd)")
        hq = shutil.which("hq", path=os.path.dirname(sys.executable))
        if hq is None:
            raise SkipTest("the hq console script is not installed beside this Python")
        directory = tempfile.mkdtemp(prefix="hqunit")
        self.addCleanup(shutil.rmtree, directory)
        with open(self.unit) as f:
            text = f.read()
        self.assertIn("ExecStart=/opt/hq/venv/bin/hq serve -c /etc/hq/hq.toml", text)
        copy = os.path.join(directory, "hq.service")
        with open(copy, "w") as f:
            f.write(text.replace("/opt/hq/venv/bin/hq", hq))
        result = subprocess.run(
            [analyze, "verify", "--man=no", copy], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        # Unknown keys and bad values are only warnings: none may mention the unit.
        self.assertNotIn("hq.service", result.stderr + result.stdout)

    def test_unit_settings(self) -> None:
        """notify readiness, an unprivileged user, SIGKILL after a stop timeout, no reload."""
        settings = unit_settings(self.unit)
        expected = {
            "Type": "notify",
            "NotifyAccess": "main",
            "User": "hq",
            "KillMode": "mixed",
            "SendSIGKILL": "yes",
            "Restart": "on-failure",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "PrivateTmp": "yes",
        }
        for key, value in expected.items():
            self.assertEqual(settings.get(key), [value], key)
        self.assertEqual(settings["ReadWritePaths"], ["/var/lib/hq /var/log/hq"])
        self.assertNotIn("ExecReload", settings)

    def test_stop_timeout_exceeds_shutdown_timeout(self) -> None:
        """TimeoutStopSec leaves HQ its shutdown_timeout plus a margin before SIGKILL."""
        stop = int(unit_settings(self.unit)["TimeoutStopSec"][0])
        config = load_config(os.path.join(CONTRIB, "hq.toml"))
        self.assertGreaterEqual(stop, config.shutdown_timeout + 5)

    def test_example_config_is_valid_production_config(self) -> None:
        """contrib/hq.toml loads, and keeps its data and logs where the unit lets it write."""
        config = load_config(os.path.join(CONTRIB, "hq.toml"))
        self.assertEqual(config.data_dir, "/var/lib/hq")
        for path in (config.log_file, config.access_log_file):
            self.assertTrue(path.startswith("/var/log/hq/"), path)
        self.assertTrue(config.metrics)

    def test_logrotate_file_is_valid(self) -> None:
        """logrotate accepts contrib/logrotate/hq (user names adapted), renaming and signalling."""
        logrotate = shutil.which("logrotate")
        if logrotate is None:
            raise SkipTest("logrotate is not installed")
        with open(os.path.join(CONTRIB, "logrotate", "hq")) as f:
            text = f.read()
        directives = [line.split()[0] for line in text.splitlines() if line.strip()[:1] not in "#"]
        self.assertNotIn("copytruncate", directives)
        self.assertIn("delaycompress", directives)
        self.assertIn("USR1", text)
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        directory = tempfile.mkdtemp(prefix="hqlr")
        self.addCleanup(shutil.rmtree, directory)
        conf = os.path.join(directory, "hq")
        with open(conf, "w") as f:
            f.write(text.replace("hq hq", f"{user} {group}"))
        result = subprocess.run(
            [logrotate, "-d", "-s", os.path.join(directory, "state"), conf],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("error:", result.stderr + result.stdout)


class SchemaUpgradeFromV3Tests(TestCase):
    """
    A data_dir of the third schema (retries, keys, attempts), opened by this
    HQ: upgraded in place to version 4 (schedules).
    """

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.rows = v3_rows("http://127.0.0.1:9")
        self.path = make_v3_data_dir(self.data_dir, self.rows)

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(query).fetchall()
        finally:
            conn.close()

    def test_version_3_statements_are_frozen(self) -> None:
        """The store's versions 1 to 3 are still the frozen statements."""
        self.assertEqual(
            [_normalised(s) for s in [*_SCHEMA[0], *_SCHEMA[1], *_SCHEMA[2]]],
            [_normalised(s) for s in V3_STATEMENTS],
        )

    async def test_upgrade_in_place_keeps_jobs_and_adds_schedules(self) -> None:
        """
        Opening a version-3 file upgrades it to version 4: jobs, attempts and
        keys are kept, jobs have no schedule, and schedules can be stored and fired.
        """
        store = SQLiteStore(self.data_dir, reactor)
        await store.open()
        try:
            done, keyed, later = [await store.get(row["id"]) for row in self.rows]
            self.assertEqual((done.status, done.attempts, done.retries), ("success", 2, 1))
            self.assertEqual(keyed.idempotency_key, "k-1")
            self.assertEqual((later.run_at, later.retries), (T0_MS + 3_600_000, 3))
            self.assertEqual([j.schedule_id for j in (done, keyed, later)], [None] * 3)
            self.assertEqual(
                [a.err for a in await store.attempts(done.id)], ["Internal Server Error"]
            )
            self.assertEqual(await store.list_schedules(), [])
            schedule = Schedule(
                id=self.rows[-1]["id"] + 1,
                name="s",
                cron="* * * * *",
                timezone="UTC",
                job=JobTemplate(url="http://127.0.0.1:9/tick", name="s"),
                next_run_at=T0_MS + 60_000,
            )
            await store.add_schedule(schedule)
            job = schedule.job_for(schedule.id + 1)
            self.assertEqual(
                await store.fire(schedule.id, T0_MS + 60_000, job, T0_MS + 120_000), job
            )
        finally:
            await store.close()
        self.assertEqual(self.sql("PRAGMA user_version"), [(SCHEMA_VERSION,)])
        self.assertGreaterEqual(SCHEMA_VERSION, 4)
        indexes = {row[0] for row in self.sql("SELECT name FROM sqlite_master WHERE type='index'")}
        self.assertTrue({"jobs_fires", "schedules_due", "jobs_due"} <= indexes)
        self.assertEqual(self.sql("SELECT count(*) FROM idempotency_keys"), [(1,)])
        self.assertEqual(self.sql("PRAGMA integrity_check"), [("ok",)])

    async def test_failed_upgrade_keeps_version_3(self) -> None:
        """A version-4 upgrade that fails half-way rolls back: still version 3."""
        conn = sqlite3.connect(self.path)
        # In the way of version 4's CREATE TABLE schedules, after its ALTER TABLEs.
        conn.execute("CREATE TABLE schedules (x)")
        conn.commit()
        conn.close()
        store = SQLiteStore(self.data_dir, reactor)
        with self.assertRaises(StoreError) as e:
            await store.open()
        self.assertEqual(
            str(e.exception),
            f"cannot upgrade {self.path} from schema version 3 to {SCHEMA_VERSION}: "
            "table schedules already exists; the file is unchanged",
        )
        self.assertEqual(self.sql("PRAGMA user_version"), [(3,)])
        columns = {row[1] for row in self.sql("PRAGMA table_info(jobs)")}
        self.assertNotIn("schedule_id", columns)
