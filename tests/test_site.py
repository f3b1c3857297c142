"""
Tests for hq.site: the HTTP server side, its behaviour at shutdown and its
one error body.
"""

from __future__ import annotations

import http.client
import json
import time

import treq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

import hq.site as site_module
from hq.api import write_error
from hq.site import (
    AccessLogSite,
    LimitedChannel,
    _LocalStamp,
    _printable,
    _raw_response,
    error_body,
    too_large_message,
)


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        return b"hello"


class ShutdownTests(TestCase):
    """
    A stopping site takes no new work, even on connections already open.
    """

    async def test_stopping_site_answers_503_and_closes(self) -> None:
        """Once stopping, a request gets the JSON 503 and Connection: close."""
        site = AccessLogSite(_Hello(), None)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/"
        response = await treq.get(url, persistent=False)
        self.assertEqual((response.code, await response.content()), (200, b"hello"))
        site.stopping = True

        def ask() -> tuple[int, str | None, bytes]:
            # http.client shows the Connection header (Twisted's client keeps it apart).
            connection = http.client.HTTPConnection("127.0.0.1", port.getHost().port, timeout=5)
            try:
                connection.request("GET", "/")
                answer = connection.getresponse()
                return answer.status, answer.getheader("connection"), answer.read()
            finally:
                connection.close()

        status, connection_header, body = await deferToThread(ask)
        self.assertEqual((status, connection_header), (503, "close"))
        self.assertEqual(
            json.loads(body), {"status": 503, "error": "HQ is shutting down; try again later"}
        )


class ErrorBodyTests(SynchronousTestCase):
    """
    One error body: the API's error path and the site's own answers write the
    same bytes for the same message.
    """

    MESSAGE = "The job id must be a number but '<é&>\u2028'"

    def test_api_error_path_and_site_write_identical_bodies(self) -> None:
        """api.write_error and site.error_body give byte-identical bodies, escapes included."""
        request = DummyRequest([b"job"])
        from_api = write_error(request, 404, self.MESSAGE)
        self.assertEqual(from_api, error_body(404, self.MESSAGE))
        self.assertEqual(
            from_api,
            b'{"status":404,"error":"The job id must be a number but '
            b"'\\u003c\xc3\xa9\\u0026\\u003e\\u2028'\"}\n",
        )
        self.assertEqual(json.loads(from_api)["error"], self.MESSAGE)

    def test_pretty_error_bodies_are_identical(self) -> None:
        """With ?pretty both paths indent the same way."""
        request = DummyRequest([b"job"])
        request.uri = b"/job?pretty"
        self.assertEqual(
            write_error(request, 413, self.MESSAGE), error_body(413, self.MESSAGE, pretty=True)
        )

    def test_raw_refusal_carries_the_one_error_body(self) -> None:
        """The site's raw answers (413, 408 before the API) end with error_body's bytes."""
        raw = _raw_response(413, b"Request Entity Too Large", too_large_message(10))
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertEqual(body, error_body(413, too_large_message(10)))
        self.assertIn(b"Content-Length: %d" % len(body), head)


class LogFieldTests(SynchronousTestCase):
    """
    The access log's fields: printable text and the local time stamp.
    """

    def test_printable_keeps_plain_ascii_and_escapes_the_rest(self) -> None:
        """Printable ASCII passes as it is; spaces, backslashes, controls, non-ASCII are escaped."""
        self.assertEqual(_printable(b"/job?x=1&y=%20"), "/job?x=1&y=%20")
        self.assertEqual(_printable(b"a b\\c\r\n\xff"), "a\\x20b\\x5cc\\x0d\\x0a\\xff")
        self.assertEqual(_printable("caf\u00e9"), "caf\\xe9")
        self.assertEqual(_printable(b""), "")

    def test_local_stamp_is_formatted_once_per_second(self) -> None:
        """The stamp is the local time of the current second, in the Go server's layout."""
        seconds = [1_700_000_000.2, 1_700_000_000.9, 1_700_000_001.1]
        self.patch(site_module.time, "time", lambda: seconds.pop(0))
        stamp = _LocalStamp()
        first, second, third = stamp(), stamp(), stamp()
        expected = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(1_700_000_000))
        self.assertEqual((first, second), (expected, expected))
        self.assertNotEqual(third, first)


class _Hosts(Resource):
    """Answers every GET with ``hello``, noting each request's local address."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[object] = []

    def render_GET(self, request: Request) -> bytes:
        self.seen.append(request.getHost())
        return b"hello"


class LocalAddressTests(SynchronousTestCase):
    """
    A connection's local address is read from its transport once.
    """

    def test_local_address_is_read_once_per_connection(self) -> None:
        """Requests on one connection share the first getHost() answer (a getsockname call)."""
        resource = _Hosts()
        site = AccessLogSite(resource, None, timeout=None)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(channel, LimitedChannel)
        channel.callLater = Clock().callLater  # type: ignore[method-assign]
        local = IPv4Address("TCP", "127.0.0.1", 19900)
        transport = StringTransport(hostAddress=local)
        asked = []

        def get_host() -> IPv4Address:
            asked.append(local)
            return local

        transport.getHost = get_host  # type: ignore[method-assign]
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: hq.test\r\n\r\n" * 3)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(resource.seen, [local, local, local])
        self.assertEqual(len(asked), 1)
        channel.connectionLost(Failure(ConnectionDone()))
