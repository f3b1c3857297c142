"""
Tests for hq.worker: one exchange with a worker (the request, redirects,
cookies, the body cap, the timeout) and the err text for what went wrong.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import (
    ConnectionDone,
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web._newclient import Request
from twisted.web.client import URI, RequestNotSent, ResponseFailed, ResponseNeverReceived
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from zope.interface import implementer

from hq.connect import CONNECT_TIMEOUT, address_endpoint
from hq.guard import DeniedAddress, NetworkGuard
from hq.model import Job
from hq.testing import FailingHTTP, FakeWorker, Reply, WorkerStub
from hq.worker import (
    BytesProducer,
    Exchange,
    TimedOut,
    WorkerClient,
    WorkerConnectionPool,
    WorkerEndpoints,
    describe_error,
    keeps_alive,
    make_http_client,
    never_answered,
    reason_phrase,
)
from tests.test_guard import GUARD, FakeResolver

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
        self.assertEqual((method, str(url), kwargs["allow_redirects"]), ("POST", URL, False))

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
        pool = WorkerConnectionPool(reactor)
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


@implementer(IStreamClientEndpoint)
class _FakeEndpoint:
    """
    An endpoint whose connections are protocols over ``StringTransport``s.
    """

    def __init__(self) -> None:
        self.connections: list[tuple[Any, StringTransport]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


_OK_11 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
_OK_10 = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
_KEY = ("http", "worker.test", 80)


class KeepsAliveTests(SynchronousTestCase):
    """
    Which responses leave the connection open.
    """

    def test_http11_keeps_alive_unless_close(self) -> None:
        """HTTP/1.1 keeps the connection unless a Connection token is 'close' (any case)."""
        v11 = (b"HTTP", 1, 1)
        self.assertTrue(keeps_alive(v11, []))
        self.assertTrue(keeps_alive(v11, [b"Upgrade"]))
        self.assertFalse(keeps_alive(v11, [b"close"]))
        self.assertFalse(keeps_alive(v11, [b"Close"]))
        self.assertFalse(keeps_alive(v11, [b"Upgrade, close"]))

    def test_http10_keeps_alive_only_when_asked(self) -> None:
        """HTTP/1.0 keeps the connection only with the keep-alive token."""
        v10 = (b"HTTP", 1, 0)
        self.assertFalse(keeps_alive(v10, []))
        self.assertTrue(keeps_alive(v10, [b"Keep-Alive"]))
        self.assertFalse(keeps_alive(v10, [b"keep-alive, close"]))


class WorkerConnectionPoolTests(SynchronousTestCase):
    """
    The pool keeps only connections the worker keeps open, and sends a request
    that failed unanswered on a kept connection once more on a new one.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = WorkerConnectionPool(self.clock)
        self.endpoint = _FakeEndpoint()

    def send(self, body: bytes = b'{"a":1}') -> Deferred[Any]:
        """
        Send a POST of ``body`` on a connection from the pool; return its Deferred.
        """
        request = Request(
            b"POST", b"/work", Headers({b"host": [b"worker.test"]}), BytesProducer(body), True
        )
        connection = self.successResultOf(self.pool.getConnection(_KEY, self.endpoint))
        return connection.request(request)

    def answer(self, index: int, data: bytes) -> None:
        """
        Have the worker write ``data`` on connection ``index``.
        """
        protocol, _ = self.endpoint.connections[index]
        protocol.dataReceived(data)

    def close(self, index: int) -> None:
        """
        Have the worker close connection ``index``.
        """
        protocol, _ = self.endpoint.connections[index]
        protocol.connectionLost(Failure(ConnectionDone()))

    def kept_connection(self) -> Deferred[Any]:
        """
        Send one request on a new connection and answer it in HTTP/1.1: the
        connection is back in the pool. Return the request's Deferred.
        """
        first = self.send()
        self.answer(0, _OK_11)
        self.assertEqual(self.successResultOf(first).code, 200)
        return first

    def test_http11_connection_is_kept_for_the_next_request(self) -> None:
        """After an HTTP/1.1 answer, the next request goes on the same connection."""
        self.kept_connection()
        self.send()
        self.assertEqual(len(self.endpoint.connections), 1)
        self.assertEqual(self.endpoint.connections[0][1].value().count(b"POST /work"), 2)

    def test_http10_connection_is_closed_not_kept(self) -> None:
        """After an HTTP/1.0 answer without keep-alive, HQ closes the connection."""
        response = self.send()
        self.answer(0, _OK_10)
        self.assertEqual(self.successResultOf(response).code, 200)
        self.assertTrue(self.endpoint.connections[0][1].disconnecting)
        self.send()
        self.assertEqual(len(self.endpoint.connections), 2)

    def test_http10_keep_alive_connection_is_kept(self) -> None:
        """An HTTP/1.0 answer with 'Connection: keep-alive' leaves the connection in the pool."""
        self.send()
        self.answer(0, b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")
        self.assertFalse(self.endpoint.connections[0][1].disconnecting)
        self.send()
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_connection_close_in_any_case_is_not_kept(self) -> None:
        """'Connection: Close' on HTTP/1.1 closes the connection (Twisted only knows 'close')."""
        self.send()
        self.answer(0, b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(self.endpoint.connections[0][1].disconnecting)
        self.send()
        self.assertEqual(len(self.endpoint.connections), 2)

    def test_post_unanswered_on_a_kept_connection_is_sent_once_more_on_a_new_one(self) -> None:
        """A POST lost on a kept connection before any answer goes again, body and all."""
        self.kept_connection()
        second = self.send(b'{"n":2}')
        self.close(0)
        self.assertNoResult(second)
        self.assertEqual(len(self.endpoint.connections), 2)
        written = self.endpoint.connections[1][1].value()
        self.assertTrue(written.startswith(b"POST /work HTTP/1.1\r\n"))
        self.assertTrue(written.endswith(b'\r\n\r\n{"n":2}'))
        self.answer(1, _OK_11)
        self.assertEqual(self.successResultOf(second).code, 200)

    def test_request_not_sent_on_a_kept_connection_is_sent_on_a_new_one(self) -> None:
        """A kept connection lost before the request is written (RequestNotSent) is replaced."""
        self.kept_connection()
        connection = self.successResultOf(self.pool.getConnection(_KEY, self.endpoint))
        self.close(0)
        request = Request(
            b"POST", b"/work", Headers({b"host": [b"worker.test"]}), BytesProducer(b"{}"), True
        )
        response = connection.request(request)
        self.assertEqual(len(self.endpoint.connections), 2)
        self.answer(1, _OK_11)
        self.assertEqual(self.successResultOf(response).code, 200)

    def test_failure_on_a_new_connection_is_not_sent_again(self) -> None:
        """A request lost on a new connection fails: the worker may have seen it."""
        response = self.send()
        self.close(0)
        self.failureResultOf(response, ResponseNeverReceived)
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_failure_after_part_of_the_answer_is_not_sent_again(self) -> None:
        """Once the worker has answered a byte, a lost connection is the request's outcome."""
        self.kept_connection()
        second = self.send()
        self.answer(0, b"HTTP/1.1 200 OK\r\nContent-Le")
        self.close(0)
        self.failureResultOf(second, ResponseFailed)
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_second_failure_is_the_outcome(self) -> None:
        """The request is sent again once only: a failure on the new connection ends it."""
        self.kept_connection()
        second = self.send()
        self.close(0)
        self.close(1)
        self.failureResultOf(second, ResponseNeverReceived)
        self.assertEqual(len(self.endpoint.connections), 2)

    def test_cancel_on_a_kept_connection_aborts_and_is_not_sent_again(self) -> None:
        """Cancelling (a stop, a timeout) aborts the request and sends nothing more."""
        self.kept_connection()
        second = self.send()
        second.cancel()
        failure = self.failureResultOf(second, ResponseNeverReceived)
        self.assertTrue(failure.value.reasons[0].check(CancelledError))
        self.assertTrue(self.endpoint.connections[0][1].disconnecting)
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_cancel_while_sending_again_aborts(self) -> None:
        """A cancel that comes while the request goes again aborts it there too."""
        self.kept_connection()
        second = self.send()
        self.close(0)
        second.cancel()
        failure = self.failureResultOf(second, ResponseNeverReceived)
        self.assertTrue(failure.value.reasons[0].check(CancelledError))
        self.assertTrue(self.endpoint.connections[1][1].disconnecting)
        self.assertEqual(len(self.endpoint.connections), 2)

    def test_never_answered_is_false_for_aborts_and_partial_answers(self) -> None:
        """Only an unsent request or an unanswered, unaborted one may go again."""
        self.assertTrue(never_answered(RequestNotSent()))
        self.assertTrue(never_answered(ResponseNeverReceived([Failure(ConnectionDone())])))
        self.assertFalse(never_answered(ResponseNeverReceived([Failure(CancelledError())])))
        self.assertFalse(never_answered(ResponseFailed([Failure(ConnectionDone())])))
        self.assertFalse(never_answered(CancelledError()))


class AddressEndpointTests(SynchronousTestCase):
    """
    A worker host that is an IP address is connected to at once: no name
    resolution (a thread hop per connection), the guard still asked.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.resolver = FakeResolver(["93.184.216.34"])
        self.reactor.nameResolver = self.resolver  # type: ignore[attr-defined]

    def connect(self, url: bytes, guard: NetworkGuard | None = None) -> Deferred[Any]:
        endpoints = WorkerEndpoints(self.reactor, 1024, guard)
        endpoint = endpoints.endpointForURI(URI.fromBytes(url))
        return endpoint.connect(Factory.forProtocol(Protocol))

    def connections(self) -> list[tuple[str, int, float]]:
        return [(host, port, timeout) for host, port, _, timeout, _ in self.reactor.tcpClients]

    def test_ipv4_and_ipv6_addresses_are_not_resolved(self) -> None:
        """127.0.0.1 and [::1] are connected to directly, with the 30 s connect timeout."""
        self.assertNoResult(self.connect(b"http://127.0.0.1:8080/job"))
        self.assertNoResult(self.connect(b"http://[::1]:9090/job"))
        self.assertEqual(self.resolver.lookups, 0)
        self.assertEqual(
            self.connections(),
            [("127.0.0.1", 8080, CONNECT_TIMEOUT), ("::1", 9090, CONNECT_TIMEOUT)],
        )
        self.assertEqual(CONNECT_TIMEOUT, 30)

    def test_a_name_is_resolved_at_each_connection(self) -> None:
        """A host name goes to the reactor's resolver at every connection."""
        self.assertNoResult(self.connect(b"http://worker.example:8080/job"))
        self.resolver.addresses = ["93.184.216.35"]
        self.assertNoResult(self.connect(b"http://worker.example:8080/job"))
        self.assertEqual(self.resolver.lookups, 2)
        self.assertEqual(
            self.connections(),
            [("93.184.216.34", 8080, CONNECT_TIMEOUT), ("93.184.216.35", 8080, CONNECT_TIMEOUT)],
        )

    def test_a_name_with_one_address_is_connected_to_at_once(self) -> None:
        """One address: connected to directly, no timer for a next address."""
        self.assertNoResult(self.connect(b"http://worker.example:8080/job"))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_a_name_with_several_addresses_tries_them_in_turn(self) -> None:
        """Several: the next one 0.3 s later while the first still connects."""
        self.resolver.addresses = ["2001:db8::1", "93.184.216.34", "93.184.216.35"]
        self.assertNoResult(self.connect(b"http://worker.example:8080/job"))
        self.assertEqual([c[:2] for c in self.connections()], [("2001:db8::1", 8080)])
        self.reactor.advance(0.29)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(0.01)
        self.assertEqual(
            [c[:2] for c in self.connections()],
            [("2001:db8::1", 8080), ("93.184.216.34", 8080)],
        )
        self.assertEqual(self.resolver.lookups, 1)

    def refuse(self, index: int, error: Exception | None = None) -> None:
        """The connection attempt ``index`` of the reactor fails (refused, or ``error``)."""
        self.reactor.tcpClients[index][2].clientConnectionFailed(
            self.reactor.connectors[index], Failure(error or ConnectionRefusedError())
        )

    def accept(self, index: int) -> Protocol:
        """The connection attempt ``index`` of the reactor is accepted."""
        protocol = self.reactor.tcpClients[index][2].buildProtocol(None)
        protocol.makeConnection(StringTransport())
        return protocol

    def test_a_refused_address_gives_way_to_the_next_at_once(self) -> None:
        """::1 refused (a worker on 127.0.0.1 only, named localhost): 127.0.0.1 is tried
        then, not 0.3 s later, and the connection to it is the one made."""
        self.resolver.addresses = ["::1", "127.0.0.1"]
        connecting = self.connect(b"http://localhost:8080/job")
        self.refuse(0)
        self.assertEqual([c[:2] for c in self.connections()], [("::1", 8080), ("127.0.0.1", 8080)])
        self.accept(1)
        self.assertIsInstance(self.successResultOf(connecting), Protocol)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_the_first_connection_made_wins(self) -> None:
        """The second address connects first: the attempt on the first is cancelled."""
        self.resolver.addresses = ["2001:db8::1", "93.184.216.34", "93.184.216.35"]
        connecting = self.connect(b"http://worker.example:8080/job")
        self.reactor.advance(0.3)
        self.accept(1)
        self.successResultOf(connecting)
        self.assertEqual([c.stoppedConnecting for c in self.reactor.connectors], [True, False])
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_every_address_refused_fails_with_the_last_error(self) -> None:
        """All failed: the connect fails with the last attempt's error."""
        self.resolver.addresses = ["::1", "127.0.0.1"]
        connecting = self.connect(b"http://localhost:8080/job")
        self.refuse(0)
        self.assertNoResult(connecting)
        self.refuse(1, NoRouteError())
        self.failureResultOf(connecting, NoRouteError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancelled_while_connecting_to_several(self) -> None:
        """A stop during the attempts cancels them all and the timer."""
        self.resolver.addresses = ["2001:db8::1", "93.184.216.34"]
        connecting = self.connect(b"http://worker.example:8080/job")
        self.reactor.advance(0.3)
        connecting.cancel()
        self.failureResultOf(connecting, CancelledError)
        self.assertEqual([c.stoppedConnecting for c in self.reactor.connectors], [True, True])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_a_name_without_an_address_is_a_dns_error(self) -> None:
        """No address: DNSLookupError, and nothing is connected."""
        self.resolver.addresses = []
        self.failureResultOf(self.connect(b"http://nowhere.example/"), DNSLookupError)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_cancelled_while_resolving(self) -> None:
        """A stop or a timeout during the lookup ends the connect; the late answer is dropped."""
        pending: list[Any] = []

        class Pending:
            def resolveHostName(self, receiver: Any, *args: Any, **kwargs: Any) -> None:
                pending.append(receiver)

        self.reactor.nameResolver = Pending()  # type: ignore[attr-defined]
        connecting = self.connect(b"http://worker.example:8080/job")
        connecting.cancel()
        self.failureResultOf(connecting, CancelledError)
        receiver = pending[0]
        receiver.addressResolved(IPv4Address("TCP", "93.184.216.34", 8080))
        receiver.resolutionComplete()
        self.assertEqual(self.reactor.tcpClients, [])

    def test_the_guard_is_asked_about_an_address(self) -> None:
        """A denied address fails naming it, as a denied name does; an allowed one connects."""
        failure = self.failureResultOf(
            self.connect(b"http://127.0.0.2:8080/", GUARD), DeniedAddress
        )
        self.assertEqual(
            str(failure.value), "the address 127.0.0.2 of 127.0.0.2 is denied by 'deny_networks'"
        )
        self.assertEqual(
            describe_error(failure.value, "http://127.0.0.2:8080/"),
            "could not connect to 127.0.0.2: the address 127.0.0.2 of 127.0.0.2 is denied by "
            "'deny_networks'",
        )
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertNoResult(self.connect(b"http://127.0.0.1:8080/", GUARD))
        self.assertEqual([c[:2] for c in self.connections()], [("127.0.0.1", 8080)])
        self.assertEqual(self.resolver.lookups, 0)

    def test_repr_builds_no_endpoint(self) -> None:
        """The pool asks each new connection's endpoint for its repr: a name, nothing built."""
        endpoints = WorkerEndpoints(self.reactor, 1024)
        endpoint = endpoints.endpointForURI(URI.fromBytes(b"https://worker.example:8443/job"))
        self.assertEqual(repr(endpoint), "<worker endpoint https://worker.example:8443>")
        self.assertEqual((self.resolver.lookups, self.reactor.tcpClients), (0, []))

    def test_a_zone_or_an_odd_address_form_goes_to_the_resolver(self) -> None:
        """fe80::1%eth0 and 127.1 are not taken as addresses here: getaddrinfo knows them."""
        self.assertIsNone(address_endpoint(self.reactor, "fe80::1%eth0", 80))
        self.assertIsNone(address_endpoint(self.reactor, "127.1", 80))
        self.assertIsNone(address_endpoint(self.reactor, "worker.example", 80))


class NameDeliveryTests(TestCase):
    """
    Over loopback: a worker URL with a host name (``localhost``) is delivered
    through the system's resolver, twice over new connections.
    """

    async def test_localhost_worker_gets_the_jobs(self) -> None:
        """Two jobs to http://localhost:PORT/, the first connection closed in between."""
        from twisted.web.server import Site

        worker = FakeWorker()
        port = reactor.listenTCP(0, Site(worker), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = WorkerConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        client = WorkerClient(make_http_client(reactor, pool), reactor, "HQ/test", 100)
        url = f"http://localhost:{port.getHost().port}/"
        first = await client.post(Job(id=1, url=url, timeout=10))
        await pool.closeCachedConnections()
        second = await client.post(Job(id=2, url=url, timeout=10))
        self.assertEqual([first.reason(), second.reason()], ["", ""])
        self.assertEqual([first.status_code, second.status_code], [200, 200])
        self.assertEqual(len(worker.requests), 2)

    async def test_a_name_whose_first_address_refuses(self) -> None:
        """A name resolving to ::1 then 127.0.0.1, a worker on 127.0.0.1 only: delivered."""
        from twisted.web.server import Site

        worker = FakeWorker()
        port = reactor.listenTCP(0, Site(worker), interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        class DualStack:
            """The reactor, with a resolver that answers ::1 and 127.0.0.1."""

            nameResolver = FakeResolver(["::1", "127.0.0.1"])

            def __getattr__(self, name: str) -> Any:
                return getattr(reactor, name)

        pool = WorkerConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        http = make_http_client(DualStack(), pool)
        client = WorkerClient(http, reactor, "HQ/test", 100)
        exchange = await client.post(
            Job(id=1, url=f"http://dualstack.test:{port.getHost().port}/", timeout=10)
        )
        self.assertEqual((exchange.status_code, exchange.reason()), (200, ""))
        self.assertEqual(DualStack.nameResolver.lookups, 1)
        self.assertEqual(len(worker.requests), 1)


class IPv6LiteralTests(TestCase):
    """
    A worker URL whose host is an IPv6 literal is delivered (treq's IDNA step
    refused ``[::1]`` before).
    """

    async def test_ipv6_literal_worker_gets_the_job(self) -> None:
        """POST to http://[::1]:PORT/ reaches a worker listening on ::1."""
        import socket
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        seen: list[bytes] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                seen.append(self.rfile.read(int(self.headers.get("content-length", 0))))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        try:
            server = Server(("::1", 0), Handler)
        except OSError as e:
            raise SkipTest(f"no IPv6 loopback here: {e}") from None
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        pool = WorkerConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        worker = WorkerClient(make_http_client(reactor, pool), reactor, "HQ/test", 100)
        port = server.server_address[1]
        exchange = await worker.post(Job(id=1, url=f"http://[::1]:{port}/", payload='{"a":1}'))
        self.assertEqual(
            (exchange.status_code, exchange.reason(), exchange.output()), (200, "", "ok")
        )
        self.assertEqual(seen, [b'{"a":1}'])
