"""
Real-loopback tests: HQ's production client (:func:`hq.worker.make_http_client`
over a :class:`hq.worker.WorkerConnectionPool`) delivering to stdlib
``http.server`` workers in their own process on 127.0.0.1.

Python's ``http.server`` speaks HTTP/1.0 by default and closes the connection
after each answer; HQ used to keep such connections and lose about one job in
ten (``connection closed before a response was received``) and every 307
redirect. Each job here must succeed and reach the worker exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.trial.unittest import TestCase

from hq.model import Job
from hq.worker import Exchange, WorkerClient, WorkerConnectionPool, make_http_client
from tests.serverprocess import ROOT, wait_for

#: The worker process: ``python -c WORKER <protocol_version> <record file> <mode>``.
#: It answers ``/work`` with 200, ``/redirect/<code>`` with that code and
#: ``Location: /work``, and appends ``<job id> <method> <path> <client port>``
#: to the record file for every request. Mode ``close`` ends each connection
#: after one answer without saying so (as a keep-alive server whose idle
#: timeout races the next request). It exits when its stdin closes.
WORKER = r"""
import sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

version, path, mode = sys.argv[1:4]
lock = threading.Lock()
record = open(path, "a", buffering=1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = version

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        job = self.headers.get("X-Hq-Job-Id", "-")
        with lock:
            record.write(f"{job} {self.command} {self.path} {self.client_address[1]}\n")
        if self.path.startswith("/redirect/"):
            self.send_response(int(self.path.split("/")[2]))
            self.send_header("Location", "/work")
            body = b""
        else:
            self.send_response(200)
            body = b"done " + job.encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if mode == "close":
            self.close_connection = True

    do_GET = do_POST

    def log_message(self, format, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
print(server.server_port, flush=True)
sys.stdin.read()
"""

#: Jobs per bulk test, and how many run at once in the concurrent ones.
JOBS = 300
CONCURRENCY = 8
REDIRECTS = 50


class WorkerProcess:
    """
    A :data:`WORKER` process on 127.0.0.1 and what it received.
    """

    def __init__(self, directory: str, version: str, mode: str = "normal") -> None:
        os.makedirs(directory, exist_ok=True)
        self.record_path = os.path.join(directory, "received.txt")
        open(self.record_path, "w").close()
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, version, self.record_path, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        port = self.process.stdout.readline().strip()
        if not port.isdigit():
            self.close()
            raise AssertionError(f"the worker did not start: {port!r}")
        self.url = f"http://127.0.0.1:{port}"

    def received(self) -> list[list[str]]:
        """
        Return every request received so far: ``[job id, method, path, client port]``.
        """
        with open(self.record_path) as f:
            return [line.split() for line in f if line.strip()]

    def close(self) -> None:
        """
        End the process (it exits when its stdin closes; killed after 10 s).
        """
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


class DeliveryTestCase(TestCase):
    """
    A WorkerClient over the production client, on the real reactor.
    """

    timeout = 120

    def setUp(self) -> None:
        self.pool = WorkerConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)
        self.client = WorkerClient(make_http_client(reactor, self.pool), reactor, "HQ/test", 1024)
        self.ids = iter(range(1, 100_000))

    def worker(self, version: str, mode: str = "normal") -> WorkerProcess:
        """
        Start a worker speaking ``version`` (stopped at cleanup).
        """
        worker = WorkerProcess(self.mktemp(), version, mode)
        self.addCleanup(worker.close)
        return worker

    def post(self, url: str) -> Deferred[Exchange]:
        """
        Deliver a new job (with a payload and a 10 s timeout) to ``url``.
        """
        job = Job(id=next(self.ids), url=url, payload='{"n":1}', timeout=10)
        return self.client.post(job)

    async def post_all(self, url: str, count: int, concurrency: int = 1) -> list[Exchange]:
        """
        Deliver ``count`` jobs to ``url``, at most ``concurrency`` at a time.
        """
        if concurrency == 1:
            return [await self.post(url) for _ in range(count)]
        limit = DeferredSemaphore(concurrency)
        runs = [limit.run(self.post, url) for _ in range(count)]
        return list(await gatherResults(runs))

    def assert_all_delivered_once(
        self, exchanges: list[Exchange], received: list[list[str]], path: str = "/work"
    ) -> None:
        """
        Every exchange succeeded, and the worker saw each job at ``path`` exactly once.
        """
        failed = Counter(e.reason() for e in exchanges if not e.success)
        self.assertEqual((len(exchanges) - sum(failed.values()), failed), (len(exchanges), {}))
        arrivals = Counter(r[0] for r in received if r[2] == path)
        self.assertEqual(len(arrivals), len(exchanges))
        self.assertEqual(set(arrivals.values()), {1})


class HTTP10WorkerTests(DeliveryTestCase):
    """
    An HTTP/1.0 worker that closes the connection after each answer.
    """

    async def test_sequential_jobs_all_succeed_once(self) -> None:
        """300 jobs one after another all succeed, each received once, each on its connection."""
        worker = self.worker("HTTP/1.0")
        exchanges = await self.post_all(worker.url + "/work", JOBS)
        received = worker.received()
        self.assert_all_delivered_once(exchanges, received)
        self.assertEqual({e.output() for e in exchanges}, {f"done {n}" for n in range(1, JOBS + 1)})

    async def test_concurrent_jobs_all_succeed_once(self) -> None:
        """300 jobs, 8 at a time, all succeed and each is received once."""
        worker = self.worker("HTTP/1.0")
        exchanges = await self.post_all(worker.url + "/work", JOBS, CONCURRENCY)
        self.assert_all_delivered_once(exchanges, worker.received())

    async def test_307_redirect_repeats_the_post_on_a_new_connection(self) -> None:
        """A 307 from an HTTP/1.0 worker is followed with a POST: success, every time."""
        worker = self.worker("HTTP/1.0")
        exchanges = await self.post_all(worker.url + "/redirect/307", REDIRECTS)
        received = worker.received()
        self.assert_all_delivered_once(exchanges, received)
        self.assertEqual({r[1] for r in received if r[2] == "/work"}, {"POST"})
        self.assertEqual(len([r for r in received if r[2] == "/redirect/307"]), REDIRECTS)

    async def test_303_redirect_becomes_a_get_on_a_new_connection(self) -> None:
        """A 303 from an HTTP/1.0 worker is followed with a GET: success, every time."""
        worker = self.worker("HTTP/1.0")
        exchanges = await self.post_all(worker.url + "/redirect/303", REDIRECTS)
        received = worker.received()
        self.assert_all_delivered_once(exchanges, received)
        self.assertEqual({r[1] for r in received if r[2] == "/work"}, {"GET"})


class KeepAliveWorkerTests(DeliveryTestCase):
    """
    HTTP/1.1 workers: connections are still kept, and a kept connection the
    worker closed is replaced without losing the job.
    """

    async def test_http11_worker_connection_is_kept(self) -> None:
        """100 jobs one after another to an HTTP/1.1 worker go over one connection."""
        worker = self.worker("HTTP/1.1")
        exchanges = await self.post_all(worker.url + "/work", 100)
        received = worker.received()
        self.assert_all_delivered_once(exchanges, received)
        self.assertEqual(len({r[3] for r in received}), 1)

    async def test_worker_closing_kept_connections_loses_no_job(self) -> None:
        """An HTTP/1.1 worker closing each connection unannounced: every job succeeds once."""
        worker = self.worker("HTTP/1.1", mode="close")
        sequential = await self.post_all(worker.url + "/work", JOBS)
        concurrent = await self.post_all(worker.url + "/work", JOBS, CONCURRENCY)
        self.assert_all_delivered_once(sequential + concurrent, worker.received())


class ExampleWorkerTests(DeliveryTestCase):
    """
    The project's own example worker, ``examples/workerapp.py`` (HTTP/1.0).
    """

    async def test_example_worker_receives_every_job_once(self) -> None:
        """100 jobs to examples/workerapp.py all succeed, each printed once."""
        directory = self.mktemp()
        os.makedirs(directory)
        out_path = os.path.join(directory, "out.txt")
        with open(out_path, "w") as out:
            process = subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "examples", "workerapp.py"), "--port", "0"],
                stdout=out,
                stderr=subprocess.DEVNULL,
            )

        def stop() -> None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

        self.addCleanup(stop)

        def lines() -> Iterator[str]:
            with open(out_path) as f:
                yield from f

        def listening() -> str | None:
            for line in lines():
                if "listening on" in line:
                    return line.rsplit(" ", 1)[1].strip().rstrip("/")
            return None

        url: Any = wait_for(listening, 20, "the example worker to listen")
        exchanges = await self.post_all(url + "/", 100)
        printed = [line.split()[2].rstrip(":") for line in lines() if line.startswith("--- job")]
        self.assert_all_delivered_once(exchanges, [[n, "POST", "/", ""] for n in printed], "/")


class BenchmarkWorkerTests(DeliveryTestCase):
    """
    The benchmarks' fast worker in its HTTP/1.0 mode (``--http10``).
    """

    async def test_benchmark_worker_http10_receives_every_job_once(self) -> None:
        """300 jobs, 8 at a time, to benchmarks/worker.py --http10: all succeed, none twice."""
        process = subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, "benchmarks", "worker.py"),
                "--http10",
                "--lifetime",
                "120",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )

        def stop() -> None:
            process.terminate()
            process.wait(10)
            assert process.stdout is not None
            process.stdout.close()

        self.addCleanup(stop)
        assert process.stdout is not None
        url = process.stdout.readline().strip().rpartition(" ")[2]
        self.assertTrue(url.startswith("http://127.0.0.1:"), url)
        exchanges = await self.post_all(url + "/job", JOBS, CONCURRENCY)
        failed = Counter(e.reason() for e in exchanges if not e.success)
        self.assertEqual(failed, {})
        with urllib.request.urlopen(url + "/_stats", timeout=10) as answer:
            stats = json.load(answer)
        self.assertEqual(stats, {"received": JOBS, "unique": JOBS, "duplicates": 0, "errors": 0})
