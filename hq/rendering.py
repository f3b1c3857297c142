"""
Klein's resource, rendered without reference cycles and with less work per
request.

:class:`KleinResource.render <klein.resource.KleinResource>` (Klein 24.8)
builds each request's work as nested functions, and its error path,
``processing_failed``, refers to itself (it calls itself for the next error
handler). A function that refers to itself is a reference cycle, and this one
holds the request: every request Klein renders, with its headers, its body
and its transport's address, about 40 objects, stays in memory until Python's
cyclic garbage collector finds it. Around that, each request also paid for a
new werkzeug ``MapAdapter`` (with an IDNA encoding of the host), Klein's
request adapter, and two or three Deferreds besides the endpoint's own.

:class:`CycleFreeKleinResource` routes and answers the same way: the same URL
map, endpoints and error handlers, the same answers to ``Response``,
``IResource`` and ``IRenderable`` results, the same cancel when the client
goes away. What differs:

- Its per-request state is one small object, :class:`_Rendering`, which only
  the request's own Deferreds refer to; once the response is written they have
  fired and nothing refers to it, so reference counting frees the request at
  once.
- A path and method that werkzeug matches to a rule without arguments (such
  as ``POST /job``) is looked up in a table made from the URL map the first
  time (werkzeug itself decides what goes in it); other requests are matched
  by werkzeug as before.
- An endpoint that answers at once is written at once; besides the
  endpoint's own, one Deferred per request (the request's ``notifyFinish``).
- Klein's request adapter (``IKleinRequest``) is not given the URL mapper, so
  ``url_for`` is not available to the handlers (HQ's do not use it).

For HQ this was about a quarter of the CPU of a push (issue #15,
docs/performance.md, round nine).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from klein import Response
from klein.resource import KleinResource, ensure_utf8_bytes
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.python import log
from twisted.python.failure import Failure
from twisted.web.iweb import IRenderable, IRequest
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.template import renderElement
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map

if TYPE_CHECKING:
    from klein import Klein, KleinRenderable
    from klein._app import ErrorMethods

#: What :meth:`_Rendering.process` returns when the result rendered itself.
_RENDERED = object()

#: The host the route table is made with (see :func:`static_routes`).
_ANY_HOST = "localhost"


def url_parts(request: IRequest) -> tuple[str, str, str, str]:
    """
    Return the URL scheme, server name (with a port other than the scheme's
    own), path info and script name of ``request``, as Klein binds them.

    Raises ``UnicodeDecodeError`` when a part is not UTF-8.
    """
    req: Any = request
    server_name: bytes = req.getRequestHostname()
    port = getattr(req.getHost(), "port", 0)
    secure = bool(req.isSecure())
    if (secure, port) not in ((True, 443), (False, 80), (False, 0), (True, 0)):
        server_name = b"%s:%d" % (server_name, port)
    script_name = b"/".join(req.prepath) if req.prepath else b""
    if req.prepath and not script_name.startswith(b"/"):
        script_name = b"/" + script_name
    return (
        "https" if secure else "http",
        server_name.decode("utf-8"),
        path_info(request).decode("utf-8"),
        script_name.decode("utf-8"),
    )


def path_info(request: IRequest) -> bytes:
    """
    Return the path below the resource (its ``postpath``), as Klein gives
    it to werkzeug: ``/``-separated, beginning with ``/``, empty for none.
    """
    postpath: list[bytes] = request.postpath  # type: ignore[attr-defined]
    if not postpath:
        return b""
    path = b"/".join(postpath)
    return path if path.startswith(b"/") else b"/" + path


def static_routes(url_map: Map) -> dict[tuple[bytes, bytes], str]:
    """
    Return ``{(path, method): endpoint}`` for each path and method that
    werkzeug matches to a rule without arguments, such as ``POST /job``.

    Each entry is werkzeug's own answer for that path and method, so the
    table agrees with it: a path another rule would take, redirect or
    refuse is not in it. Without host matching, and with Klein binding no
    subdomain, werkzeug's answer does not depend on the host; a map that
    matches hosts gets no table.
    """
    if url_map.host_matching:
        return {}
    adapter = url_map.bind(_ANY_HOST)
    table: dict[tuple[bytes, bytes], str] = {}
    for rule in url_map.iter_rules():
        if rule.arguments or rule.methods is None or rule.subdomain or rule.websocket:
            continue
        for method in rule.methods:
            try:
                matched, values = adapter.match(rule.rule, method, return_rule=True)
            except HTTPException:
                continue
            if matched is rule and not values:
                table[(rule.rule.encode("ascii"), method.encode("ascii"))] = rule.endpoint
    return table


class CycleFreeKleinResource(KleinResource):
    """
    A :class:`~klein.resource.KleinResource` that leaves no reference cycle
    behind and routes its static paths through a table (see the module's
    docstring).
    """

    _routes: dict[tuple[bytes, bytes], str] | None = None

    def render(self, request: IRequest) -> KleinRenderable:
        routes = self._routes
        if routes is None:
            routes = self._routes = static_routes(self._app.url_map)
        try:
            endpoint = routes.get((path_info(request), request.method))
            if endpoint is not None:
                request.getRequestHostname().decode("utf-8")
            else:
                scheme, server_name, path, script_name = url_parts(request)
        except UnicodeDecodeError:
            return self.url_not_utf8(request)
        rendering = _Rendering(self._app, request)
        if endpoint is not None:
            rendering.call(endpoint, {})
            return NOT_DONE_YET  # type: ignore[return-value]
        mapper = self._app.url_map.bind(
            server_name,
            script_name,
            path_info=path,
            default_method=request.method.decode("utf-8"),
            url_scheme=scheme,
        )
        try:
            rule, values = mapper.match(return_rule=True)
        except Exception:
            rendering.refuse(Failure())
        else:
            rendering.call(rule.endpoint, values)
        return NOT_DONE_YET  # type: ignore[return-value]

    def url_not_utf8(self, request: IRequest) -> bytes:
        """
        Answer a request whose host or path is not UTF-8: 400, as Klein does.
        """
        request.setResponseCode(400)
        return b"Non-UTF-8 encoding in URL."


class _Rendering:
    """
    One request on its way through a Klein app: what the nested functions of
    ``KleinResource.render`` kept in their closures.
    """

    __slots__ = ("_app", "_finished", "_request", "_work")

    def __init__(self, app: Klein, request: IRequest) -> None:
        self._app = app
        self._request = request
        self._finished = False
        self._work: Deferred[Any] | None = None
        req: Any = request
        req.notifyFinish().addBoth(self._ended)

    def _ended(self, result: object) -> None:
        # The response is written, or the client went away (a Failure):
        # then the endpoint's work is cancelled, as Klein does.
        self._finished = True
        work, self._work = self._work, None
        if work is not None and isinstance(result, Failure):
            work.cancel()

    def call(self, endpoint: str, values: Mapping[str, Any]) -> None:
        """
        Call the route's endpoint and answer with what it returns, at once
        or when its Deferred fires.
        """
        request: Any = self._request
        segments: int = self._app.endpoints[endpoint].segment_count  # type: ignore[attr-defined]
        request.prepath.extend(request.postpath[:segments])
        request.postpath = request.postpath[segments:]
        try:
            result = self._app.execute_endpoint(endpoint, request, **values)
        except Exception:
            self.refuse(Failure())
            return
        if isinstance(result, Deferred):
            if not self._finished:
                self._work = result
            result.addCallbacks(self.answer, self.refuse)
            result.addErrback(log.err, _why="Unhandled Error writing response")
        else:
            self.answer(result)

    def answer(self, result: object) -> None:
        """
        Write the endpoint's result, rendered as Klein renders it.
        """
        self._work = None
        shown = result
        if not isinstance(result, (bytes, str)):
            try:
                shown = self.process(result)
            except Exception:
                self.refuse(Failure())
                return
        try:
            self.write(shown)
        except Exception:
            log.err(Failure(), "Unhandled Error writing response")

    def refuse(self, failure: Failure) -> None:
        """
        Answer ``failure`` through the app's error handlers.
        """
        self._work = None
        handled = self.failed(failure, self._app._error_handlers)
        if handled is None:
            self.write(None)
        else:
            handled.addCallback(self.write)
            handled.addErrback(log.err, _why="Unhandled Error writing response")

    def process(self, result: object) -> object:
        """
        Render a ``Response``, resource or element result; return what is
        left to write (or the marker that it is written).
        """
        request: Any = self._request
        if isinstance(result, Response):
            result = result._applyToRequest(request)
        if IResource.providedBy(result):
            request.render(getChildForRequest(result, request))
            return _RENDERED
        if IRenderable.providedBy(result):
            renderElement(request, result)
            return _RENDERED
        return result

    def failed(self, failure: Failure, handlers: ErrorMethods) -> Deferred[Any] | None:
        """
        Give ``failure`` to the first of ``handlers`` that takes its type,
        as Klein does; with none left, answer an ``HTTPException`` itself and
        anything else with Twisted's 500. Return the Deferred of what to
        write, or None when there is nothing to write.
        """
        request: Any = self._request
        if self._finished:
            if not failure.check(CancelledError):
                log.err(failure, "Unhandled Error Processing Request.")
            return None
        if not handlers:
            if failure.check(HTTPException):
                error = failure.value
                assert isinstance(error, HTTPException)
                request.setResponseCode(error.code)
                response = error.get_response({})
                for header, value in response.headers:
                    request.setHeader(ensure_utf8_bytes(header), ensure_utf8_bytes(value))
                return succeed(ensure_utf8_bytes(b"".join(response.iter_encoded())))
            request.processingFailed(failure)
            return None
        kinds, handler = handlers[0]
        if not failure.check(*kinds):
            return self.failed(failure, handlers[1:])
        answer = maybeDeferred(self._app.execute_error_handler, handler, request, failure)
        answer.addCallback(self.process)
        return answer.addErrback(self.failed, handlers[1:])

    def write(self, result: object) -> None:
        """
        Write a ``str`` or ``bytes`` result, and finish the request unless it
        is finished already.
        """
        if result is _RENDERED:
            return
        if isinstance(result, str):
            result = result.encode("utf-8")
        if isinstance(result, bytes):
            self._request.write(result)
        if not self._finished:
            self._request.finish()
