"""
Tests for hq.rendering: Klein's resource without reference cycles. It must
answer every kind of request exactly as Klein's own ``KleinResource`` does,
and free each request as soon as it is answered.
"""

from __future__ import annotations

import gc
import re
import weakref
from typing import Any

from klein import Klein, Response
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from twisted.web.template import Element, XMLString, renderer
from werkzeug.routing import Map, Rule

from hq.api import HQApi
from hq.rendering import CycleFreeKleinResource, static_routes

_DATE = re.compile(rb"^Date: .*\r\n", re.MULTILINE | re.IGNORECASE)


class _Leaf(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"from a resource"


class _Greeting(Element):
    loader = XMLString('<p xmlns:t="http://twistedmatrix.com/ns/twisted:0.1.0" t:render="name" />')

    @renderer
    def name(self, request: Any, tag: Any) -> Any:
        return tag("hello from an element")


class _Sample:
    """
    A Klein app with a route for each kind of answer Klein gives.
    """

    app = Klein()

    def __init__(self) -> None:
        self.pending: list[Deferred[bytes]] = []
        self.cancelled = 0

    @app.route("/")
    def root(self, request: Any) -> bytes:
        return b"root, any method"

    @app.route("/hello", methods=["GET"])
    def hello(self, request: Any) -> str:
        request.setHeader(b"x-route", b"hello")
        return "hello \N{SNOWMAN}"

    @app.route("/items/<int:number>", methods=["GET"])
    def item(self, request: Any, number: int) -> bytes:
        return b"item %d" % (number,)

    @app.route("/dir/", methods=["GET"])
    def directory(self, request: Any) -> bytes:
        return b"a directory"

    @app.route("/later", methods=["GET"])
    def later(self, request: Any) -> Deferred[bytes]:
        def cancel(d: Deferred[bytes]) -> None:
            self.cancelled += 1

        d: Deferred[bytes] = Deferred(cancel)
        self.pending.append(d)
        return d

    @app.route("/coroutine", methods=["GET"])
    async def coroutine(self, request: Any) -> bytes:
        return b"from a coroutine"

    @app.route("/response", methods=["GET"])
    def response(self, request: Any) -> Any:
        return Response(code=201, headers={"x-made": "yes"}, body="a Response")

    @app.route("/resource", methods=["GET"])
    def resource(self, request: Any) -> IResource:
        return _Leaf()

    @app.route("/element", methods=["GET"])
    def element(self, request: Any) -> Element:
        return _Greeting()

    @app.route("/handled", methods=["GET"])
    def handled(self, request: Any) -> bytes:
        raise ValueError("a value")

    @app.route("/handled-later", methods=["GET"])
    def handled_later(self, request: Any) -> Deferred[bytes]:
        return fail(ValueError("a later value"))

    @app.route("/passed-on", methods=["GET"])
    def passed_on(self, request: Any) -> bytes:
        raise LookupError("for the second handler")

    @app.route("/unhandled", methods=["GET"])
    def unhandled(self, request: Any) -> bytes:
        raise ZeroDivisionError("no handler takes this")

    @app.handle_errors(ValueError)
    def _value_error(self, request: Any, failure: Failure) -> bytes:
        request.setResponseCode(418)
        return b"handled: " + str(failure.value).encode()

    @app.handle_errors(KeyError)
    def _key_error(self, request: Any, failure: Failure) -> bytes:
        return b"not a KeyError"

    @app.handle_errors(LookupError)
    def _lookup_error(self, request: Any, failure: Failure) -> bytes:
        request.setResponseCode(409)
        return b"second handler"


class _Recording(Request):
    """
    A request that lets the test see when it is freed.
    """

    made: list[weakref.ref[Request]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _Recording.made.append(weakref.ref(self))


class _Connection:
    """
    One HTTP connection to a site serving ``resource``.
    """

    def __init__(self, resource: Any) -> None:
        # Its own clock: the channel's idle timeout must not be left in the
        # global reactor, where trial would blame the next test for it.
        self.clock = Clock()
        site = Site(resource, reactor=self.clock)
        site.requestFactory = _Recording
        self.protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        self.protocol.makeConnection(self.transport)

    def send(self, method: bytes, path: bytes) -> bytes:
        """
        Send one request; return what was written back so far (no Date).
        """
        self.transport.clear()
        self.protocol.dataReceived(
            b"%s %s HTTP/1.1\r\nHost: example.test:8080\r\nContent-Length: 0\r\n\r\n"
            % (method, path)
        )
        return _DATE.sub(b"", self.transport.value())


REQUESTS = [
    (b"GET", b"/"),
    (b"DELETE", b"/"),
    (b"GET", b"/hello"),
    (b"HEAD", b"/hello"),
    (b"POST", b"/hello"),
    (b"GET", b"/items/42"),
    (b"GET", b"/items/forty-two"),
    (b"GET", b"/nowhere"),
    (b"GET", b"/dir"),
    (b"GET", b"/dir/"),
    (b"GET", b"//hello"),
    (b"GET", b"/hel%6co"),
    (b"GET", b"/hello?x=1"),
    (b"GET", b"/coroutine"),
    (b"GET", b"/response"),
    (b"GET", b"/resource"),
    (b"GET", b"/element"),
    (b"GET", b"/handled"),
    (b"GET", b"/handled-later"),
    (b"GET", b"/passed-on"),
    (b"GET", b"/unhandled"),
]


class SameAnswersAsKleinTests(SynchronousTestCase):
    """
    Every kind of request gets, byte for byte, the answer Klein's own
    resource gives.
    """

    def test_every_kind_of_answer(self) -> None:
        """
        Routes with and without arguments, any method, HEAD, 404, 405, a
        redirect, str and bytes, coroutines, ``Response``, resources,
        elements, error handlers in order and an error none handles.
        """
        klein = _Connection(_Sample().app.resource())
        ours = _Connection(CycleFreeKleinResource(_Sample().app))
        for method, path in REQUESTS:
            expected = klein.send(method, path)
            self.assertEqual(ours.send(method, path), expected, (method, path))
            self.assertTrue(expected.startswith(b"HTTP/1.1 "), expected)
        # A few of them, looked at, so that equal answers are also right ones.
        self.assertIn(b"418", klein.send(b"GET", b"/handled").split(b"\r\n")[0])
        for method, path, status in (
            (b"GET", b"/hello", b" 200 "),
            (b"GET", b"/nowhere", b" 404 "),
            (b"POST", b"/hello", b" 405 "),
            (b"GET", b"/handled", b" 418 "),
            (b"GET", b"/passed-on", b" 409 "),
            (b"GET", b"/unhandled", b" 500 "),
        ):
            self.assertIn(status, ours.send(method, path).split(b"\r\n")[0], path)
        self.flushLoggedErrors(ZeroDivisionError)

    def test_a_deferred_answer(self) -> None:
        """
        An endpoint's Deferred is answered when it fires, on the same
        keep-alive connection.
        """
        answers = []
        for resource in (_Sample().app.resource, None):
            sample = _Sample()
            made = sample.app.resource() if resource else CycleFreeKleinResource(sample.app)
            connection = _Connection(made)
            self.assertEqual(connection.send(b"GET", b"/later"), b"")
            sample.pending[0].callback(b"now")
            answers.append(_DATE.sub(b"", connection.transport.value()))
        self.assertEqual(answers[1], answers[0])
        self.assertTrue(answers[0].endswith(b"\r\n\r\n3\r\nnow\r\n0\r\n\r\n"), answers[0])

    def test_client_gone_cancels_the_endpoint(self) -> None:
        """
        When the client goes away before the answer, the endpoint's Deferred
        is cancelled, and nothing is written or logged (the cancel's own
        failure is not an error).
        """
        sample = _Sample()
        connection = _Connection(CycleFreeKleinResource(sample.app))
        connection.send(b"GET", b"/later")
        connection.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(sample.cancelled, 1)
        self.assertEqual(connection.transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])


class NoReferenceCycleTests(SynchronousTestCase):
    """
    A request is freed as soon as it is answered, by reference counting
    alone: Klein's own render kept each one in a cycle until the cyclic
    garbage collector ran.
    """

    def setUp(self) -> None:
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        _Recording.made.clear()

    def test_answered_requests_are_freed_at_once(self) -> None:
        """
        Routed through the table, through werkzeug, refused (404, 405),
        handled errors, Deferreds: none is left in memory.
        """
        sample = _Sample()
        connection = _Connection(CycleFreeKleinResource(sample.app))
        paths = [b"/hello", b"/items/7", b"/nowhere", b"/handled", b"/handled-later", b"/later"]
        for path in paths:
            connection.send(b"GET", path)
        connection.send(b"POST", b"/hello")
        sample.pending.pop().callback(b"done")
        self.assertEqual(len(_Recording.made), len(paths) + 1)
        self.assertEqual([ref for ref in _Recording.made if ref() is not None], [])

    def test_klein_own_render_keeps_them(self) -> None:
        """
        The reason for this module, as a check that the test above can
        fail: Klein 24.8's resource leaves its requests to the collector.
        """
        connection = _Connection(_Sample().app.resource())
        connection.send(b"GET", b"/hello")
        self.assertIsNotNone(_Recording.made[0]())
        gc.collect()
        self.assertIsNone(_Recording.made[0]())


class StaticRoutesTests(SynchronousTestCase):
    """
    The table of paths without arguments is werkzeug's own answer.
    """

    def test_routes_without_arguments(self) -> None:
        """
        Each method of a rule without arguments is in the table (HEAD with
        GET, as werkzeug adds it); rules with arguments, and a rule for any
        method, are not.
        """
        table = static_routes(_Sample.app.url_map)
        self.assertEqual(table[(b"/hello", b"GET")], "hello")
        self.assertEqual(table[(b"/hello", b"HEAD")], "hello")
        self.assertEqual(table[(b"/dir/", b"GET")], "directory")
        self.assertNotIn((b"/hello", b"POST"), table)
        self.assertNotIn((b"/dir", b"GET"), table)
        self.assertFalse([key for key in table if key[0] in (b"/", b"/items/<int:number>")])

    def test_a_path_werkzeug_gives_to_another_rule_is_left_out(self) -> None:
        """
        Werkzeug prefers a later static rule over an earlier rule with
        arguments; a rule it would never match is not in the table.
        """
        url_map = Map(
            [
                Rule("/a", endpoint="first", methods=["GET"]),
                Rule("/a", endpoint="shadowed", methods=["GET"]),
                Rule("/b/<name>", endpoint="any", methods=["GET"]),
                Rule("/b/c", endpoint="static", methods=["GET"]),
            ]
        )
        table = static_routes(url_map)
        self.assertEqual(table[(b"/a", b"GET")], "first")
        self.assertEqual(table[(b"/b/c", b"GET")], "static")
        self.assertNotIn("shadowed", table.values())

    def test_host_matching_maps_get_no_table(self) -> None:
        """
        Where the host decides the rule, every request goes to werkzeug.
        """
        url_map = Map([Rule("/a", endpoint="a", host="example.test")], host_matching=True)
        self.assertEqual(static_routes(url_map), {})

    def test_the_push_is_in_hq_table(self) -> None:
        """
        HQ's hot routes skip werkzeug: the push, the batch push, the list
        and the stats.
        """
        table = static_routes(HQApi.app.url_map)
        self.assertEqual(table[(b"/job", b"POST")], "push")
        self.assertEqual(table[(b"/jobs", b"POST")], "push_batch")
        self.assertEqual(table[(b"/job", b"GET")], "list_jobs")
        self.assertEqual(table[(b"/stats", b"GET")], "stats")
