"""
Resource faults with the real server process: the disk filling up and the
data directory turning read-only while jobs are pushed and running.

``data_dir`` is a small tmpfs mounted for the test, so the faults are the
real ones (``ENOSPC``, ``EROFS``) and space or write access comes back with
a remount. Mounting needs root (or ``CAP_SYS_ADMIN``); elsewhere these tests
are skipped and say why. A second server on the same ``data_dir`` is refused:
tests/test_e2e.py.

A read-only remount cannot be tested the same way: Linux refuses to remount a
filesystem read-only while the server holds its database open for writing.
A ``data_dir`` that is read-only from the start is refused at start-up.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections import Counter
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.serverprocess import RecordingWorker, ServerProcess, report, wait_for

UNAVAILABLE = {"status": 503, "error": "storage unavailable, try again later"}
#: Longer than the old give-up time for recording outcomes (4 tries over ~6 s).
FULL_FOR_SECONDS = 7.5


def mount_tmpfs(path: str, size: str) -> None:
    """
    Mount a tmpfs of ``size`` at ``path``.

    :raises SkipTest: when this process may not mount.
    """
    if os.geteuid() != 0:
        raise SkipTest("mounting a small tmpfs as data_dir needs root")
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SkipTest(f"cannot mount a tmpfs: {result.stderr.strip()}")


def remount(path: str, options: str) -> None:
    """
    Change the mount options of the tmpfs at ``path`` (``size=64m``, ``ro``, ``rw``).
    """
    subprocess.run(["mount", "-o", f"remount,{options}", path], check=True)


def fill_up(path: str) -> None:
    """
    Take every free byte left on the filesystem of ``path`` with a ballast file.
    """
    try:
        with open(os.path.join(path, "ballast"), "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass  # full


def unmount(path: str) -> None:
    subprocess.run(["umount", "-l", path], check=False)


class StorageFaultTests(SynchronousTestCase):
    """
    Pushes fail with a clear 503 while the storage cannot be written; reads go
    on; the server recovers by itself; no acknowledged job is lost.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.data_dir = os.path.join(self.directory, "data")
        mount_tmpfs(self.data_dir, "1m")
        self.addCleanup(unmount, self.data_dir)
        self.worker = RecordingWorker()
        self.addCleanup(self.worker.close)
        self.server = ServerProcess(
            self.directory, data_dir=self.data_dir, dispatchers=1, max_workers=4
        )
        self.addCleanup(self.server.stop)
        self.server.start()

    def push(self, path: str, payload: Any = None) -> tuple[int, Any]:
        """
        Push a job to the worker's ``path``; return the status and body.
        """
        return self.server.request(
            "POST", "/job", {"url": self.worker.url + path, "payload": payload}
        )

    def assert_reads_work(self, job_id: str) -> None:
        """
        The read API answers while writes fail.
        """
        for path in ("/stats", "/job?limit=5&reverse=true", f"/job/{job_id}", "/"):
            status, _ = self.server.request("GET", path)
            self.assertEqual(status, 200, path)

    def settled(self) -> list[dict[str, Any]]:
        def done() -> list[dict[str, Any]] | None:
            jobs = self.server.jobs()
            if all(j["status"] not in ("waiting", "running", "canceling") for j in jobs):
                return jobs
            return None

        result: list[dict[str, Any]] = wait_for(done, 30, "every job to finish", 0.2)
        return result

    def integrity(self) -> str:
        db = sqlite3.connect(os.path.join(self.data_dir, "hq.sqlite3"), timeout=10)
        try:
            return str(db.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            db.close()

    def test_disk_full_gives_503_keeps_reads_and_recovers_by_itself(self) -> None:
        """Disk full: push 503, reads 200, running jobs recorded once space returns."""
        acknowledged: list[str] = []
        # Four jobs running (held by the worker) when the disk fills up; their
        # answers (200 KB each) need new space to be recorded.
        for _ in range(4):
            status, job = self.push("/hold?size=200000")
            self.assertEqual(status, 200)
            acknowledged.append(job["id"])
        wait_for(lambda: self.worker.holding == 4, 10, "four running jobs")
        # Fill the disk with waiting jobs until a push is refused.
        blob = "x" * 50_000
        refused = None
        for _ in range(200):
            status, body = self.push("/fill", {"blob": blob})
            if status != 200:
                refused = (status, body)
                break
            acknowledged.append(body["id"])
        self.assertEqual(refused, (503, UNAVAILABLE))
        fill_up(self.data_dir)
        self.assertEqual(self.push("/fill", {"blob": blob}), (503, UNAVAILABLE))
        self.assert_reads_work(acknowledged[0])
        # The held jobs answer now; their outcomes cannot be written yet.
        self.worker.release()
        time.sleep(FULL_FOR_SECONDS)
        self.assertEqual(self.push("/late", {"blob": blob}), (503, UNAVAILABLE))
        self.assert_reads_work(acknowledged[-1])
        _, stats = self.server.request("GET", "/stats")
        self.assertEqual(stats["numJobsRunning"], 4)
        # Space comes back: no restart, no operator action.
        remount(self.data_dir, "size=64m")
        status, job = wait_for(
            lambda: (r := self.push("/after"))[0] == 200 and r, 10, "a push to succeed"
        )
        acknowledged.append(job["id"])
        jobs = {j["id"]: j for j in self.settled()}
        self.assertEqual(set(acknowledged) - set(jobs), set())
        self.assertEqual(Counter(j["status"] for j in jobs.values()), {"success": len(jobs)})
        # Recorded after recovery, so delivered once each: no restart was needed.
        for job_id in acknowledged:
            self.assertEqual(self.worker.received[job_id], 1, job_id)
        self.assertEqual(self.integrity(), "ok")
        log = self.server.log_text()
        self.assertIn("database or disk is full", log)
        self.assertIn("Could not record the outcome of job", log)
        self.assertNotIn("Gave up recording", log)
        report("disk_full", jobs=len(acknowledged), full_seconds=FULL_FOR_SECONDS, lost=0)


class ReadOnlyDataDirTests(SynchronousTestCase):
    """
    A data_dir on a read-only filesystem stops start-up with a clear message.
    """

    def test_read_only_data_dir_refuses_to_start(self) -> None:
        """Start-up on a read-only data_dir exits 1 naming the directory and the reason."""
        directory = os.path.abspath(self.mktemp())
        data_dir = os.path.join(directory, "data")
        mount_tmpfs(data_dir, "1m")
        self.addCleanup(unmount, data_dir)
        remount(data_dir, "ro")
        server = ServerProcess(directory, data_dir=data_dir)
        self.addCleanup(server.stop)
        server.start(wait=False)
        code, output = server.wait_exit()
        self.assertEqual(code, 1)
        self.assertIn(f"cannot use data_dir {data_dir}: Read-only file system", output)
        self.assertNotIn("Traceback", output)
