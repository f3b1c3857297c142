"""
End-to-end tests: the real server process, a real worker, real sockets on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time

from twisted.trial.unittest import SynchronousTestCase

from hq import __version__
from tests.serverprocess import TWISTD, RecordingWorker, ServerProcess, wait_for


class EndToEndTests(SynchronousTestCase):
    """
    HQ as users run it.
    """

    def setUp(self) -> None:
        self.worker = RecordingWorker()
        self.addCleanup(self.worker.close)

    def server(self, **config: object) -> ServerProcess:
        server = ServerProcess(self.mktemp(), **config)
        self.addCleanup(server.stop)
        return server

    def finished(self, server: ServerProcess, count: int) -> list[dict[str, object]]:
        def done() -> list[dict[str, object]] | None:
            jobs = server.jobs()
            if len(jobs) == count and all(
                j["status"] not in ("waiting", "running", "canceling") for j in jobs
            ):
                return jobs
            return None

        result: list[dict[str, object]] = wait_for(done, 20, f"{count} jobs to finish")
        return result

    def test_push_is_delivered_to_a_real_worker(self) -> None:
        """A pushed job reaches the worker with the documented request and ends success."""
        server = self.server().start()
        job_id = server.push(
            self.worker.url + "/work", payload={"message": "Hello"}, headers={"X-Token": "t"}
        )
        [job] = self.finished(server, 1)
        self.assertEqual((job["id"], job["status"], job["statusCode"]), (job_id, "success", 200))
        self.assertEqual(job["output"], '{"ok":true}')
        [request] = self.worker.requests
        self.assertEqual(request["path"], "/work")
        self.assertEqual(request["body"], b'{"message":"Hello"}')
        headers = request["headers"]
        self.assertEqual(headers["X-Hq-Job-Id"], job_id)
        self.assertEqual(headers["User-Agent"], f"HQ/{__version__}")
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(headers["X-Token"], "t")
        log = server.log_text()
        self.assertIn("Web UI at", log)
        access = open(os.path.join(server.directory, "access.log")).read()
        self.assertIn("POST /job 200", access)

    def test_kill_9_loses_no_acknowledged_job(self) -> None:
        """After SIGKILL with jobs running and waiting, a restart delivers every one."""
        server = self.server(dispatchers=1, max_workers=2)
        server.start()
        held = [server.push(self.worker.url + "/hold") for _ in range(2)]
        waiting = [server.push(self.worker.url + "/fast") for _ in range(20)]
        wait_for(lambda: self.worker.holding == 2, 10, "two running jobs")
        _, stats = server.request("GET", "/stats")
        self.assertEqual((stats["numJobsRunning"], stats["numJobsWaiting"]), (2, 20))
        server.kill(signal.SIGKILL)
        self.worker.release()
        server.start()
        jobs = self.finished(server, 22)
        self.assertEqual({j["status"] for j in jobs}, {"success"})
        for job_id in held + waiting:
            self.assertGreaterEqual(self.worker.received[job_id], 1, job_id)
        # Only the two jobs in flight at the kill may have been delivered twice.
        self.assertEqual(sum(self.worker.received[j] for j in waiting), 20)
        self.assertIn("Recovered 2 interrupted jobs", server.log_text())
        db = sqlite3.connect(os.path.join(server.directory, "data", "hq.sqlite3"))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA integrity_check").fetchone()[0], "ok")

    def test_sigterm_waits_then_leaves_running_job_for_next_start(self) -> None:
        """SIGTERM waits shutdown_timeout for a hung job, exits 0; the job runs after restart."""
        server = self.server(shutdown_timeout=1)
        server.start()
        job_id = server.push(self.worker.url + "/hold")
        wait_for(lambda: self.worker.holding == 1, 10, "the job to run")
        began = time.monotonic()
        server.kill(signal.SIGTERM)
        code, _ = server.wait_exit()
        self.assertEqual(code, 0)
        self.assertLess(time.monotonic() - began, 8)
        self.worker.release()
        server.start()
        [job] = self.finished(server, 1)
        self.assertEqual((job["id"], job["status"]), (job_id, "success"))
        self.assertGreaterEqual(self.worker.received[job_id], 2)

    def test_second_signal_exits_at_once(self) -> None:
        """A second SIGTERM during a long graceful shutdown exits at once."""
        server = self.server(shutdown_timeout=60)
        server.start()
        server.push(self.worker.url + "/hold")
        wait_for(lambda: self.worker.holding == 1, 10, "the job to run")
        server.kill(signal.SIGTERM)
        wait_for(lambda: "Shutting down" in server.log_text(), 10, "the shutdown to begin")
        began = time.monotonic()
        server.kill(signal.SIGTERM)
        code, output = server.wait_exit()
        self.assertLess(time.monotonic() - began, 5)
        self.assertEqual(code, 128 + signal.SIGTERM)
        self.assertIn("second signal", output)

    def test_stop_running_job_over_real_sockets(self) -> None:
        """Stopping a running job aborts its request and the job ends canceled."""
        server = self.server().start()
        job_id = server.push(self.worker.url + "/hold")
        wait_for(lambda: self.worker.holding == 1, 10, "the job to run")
        status, body = server.request("POST", f"/job/{job_id}/stop")
        self.assertEqual((status, body), (200, {"id": job_id}))
        [job] = self.finished(server, 1)
        self.assertEqual(
            (job["status"], job["canceled"], job["failure"]), ("canceled", True, False)
        )

    def test_twistd_plugin_runs_the_server(self) -> None:
        """``twistd -n hq -c FILE`` serves the API."""
        server = ServerProcess(self.mktemp(), command=TWISTD)
        self.addCleanup(server.stop)
        server.start()
        status, info = server.request("GET", "/")
        self.assertEqual((status, info["version"]), (200, __version__))
        server.kill(signal.SIGTERM)
        # twistd ends by re-raising the signal it stopped on (systemd counts it clean).
        self.assertIn(server.wait_exit()[0], (0, -signal.SIGTERM))

    def test_bad_config_key_exits_naming_it(self) -> None:
        """An unknown config key stops start-up with exit status 1 and names the key."""
        server = self.server(dispatcherz=3)
        server.start(wait=False)
        code, output = server.wait_exit()
        self.assertEqual(code, 1)
        self.assertIn("unknown configuration key 'dispatcherz'", output)

    def test_second_server_on_same_data_dir_refused(self) -> None:
        """A second server on a data_dir in use exits 1 with a clear message."""
        first = self.server().start()
        second = ServerProcess(
            first.directory + "-2", data_dir=os.path.join(first.directory, "data")
        )
        self.addCleanup(second.stop)
        second.start(wait=False)
        code, output = second.wait_exit()
        self.assertEqual(code, 1)
        self.assertIn("another HQ server", output)

    def test_port_in_use_refused(self) -> None:
        """An address already in use exits 1 with a message naming it."""
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        server = self.server(addr=f"127.0.0.1:{port}")
        server.start(wait=False)
        code, output = server.wait_exit()
        self.assertEqual(code, 1)
        self.assertIn(f"cannot listen on 127.0.0.1:{port}", output)
