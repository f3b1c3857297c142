"""
Tests for hq.signing: Standard Webhooks signatures, checked with the
independent ``standardwebhooks`` package; and the verifying worker of
docs/security.md, run as written.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hq.config import ConfigError, config_from_dict
from hq.model import Job
from hq.signing import Signer, new_secret, parse_secrets, secret_key, signer_for
from hq.testing import FakeWorker, WorkerStub
from hq.worker import WorkerClient, WorkerConnectionPool, make_http_client
from tests.serverprocess import ROOT, wait_for

OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw0N6k0z1bK6A="


class SignerTests(SynchronousTestCase):
    """
    The signature itself, verified by the standardwebhooks package.
    """

    def test_one_secret_verifies(self) -> None:
        """webhook-id, -timestamp and -signature verify with the secret."""
        now = int(time.time())
        headers = dict(Signer([NEW]).headers("7", now, b'{"a":1}'))
        as_text = {k.decode(): v.decode() for k, v in headers.items()}
        self.assertEqual(as_text["webhook-id"], "7")
        self.assertEqual(as_text["webhook-timestamp"], str(now))
        self.assertRegex(as_text["webhook-signature"], r"^v1,[A-Za-z0-9+/]{43}=$")
        self.assertEqual(Webhook(NEW).verify(b'{"a":1}', as_text), {"a": 1})
        with self.assertRaises(WebhookVerificationError):
            Webhook(OLD).verify(b'{"a":1}', as_text)
        with self.assertRaises(WebhookVerificationError):
            Webhook(NEW).verify(b'{"a":2}', as_text)

    def test_same_as_the_reference_signer(self) -> None:
        """The signature is the reference library's, over "{id}.{timestamp}.{body}"."""
        body = '{"test": 2432232314, "ü": "é"}'
        signature = Signer([NEW]).signature(
            "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body.encode()
        )
        when = datetime.fromtimestamp(1614265330, UTC)
        expected = Webhook(NEW).sign("msg_p5jXN8AQM9LWM0D4loKWxJek", when, body)
        self.assertEqual(signature, expected)

    def test_two_secrets_during_rotation(self) -> None:
        """With two secrets there are two signatures; a worker holding either verifies."""
        now = int(time.time())
        signer = Signer([NEW, OLD])
        headers = {k.decode(): v.decode() for k, v in signer.headers("9", now, b"[]")}
        self.assertEqual(len(headers["webhook-signature"].split(" ")), 2)
        for secret in (NEW, OLD):
            self.assertEqual(Webhook(secret).verify(b"[]", headers), [])
        with self.assertRaises(WebhookVerificationError):
            Webhook(new_secret()).verify(b"[]", headers)

    def test_secret_format(self) -> None:
        """whsec_ + base64 of 24-64 bytes; new_secret makes one."""
        self.assertEqual(len(secret_key(new_secret())), 32)
        for bad in ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw0N6k0z1bK6A=", "whsec_!!", "whsec_YWJj"):
            with self.assertRaises(ValueError):
                secret_key(bad)
        self.assertIsNone(signer_for(()))

    def test_config_refuses_a_bad_secret_by_index_without_showing_it(self) -> None:
        """A malformed entry stops start-up naming its index, not its value."""
        with self.assertRaises(ConfigError) as caught:
            config_from_dict({"signing_secrets": [NEW, "whsec_tooshort"]})
        self.assertIn("'signing_secrets' entry 1 is not valid", str(caught.exception))
        self.assertNotIn("tooshort", str(caught.exception))
        with self.assertRaises(ConfigError):
            config_from_dict({"signing_secrets": NEW})
        self.assertEqual(parse_secrets([NEW, OLD]), (NEW, OLD))
        self.assertEqual(config_from_dict({"signing_secrets": [NEW]}).signing_secrets, (NEW,))


class SignedDeliveryTests(SynchronousTestCase):
    """
    What a worker receives from a WorkerClient with a signer.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.worker = FakeWorker()
        self.stub = WorkerStub(self.worker)

    def deliver(self, secrets: list[str], **fields: Any) -> Any:
        client = WorkerClient(
            self.stub.http, self.clock, "HQ/test", 1024, signer=signer_for(secrets)
        )
        job = Job(id=4242, url="http://worker.test/work", **fields)
        self.successResultOf(client.post(job))
        [request] = self.worker.requests
        return request

    def as_dict(self, request: Any) -> dict[str, str]:
        return {name: values[0] for name, values in request.headers.items()}

    def test_worker_verifies_with_either_secret(self) -> None:
        """A delivery signed with two secrets verifies with each (rotation)."""
        request = self.deliver([NEW, OLD], payload='{"n":1}')
        self.assertEqual(request.header("webhook-id"), "4242")
        self.assertEqual(request.header("webhook-timestamp"), str(int(self.clock.seconds())))
        for secret in (NEW, OLD):
            self.assertEqual(Webhook(secret).verify(request.body, self.as_dict(request)), {"n": 1})

    def test_job_without_payload_is_signed_over_the_empty_body(self) -> None:
        """No payload: no body, and the signature covers the empty body."""
        request = self.deliver([NEW])
        self.assertEqual(request.body, b"")
        Webhook(NEW).verify(request.body, self.as_dict(request), json_parse=False)

    def test_job_headers_cannot_forge_the_signature(self) -> None:
        """A job's own webhook-* headers are dropped while signing is on."""
        request = self.deliver(
            [NEW],
            payload="1",
            headers={"Webhook-Signature": "v1,forged", "webhook-id": "1", "X-Other": "kept"},
        )
        self.assertEqual(request.headers["webhook-id"], ["4242"])
        self.assertEqual(len(request.headers["webhook-signature"]), 1)
        self.assertEqual(request.header("x-other"), "kept")
        self.assertEqual(Webhook(NEW).verify(request.body, self.as_dict(request)), 1)

    def test_no_secrets_no_signature(self) -> None:
        """Without signing_secrets no webhook-* header is sent, and a job's own are kept."""
        request = self.deliver([], headers={"webhook-id": "mine"})
        self.assertEqual(request.header("webhook-id"), "mine")
        self.assertIsNone(request.header("webhook-signature"))

    def test_each_attempt_is_signed_with_its_own_time(self) -> None:
        """A later attempt carries a later timestamp (and a different signature)."""
        client = WorkerClient(self.stub.http, self.clock, "HQ/test", 1024, signer=Signer([NEW]))
        job = Job(id=5, url="http://worker.test/", payload="{}")
        self.successResultOf(client.post(job))
        self.clock.advance(90)
        self.successResultOf(client.post(job))
        first, second = self.worker.requests
        self.assertEqual(
            int(second.header("webhook-timestamp") or 0)
            - int(first.header("webhook-timestamp") or 0),
            90,
        )
        self.assertNotEqual(first.header("webhook-signature"), second.header("webhook-signature"))


def docs_worker() -> str:
    """
    Return the Python block after the ``signed-worker`` marker of docs/security.md.
    """
    with open(os.path.join(ROOT, "docs", "security.md"), encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"<!-- signed-worker[^>]*-->\n```python\n(.*?)\n```", text, re.S)
    assert match is not None, "docs/security.md lost its signed-worker block"
    return match.group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DocsWorkerTests(TestCase):
    """
    The worker of docs/security.md, as a real process, behind a real WorkerClient.
    """

    def start_worker(self, secret: str) -> str:
        path = os.path.join(self.mktemp() + ".py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(docs_worker() + "\n")
        port = _free_port()
        env = dict(os.environ, HQ_SIGNING_SECRET=secret, PORT=str(port))
        process = subprocess.Popen([sys.executable, path], env=env, stderr=subprocess.DEVNULL)
        self.addCleanup(process.wait, 10)
        self.addCleanup(process.kill)

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                assert process.poll() is None, "the docs' worker exited"
                return False
            return True

        wait_for(listening, 20, "the docs' worker to listen")
        return f"http://127.0.0.1:{port}/"

    async def test_docs_worker_accepts_signed_and_refuses_others(self) -> None:
        """Signed with its secret (one of two): 200; unsigned or another secret: 401."""
        url = self.start_worker(OLD)
        pool = WorkerConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        http = make_http_client(reactor, pool)

        async def status(secrets: list[str]) -> tuple[int | None, str]:
            client = WorkerClient(http, reactor, "HQ/test", 4096, signer=signer_for(secrets))
            exchange = await client.post(Job(id=77, url=url, payload='{"x":"y"}'))
            return exchange.status_code, exchange.output()

        code, output = await status([NEW, OLD])
        self.assertEqual((code, json.loads(output)), (200, {"job": "77", "got": {"x": "y"}}))
        self.assertEqual((await status([]))[0], 401)
        self.assertEqual((await status([NEW]))[0], 401)
