"""
Crash safety with real processes: SIGKILL the server at random moments under a
steady push load and check that no acknowledged job is lost, nothing stays
unfinished, duplicates are bounded by the jobs in flight at each kill, and the
SQLite file passes ``PRAGMA integrity_check`` after every restart (also after a
kill in the middle of a large clean-up).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import RecordingWorker, ServerProcess, report, wait_for

#: Kills in the load test, and the delivery concurrency (dispatchers x max_workers).
KILLS = 6
DISPATCHERS = 2
MAX_WORKERS = 4
#: Jobs the pusher tries to push in the load test (bounded: the test ends by itself).
PUSHES = 900

_RECOVERED = re.compile(r"Recovered (\d+) interrupted jobs")


def free_port() -> int:
    """
    Return a TCP port of 127.0.0.1 that is free now.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def integrity(path: str) -> str:
    """
    Return the result of ``PRAGMA integrity_check`` on the database at ``path``.
    """
    db = sqlite3.connect(path, timeout=10)
    try:
        rows = db.execute("PRAGMA integrity_check").fetchall()
    finally:
        db.close()
    return "; ".join(str(row[0]) for row in rows)


class Pusher(threading.Thread):
    """
    Pushes jobs one after another to whatever server listens at ``base``;
    remembers the ids answered with 200 and counts pushes left without answer.
    """

    def __init__(self, base: str, url: str, count: int) -> None:
        super().__init__(name="pusher", daemon=True)
        self.base = base
        self.url = url
        self.count = count
        self.acknowledged: list[str] = []
        self.unanswered = 0
        self.refused = 0
        self.done = threading.Event()

    def run(self) -> None:
        try:
            for i in range(self.count):
                self._push(i)
                time.sleep(0.003)
        finally:
            self.done.set()

    def _push(self, i: int) -> None:
        body = json.dumps({"url": self.url, "name": "crash", "payload": {"n": i}}).encode()
        request = urllib.request.Request(self.base + "/job", data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    self.acknowledged.append(str(json.loads(response.read())["id"]))
                    return
        except urllib.error.HTTPError:
            pass
        except urllib.error.URLError as e:
            if isinstance(e.reason, ConnectionRefusedError):
                self.refused += 1
                time.sleep(0.02)
                return
        except ConnectionRefusedError:
            # Nothing listening (between a kill and the restart): surely not stored.
            self.refused += 1
            time.sleep(0.02)
            return
        except OSError:
            pass
        # Sent, but no 200 came back: it may or may not be stored.
        self.unanswered += 1
        time.sleep(0.02)


class CrashTests(SynchronousTestCase):
    """
    SIGKILL the real server and check what survives.
    """

    def server(self, **config: Any) -> ServerProcess:
        server = ServerProcess(self.mktemp(), **config)
        self.addCleanup(server.stop)
        return server

    def database(self, server: ServerProcess) -> str:
        return os.path.join(server.directory, "data", "hq.sqlite3")

    def settled(self, server: ServerProcess, timeout: float = 60) -> list[dict[str, Any]]:
        """
        Wait until no stored job is waiting or running; return all jobs.
        """

        def done() -> list[dict[str, Any]] | None:
            jobs = server.jobs()
            if all(j["status"] not in ("waiting", "running", "canceling") for j in jobs):
                return jobs
            return None

        result: list[dict[str, Any]] = wait_for(done, timeout, "every job to finish", 0.2)
        return result

    def test_random_sigkills_under_push_load_lose_no_acknowledged_job(self) -> None:
        """Six SIGKILLs under load: every 200-acknowledged job ends success, duplicates bounded."""
        seed = os.environ.get("HQ_CRASH_SEED", str(time.time_ns()))
        rng = random.Random(seed)
        where = f"(HQ_CRASH_SEED={seed})"
        worker = RecordingWorker()
        self.addCleanup(worker.close)
        port = free_port()
        server = self.server(
            addr=f"127.0.0.1:{port}", dispatchers=DISPATCHERS, max_workers=MAX_WORKERS
        )
        server.start()
        pusher = Pusher(server.base, worker.url + "/sleep/15", PUSHES)
        pusher.start()
        recovered: list[int] = []
        kills = 0
        while kills < KILLS:
            time.sleep(rng.uniform(0.2, 0.8))
            server.kill()
            kills += 1
            server.start()
            match = _RECOVERED.search(server.log_text())
            recovered.append(int(match.group(1)) if match else 0)
            self.assertEqual(integrity(self.database(server)), "ok", f"after kill {kills} {where}")
        self.assertTrue(pusher.done.wait(120), "the pusher did not finish")
        jobs = {job["id"]: job for job in self.settled(server)}

        acknowledged = set(pusher.acknowledged)
        self.assertEqual(len(acknowledged), len(pusher.acknowledged))
        self.assertGreater(len(acknowledged), 300)
        # Every acknowledged job is stored, was delivered, and succeeded.
        self.assertEqual(acknowledged - set(jobs), set(), where)
        for job_id in acknowledged:
            self.assertEqual(jobs[job_id]["status"], "success", (jobs[job_id], where))
            self.assertGreaterEqual(worker.received[job_id], 1, (job_id, where))
        # Nothing is left unfinished, and nothing was delivered that is not stored.
        statuses = Counter(j["status"] for j in jobs.values())
        self.assertEqual(statuses, {"success": len(jobs)}, where)
        self.assertEqual(set(worker.received) - set(jobs), set(), where)
        # Duplicates only for jobs running at a kill, which the restart recovered.
        duplicates = sum(count - 1 for count in worker.received.values())
        self.assertLessEqual(duplicates, sum(recovered), (recovered, where))
        self.assertLessEqual(sum(recovered), KILLS * DISPATCHERS * MAX_WORKERS, where)
        self.assertEqual(integrity(self.database(server)), "ok")
        report(
            "sigkill_under_load",
            kills=kills,
            pushed=PUSHES,
            acknowledged=len(acknowledged),
            stored=len(jobs),
            unanswered=pusher.unanswered,
            refused=pusher.refused,
            recovered=sum(recovered),
            duplicates=duplicates,
            lost=len(acknowledged - set(jobs)),
        )

    def test_kill_during_large_cleanup_leaves_a_sound_database(self) -> None:
        """SIGKILL while 150,000 expired jobs are being deleted: integrity ok, clean-up ends."""
        worker = RecordingWorker()
        self.addCleanup(worker.close)
        server = self.server(job_lifetime=0)
        server.start()
        for _ in range(20):
            server.push(worker.url + "/keep")
        kept = {job["id"] for job in self.settled(server)}
        server.kill()
        expired = 150_000
        now_ms = int(time.time() * 1000)
        path = self.database(server)
        db = sqlite3.connect(path)
        columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
        base = max(int(i) for i in kept)
        # Copies of a finished job, with new ids, finished two days ago.
        values = ", ".join(
            {"id": "? + n.i", "finished_at": "?"}.get(column, f"j.{column}") for column in columns
        )
        db.execute(
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            f"INSERT INTO jobs ({', '.join(columns)}) "
            f"SELECT {values} FROM n, (SELECT * FROM jobs WHERE id = ?) AS j",
            (expired, *self._clone_args(columns, base, now_ms - 2 * 86_400_000), base),
        )
        db.commit()
        total = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
        db.close()
        self.assertEqual(total, expired + len(kept))

        def count() -> int:
            reader = sqlite3.connect(path, timeout=10)
            try:
                return int(reader.execute("SELECT count(*) FROM jobs").fetchone()[0])
            finally:
                reader.close()

        # Restart with a lifetime of one hour: the clean-up starts at once.
        restarted = ServerProcess(
            server.directory, data_dir=os.path.join(server.directory, "data"), job_lifetime=3600
        )
        self.addCleanup(restarted.stop)
        restarted.start(wait=False)
        left = wait_for(
            lambda: (n := count()) < total and n, 30, "the clean-up to begin", interval=0.01
        )
        restarted.kill()
        self.assertGreater(left, len(kept), "the clean-up ended before the kill")
        restarted.start()
        self.assertEqual(integrity(path), "ok")
        wait_for(lambda: count() == len(kept), 60, "the clean-up to finish", interval=0.1)
        self.assertEqual(integrity(path), "ok")
        self.assertEqual({job["id"] for job in restarted.jobs()}, kept)
        report("kill_during_cleanup", expired=expired, left_at_kill=left, kept=len(kept), lost=0)

    @staticmethod
    def _clone_args(columns: list[str], base: int, finished_at: int) -> list[int]:
        args = []
        for column in columns:
            if column == "id":
                args.append(base)
            elif column == "finished_at":
                args.append(finished_at)
        return args
