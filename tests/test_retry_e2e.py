"""
Retries, Retry-After and due times end to end (SPEC §11): the real server
process and a scripted worker on 127.0.0.1, kill -9 with retries pending and
delayed jobs waiting, the lateness of due jobs with the real reactor, and a
feed that sets no timer while nothing is due.

The jobs with ``retries`` or a ``run_at`` are written into the data_dir
before the server starts (:func:`seed`), with the store's own schema and row
layout, as a push with ``retries`` / ``runAt`` stores them.
"""

from __future__ import annotations

import calendar
import itertools
import os
import sqlite3
import statistics
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from hq.delivery import Delivery
from hq.delivery.feed import Feed
from hq.ids import first_id_at
from hq.model import Job
from hq.policy import RetryRules
from hq.store import sql
from hq.store.memory import MemoryStore
from hq.store.sqlite import DATABASE_FILE, SQLiteStore
from hq.store.sqlitefile import upgrade
from hq.worker import WorkerClient, WorkerConnectionPool, make_http_client
from tests.serverprocess import ServerProcess, _QuietHTTPServer, report, wait_for


def wall_ms() -> int:
    return int(time.time() * 1000)


def parse_time(value: str) -> int:
    """
    Return the unix ms of a job time (``2026-01-02T03:04:05.678Z``).
    """
    seconds, _, fraction = value.rstrip("Z").partition(".")
    stamp = calendar.timegm(time.strptime(seconds, "%Y-%m-%dT%H:%M:%S"))
    return stamp * 1000 + int((fraction or "0")[:3].ljust(3, "0"))


def seed(data_dir: str, jobs: list[Job]) -> None:
    """
    Write ``jobs`` into a new data_dir as the current schema stores them (a
    server must not be running on it).
    """
    os.makedirs(data_dir, exist_ok=True)
    conn = sqlite3.connect(os.path.join(data_dir, DATABASE_FILE), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        upgrade(conn, 0)
        conn.executemany(sql.INSERT, [sql.job_row(job) for job in jobs])
        conn.execute(sql.RAISE_MAX_ID, (str(max(job.id for job in jobs)),))
        conn.execute("COMMIT")
    finally:
        conn.close()


class Jobs:
    """
    Job ids as a server makes them (created now, one after another).
    """

    def __init__(self) -> None:
        self.base = first_id_at(wall_ms())
        self.count = 0

    def make(self, url: str, **fields: Any) -> Job:
        self.count += 1
        return Job(id=self.base + self.count, url=url, **fields)


#: What the worker answers, per path, to a job's 1st, 2nd... request (the
#: last answer repeats): (status, extra headers).
SCRIPTS: dict[str, list[tuple[int, dict[str, str]]]] = {
    "/ok": [(200, {})],
    "/flaky": [(500, {}), (502, {}), (200, {})],
    "/fail": [(500, {})],
    "/fail-once": [(500, {}), (200, {})],
    "/busy": [(503, {"Retry-After": "1"}), (200, {})],
    "/too-many": [(429, {"Retry-After": "1"}), (200, {})],
    "/garbage": [(503, {"Retry-After": "soon, maybe"}), (200, {})],
    "/error-retry-after": [(500, {"Retry-After": "1"}), (200, {})],
    "/hold-once": [(200, {})],
}


class ScriptedWorker:
    """
    A worker on 127.0.0.1 that answers each job by the script of its path
    (:data:`SCRIPTS`) and records every request: wall time (ms), monotonic
    time (s), ``X-Hq-Job-Id``, path. ``/hold-once`` holds a job's first
    request until :meth:`release`.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.seen: Counter[str] = Counter()
        self.gate = threading.Event()
        self._lock = threading.Lock()
        worker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                job_id = self.headers.get("X-Hq-Job-Id", "")
                with worker._lock:
                    worker.seen[job_id] += 1
                    n = worker.seen[job_id]
                    worker.requests.append(
                        {
                            "wall": wall_ms(),
                            "mono": time.monotonic(),
                            "id": job_id,
                            "path": self.path,
                        }
                    )
                if self.path == "/hold-once" and n == 1:
                    worker.gate.wait(30)
                script = SCRIPTS[self.path]
                code, headers = script[min(n, len(script)) - 1]
                body = b"attempt %d" % n
                try:
                    self.send_response(code)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def of(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["id"] == job_id]

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


class RetryEndToEndTests(SynchronousTestCase):
    """
    ``hq serve`` retries failed deliveries to a real worker.
    """

    def setUp(self) -> None:
        self.worker = ScriptedWorker()
        self.addCleanup(self.worker.close)
        self.jobs = Jobs()

    def server(self, jobs: list[Job], **config: Any) -> ServerProcess:
        config.setdefault("retry_min_backoff", 0.2)
        config.setdefault("retry_max_backoff", 1)
        server = ServerProcess(self.mktemp(), **config)
        self.addCleanup(server.stop)
        seed(os.path.join(server.directory, "data"), jobs)
        return server.start()

    def job(self, server: ServerProcess, job_id: int) -> dict[str, Any]:
        status, job = server.request("GET", f"/job/{job_id}")
        self.assertEqual(status, 200, job)
        return dict(job)

    def finished(self, server: ServerProcess, job_id: int, timeout: float = 15) -> dict[str, Any]:
        return dict(
            wait_for(
                lambda: (job := self.job(server, job_id))["finishedAt"] and job,
                timeout,
                f"job {job_id} to finish",
            )
        )

    def gaps(self, job_id: int) -> list[float]:
        times = [r["mono"] for r in self.worker.of(str(job_id))]
        return [b - a for a, b in itertools.pairwise(times)]

    def test_flaky_worker_succeeds_on_the_third_attempt(self) -> None:
        """
        Two failures then a 2xx: success after 3 attempts, all with the same
        X-Hq-Job-Id, each wait at least half its nominal backoff (0.2 s, 0.4 s).
        """
        flaky = self.jobs.make(self.worker.url + "/flaky", retries=3)
        server = self.server([flaky])
        job = self.finished(server, flaky.id)
        self.assertEqual((job["status"], job["attempts"], job["retries"]), ("success", 3, 3))
        self.assertEqual((job["statusCode"], job["err"], job["runAt"]), (200, "", None))
        requests = self.worker.of(str(flaky.id))
        self.assertEqual(len(requests), 3)
        self.assertEqual({r["path"] for r in requests}, {"/flaky"})
        first, second = self.gaps(flaky.id)
        self.assertGreaterEqual(first, 0.1)
        self.assertGreaterEqual(second, 0.2)
        # Within 1 s of the due time (the backoff's full value is the latest).
        self.assertLess(first, 0.2 + 1)
        self.assertLess(second, 0.4 + 1)
        report("retry_backoff_gaps", gaps_s=[round(first, 3), round(second, 3)])

    def test_last_failure_ends_the_job_after_retries_plus_one(self) -> None:
        """A worker that always fails: failure after exactly retries + 1 attempts, no more."""
        failing = self.jobs.make(self.worker.url + "/fail", retries=2)
        never = self.jobs.make(self.worker.url + "/fail")
        server = self.server([failing, never])
        job = self.finished(server, failing.id)
        self.assertEqual((job["status"], job["attempts"]), ("failure", 3))
        self.assertEqual((job["statusCode"], job["err"]), (500, "Internal Server Error"))
        self.assertEqual(job["output"], "attempt 3")
        once = self.finished(server, never.id)
        self.assertEqual((once["status"], once["attempts"], once["retries"]), ("failure", 1, 0))
        time.sleep(1.5)  # longer than the longest backoff (retry_max_backoff 1)
        self.assertEqual(len(self.worker.of(str(failing.id))), 3)
        self.assertEqual(len(self.worker.of(str(never.id))), 1)

    def test_retry_after_is_honoured_for_429_and_503_only(self) -> None:
        """
        503 or 429 with Retry-After: 1 waits at least 1 s; a garbage
        Retry-After, or one on a 500, leaves the backoff (0.1 to 0.2 s).
        """
        busy = self.jobs.make(self.worker.url + "/busy", retries=1)
        too_many = self.jobs.make(self.worker.url + "/too-many", retries=1)
        garbage = self.jobs.make(self.worker.url + "/garbage", retries=1)
        on_500 = self.jobs.make(self.worker.url + "/error-retry-after", retries=1)
        server = self.server([busy, too_many, garbage, on_500])
        for job in (busy, too_many, garbage, on_500):
            finished = self.finished(server, job.id)
            self.assertEqual((finished["status"], finished["attempts"]), ("success", 2))
        (busy_gap,) = self.gaps(busy.id)
        (too_many_gap,) = self.gaps(too_many.id)
        (garbage_gap,) = self.gaps(garbage.id)
        (on_500_gap,) = self.gaps(on_500.id)
        self.assertGreaterEqual(busy_gap, 1.0)
        self.assertGreaterEqual(too_many_gap, 1.0)
        self.assertLess(busy_gap, 2.0)
        self.assertGreaterEqual(garbage_gap, 0.1)
        self.assertLess(garbage_gap, 0.9)
        self.assertGreaterEqual(on_500_gap, 0.1)
        self.assertLess(on_500_gap, 0.9)
        report(
            "retry_after_gaps",
            busy_s=round(busy_gap, 3),
            garbage_s=round(garbage_gap, 3),
            on_500_s=round(on_500_gap, 3),
        )

    def test_kill_9_keeps_pending_retries_delayed_jobs_and_attempts(self) -> None:
        """
        kill -9 with a retry pending, a delayed job waiting and an attempt
        running: after the restart the retry and the delayed job are tried at
        their time (not before, within 1 s after), the running attempt counts
        (attempts 1 -> 2) and is delivered again, no attempt is lost.
        """
        now = wall_ms()
        retrying = self.jobs.make(self.worker.url + "/fail-once", retries=2)
        delayed = self.jobs.make(self.worker.url + "/ok", run_at=now + 9_000)
        running = self.jobs.make(self.worker.url + "/hold-once", retries=2)
        # Backoff 3 to 6 s: the retry is still pending after the kill and the restart.
        server = self.server([retrying, delayed, running], retry_min_backoff=6, retry_max_backoff=6)
        pending = wait_for(
            lambda: (job := self.job(server, retrying.id))["status"] == "scheduled" and job,
            15,
            "the retry to be scheduled",
        )
        self.assertEqual((pending["attempts"], pending["statusCode"]), (1, 500))
        retry_at = parse_time(pending["runAt"])
        self.assertGreater(retry_at, wall_ms())
        scheduled = self.job(server, delayed.id)
        self.assertEqual((scheduled["status"], scheduled["attempts"]), ("scheduled", 0))
        self.assertEqual(parse_time(scheduled["runAt"]), delayed.run_at)
        wait_for(lambda: self.worker.of(str(running.id)), 10, "the held attempt")
        self.assertEqual(self.job(server, running.id)["attempts"], 1)

        server.kill()
        self.worker.release()
        server.start()
        self.assertLess(wall_ms(), retry_at, "the restart took longer than the backoff")

        # The attempt running at the crash counts, and is made again at once.
        again = self.finished(server, running.id)
        self.assertEqual((again["status"], again["attempts"]), ("success", 2))
        self.assertEqual(len(self.worker.of(str(running.id))), 2)

        retried = self.finished(server, retrying.id, timeout=20)
        self.assertEqual((retried["status"], retried["attempts"]), ("success", 2))
        _, second = self.worker.of(str(retrying.id))
        late_retry = second["wall"] - retry_at
        self.assertGreaterEqual(late_retry, -50)
        self.assertLessEqual(late_retry, 1000)

        done = self.finished(server, delayed.id, timeout=20)
        self.assertEqual((done["status"], done["attempts"], done["runAt"]), ("success", 1, None))
        (delivered,) = self.worker.of(str(delayed.id))
        assert delayed.run_at is not None
        late_delayed = delivered["wall"] - delayed.run_at
        self.assertGreaterEqual(late_delayed, -50)
        self.assertLessEqual(late_delayed, 1000)
        report("kill9_due_lateness", retry_ms=late_retry, delayed_ms=late_delayed)


class Stamp(Resource):
    """
    A worker (in the test's reactor) that records when each job arrived (unix ms).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[int, int] = {}
        self.done: Deferred[None] = Deferred()
        self.expected = 0

    def render_POST(self, request: Any) -> bytes:
        job_id = int(request.getHeader("x-hq-job-id"))
        self.arrived[job_id] = int(reactor.seconds() * 1000)
        if len(self.arrived) == self.expected and not self.done.called:
            self.done.callback(None)
        return b"ok"


class DueTimeTests(TestCase):
    """
    Delayed jobs in a SQLite store, the delivery engine on the real reactor,
    a worker on 127.0.0.1: how late after ``runAt`` each one arrives.
    """

    async def test_delayed_jobs_arrive_within_one_second_of_run_at(self) -> None:
        """
        50 jobs due 0.5 to 1.5 s ahead (half in the store at start, half
        offered later as pushes are) each reach the worker no earlier than
        their runAt and within 1 s after it.
        """
        stamp = Stamp()
        stamp.expected = 50
        port = reactor.listenTCP(0, Site(stamp), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/"
        store = SQLiteStore(self.mktemp(), reactor)
        await store.open()
        self.addCleanup(store.close)
        pool = WorkerConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        delivery = Delivery(
            store=store,
            worker=WorkerClient(make_http_client(reactor, pool), reactor, "HQ/test", 1000),
            clock=reactor,
            dispatchers=2,
            workers_per_dispatcher=8,
            queue_size=64,
            shutdown_timeout=1,
        )
        ids = Jobs()
        now = wall_ms()
        jobs = [ids.make(url, run_at=now + 500 + 20 * n) for n in range(50)]
        for job in jobs[::2]:
            await store.create(job)
        delivery.startService()
        self.addCleanup(delivery.stopService)
        for job in jobs[1::2]:
            await store.create(job)
            delivery.enqueue(job)
        timeout = reactor.callLater(15, stamp.done.cancel)
        await stamp.done
        timeout.cancel()
        late = sorted(stamp.arrived[job.id] - (job.run_at or 0) for job in jobs)
        p50 = statistics.median(late)
        p99 = late[min(len(late) - 1, int(0.99 * len(late)))]
        print(
            f"\ndue-time lateness of 50 delayed jobs: p50 {p50} ms, p99 {p99} ms, max {late[-1]} ms"
        )
        report("due_time_lateness", jobs=50, p50_ms=p50, p99_ms=p99, max_ms=late[-1])
        self.assertGreaterEqual(late[0], 0)
        self.assertLessEqual(late[-1], 1000)


class CountingStore(MemoryStore):
    """
    A memory store that counts the feed's reads.
    """

    reads = 0

    def waiting_jobs(self, after: Any, now: int, limit: int) -> Deferred[list[Job]]:
        self.reads += 1
        return super().waiting_jobs(after, now, limit)


class NoPollingTests(SynchronousTestCase):
    """
    The feed reads the store when something is due, not on a timer.
    """

    def test_one_timer_at_the_next_due_time(self) -> None:
        """
        Once the due backlog is read, one job due in 60 s leaves exactly one
        timer, at 60 s, and no read happens before it fires.
        """
        clock = Clock()
        clock.advance(1_700_000_000)
        now = int(clock.seconds() * 1000)
        store = CountingStore()
        base = first_id_at(now)
        for n in range(3):
            store.create(Job(id=base - 10 + n, url="http://w/"))
        later = Job(id=base + 1, url="http://w/later", run_at=now + 60_000)
        store.create(later)
        feed = Feed(store, clock, size=10)
        feed.open()
        taken = [self.successResultOf(feed.take()) for _ in range(3)]
        self.assertEqual([job.id for job in taken if job], [base - 10, base - 9, base - 8])
        waiting = feed.take()
        self.assertNoResult(waiting)
        (call,) = clock.getDelayedCalls()
        self.assertAlmostEqual(call.getTime() - clock.seconds(), 60, places=3)
        reads = store.reads
        for _ in range(59):
            clock.advance(1)
        self.assertEqual(store.reads, reads)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertNoResult(waiting)
        clock.advance(1)
        self.assertEqual(self.successResultOf(waiting), store._jobs[later.id])
        self.assertEqual(clock.getDelayedCalls(), [])
        feed.close()

    def test_retry_sets_a_timer_and_nothing_else(self) -> None:
        """A failed attempt with retries left leaves one timer, at its retry time."""
        from hq.testing import FakeWorker, Reply, WorkerStub

        clock = Clock()
        clock.advance(1_700_000_000)
        store = MemoryStore()
        worker = FakeWorker(Reply(code=500))
        stub = WorkerStub(worker)
        delivery = Delivery(
            store=store,
            worker=WorkerClient(stub.http, clock, "HQ/test", 1024),
            clock=clock,
            dispatchers=1,
            workers_per_dispatcher=1,
            queue_size=10,
            shutdown_timeout=1,
            rules=RetryRules(min_backoff=30, max_backoff=30),
            jitter=lambda: 1.0,
        )
        delivery.startService()
        self.addCleanup(delivery.stopService)
        job = Job(id=first_id_at(int(clock.seconds() * 1000)), url="http://w/", retries=1)
        store.create(job)
        delivery.enqueue(job)
        stub.flush()
        self.assertEqual(len(worker.requests), 1)
        (call,) = clock.getDelayedCalls()
        self.assertAlmostEqual(call.getTime() - clock.seconds(), 30, places=3)
        clock.advance(30)
        stub.flush()
        self.assertEqual(len(worker.requests), 2)
        self.assertEqual(self.successResultOf(store.get(job.id)).status, "failure")
