"""
The worker receiver of hq_sdk: signatures made by the ``standardwebhooks`` package and by
HQ's own signer, the dedup stores, "try later", and the WSGI and ASGI adapters.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import threading
from datetime import UTC, datetime
from typing import Any

import standardwebhooks
from twisted.trial.unittest import SynchronousTestCase

from hq.signing import Signer, new_secret
from hq_sdk.asgi import asgi_app
from hq_sdk.dedup import Claim, MemoryDedupStore, SQLiteDedupStore
from hq_sdk.receiver import (
    Answer,
    ReceivedJob,
    ReceiveError,
    Receiver,
    TryLater,
    decode_secret,
    try_later,
)
from hq_sdk.wsgi import wsgi_app

NOW = 1_700_000_000
BODY = b'{"n":1}'


def sign_with_library(secret: str, msg_id: str, body: bytes, at: int = NOW) -> dict[str, str]:
    """Return the three headers, as the standardwebhooks package signs."""
    when = datetime.fromtimestamp(at, UTC)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(at),
        "webhook-signature": signature,
    }


class ReceiveTests(SynchronousTestCase):
    """Receiver.receive: verification per SPEC §12."""

    def setUp(self) -> None:
        self.secret = new_secret()
        self.receiver = Receiver([self.secret], now=lambda: NOW)

    def refused(self, receiver: Receiver, headers: Any, body: bytes = BODY) -> ReceiveError:
        with self.assertRaises(ReceiveError) as caught:
            receiver.receive(headers, body)
        return caught.exception

    def test_library_signature_is_accepted(self) -> None:
        """A delivery signed by the standardwebhooks package gives the job."""
        job = self.receiver.receive(sign_with_library(self.secret, "42", BODY), BODY)
        self.assertEqual(
            (job.id, job.payload, job.timestamp, job.attempt), ("42", {"n": 1}, NOW, None)
        )

    def test_our_signature_verifies_with_the_library(self) -> None:
        """HQ's signer's headers pass the standardwebhooks package and the receiver."""
        headers = dict(
            (k.decode(), v.decode()) for k, v in Signer([self.secret]).headers("7", NOW, BODY)
        )
        self.assertEqual(self.receiver.receive(headers, BODY).id, "7")
        library = standardwebhooks.Webhook(self.secret)
        fresh = dict(
            (k.decode(), v.decode())
            for k, v in Signer([self.secret]).headers("7", int(datetime.now(UTC).timestamp()), BODY)
        )
        self.assertEqual(library.verify(BODY, fresh), {"n": 1})

    def test_wrong_secret_is_401(self) -> None:
        """A signature by another secret is refused with 401."""
        error = self.refused(self.receiver, sign_with_library(new_secret(), "42", BODY))
        self.assertEqual(error.status, 401)
        self.assertIn("no signature matches", error.message)

    def test_rotation_two_secrets(self) -> None:
        """HQ signs with old and new secrets: a worker knowing either one accepts."""
        old, new = new_secret(), new_secret()
        headers = dict(
            (k.decode(), v.decode()) for k, v in Signer([new, old]).headers("9", NOW, BODY)
        )
        self.assertEqual(len(headers["webhook-signature"].split()), 2)
        for known in ([old], [new], [new_secret(), old]):
            self.assertEqual(Receiver(known, now=lambda: NOW).receive(headers, BODY).id, "9")
        self.assertEqual(
            self.refused(Receiver([new_secret()], now=lambda: NOW), headers).status, 401
        )

    def test_stale_and_future_timestamps_are_refused(self) -> None:
        """Outside 5 minutes either way: 401; just inside: accepted."""
        for at in (NOW - 301, NOW + 301):
            error = self.refused(self.receiver, sign_with_library(self.secret, "1", BODY, at))
            self.assertEqual(error.status, 401)
        for at in (NOW - 299, NOW + 299):
            self.receiver.receive(sign_with_library(self.secret, "1", BODY, at), BODY)

    def test_tampered_body_or_id_is_refused(self) -> None:
        """A changed body or id breaks the signature."""
        headers = sign_with_library(self.secret, "42", BODY)
        self.assertEqual(self.refused(self.receiver, headers, b'{"n":2}').status, 401)
        self.assertEqual(self.refused(self.receiver, {**headers, "webhook-id": "43"}).status, 401)

    def test_missing_and_malformed_headers(self) -> None:
        """No signature headers: 401; a non-numeric timestamp: 400; X-Hq-Job-Id must agree."""
        self.assertEqual(self.refused(self.receiver, {"x-hq-job-id": "1"}).status, 401)
        headers = sign_with_library(self.secret, "42", BODY)
        self.assertEqual(
            self.refused(self.receiver, {**headers, "webhook-timestamp": "soon"}).status, 400
        )
        self.assertEqual(self.refused(self.receiver, {**headers, "X-Hq-Job-Id": "41"}).status, 400)

    def test_hostile_headers_and_bodies_are_400_not_a_crash(self) -> None:
        """Huge timestamps, non-ASCII digits and a deeply nested body are refused with 400."""
        headers = sign_with_library(self.secret, "42", BODY)
        for stamp in ("1" + "0" * 400, "9" * 5000, "\u00b2"):
            self.assertEqual(
                self.refused(self.receiver, {**headers, "webhook-timestamp": stamp}).status, 400
            )
        self.assertEqual(
            self.refused(self.receiver, {**headers, "x-hq-attempt": "\u00b2"}).status, 400
        )
        unsigned = Receiver([], allow_unsigned=True)
        deep = b"[" * 100_000
        self.assertEqual(self.refused(unsigned, {"X-Hq-Job-Id": "5"}, deep).status, 400)

    def test_headers_in_any_shape(self) -> None:
        """Mixed-case names and ASGI byte pairs are read alike; the attempt header is read."""
        headers = sign_with_library(self.secret, "42", BODY)
        pairs = [(k.title().encode(), v.encode()) for k, v in headers.items()]
        pairs.append((b"X-Hq-Attempt", b"3"))
        job = self.receiver.receive(pairs, BODY)
        self.assertEqual((job.id, job.attempt), ("42", 3))

    def test_unsigned_needs_consent(self) -> None:
        """No secret is refused unless allow_unsigned; then X-Hq-Job-Id names the job."""
        self.assertRaises(ValueError, Receiver, [])
        self.assertRaises(ValueError, Receiver, self.secret)
        receiver = Receiver([], allow_unsigned=True)
        self.assertEqual(receiver.receive({"X-Hq-Job-Id": "5"}, b"").payload, None)
        self.assertEqual(self.refused(receiver, {}).status, 400)

    def test_secret_forms(self) -> None:
        """Secrets are whsec_ base64 (padding optional) or raw bytes; junk is refused."""
        key = os.urandom(24)
        text = base64.b64encode(key).decode()
        self.assertEqual(decode_secret("whsec_" + text), key)
        self.assertEqual(decode_secret("whsec_" + text.rstrip("=")), key)
        self.assertEqual(decode_secret(key), key)
        self.assertRaises(ValueError, decode_secret, "whsec_!!")
        self.assertRaises(ValueError, decode_secret, "whsec_")

    def test_body_that_is_not_json(self) -> None:
        """A signed body that is not JSON is a 400."""
        body = b"not json"
        error = self.refused(self.receiver, sign_with_library(self.secret, "1", body), body)
        self.assertEqual(error.status, 400)


class HandleTests(SynchronousTestCase):
    """Receiver.handle: the whole exchange, with dedup and try-later."""

    def setUp(self) -> None:
        self.secret = new_secret()
        self.dedup = MemoryDedupStore()
        self.receiver = Receiver([self.secret], dedup=self.dedup, now=lambda: NOW)
        self.done: list[ReceivedJob] = []

    def work(self, job: ReceivedJob) -> Any:
        self.done.append(job)
        return {"did": job.payload}

    def test_does_a_job_once(self) -> None:
        """The first delivery does the work; the same job again is answered, not done."""
        headers = sign_with_library(self.secret, "42", BODY)
        first = self.receiver.handle(headers, BODY, self.work)
        again = self.receiver.handle(headers, BODY, self.work)
        self.assertEqual((first.status, json.loads(first.body)), (200, {"did": {"n": 1}}))
        self.assertEqual(
            (again.status, json.loads(again.body)), (200, {"id": "42", "duplicate": True})
        )
        self.assertEqual(len(self.done), 1)

    def test_failed_work_is_done_again(self) -> None:
        """An exception propagates and the job is not marked done: the retry does it."""
        headers = sign_with_library(self.secret, "42", BODY)

        def fail(job: ReceivedJob) -> None:
            raise RuntimeError("boom")

        self.assertRaises(RuntimeError, self.receiver.handle, headers, BODY, fail)
        self.assertEqual(self.receiver.handle(headers, BODY, self.work).status, 200)
        self.assertEqual(len(self.done), 1)

    def test_try_later(self) -> None:
        """TryLater: 429 with Retry-After; the job is not marked done."""
        headers = sign_with_library(self.secret, "42", BODY)

        def busy(job: ReceivedJob) -> None:
            raise TryLater(2.5, "rate limited")

        answer = self.receiver.handle(headers, BODY, busy)
        self.assertEqual(answer.status, 429)
        self.assertIn(("Retry-After", "3"), answer.headers)
        self.assertEqual(json.loads(answer.body), {"error": "rate limited"})
        self.assertEqual(self.receiver.handle(headers, BODY, self.work).status, 200)

    def test_try_later_answers(self) -> None:
        """try_later() writes seconds rounded up, or an HTTP date."""
        self.assertIn(("Retry-After", "60"), try_later().headers)
        self.assertIn(("Retry-After", "1"), try_later(0.2).headers)
        at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        self.assertIn(("Retry-After", "Wed, 02 Jan 2030 03:04:05 GMT"), try_later(at).headers)
        self.assertRaises(ValueError, try_later, datetime(2030, 1, 1))

    def test_concurrent_delivery_is_told_to_try_later(self) -> None:
        """While a job is being done, another delivery of it gets 429."""
        headers = sign_with_library(self.secret, "42", BODY)
        answers: list[Answer] = []

        def nested(job: ReceivedJob) -> None:
            answers.append(self.receiver.handle(headers, BODY, self.work))

        self.receiver.handle(headers, BODY, nested)
        self.assertEqual(answers[0].status, 429)
        self.assertEqual(self.done, [])

    def test_refused_delivery_answers_json_error(self) -> None:
        """A bad signature is answered 401 {"error"}, and the work is not called."""
        answer = self.receiver.handle(sign_with_library(new_secret(), "1", BODY), BODY, self.work)
        self.assertEqual(answer.status, 401)
        self.assertIn("error", json.loads(answer.body))
        self.assertEqual(self.done, [])

    def test_handle_async(self) -> None:
        """handle_async awaits a coroutine function, and dedups alike."""
        headers = sign_with_library(self.secret, "42", BODY)

        async def work(job: ReceivedJob) -> dict[str, Any]:
            self.done.append(job)
            return {"ok": 1}

        async def twice() -> list[Answer]:
            return [await self.receiver.handle_async(headers, BODY, work) for _ in range(2)]

        first, again = asyncio.run(twice())
        self.assertEqual((first.status, json.loads(first.body)), (200, {"ok": 1}))
        self.assertTrue(json.loads(again.body)["duplicate"])
        self.assertEqual(len(self.done), 1)


class DedupContract:
    """What every dedup store does."""

    assertEqual: Any

    def store(self) -> Any:
        raise NotImplementedError

    def test_claim_complete_release(self) -> None:
        """new → busy while claimed; released → new again; completed → done."""
        store = self.store()
        self.assertEqual(store.claim("1"), Claim.NEW)
        self.assertEqual(store.claim("1"), Claim.BUSY)
        store.release("1")
        self.assertEqual(store.claim("1"), Claim.NEW)
        store.complete("1")
        self.assertEqual(store.claim("1"), Claim.DONE)
        store.release("1")
        self.assertEqual(store.claim("1"), Claim.DONE)

    def test_concurrent_claims_one_wins(self) -> None:
        """Eight threads claim one id: exactly one gets NEW."""
        store = self.store()
        results: list[Claim] = []
        lock = threading.Lock()

        def claim() -> None:
            got = store.claim("x")
            with lock:
                results.append(got)

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual(sorted(r.value for r in results), ["busy"] * 7 + ["new"])


class MemoryDedupTests(DedupContract, SynchronousTestCase):
    """The in-memory store."""

    def store(self) -> MemoryDedupStore:
        return MemoryDedupStore()

    def test_bounded(self) -> None:
        """Only the max_done most recent ids are kept."""
        store = MemoryDedupStore(max_done=3)
        for i in range(10):
            store.claim(str(i))
            store.complete(str(i))
        self.assertEqual(len(store), 3)
        self.assertEqual(store.claim("9"), Claim.DONE)
        self.assertEqual(store.claim("0"), Claim.NEW)
        self.assertRaises(ValueError, MemoryDedupStore, 0)


class SQLiteDedupTests(DedupContract, SynchronousTestCase):
    """The SQLite store."""

    def store(self, **kwargs: Any) -> SQLiteDedupStore:
        if not hasattr(self, "path"):
            self.path = os.path.join(os.path.abspath(self.mktemp()) + ".sqlite3")
        return SQLiteDedupStore(self.path, **kwargs)

    def test_survives_a_new_store_and_takes_over_stale_claims(self) -> None:
        """Ids done are kept on disk; a claim older than stale_after is taken over."""
        clock = [1000.0]
        store = self.store(now=lambda: clock[0], stale_after=60)
        store.claim("1")
        store.complete("1")
        store.claim("2")
        reopened = self.store(now=lambda: clock[0], stale_after=60)
        self.assertEqual(reopened.claim("1"), Claim.DONE)
        self.assertEqual(reopened.claim("2"), Claim.BUSY)
        clock[0] += 61
        self.assertEqual(reopened.claim("2"), Claim.NEW)

    def test_prune(self) -> None:
        """prune() forgets ids done long ago, and only those."""
        clock = [1000.0]
        store = self.store(now=lambda: clock[0])
        for job_id in ("1", "2"):
            store.claim(job_id)
            store.complete(job_id)
        clock[0] += 100
        store.claim("3")
        store.complete("3")
        self.assertEqual(store.prune(50), 2)
        self.assertEqual((store.claim("1"), store.claim("3")), (Claim.NEW, Claim.DONE))


class AdapterTests(SynchronousTestCase):
    """The WSGI and ASGI applications."""

    def setUp(self) -> None:
        self.secret = new_secret()
        self.receiver = Receiver([self.secret], dedup=MemoryDedupStore(), now=lambda: NOW)
        self.done: list[str] = []

    def work(self, job: ReceivedJob) -> dict[str, Any]:
        self.done.append(job.id)
        return {"ok": True}

    def wsgi(
        self, method: str, headers: dict[str, str], body: bytes
    ) -> tuple[str, dict[str, str], bytes]:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": "application/json",
            "wsgi.input": io.BytesIO(body),
        }
        for name, value in headers.items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        started: list[Any] = []
        out = b"".join(
            wsgi_app(self.work, self.receiver)(environ, lambda s, h: started.append((s, h)))
        )
        return started[0][0], dict(started[0][1]), out

    def test_wsgi(self) -> None:
        """POST is handled (once per job); GET is 405; a bad signature 401."""
        headers = sign_with_library(self.secret, "42", BODY)
        self.assertEqual(self.wsgi("POST", headers, BODY)[0], "200 OK")
        status, _, body = self.wsgi("POST", headers, BODY)
        self.assertEqual((status, json.loads(body)["duplicate"]), ("200 OK", True))
        self.assertEqual(self.wsgi("GET", {}, b"")[0], "405 Method Not Allowed")
        bad = sign_with_library(new_secret(), "43", BODY)
        self.assertEqual(self.wsgi("POST", bad, BODY)[0], "401 Unauthorized")
        self.assertEqual(self.done, ["42"])

    def asgi(
        self, method: str, headers: dict[str, str], body: bytes, app: Any = None
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        app = app or asgi_app(self.work, self.receiver)
        chunks = [body[:3], body[3:]]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            chunk = chunks.pop(0) if chunks else b""
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": method,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        }
        asyncio.run(app(scope, receive, send))
        return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]

    def test_asgi(self) -> None:
        """POST in chunks is handled once per job; GET is 405; try-later is 429."""
        headers = sign_with_library(self.secret, "42", BODY)
        self.assertEqual(self.asgi("POST", headers, BODY)[0], 200)
        status, _, body = self.asgi("POST", headers, BODY)
        self.assertEqual((status, json.loads(body)["duplicate"]), (200, True))
        self.assertEqual(self.asgi("GET", {}, b"")[0], 405)

        async def busy(job: ReceivedJob) -> None:
            raise TryLater(30)

        status, answer_headers, _ = self.asgi(
            "POST", sign_with_library(self.secret, "43", BODY), BODY, asgi_app(busy, self.receiver)
        )
        self.assertEqual((status, answer_headers[b"retry-after"]), (429, b"30"))
        self.assertEqual(self.done, ["42"])
