"""
Bad input and slow clients at the HTTP edge, over real sockets on 127.0.0.1:
the request body limit (413 before the body is read), the request timeout
(slowloris), the access log's client address (``X-Forwarded-For`` only from
trusted proxies), malformed requests (each a 4xx naming the problem, never a
traceback), and RE2 list filters that cannot be made to spin.

The server is the real API in a real :class:`~hq.site.AccessLogSite`, wired as
``hq.tap`` wires it, over an in-memory store; the clients are blocking sockets
run in threads.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hq.api import HQApi
from hq.config import Config, ConfigError, config_from_dict
from hq.ids import IdGenerator
from hq.logs import ReopenableFile
from hq.model import Job
from hq.site import AccessLogSite
from hq.store.memory import MemoryStore
from hq.testing import RecordingDispatch
from tests.serverprocess import ROOT

reactor: Any = _reactor
T = TypeVar("T")

LIMIT = 4096
TOO_LARGE = {"status": 413, "error": f"The request body is larger than the limit of {LIMIT} bytes"}


class Response:
    """
    One raw HTTP response as read from a socket.
    """

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1]) if lines[0].startswith("HTTP/") else 0
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def read_response(sock: socket.socket, timeout: float = 5) -> Response:
    """
    Read one response: up to its Content-Length, or until the server closes.
    """
    sock.settimeout(timeout)
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and len(body) >= int(value):
                    return Response(data)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return Response(data)
        data += chunk


def closed_by_server(sock: socket.socket, timeout: float) -> bytes:
    """
    Read until the server closes the connection; return what it sent.
    """
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


class BrokenStore(MemoryStore):
    """
    A store whose ``get`` raises an unexpected error naming a file path.
    """

    def get(self, job_id: int) -> Deferred[Job]:
        raise RuntimeError(f"cannot open {ROOT}/secret.db in {__file__}")


class EdgeTestCase(TestCase):
    """
    Serves the API through ``AccessLogSite`` on 127.0.0.1 with the given config.
    """

    timeout = 30

    def serve(self, store: MemoryStore | None = None, **config: Any) -> None:
        """
        Start a server with ``config`` over the defaults of these tests.
        """
        values: dict[str, Any] = {"max_body_bytes": LIMIT, "request_timeout": 1}
        values.update(config)
        self.config = config_from_dict(values)
        self.store = MemoryStore() if store is None else store
        self.api = HQApi(
            store=self.store,
            dispatch=RecordingDispatch(),
            ids=IdGenerator(0, reactor),
            clock=reactor,
            config=self.config,
        )
        self.access_path = os.path.abspath(self.mktemp())
        access_log = ReopenableFile(self.access_path)
        self.addCleanup(access_log.close)
        # As hq.tap wires it.
        site = AccessLogSite(
            self.api.resource(),
            access_log,
            timeout=60,
            request_timeout=self.config.request_timeout,
            max_body_bytes=self.config.max_body_bytes,
            trusted_proxies=self.config.trusted_proxies,
        )
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def connect(self) -> socket.socket:
        """
        Return a connected client socket (closed at cleanup).
        """
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.addCleanup(sock.close)
        return sock

    def in_thread(self, call: Callable[[], T]) -> Deferred[T]:
        """
        Run the blocking client ``call`` in a thread while the reactor serves.
        """
        return deferToThread(call)

    def exchange(self, request: bytes) -> Deferred[Response]:
        """
        Send ``request`` whole on a new connection; fire with the response.
        """

        def run() -> Response:
            sock = self.connect()
            sock.sendall(request)
            return read_response(sock)

        return self.in_thread(run)

    def access_lines(self) -> list[str]:
        """
        Return the access log's lines so far.
        """
        with open(self.access_path, encoding="utf-8") as f:
            return f.read().splitlines()


def post(path: bytes, body: bytes, content_type: bytes = b"application/json") -> bytes:
    """
    Return a complete POST request with a Content-Length.
    """
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: hq.test\r\nConnection: close\r\n"
        b"Content-Type: " + content_type + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )


def get(path: bytes) -> bytes:
    """
    Return a GET request that closes the connection after the answer.
    """
    return b"GET " + path + b" HTTP/1.1\r\nHost: hq.test\r\nConnection: close\r\n\r\n"


class BodyLimitTests(EdgeTestCase):
    """
    ``max_body_bytes`` bites before Twisted buffers the body.
    """

    def setUp(self) -> None:
        self.serve()

    def test_declared_length_over_limit_is_refused_before_the_body(self) -> None:
        """A Content-Length of 100 MB gets the API's 413 at once, with no body sent."""

        def run() -> tuple[Response, float]:
            sock = self.connect()
            began = time.monotonic()
            sock.sendall(
                b"POST /job HTTP/1.1\r\nHost: hq.test\r\nContent-Type: application/json\r\n"
                b"Content-Length: 104857600\r\n\r\n"
            )
            response = read_response(sock)
            return response, time.monotonic() - began

        async def scenario() -> None:
            response, elapsed = await self.in_thread(run)
            self.assertEqual(response.status, 413)
            self.assertEqual(response.json, TOO_LARGE)
            self.assertEqual(response.headers["content-type"], "application/json; charset=UTF-8")
            self.assertEqual(response.headers["connection"], "close")
            # Had the server waited for the body, request_timeout would have
            # answered 408; the bound only catches a hang, so it holds under load.
            self.assertLess(elapsed, 5.0)
            self.assertEqual(self.store._jobs, {})
            [line] = self.access_lines()
            self.assertIn(" POST /job 413 ", line)

        return Deferred.fromCoroutine(scenario())

    def test_expect_continue_over_the_limit_gets_only_the_413(self) -> None:
        """A client asking "Expect: 100-continue" for a too-large body gets the 413 alone."""

        def run() -> bytes:
            sock = self.connect()
            sock.sendall(
                b"POST /job HTTP/1.1\r\nHost: hq.test\r\nContent-Type: application/json\r\n"
                b"Expect: 100-continue\r\nContent-Length: 10000000\r\n\r\n"
            )
            return closed_by_server(sock, 5)

        async def scenario() -> None:
            raw = await self.in_thread(run)
            self.assertTrue(raw.startswith(b"HTTP/1.1 413 "), raw[:100])
            self.assertNotIn(b"100 Continue", raw)
            self.assertEqual(Response(raw).json, TOO_LARGE)

        return Deferred.fromCoroutine(scenario())

    def test_client_sending_the_whole_large_body_still_reads_the_413(self) -> None:
        """A client that sends all of a too-large body before reading gets the 413."""
        body = json.dumps({"url": "http://127.0.0.1:1/", "payload": "x" * 20000}).encode()

        async def scenario() -> None:
            response = await self.exchange(post(b"/job", body))
            self.assertEqual((response.status, response.json), (413, TOO_LARGE))

        return Deferred.fromCoroutine(scenario())

    def test_chunked_body_is_cut_as_it_passes_the_limit(self) -> None:
        """A chunked body gets the 413 once it passes the limit, before it ends."""

        def run() -> tuple[Response, int]:
            sock = self.connect()
            sock.sendall(
                b"POST /job HTTP/1.1\r\nHost: hq.test\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            sent = 0
            chunk = b"x" * 1024
            sock.settimeout(0.05)
            # Send 1 KiB chunks (never the last chunk) until the server answers.
            while sent < 64 * 1024:
                sock.sendall(b"400\r\n" + chunk + b"\r\n")
                sent += len(chunk)
                try:
                    first = sock.recv(65536, socket.MSG_PEEK)
                except TimeoutError:
                    continue
                if first:
                    break
            return read_response(sock), sent

        async def scenario() -> None:
            response, sent = await self.in_thread(run)
            self.assertEqual((response.status, response.json), (413, TOO_LARGE))
            # Answered as soon as the limit was passed, not at the end of the body.
            self.assertLessEqual(sent, LIMIT + 4 * 1024)
            self.assertEqual(self.store._jobs, {})

        return Deferred.fromCoroutine(scenario())

    def test_bodies_within_the_limit_are_accepted(self) -> None:
        """A body of exactly the limit, plain or chunked, is read and handled by the API."""
        document = {"url": "http://127.0.0.1:1/", "comment": ""}
        padding = LIMIT - len(json.dumps(document).encode())
        document["comment"] = "c" * padding
        body = json.dumps(document).encode()
        self.assertEqual(len(body), LIMIT)
        chunked = (
            b"POST /job HTTP/1.1\r\nHost: hq.test\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:1000], body[1000:]))
            + b"0\r\n\r\n"
        )

        async def scenario() -> None:
            for request in (post(b"/job", body), chunked):
                response = await self.exchange(request)
                self.assertEqual(response.status, 200, response.raw[:300])
                self.assertEqual(response.json["comment"], "c" * padding)
            self.assertEqual(len(self.store._jobs), 2)

        return Deferred.fromCoroutine(scenario())


class RequestTimeoutTests(EdgeTestCase):
    """
    ``request_timeout`` bounds how long a client may take to send a request.
    """

    def setUp(self) -> None:
        self.serve(request_timeout=1)

    def test_slowloris_headers_get_408_at_the_request_timeout(self) -> None:
        """Headers sent one byte every 0.1 s: 408 and closed after 1 s, not kept alive."""

        def run() -> tuple[bytes, float]:
            sock = self.connect()
            began = time.monotonic()
            sock.sendall(b"GET /stats HTTP/1.1\r\nHost: hq.test\r\n")
            sock.settimeout(0.1)
            try:
                for byte in b"X-Slow: " + b"z" * 100:
                    sock.send(bytes([byte]))
                    try:
                        if sock.recv(1, socket.MSG_PEEK):
                            break
                    except TimeoutError:
                        pass
            except OSError:
                pass
            data = closed_by_server(sock, 5)
            return data, time.monotonic() - began

        async def scenario() -> None:
            data, elapsed = await self.in_thread(run)
            response = Response(data)
            self.assertEqual(response.status, 408)
            self.assertEqual(
                response.json, {"status": 408, "error": "The request was not received within 1 s"}
            )
            self.assertGreaterEqual(elapsed, 0.9)
            # The client trickles for 10 s: closing well before that is the
            # request timeout at work, with room for a loaded machine.
            self.assertLess(elapsed, 6.0)

        return Deferred.fromCoroutine(scenario())

    def test_slow_body_gets_408_at_the_request_timeout(self) -> None:
        """A body sent 5 bytes every 0.3 s never completes: 408 after 1 s, not when it stops."""

        def run() -> tuple[bytes, float]:
            sock = self.connect()
            began = time.monotonic()
            sock.sendall(
                b"POST /job HTTP/1.1\r\nHost: hq.test\r\nContent-Type: application/json\r\n"
                b"Content-Length: 200\r\n\r\n"
            )
            sock.settimeout(0.3)
            try:
                for _ in range(30):
                    sock.send(b"     ")
                    try:
                        # Stop sending once the server answered or closed.
                        sock.recv(1, socket.MSG_PEEK)
                        break
                    except TimeoutError:
                        pass
            except OSError:
                pass
            return closed_by_server(sock, 5), time.monotonic() - began

        async def scenario() -> None:
            data, elapsed = await self.in_thread(run)
            self.assertEqual(Response(data).status, 408)
            # The client would send for 9 s (a timer restarted by each chunk
            # would close only after that): well before is the whole-request
            # timeout, with room for a loaded machine.
            self.assertLess(elapsed, 6.0)
            self.assertEqual(self.store._jobs, {})

        return Deferred.fromCoroutine(scenario())

    def test_idle_connection_is_closed_silently(self) -> None:
        """A connection that sends nothing is closed after the request timeout, no answer."""

        def run() -> tuple[bytes, float]:
            sock = self.connect()
            began = time.monotonic()
            return closed_by_server(sock, 10), time.monotonic() - began

        async def scenario() -> None:
            data, elapsed = await self.in_thread(run)
            self.assertEqual(data, b"")
            self.assertGreaterEqual(elapsed, 0.9)
            # Closed by the server (not left open until the client gives up at
            # 10 s), with room for a loaded machine.
            self.assertLess(elapsed, 6.0)

        return Deferred.fromCoroutine(scenario())

    def test_prompt_requests_on_a_kept_alive_connection_are_served(self) -> None:
        """Each request on a keep-alive connection gets its own full request timeout."""

        def run() -> list[int]:
            sock = self.connect()
            statuses = []
            for _ in range(3):
                sock.sendall(b"GET /stats HTTP/1.1\r\nHost: hq.test\r\n\r\n")
                statuses.append(read_response(sock).status)
                time.sleep(0.6)  # three requests span more than one request_timeout
            return statuses

        async def scenario() -> None:
            self.assertEqual(await self.in_thread(run), [200, 200, 200])

        return Deferred.fromCoroutine(scenario())


class ClientAddressTests(EdgeTestCase):
    """
    The access log believes ``X-Forwarded-For`` only from configured proxies.
    """

    def request_with(self, forwarded: bytes) -> Deferred[Response]:
        return self.exchange(
            b"GET /stats HTTP/1.1\r\nHost: hq.test\r\nConnection: close\r\n"
            b"X-Forwarded-For: " + forwarded + b"\r\n\r\n"
        )

    def logged_client(self) -> str:
        return self.access_lines()[-1].split(" ")[1]

    def test_forwarded_for_is_ignored_by_default(self) -> None:
        """With no trusted_proxies the logged client is the peer, whatever the header says."""
        self.serve()

        async def scenario() -> None:
            await self.request_with(b"203.0.113.9")
            self.assertEqual(self.logged_client(), "127.0.0.1")

        return Deferred.fromCoroutine(scenario())

    def test_forwarded_for_from_a_trusted_proxy_is_used(self) -> None:
        """From a trusted proxy, the nearest untrusted address of the chain is logged."""
        self.serve(trusted_proxies=["127.0.0.1", "10.0.0.0/8"])

        async def scenario() -> None:
            await self.request_with(b"203.0.113.9")
            self.assertEqual(self.logged_client(), "203.0.113.9")
            # The client may write anything at the left; only the proxies' hops count.
            await self.request_with(b"192.0.2.66, 198.51.100.7, 10.1.2.3")
            self.assertEqual(self.logged_client(), "198.51.100.7")
            await self.request_with(b"not-an-address, 10.1.2.3")
            self.assertEqual(self.logged_client(), "10.1.2.3")

        return Deferred.fromCoroutine(scenario())

    def test_proxy_not_in_the_list_is_not_believed(self) -> None:
        """A peer outside trusted_proxies cannot set the logged address."""
        self.serve(trusted_proxies=["10.0.0.0/8"])

        async def scenario() -> None:
            await self.request_with(b"203.0.113.9")
            self.assertEqual(self.logged_client(), "127.0.0.1")

        return Deferred.fromCoroutine(scenario())

    def test_log_fields_cannot_be_forged(self) -> None:
        """Spaces and control bytes from the client are escaped in the access log."""
        self.serve()

        async def scenario() -> None:
            await self.exchange(
                b"GET /stats?a=%0a HTTP/1.1\r\nHost: evil 200 1 \x1b[2J\r\n"
                b"Connection: close\r\n\r\n"
            )
            [line] = self.access_lines()
            fields = line.split(" ")
            self.assertEqual(len(fields), 10, line)
            self.assertEqual(fields[2], "evil\\x20200\\x201\\x20\\x1b[2J")

        return Deferred.fromCoroutine(scenario())


class BadInputTests(EdgeTestCase):
    """
    Malformed requests: each a 4xx whose message names the problem.
    """

    def setUp(self) -> None:
        self.serve(max_body_bytes=4 * 1024 * 1024)

    def test_each_bad_request_is_a_4xx_naming_the_problem(self) -> None:
        """Malformed ids, huge integers, bad UTF-8, deep JSON, wrong media types: 4xx."""
        deep = b"[" * 100_000 + b"]" * 100_000
        cases: list[tuple[bytes, int, str]] = [
            (get(b"/job/abc"), 404, "The job id must be a number but 'abc'"),
            (get(b"/job/-1"), 404, "The job id must be a number but '-1'"),
            (get(b"/job/" + b"9" * 300), 404, "The job id must be a number"),
            (get(b"/job/18446744073709551615"), 404, "The job '18446744073709551615' is not"),
            (get(b"/job/%ff"), 400, "The URL is not valid UTF-8"),
            (get(b"/job?name=%ff"), 400, "The query string is not valid UTF-8"),
            (get(b"/job?limit=x"), 400, "'limit' must be an integer, not 'x'"),
            (get(b"/job?begin=-5"), 400, "'begin' must be a job id"),
            (get(b"/job?name=a("), 400, "'name' is not a valid regexp"),
            (get(b"/job?status=done"), 400, "'status' must be one of"),
            (post(b"/job", b"\xff\xfe{}"), 400, "The request body is not valid UTF-8"),
            (post(b"/job", b'{"url": "http://x/", "name": "\\ud800"}'), 400, "'name' is not"),
            (post(b"/job", b"{"), 400, "Malformed JSON in the request body"),
            (post(b"/job", b"[1]"), 400, "must be a JSON object, not an array"),
            (post(b"/job", deep), 400, "nested too deeply"),
            (
                post(b"/job", b'{"url": "http://x/", "payload": ' + deep + b"}"),
                400,
                "nested too deeply",
            ),
            (
                post(b"/job", b'{"url": "http://x/", "payload": ' + b"9" * 5000 + b"}"),
                400,
                "Malformed JSON in the request body",
            ),
            (post(b"/job", b'{"url": "http://x/", "payload": 1e999}'), 400, "too large"),
            (post(b"/job", b'{"url": "http://x/", "payload": NaN}'), 400, "NaN"),
            (
                post(b"/job", b'{"url": "http://x/", "timeout": ' + b"9" * 30 + b"}"),
                422,
                "'timeout' must be at most",
            ),
            (post(b"/job", b'{"url": "http://x/", "timeout": "5"}'), 400, "'timeout' must be"),
            (post(b"/job", b'{"url": 5}'), 400, "'url' must be a string"),
            (post(b"/job", b'{"url": "ftp://x/"}'), 422, "'url' must be an absolute http"),
            (post(b"/job", b'{"name": "n"}'), 422, "'url' is required"),
            (post(b"/job", b"<job/>", b"application/xml"), 415, "'application/xml'"),
            (post(b"/job", b"url=http://x/", b"text/plain"), 415, "'text/plain'"),
            (
                post(b"/job", b'{"url": "http://x/", "headers": {"A": "b\\r\\nC: d"}}'),
                422,
                "must not contain CR, LF or NUL",
            ),
            (post(b"/job/1/restart", b'{"copy": "yes"}'), 400, "'copy' must be true or false"),
            (b"DELETE /job HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405, "Method"),
            (get(b"/nowhere"), 404, "Not Found"),
        ]

        async def scenario() -> None:
            for request, status, message in cases:
                response = await self.exchange(request)
                label = request[:60]
                self.assertEqual(response.status, status, (label, response.raw[:300]))
                self.assertEqual(response.json["status"], status, label)
                self.assertIn(message, response.json["error"], label)
                self.assertNoLeak(response.body)

        return Deferred.fromCoroutine(scenario())

    def assertNoLeak(self, body: bytes) -> None:
        """
        ``body`` shows no traceback, source file or path of the server.
        """
        text = body.decode("utf-8", "replace")
        for secret in ("Traceback", 'File "', ".py", ROOT, "/usr/", "site-packages"):
            self.assertNotIn(secret, text)

    def test_unexpected_error_answers_a_generic_500(self) -> None:
        """An exception inside a handler: generic 500 body; the cause goes only to the log."""

        self.serve(store=BrokenStore(), max_body_bytes=LIMIT)

        async def scenario() -> None:
            response = await self.exchange(get(b"/job/12"))
            self.assertEqual(
                (response.status, response.json),
                (500, {"status": 500, "error": "Internal Server Error"}),
            )
            self.assertNoLeak(response.body)
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

        return Deferred.fromCoroutine(scenario())

    def test_malformed_http_gets_a_bare_400_without_details(self) -> None:
        """Requests Twisted cannot parse get its terse 400; headers or a line too long a 431/414."""
        requests = [
            (b"NONSENSE\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
            # Headers over the 16 KiB limit, in all or in one line: the API's JSON 431.
            (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\nY: " + b"b" * 9000 + b"\r\n\r\n", 431),
            (b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
            # A request line over it: 414.
            (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 414),
        ]

        async def scenario() -> None:
            for request, status in requests:
                response = await self.exchange(request)
                self.assertEqual(response.status, status, request[:40])
                self.assertNoLeak(response.raw)

        return Deferred.fromCoroutine(scenario())

    def test_catastrophic_backtracking_pattern_answers_fast(self) -> None:
        """RE2: ``(a+)+$`` over names built to make a backtracking engine spin answers at once."""
        name = "a" * 64 + "!"
        for job_id in range(1, 201):
            self.store.create(Job(id=job_id, url="http://x/", name=name, comment=name))

        async def scenario() -> None:
            # A backtracking engine needs about 2**64 steps per name here, so
            # a bound of seconds separates the two and holds on a loaded machine.
            for query in (b"name=%5E(a%2B)%2B%24", b"term=(a%7Caa)%2B%24", b"term=(x%2Bx%2B)%2By"):
                began = time.monotonic()
                response = await self.exchange(get(b"/job?" + query))
                elapsed = time.monotonic() - began
                self.assertEqual((response.status, response.json["count"]), (200, 0), query)
                self.assertLess(elapsed, 5.0, query)

        return Deferred.fromCoroutine(scenario())


class LimitConfigTests(SynchronousTestCase):
    """
    The keys behind these limits.
    """

    def test_defaults(self) -> None:
        """request_timeout is 30 s, no proxy is trusted, bodies up to 4 MiB."""
        config = Config()
        self.assertEqual(
            (config.request_timeout, config.trusted_proxies, config.max_body_bytes),
            (30, (), 4 * 1024 * 1024),
        )

    def test_trusted_proxies_takes_addresses_and_networks(self) -> None:
        """trusted_proxies is an array of IP addresses or networks."""
        config = config_from_dict({"trusted_proxies": ["127.0.0.1", "10.0.0.0/8", "::1"]})
        self.assertEqual(config.trusted_proxies, ("127.0.0.1", "10.0.0.0/8", "::1"))

    def test_bad_values_name_the_key(self) -> None:
        """A bad trusted_proxies or request_timeout stops start-up naming the key."""
        for values, message in [
            ({"trusted_proxies": "127.0.0.1"}, "'trusted_proxies' must be an array of strings"),
            ({"trusted_proxies": [1]}, "'trusted_proxies' must be an array of strings"),
            ({"trusted_proxies": ["proxy.local"]}, "'trusted_proxies' must hold IP addresses"),
            ({"request_timeout": 0}, "'request_timeout' must be at least 1"),
            ({"request_timeout": "30"}, "'request_timeout' must be an integer"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                config_from_dict(values)
            self.assertIn(message, str(caught.exception))
