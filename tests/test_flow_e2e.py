"""
Flow control and callbacks end to end (SPEC §16): the real server process
and real workers on 127.0.0.1, as a user meets them: a worker that throttles
(429 above its capacity), limits that survive a restart, no head-of-line
blocking, and callbacks that arrive signed with ``X-Hq-Callback-For``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import quote

from twisted.trial.unittest import TestCase

from hq.signing import new_secret
from tests.serverprocess import RecordingWorker, ServerProcess, _QuietHTTPServer, report, wait_for


class ThrottlingWorker:
    """
    A worker that answers 429 while ``capacity`` requests are in flight,
    else takes ``seconds`` and answers 200; it records the most in flight.
    """

    def __init__(self, capacity: int, seconds: float) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self.peak_accepted = 0
        self.throttled = 0
        self.succeeded: set[str] = set()
        self._lock = threading.Lock()
        worker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with worker._lock:
                    accept = worker.in_flight < worker.capacity
                    if accept:
                        worker.in_flight += 1
                        worker.peak_accepted = max(worker.peak_accepted, worker.in_flight)
                    else:
                        worker.throttled += 1
                if accept:
                    time.sleep(seconds)
                    with worker._lock:
                        worker.in_flight -= 1
                        worker.succeeded.add(self.headers.get("X-Hq-Job-Id", ""))
                code = 200 if accept else 429
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/work"
        self.key = f"127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FlowEndToEndTests(TestCase):
    timeout = 120

    def server(self, **config: Any) -> ServerProcess:
        server = ServerProcess(self.mktemp(), **config).start()
        self.addCleanup(server.stop)
        return server

    def recording_worker(self) -> RecordingWorker:
        worker = RecordingWorker()
        self.addCleanup(worker.close)
        return worker

    def test_adaptive_limit_backs_off_a_throttling_worker(self) -> None:
        """
        With adaptive_flow, a worker that takes 2 at a time gets its limit
        halved from 8; every job still succeeds (retries), none is lost.
        """
        worker = ThrottlingWorker(capacity=2, seconds=0.03)
        self.addCleanup(worker.close)
        server = self.server(
            adaptive_flow=True,
            dispatchers=1,
            max_workers=8,
            retry_min_backoff=0.05,
            retry_max_backoff=0.2,
        )
        ids = [server.push(worker.url, retries=40) for _ in range(40)]
        wait_for(lambda: len(worker.succeeded) >= 40, 60, "every job to succeed")
        status, flow = server.request("GET", "/flow/" + quote(worker.key, safe=""))
        self.assertEqual(status, 200)
        history = [entry["limit"] for entry in flow["limitHistory"]]
        self.assertEqual(history[0], 8)
        self.assertLessEqual(min(history), 2, history)
        self.assertEqual(worker.succeeded, set(ids))
        wait_for(lambda: all(j["status"] == "success" for j in server.jobs()), 10, "recorded")
        report(
            "adaptive",
            limits=history[:30],
            throttled=worker.throttled,
            peak_accepted=worker.peak_accepted,
        )

    def test_parallelism_survives_a_restart_and_blocks_no_other_key(self) -> None:
        """
        parallelism 2, set before a restart: after it, 2 of the key's jobs run at
        once, never more, while another key's job goes through at once.
        """
        worker = self.recording_worker()
        server = self.server(dispatchers=2, max_workers=4)
        status, flow = server.request("PUT", "/flow/slow", {"parallelism": 2})
        self.assertEqual((status, flow["parallelism"]), (200, 2))
        server.stop()
        server.start()
        status, flow = server.request("GET", "/flow/slow")
        self.assertEqual((flow["parallelism"], flow["limit"]), (2, 2))
        held = [server.push(worker.url + "/hold", flowKey="slow") for _ in range(8)]
        wait_for(lambda: worker.holding == 2, 10, "two held requests")
        began = time.monotonic()
        fast = server.push(worker.url + "/fast")
        wait_for(lambda: worker.received[fast] == 1, 10, "the other key's job")
        latency = time.monotonic() - began
        time.sleep(0.3)
        self.assertEqual(worker.holding, 2)
        status, flow = server.request("GET", "/flow/slow")
        self.assertEqual((flow["running"], flow["waiting"]), (2, 6))
        worker.release()
        wait_for(lambda: all(worker.received[i] == 1 for i in held), 20, "all held jobs")
        # Within the key, jobs start in push order (two at a time may reach
        # the worker in either order, so HQ's own start times are compared).
        started = [server.request("GET", f"/job/{job_id}")[1]["startedAt"] for job_id in held]
        self.assertEqual(started, sorted(started))
        report("no head-of-line blocking", other_key_latency_ms=round(latency * 1000, 1))

    def test_callbacks_arrive_signed_with_the_finished_job(self) -> None:
        """
        A job with callbackUrl that succeeds pushes a signed callback job whose
        payload is the finished job; the original shows callbackJobId.
        """
        worker = self.recording_worker()
        server = self.server(signing_secrets=[new_secret()])
        job_id = server.push(worker.url + "/work", callbackUrl=worker.url + "/done")

        def callback() -> dict[str, Any] | None:
            for request in worker.requests:
                if request["path"] == "/done":
                    return request
            return None

        request = wait_for(callback, 10, "the callback")
        self.assertEqual(request["headers"]["X-Hq-Callback-For"], job_id)
        self.assertIn("webhook-signature", {k.lower() for k in request["headers"]})
        payload = json.loads(request["body"])
        self.assertEqual((payload["id"], payload["status"]), (job_id, "success"))
        status, job = server.request("GET", f"/job/{job_id}")
        self.assertEqual(status, 200)
        self.assertEqual(job["callbackJobId"], request["headers"]["X-Hq-Job-Id"])
        status, callback_job = server.request("GET", f"/job/{job['callbackJobId']}")
        self.assertEqual(status, 200)
        self.assertEqual(callback_job["url"], worker.url + "/done")
        self.assertEqual(callback_job["headers"], {"X-Hq-Callback-For": job_id})
