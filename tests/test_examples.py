"""
The examples run as written: the de-duplicating worker of docs/delivery.md,
as a real process, does each job's work once; the commands of the docs talk to
the servers the docs start, and the help they show is the real one.
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

#: The pages whose commands readers paste, and the ports those pages start
#: something on: HQ (examples/hq.toml), examples/workerapp.py and
#: examples/dedup_worker.py.
PASTED_DOCS = ("README.md", "docs/getting-started.md", "docs/api.md", "docs/cli.md")
STARTED_PORTS = {"19900", "8000", "8001"}


def read_doc(name: str) -> str:
    """
    Return the text of ``name`` (a path from the top of the repository).
    """
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def shell_blocks(text: str) -> list[str]:
    """
    Return the ```sh blocks of a Markdown text.
    """
    return re.findall(r"```sh\n(.*?)```", text, re.S)


class DocsCommandTests(SynchronousTestCase):
    """
    What the docs tell readers to paste works against what the docs start.
    """

    def test_local_urls_point_at_what_the_docs_start(self) -> None:
        """Every 127.0.0.1 URL in the pasted docs is HQ (19900) or an example worker."""
        for name in PASTED_DOCS:
            ports = set(re.findall(r"127\.0\.0\.1:(\d+)", read_doc(name)))
            # 19999 is the documented example of an address nothing listens on.
            self.assertEqual(ports - STARTED_PORTS - {"19999"}, set(), name)

    def test_commands_use_the_id_of_your_own_job(self) -> None:
        """No shell example GETs, stops or deletes a literal job id that 404s when pasted."""
        for name in ("docs/getting-started.md", "docs/api.md"):
            for block in shell_blocks(read_doc(name)):
                self.assertIsNone(re.search(r"/job/[0-9]+", block), (name, block))

    def test_hq_help_sample_is_the_real_output(self) -> None:
        """The `hq help`, `hq help restart` and `hq help schedule` samples are what hq prints."""
        text = read_doc("docs/cli.md")
        for args in (["help"], ["help", "restart"], ["help", "schedule"]):
            sample = re.search(r"\$ hq " + " ".join(args) + r"\n(.*?)```", text, re.S)
            assert sample is not None, args
            printed = subprocess.run(
                [sys.executable, "-c", "from hq.cli import main; main()", *args],
                capture_output=True,
                check=True,
                env=dict(os.environ, COLUMNS="80"),
            ).stdout.decode()
            self.assertEqual(sample.group(1), printed, args)


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
