"""
SPEC §12 end to end: the real server process with tokens, two signing secrets
and a deny list, a real worker on 127.0.0.2 that verifies every delivery with
the ``standardwebhooks`` package, and a bystander service on 127.0.0.1 that
the deny list must keep HQ away from.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from hq.auth import config_entry, new_token
from tests.serverprocess import RecordingWorker, ServerProcess, wait_for

#: The worker's address: loopback, but outside the denied 127.0.0.1/32.
WORKER_HOST = "127.0.0.2"
#: What the server may not connect to: where ``localhost`` resolves.
DENIED = ["127.0.0.1/32", "::1/128"]


def new_secret() -> str:
    """
    Return a new Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64.
    """
    return "whsec_" + base64.b64encode(os.urandom(32)).decode("ascii")


class VerifyingWorker:
    """
    A worker on :data:`WORKER_HOST` that verifies each delivery with the
    ``standardwebhooks`` package, once per secret it knows (as two workers in
    the middle of a rotation would, one holding each secret). It answers 200
    when every secret verifies, 401 otherwise, and records each verdict.
    """

    def __init__(self, secrets: list[str]) -> None:
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError

        hooks = [Webhook(secret) for secret in secrets]
        self.deliveries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        worker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                verdicts = []
                for hook in hooks:
                    try:
                        hook.verify(body, dict(self.headers), json_parse=False)
                        verdicts.append(True)
                    except WebhookVerificationError:
                        verdicts.append(False)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with worker._lock:
                    worker.deliveries.append(
                        {"headers": headers, "body": body, "verdicts": verdicts}
                    )
                valid = all(verdicts)
                answer = json.dumps({"valid": valid}).encode()
                self.send_response(200 if valid else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((WORKER_HOST, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{WORKER_HOST}:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def call(
    base: str,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, Any, Any]:
    """
    Call the API; return the status, the decoded JSON body and the headers.
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", "Bearer " + token)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def add_tokens(server: ServerProcess, **roles: str) -> None:
    """
    Append a ``[[tokens]]`` entry per ``name=token`` (the name is the role) to
    the server's config file, as ``hq token new`` prints them.
    """
    with open(server.config_path, "a") as f:
        for role, token in roles.items():
            f.write("\n" + config_entry(role, role, token))


class AuthorizedServer(ServerProcess):
    """
    A server process whose helper calls (:meth:`request`, ``push``, ``jobs``)
    send ``Authorization: Bearer`` with :attr:`token`, when set.
    """

    token: str | None = None

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 10
    ) -> tuple[int, Any]:
        status, answer, _ = call(self.base, method, path, self.token, body, timeout=timeout)
        return status, answer


class SecurityEndToEndTests(SynchronousTestCase):
    """
    Tokens, signed deliveries and the outbound guard on one real server.
    """

    def setUp(self) -> None:
        try:
            import standardwebhooks  # noqa: F401
        except ImportError:
            raise SkipTest("standardwebhooks is not installed (pip install -e '.[test]')") from None
        try:
            with socket.socket() as probe:
                probe.bind((WORKER_HOST, 0))
        except OSError:
            raise SkipTest(f"{WORKER_HOST} is not a local address here") from None
        self.old_secret, self.new_secret = new_secret(), new_secret()
        self.worker = VerifyingWorker([self.old_secret, self.new_secret])
        self.addCleanup(self.worker.close)
        # A service on 127.0.0.1 that HQ must never reach (think: an admin port).
        self.bystander = RecordingWorker()
        self.addCleanup(self.bystander.close)
        self.tokens = {"read": new_token(), "push": new_token(), "admin": new_token()}
        self.server = ServerProcess(
            self.mktemp(),
            signing_secrets=[self.new_secret, self.old_secret],
            deny_networks=DENIED,
        )
        add_tokens(self.server, **self.tokens)
        self.addCleanup(self.server.stop)
        self.server.start()

    def call(self, method: str, path: str, role: str | None = None, body: Any = None) -> Any:
        """
        Call the API with the token of ``role`` (none for ``None``); return status and body.
        """
        token = None if role is None else self.tokens[role]
        status, answer, _ = call(self.server.base, method, path, token, body)
        return status, answer

    def finished(self, job_id: str) -> dict[str, Any]:
        """
        Wait for the job to finish; return it.
        """

        def done() -> dict[str, Any] | None:
            status, job = self.call("GET", f"/job/{job_id}", "read")
            assert status == 200, job
            return job if job["status"] in ("success", "failure", "canceled") else None

        result: dict[str, Any] = wait_for(done, 20, f"job {job_id} to finish")
        return result

    def assert_no_secret_logged(self) -> None:
        """
        Neither the access log nor the app log holds a token or a signing secret.
        """
        with open(os.path.join(self.server.directory, "access.log")) as f:
            logs = f.read() + self.server.log_text()
        self.assertTrue(logs)
        for secret in [*self.tokens.values(), self.old_secret, self.new_secret]:
            self.assertNotIn(secret, logs)
            self.assertNotIn(secret.removeprefix("whsec_"), logs)

    def test_every_delivery_verifies_with_both_secrets(self) -> None:
        """Each request the worker gets verifies with the old and the new secret alike."""
        payloads = [{"to": "ann@example.com"}, None, ["ü", 1, 2.5]]
        ids = []
        for payload in payloads:
            status, job = self.call(
                "POST", "/job", "push", {"url": self.worker.url + "/mail", "payload": payload}
            )
            self.assertEqual(status, 200, job)
            ids.append(job["id"])
        for job_id in ids:
            job = self.finished(job_id)
            self.assertEqual((job["status"], job["statusCode"]), ("success", 200), job)
            self.assertEqual(json.loads(job["output"]), {"valid": True})
        # Each delivery is the job its webhook-id names. The worker's threads
        # may note two deliveries a moment apart in either order.
        by_id = {delivery["headers"]["webhook-id"]: delivery for delivery in self.worker.deliveries}
        self.assertEqual(len(self.worker.deliveries), len(ids))
        self.assertEqual(sorted(by_id), sorted(ids))
        for job_id in ids:
            delivery = by_id[job_id]
            self.assertEqual(delivery["verdicts"], [True, True])
            headers = delivery["headers"]
            self.assertEqual(len(headers["webhook-signature"].split(" ")), 2)
            self.assertLess(abs(int(headers["webhook-timestamp"]) - time.time()), 60)
        # The worker does refuse what is not signed by HQ: its 401 fails the job.
        forged = urllib.request.Request(
            self.worker.url + "/mail",
            data=b'{"to":"eve@example.com"}',
            headers={
                "webhook-id": ids[0],
                "webhook-timestamp": str(int(time.time())),
                "webhook-signature": by_id[ids[0]]["headers"]["webhook-signature"],
            },
            method="POST",
        )
        with self.assertRaises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(forged, timeout=10)
        self.assertEqual(caught.exception.code, 401)
        self.assert_no_secret_logged()

    def test_denied_address_refused_at_push_and_at_connect(self) -> None:
        """A literal denied address is 422 at push; a name resolving to one fails naming it."""
        port = self.bystander.server.server_port
        status, answer = self.call("POST", "/job", "push", {"url": f"http://127.0.0.1:{port}/"})
        self.assertEqual(status, 422)
        self.assertEqual(
            answer["error"],
            "'url' names the address 127.0.0.1, which is denied by 'deny_networks' "
            "(see docs/security.md)",
        )
        # localhost resolves (from /etc/hosts) to 127.0.0.1 only when connecting.
        status, job = self.call("POST", "/job", "push", {"url": f"http://localhost:{port}/x"})
        self.assertEqual(status, 200, job)
        job = self.finished(job["id"])
        self.assertEqual((job["status"], job["statusCode"]), ("failure", None), job)
        self.assertRegex(
            job["err"],
            r"^could not connect to localhost: the address(es)? (.*, )?127\.0\.0\.1(, .*)? "
            r"of localhost (is|are) denied by 'deny_networks'$",
        )
        self.assertEqual(self.bystander.requests, [])
        # The allowed worker on 127.0.0.2 is reached all the while.
        status, job = self.call("POST", "/job", "push", {"url": self.worker.url + "/ok"})
        self.assertEqual(self.finished(job["id"])["status"], "success")

    def test_roles_and_bad_credentials(self) -> None:
        """Push token pushes but cannot delete (403); admin deletes; bad credentials are 401."""
        status, job = self.call("POST", "/job", "push", {"url": self.worker.url + "/x"})
        self.assertEqual(status, 200, job)
        job_id = job["id"]
        self.assertEqual(self.finished(job_id)["status"], "success")
        status, answer = self.call("DELETE", f"/job/{job_id}", "push")
        self.assertEqual(status, 403)
        self.assertEqual(
            answer["error"],
            f"The token 'push' has the role 'push'; DELETE /job/{job_id} needs the role 'admin'",
        )
        self.assertEqual(self.call("POST", "/job", "read", {"url": self.worker.url})[0], 403)
        self.assertEqual(self.call("DELETE", f"/job/{job_id}", "admin"), (200, {"id": job_id}))
        self.assertEqual(self.call("GET", f"/job/{job_id}", "read")[0], 404)

        base = self.server.base
        admin = self.tokens["admin"]
        status, answer, headers = call(base, "GET", "/job")
        self.assertEqual((status, headers["WWW-Authenticate"]), (401, "Bearer"))
        for query in (f"token={admin}", f"access_token={admin}", f"x={admin}"):
            status, answer, _ = call(base, "GET", "/job?" + query)
            self.assertEqual(status, 401, query)
            self.assertIn("A token in the query string", answer["error"])
        basic = base64.b64encode(b"admin:" + admin.encode()).decode()
        status, _, _ = call(base, "GET", "/job", headers={"Authorization": "Basic " + basic})
        self.assertEqual(status, 401)
        status, _, _ = call(base, "GET", "/health")
        self.assertEqual(status, 200)

        # A 100 KB Authorization header: a JSON 431 at once (the 16 KB header limit).
        host, port = base.removeprefix("http://").split(":")
        began = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            answer_bytes = b""
            try:
                sock.sendall(
                    b"GET /job HTTP/1.1\r\nHost: hq\r\nAuthorization: Bearer "
                    + b"A" * 100_000
                    + b"\r\n\r\n"
                )
                while chunk := sock.recv(65536):
                    answer_bytes += chunk
            except ConnectionError:
                pass
        self.assertLess(time.monotonic() - began, 2)
        self.assertEqual(answer_bytes[:13], b"HTTP/1.1 431 ")
        self.assertIn(b"larger than the limit of 16384 bytes", answer_bytes)
        self.assertEqual(self.call("GET", "/stats", "read")[0], 200)
        self.assertNotIn("Traceback", self.server.log_text())
        with open(os.path.join(self.server.directory, "access.log")) as f:
            access = f.read()
        for query in ("token=REDACTED", "access_token=REDACTED", "x=REDACTED"):
            self.assertIn(f" GET /job?{query} 401 ", access)
        self.assert_no_secret_logged()
