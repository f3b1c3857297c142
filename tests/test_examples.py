"""
The examples in examples/ run as written: the de-duplicating worker of
docs/delivery.md, as a real process, does each job's work once.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sqlite3
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import ROOT, ServerProcess, wait_for

DEDUP_WORKER = os.path.join(ROOT, "examples", "dedup_worker.py")


class DedupWorkerTests(SynchronousTestCase):
    """
    examples/dedup_worker.py started as the docs say, on a free port.
    """

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.database = os.path.join(directory, "dedup.sqlite3")
        self.process = subprocess.Popen(
            [sys.executable, DEDUP_WORKER, "--port", "0", "--db", self.database],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(self._stop)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        self.assertIsNotNone(match, line)
        assert match is not None
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}/"

    def _stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def post(self, job_id: str | None, payload: bytes) -> tuple[int, Any]:
        """
        POST ``payload`` as HQ does, with ``X-Hq-Job-Id: job_id``; return the status and JSON.
        """
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Content-Type": "application/json"}
            if job_id is not None:
                headers["X-Hq-Job-Id"] = job_id
            connection.request("POST", "/", payload, headers)
            answer = connection.getresponse()
            return answer.status, json.loads(answer.read())
        finally:
            connection.close()

    def results(self) -> list[tuple[str, str]]:
        """
        Return the work done: ``(job_id, payload)`` rows of the worker's database.
        """
        conn = sqlite3.connect(self.database)
        try:
            return conn.execute("SELECT job_id, payload FROM results ORDER BY rowid").fetchall()
        finally:
            conn.close()

    def test_same_job_id_twice_does_the_work_once(self) -> None:
        """The same X-Hq-Job-Id sent twice: both answered 200, the work done once."""
        self.assertEqual(self.post("42", b'{"n":1}'), (200, {"job": "42", "result": "done"}))
        self.assertEqual(
            self.post("42", b'{"n":1}'), (200, {"job": "42", "result": "already done"})
        )
        self.assertEqual(self.post("43", b'{"n":2}'), (200, {"job": "43", "result": "done"}))
        self.assertEqual(self.results(), [("42", '{"n":1}'), ("43", '{"n":2}')])

    def test_request_without_job_id_is_refused(self) -> None:
        """A request without X-Hq-Job-Id is a 400 and does no work."""
        status, _ = self.post(None, b"{}")
        self.assertEqual(status, 400)
        self.assertEqual(self.results(), [])

    def test_restart_in_place_through_hq_is_not_done_twice(self) -> None:
        """Through a real HQ: a job restarted in place (same id) is answered, not done again."""
        server = ServerProcess(self.mktemp()).start()
        self.addCleanup(server.stop)
        job_id = server.push(self.url, payload={"n": 7})

        def finished() -> bool:
            return server.request("GET", f"/job/{job_id}")[1]["status"] == "success"

        wait_for(finished, 20, "the job to succeed")
        self.assertEqual(
            json.loads(server.request("GET", f"/job/{job_id}")[1]["output"])["result"], "done"
        )
        status, _ = server.request("POST", f"/job/{job_id}/restart", {"copy": False})
        self.assertEqual(status, 200)
        wait_for(finished, 20, "the restarted job to succeed")
        job = server.request("GET", f"/job/{job_id}")[1]
        self.assertEqual(json.loads(job["output"])["result"], "already done")
        self.assertEqual(self.results(), [(job_id, '{"n":7}')])
