"""
examples/flask_worker.py and examples/fastapi_worker.py end to end: a real HQ server with
``signing_secrets`` delivers jobs pushed with the SDK's client; the example worker, started
as its docs say, verifies and records them, de-duplicates a redelivery, and answers
"try later"; a server signing with another secret is refused.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from typing import Any, ClassVar

from twisted.trial.unittest import SynchronousTestCase

from hq.sdk import Client, RemoteJob
from hq.signing import new_secret
from tests.serverprocess import ROOT, ServerProcess, wait_for


class ExampleWorkerContract:
    """
    One example worker (``script``) against a real HQ server.
    """

    script: ClassVar[str]
    assertEqual: Any
    assertIn: Any
    assertIsNotNone: Any
    addCleanup: Any

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="hq-sdk-example-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.secret = new_secret()
        self.database = os.path.join(self.directory, "worker.sqlite3")
        self.worker = self.start_worker([self.secret])
        self.url = self.worker_url(self.worker) + "/jobs"
        self.server = ServerProcess(
            os.path.join(self.directory, "hq"),
            signing_secrets=[self.secret],
            retry_min_backoff=0.2,
            retry_max_backoff=1,
        ).start()
        self.addCleanup(self.server.stop)
        self.client = Client(self.server.base)
        self.addCleanup(self.client.close)

    def start_worker(self, secrets: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "HQ_SIGNING_SECRETS": " ".join(secrets)}
        script = os.path.join(ROOT, "examples", self.script)
        process = subprocess.Popen(
            [sys.executable, script, "--port", "0", "--db", self.database],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=self.directory,
        )
        self.addCleanup(self.stop_worker, process)
        return process

    def worker_url(self, process: subprocess.Popen[bytes]) -> str:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/jobs", line)
        self.assertIsNotNone(match, line)
        assert match is not None
        return match.group(1)

    def stop_worker(self, process: subprocess.Popen[bytes]) -> None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()

    def results(self) -> list[tuple[str, str]]:
        conn = sqlite3.connect(self.database)
        try:
            rows: list[tuple[str, str]] = conn.execute(
                "SELECT job_id, payload FROM results ORDER BY rowid"
            ).fetchall()
            return rows
        finally:
            conn.close()

    def finished(self, job_id: str, attempts: int = 1) -> RemoteJob:
        def done() -> RemoteJob | None:
            job = self.client.get(job_id)
            finished = job.status in ("success", "failure", "canceled")
            return job if finished and job.attempts >= attempts else None

        result: RemoteJob = wait_for(done, 30, f"job {job_id} to finish", 0.1)
        return result

    def test_delivers_verifies_records_and_dedups(self) -> None:
        """A signed job is recorded once; restarted in place, it is answered as a duplicate."""
        job = self.client.push({"url": self.url, "payload": {"to": "ann"}})
        done = self.finished(job.id)
        self.assertEqual((done.status, done.status_code), ("success", 200))
        self.assertEqual(self.results(), [(job.id, '{"to": "ann"}')])
        self.client.restart(job.id)
        again = self.finished(job.id)
        self.assertEqual(again.status, "success")
        self.assertIn('"duplicate":true', again.output)
        self.assertEqual(self.results(), [(job.id, '{"to": "ann"}')])

    def test_try_later_is_retried(self) -> None:
        """A 429 with Retry-After fails the attempt; HQ tries again, after at least 1 s."""
        job = self.client.push({"url": self.url, "payload": {"busy": True}}, retries=1)
        done = self.finished(job.id, attempts=2)
        self.assertEqual((done.status, done.status_code, done.attempts), ("failure", 429, 2))
        first, second = self.client.attempts(job.id)
        assert first.finished_at is not None and second.started_at is not None
        self.assertGreaterEqual((second.started_at - first.finished_at).total_seconds(), 0.9)
        self.assertEqual(self.results(), [])

    def test_wrong_secret_is_refused(self) -> None:
        """A worker that knows another secret answers 401: nothing is recorded."""
        other = self.start_worker([new_secret()])
        url = self.worker_url(other) + "/jobs"
        job = self.client.push({"url": url, "payload": {"to": "bob"}})
        done = self.finished(job.id)
        self.assertEqual((done.status, done.status_code), ("failure", 401))
        self.assertEqual(self.results(), [])


class FlaskWorkerTests(ExampleWorkerContract, SynchronousTestCase):
    """examples/flask_worker.py."""

    script = "flask_worker.py"


class FastAPIWorkerTests(ExampleWorkerContract, SynchronousTestCase):
    """examples/fastapi_worker.py."""

    script = "fastapi_worker.py"
