"""
Tests for hq.worker: one exchange with a worker (the request, redirects,
cookies, the body cap, the timeout) and the err text for what went wrong.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, DNSLookupError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from twisted.web.error import SchemeNotSupported

from hq.model import Job
from hq.testing import FailingHTTP, FakeWorker, Reply, WorkerStub
from hq.worker import (
    Exchange,
    TimedOut,
    WorkerClient,
    describe_error,
    make_http_client,
    reason_phrase,
)

URL = "http://worker.test/work"


class WorkerClientTestCase(SynchronousTestCase):
    """
    A WorkerClient over a FakeWorker reached through StubTreq, on a Clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.worker = FakeWorker()
        self.stub = WorkerStub(self.worker)
        self.next_id = 1

    def client(self, http: Any = None, max_output_bytes: int = 1024) -> WorkerClient:
        """
        Return a WorkerClient over ``http`` (default: the stub of the fake worker).
        """
        return WorkerClient(
            http if http is not None else self.stub.http, self.clock, "HQ/test", max_output_bytes
        )

    def job(self, **fields: Any) -> Job:
        """
        Return a new waiting job (to ``URL`` unless given).
        """
        fields.setdefault("url", URL)
        job = Job(id=self.next_id, **fields)
        self.next_id += 1
        return job

    def post(self, client: WorkerClient | None = None, **fields: Any) -> Exchange:
        """
        Run one exchange for a new job and return it (it must end at once).
        """
        return self.successResultOf((client or self.client()).post(self.job(**fields)))


class RequestTests(WorkerClientTestCase):
    """
    What a worker receives.
    """

    def test_request_is_post_with_payload_and_headers(self) -> None:
        """The worker gets a POST with the payload as body and HQ's headers."""
        job = self.job(payload='{"message":"hi"}', headers={"X-Custom": "t"})
        self.successResultOf(self.client().post(job))
        [request] = self.worker.requests
        self.assertEqual(request.method, "POST")
        self.assertEqual(request.path, "/work")
        self.assertEqual(request.body, b'{"message":"hi"}')
        self.assertEqual(request.headers["content-type"], ["application/json"])
        self.assertEqual(request.headers["user-agent"], ["HQ/test"])
        self.assertEqual(request.headers["x-hq-job-id"], [str(job.id)])
        self.assertEqual(request.headers["x-custom"], ["t"])
        self.assertEqual(request.headers["content-length"], ["16"])
        self.assertEqual(request.headers["host"], ["worker.test"])

    def test_utf8_payload_is_sent_as_utf8(self) -> None:
        """A non-ASCII payload is sent as its UTF-8 bytes."""
        self.post(payload='"é"')
        self.assertEqual(self.worker.requests[0].body, '"é"'.encode())

    def test_null_payload_sends_no_body_with_content_length_zero(self) -> None:
        """A job without payload is a POST with no body and Content-Length: 0."""
        self.post(payload=None)
        [request] = self.worker.requests
        self.assertEqual(request.method, "POST")
        self.assertEqual(request.body, b"")
        self.assertEqual(request.headers["content-length"], ["0"])

    def test_job_headers_cannot_override_protected_headers(self) -> None:
        """User-Agent, Host, Content-Length, X-Hq-Job-Id (any case) stay HQ's."""
        job = self.job(
            payload="[1]",
            headers={
                "user-agent": "evil",
                "HOST": "evil.test",
                "Content-Length": "99",
                "X-HQ-JOB-ID": "42",
                "Transfer-Encoding": "chunked",
                "X-Other": "kept",
            },
        )
        self.successResultOf(self.client().post(job))
        [request] = self.worker.requests
        self.assertEqual(request.headers["user-agent"], ["HQ/test"])
        self.assertEqual(request.headers["host"], ["worker.test"])
        self.assertEqual(request.headers["content-length"], ["3"])
        self.assertEqual(request.headers["x-hq-job-id"], [str(job.id)])
        self.assertNotIn("transfer-encoding", request.headers)
        self.assertEqual(request.headers["x-other"], ["kept"])
        self.assertEqual(request.body, b"[1]")

    def test_job_content_type_replaces_the_default(self) -> None:
        """A job's Content-Type (any case) replaces application/json."""
        self.post(payload='"x"', headers={"content-type": "text/plain"})
        self.assertEqual(self.worker.requests[0].headers["content-type"], ["text/plain"])

    def test_invalid_header_name_fails_the_exchange(self) -> None:
        """A header name that HTTP cannot carry fails the exchange, with a reason naming it."""
        exchange = self.post(headers={"Bad Name": "x"})
        self.assertEqual(self.worker.requests, [])
        self.assertFalse(exchange.success)
        self.assertEqual(exchange.reason(), "invalid header name 'Bad Name'")

    def test_unsupported_scheme_fails_the_exchange(self) -> None:
        """A URL that is not http(s) fails with a clear reason."""
        exchange = self.post(url="ftp://worker.test/x")
        self.assertFalse(exchange.success)
        self.assertIn("unsupported URL scheme 'ftp'", exchange.reason())


class ExchangeTests(WorkerClientTestCase):
    """
    What an exchange reports: success, reason, output, the error that ended it.
    """

    def test_2xx_is_success_with_the_body_as_output(self) -> None:
        """A 201 is a success with no reason, its code and its body kept."""
        self.worker.reply = Reply(code=201, body=b"made")
        exchange = self.post()
        self.assertEqual(
            (exchange.success, exchange.reason(), exchange.status_code, exchange.output()),
            (True, "", 201, "made"),
        )
        self.assertIsNone(exchange.error)

    def test_non_2xx_reason_is_the_standard_phrase(self) -> None:
        """A 500 is not a success; its reason is 'Internal Server Error'."""
        self.worker.reply = Reply(code=500, body=b"boom")
        exchange = self.post()
        self.assertEqual(
            (exchange.success, exchange.reason(), exchange.output()),
            (False, "Internal Server Error", "boom"),
        )

    def test_transport_error_is_kept_not_raised(self) -> None:
        """A refused connection ends the exchange with the error kept and no status code."""
        http = FailingHTTP(ConnectionRefusedError())
        exchange = self.post(self.client(http))
        self.assertIsInstance(exchange.error, ConnectionRefusedError)
        self.assertEqual((exchange.reason(), exchange.status_code), ("connection refused", None))
        [(method, url, kwargs)] = http.calls
        self.assertEqual((method, url, kwargs["allow_redirects"]), ("POST", URL, False))

    def test_body_over_the_cap_is_cut_and_flagged(self) -> None:
        """A body over max_output_bytes is cut there and marked truncated."""
        self.worker.reply = Reply(body="ééé".encode())
        exchange = self.post(self.client(max_output_bytes=5))
        self.assertEqual((exchange.output(), exchange.truncated), ("éé", True))
        self.assertTrue(exchange.success)

    def test_timeout_ends_the_exchange_with_timed_out(self) -> None:
        """A worker that never answers ends the exchange at the job's timeout."""
        self.worker.reply = Reply(hang=True)
        running = self.client().post(self.job(timeout=5))
        self.clock.advance(4.9)
        self.assertNoResult(running)
        self.clock.advance(0.1)
        exchange = self.successResultOf(running)
        self.assertIsInstance(exchange.error, TimedOut)
        self.assertEqual(exchange.reason(), "timed out after 5 s")
        self.assertFalse(exchange.unusual_error)

    def test_cancel_aborts_the_request(self) -> None:
        """Cancelling a running exchange ends it as 'request aborted' and closes the request."""
        self.worker.reply = Reply(hang=True)
        running = self.client().post(self.job())
        running.cancel()
        exchange = self.successResultOf(running)
        self.assertEqual((exchange.success, exchange.reason()), (False, "request aborted"))
        self.stub.flush()
        self.assertEqual(len(self.worker.lost), 1)


class InvalidStatusTests(WorkerClientTestCase):
    """
    A status code outside 100-599 is an invalid HTTP response, not a status.
    """

    def test_out_of_range_codes_are_invalid_responses(self) -> None:
        """Codes 0, 99, 600, 1000 and a 20-digit one fail with no status code kept."""
        cases = [
            (0, "0"),
            (99, "99"),
            (600, "600"),
            (1000, "1000"),
            (99999999999999999999, "999999999999..."),
        ]
        for code, shown in cases:
            self.worker.reply = Reply(code=code, body=b"ignored")
            exchange = self.post()
            self.assertEqual(
                (exchange.success, exchange.status_code, exchange.output()), (False, None, "")
            )
            self.assertEqual(
                exchange.reason(),
                f"invalid HTTP response from the worker: status code {shown}",
            )

    def test_codes_at_the_edges_are_kept(self) -> None:
        """Codes 599 and 200 stay ordinary answers with their code."""
        self.worker.reply = Reply(code=599, body=b"odd")
        exchange = self.post()
        self.assertEqual((exchange.status_code, exchange.reason()), (599, "Unknown Status"))
        self.worker.reply = Reply(code=200)
        self.assertEqual(self.post().status_code, 200)

    def test_invalid_code_after_a_redirect_keeps_no_status_code(self) -> None:
        """A redirect to an answer with code 1000 leaves no status code from the redirect."""
        self.worker.route("/work", Reply(code=302, headers={"Location": "/odd"}))
        self.worker.route("/odd", Reply(code=1000))
        exchange = self.post()
        self.assertEqual(len(self.worker.requests), 2)
        self.assertEqual(exchange.status_code, None)
        self.assertIn("status code 1000", exchange.reason())


class _RawStatus(Protocol):
    """
    Answers the first bytes of a request with a fixed raw response, then waits.
    """

    reply = b""

    def dataReceived(self, data: bytes) -> None:
        if self.transport is not None and self.reply:
            self.transport.write(self.reply)
            self.reply = b""


class InvalidStatusOverTCPTests(TestCase):
    """
    The production client against a raw worker on 127.0.0.1.
    """

    timeout = 10

    def test_huge_status_code_is_an_invalid_response(self) -> None:
        """A raw 'HTTP/1.1 99999999999999999999 Boom' fails, keeps no code, closes."""
        reply = b"HTTP/1.1 99999999999999999999 Boom\r\nContent-Length: 4\r\n\r\nbody"
        lost: Deferred[None] = Deferred()

        class Worker(_RawStatus):
            def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
                lost.callback(None)

        Worker.reply = reply
        port = reactor.listenTCP(0, Factory.forProtocol(Worker), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        client = WorkerClient(make_http_client(reactor, pool), reactor, "HQ/test", 1024)
        url = f"http://127.0.0.1:{port.getHost().port}/boom"

        async def scenario() -> None:
            exchange = await client.post(Job(id=1, url=url, timeout=5))
            self.assertEqual(
                (exchange.success, exchange.status_code, exchange.output()), (False, None, "")
            )
            self.assertEqual(
                exchange.reason(),
                "invalid HTTP response from the worker: status code 999999999999...",
            )
            # The connection is closed, not kept for the next job.
            await lost

        return Deferred.fromCoroutine(scenario())


class RedirectTests(WorkerClientTestCase):
    """
    Redirects are followed as Go's client does, up to 10.
    """

    def test_303_is_followed_with_get_without_body(self) -> None:
        """A 303 turns the POST into a GET without body to the resolved Location."""
        self.worker.route("/work", Reply(code=303, headers={"Location": "/done?x=1"}))
        self.worker.route("/done", Reply(body=b"arrived"))
        job = self.job(payload='{"a":1}')
        exchange = self.successResultOf(self.client().post(job))
        first, second = self.worker.requests
        self.assertEqual((first.method, first.body), ("POST", b'{"a":1}'))
        self.assertEqual((second.method, second.path, second.body), ("GET", "/done?x=1", b""))
        self.assertNotIn("content-type", second.headers)
        self.assertEqual(second.header("x-hq-job-id"), str(job.id))
        self.assertEqual(
            (exchange.success, exchange.status_code, exchange.output()), (True, 200, "arrived")
        )

    def test_307_repeats_the_post_with_body(self) -> None:
        """A 307 repeats the POST with the same body and headers."""
        self.worker.route("/work", Reply(code=307, headers={"Location": "http://worker.test/b"}))
        self.worker.route("/b", Reply(code=201, body=b"ok"))
        exchange = self.post(payload="[1,2]")
        _, second = self.worker.requests
        self.assertEqual((second.method, second.path, second.body), ("POST", "/b", b"[1,2]"))
        self.assertEqual(second.headers["content-type"], ["application/json"])
        self.assertEqual(exchange.status_code, 201)

    def test_redirect_loop_stops_after_10_redirects(self) -> None:
        """An endless redirect fails with 'stopped after 10 redirects' after 11 requests."""
        self.worker.route("/work", Reply(code=302, headers={"Location": "/work"}))
        exchange = self.post()
        self.assertEqual(len(self.worker.requests), 11)
        self.assertFalse(exchange.success)
        self.assertEqual(exchange.reason(), "stopped after 10 redirects")
        self.assertEqual(exchange.status_code, 302)

    def test_redirect_to_another_host_drops_credentials(self) -> None:
        """Authorization is not sent on to another host, but kept on the same host."""
        self.worker.route("/work", Reply(code=307, headers={"Location": "/same"}))
        self.worker.route("/same", Reply(code=307, headers={"Location": "http://other.test/x"}))
        self.worker.route("/x", Reply())
        self.post(headers={"Authorization": "Bearer s"})
        _, same, other = self.worker.requests
        self.assertEqual(same.header("authorization"), "Bearer s")
        self.assertIsNone(other.header("authorization"))

    def test_unusable_redirect_location_is_a_failure(self) -> None:
        """A Location that is not a URL fails the exchange and names it."""
        self.worker.reply = Reply(code=302, headers={"Location": "http://[::1"})
        exchange = self.post()
        self.assertEqual((exchange.status_code, exchange.success), (302, False))
        self.assertEqual(exchange.reason(), "invalid redirect location 'http://[::1'")

    def test_3xx_without_location_is_a_failure(self) -> None:
        """A 3xx that is not a usable redirect is the final answer: a failure."""
        self.worker.reply = Reply(code=304, body=b"")
        exchange = self.post()
        self.assertEqual((exchange.status_code, exchange.reason()), (304, "Not Modified"))


class CookieTests(WorkerClientTestCase):
    """
    No cookies are kept between jobs.
    """

    def test_cookies_from_one_job_are_not_sent_with_the_next(self) -> None:
        """A Set-Cookie in one job's response is not sent with the next job."""
        client = self.client()
        self.worker.reply = Reply(headers={"Set-Cookie": "session=abc; Path=/"})
        self.post(client)
        self.post(client)
        self.assertEqual(len(self.worker.requests), 2)
        self.assertIsNone(self.worker.requests[1].header("cookie"))

    def test_job_cookie_header_is_sent(self) -> None:
        """A job may still send its own Cookie header."""
        self.post(headers={"Cookie": "a=b"})
        self.assertEqual(self.worker.requests[0].header("cookie"), "a=b")


class DescribeErrorTests(SynchronousTestCase):
    """
    The err text for people.
    """

    def test_reason_phrase_falls_back_to_the_response_phrase(self) -> None:
        """An unregistered code uses the response's phrase, or 'HTTP <code>'."""
        self.assertEqual(reason_phrase(404, b"Whatever"), "Not Found")
        self.assertEqual(reason_phrase(599, b"Custom Trouble"), "Custom Trouble")
        self.assertEqual(reason_phrase(599, b""), "HTTP 599")

    def test_transport_errors_are_described_for_people(self) -> None:
        """Common transport errors get short human messages."""
        url = "http://example.invalid/x"
        cases = [
            (DNSLookupError("no results"), "could not resolve host example.invalid"),
            (ConnectionRefusedError(), "connection refused"),
            (
                ResponseNeverReceived([Failure(ConnectionDone())]),
                "connection closed before a response was received",
            ),
            (
                ResponseFailed([Failure(ConnectionDone())]),
                "connection lost before the response was complete",
            ),
            (SchemeNotSupported("x"), "unsupported URL scheme 'http': only http and https"),
        ]
        for error, expected in cases:
            self.assertIn(expected, describe_error(error, url))

    def test_tls_errors_are_named(self) -> None:
        """An OpenSSL error inside a response failure reads 'TLS error: <reason>'."""
        from OpenSSL import SSL

        error = ResponseNeverReceived(
            [Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))]
        )
        self.assertEqual(describe_error(error, URL), "TLS error: certificate verify failed")
