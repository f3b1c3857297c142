"""
The exchange with one worker: the HTTP client, the request, the answer, and
what went wrong in words for a person.

:class:`WorkerClient` runs one exchange for a job: POST it to its URL with
HQ's headers, follow redirects (as Go's ``http.Client``), read the response
body up to a cap, all within the job's timeout, and return an
:class:`Exchange` saying what happened; :meth:`Exchange.reason` turns a
failure into the job's ``err`` text (:func:`describe_error`,
:func:`reason_phrase`). The delivery engine (:mod:`hq.delivery`) only decides what
the exchange means for the job.

:func:`make_http_client` builds the production treq client: one keep-alive
connection pool (:class:`WorkerConnectionPool`), no cookie jar, bodies sent
with a ``Content-Length``, and a byte budget per response
(:func:`response_budget`) that bounds what Twisted's HTTP parser keeps before
the body.

Connections are made by :class:`WorkerEndpoints` (:mod:`hq.connect`): to an
address in the URL directly, to a host name through the resolver at every
new connection, its addresses tried in turn, the network guard asked about
each address.

The pool keeps a connection only when the worker's response left it open
(:func:`keeps_alive`: not an HTTP/1.0 answer without ``Connection:
keep-alive``, nor ``Connection: close``), and sends a request that failed on a
kept connection before the worker answered anything once more on a new
connection (the worker had closed the kept connection, as a rule before
reading the request).
"""

from __future__ import annotations

import codecs
import functools
import typing
from collections.abc import Callable, Hashable, Sequence
from http.cookiejar import Cookie
from typing import Any

import attrs
from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol, Request
from twisted.web.client import (
    URI,
    Agent,
    HTTPConnectionPool,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
    _ensureValidURI,
    _HTTP11ClientFactory,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import RESPONSES, PotentialDataLoss
from twisted.web.http_headers import Headers, InvalidHeaderName
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from hq.connect import HostEndpoints, checked_host
from hq.guard import NetworkGuard
from hq.model import Job
from hq.signing import SIGNATURE_HEADERS, Signer, signer_for
from hq.turnio import settle_per_turn

#: Redirects followed per delivery (as Go's http.Client).
MAX_REDIRECTS = 10
#: Redirect codes that turn the request into a GET without a body.
_REDIRECT_TO_GET = frozenset({301, 302, 303})
#: Redirect codes that repeat the request as it was.
_REDIRECT_SAME = frozenset({307, 308})
#: How much of a redirect response's body is read (and dropped) before the next hop.
_REDIRECT_BODY_CAP = 64 * 1024
#: Job headers that cannot replace HQ's own (compared in lower case).
#: ``Transfer-Encoding`` is added to the SPEC's list: it would break the request framing.
PROTECTED_HEADERS = frozenset(
    {"user-agent", "host", "content-length", "x-hq-job-id", "transfer-encoding"}
)
#: Headers not sent on to another host after a redirect (as Go's http.Client).
_CREDENTIAL_HEADERS = (b"authorization", b"proxy-authorization", b"cookie", b"cookie2")
#: Bytes a response may take beyond 8 times its kept body (see :func:`response_budget`).
RESPONSE_OVERHEAD_BYTES = 1024 * 1024
#: Idle keep-alive connections kept per worker host (Twisted's default is 2).
MAX_PERSISTENT_PER_HOST = 16
#: The status codes a worker may answer with; any other is an invalid response.
MIN_STATUS_CODE = 100
MAX_STATUS_CODE = 599
#: Digits of an invalid status code kept in ``err``.
_STATUS_DIGITS_SHOWN = 12


# -- The HTTP client ------------------------------------------------------------


class NoCookieJar(IndexableCookieJar):
    """
    A cookie jar that never keeps a cookie, so no cookie passes from one job to
    the next (a job can still send its own ``Cookie`` header).
    """

    def set_cookie(self, cookie: Cookie) -> None:
        """
        Drop ``cookie``.
        """

    def extract_cookies(self, response: Any, request: Any) -> None:
        """
        Ignore the response's ``Set-Cookie`` headers.
        """


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body known in full: written at once, with its length (so the
    request has a ``Content-Length`` and no chunked encoding).
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


def http_client_for(agent: IAgent) -> HTTPClient:
    """
    Return the treq client :class:`WorkerClient` needs over ``agent``: no cookies
    kept, bodies sent as :class:`BytesProducer`.
    """
    return HTTPClient(agent, cookiejar=NoCookieJar(), data_to_body_producer=BytesProducer)


class ResponseTooLarge(Exception):
    """
    A worker sent more bytes for one request than :func:`response_budget` allows.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit

    def __str__(self) -> str:
        return f"response too large: more than {self.limit} bytes of headers and framing"


def response_budget(max_output_bytes: int) -> int:
    """
    Return how many bytes a worker may send in answer to one request:
    :data:`RESPONSE_OVERHEAD_BYTES` plus 8 times the larger of
    ``max_output_bytes`` and 64 KiB.

    A body is cut (and the connection closed) at ``max_output_bytes`` long
    before that; the budget bounds what Twisted's HTTP parser keeps in memory
    before the body, which it does not limit itself (endless header lines).
    The factor leaves room for the framing of a chunked body.
    """
    return RESPONSE_OVERHEAD_BYTES + 8 * max(max_output_bytes, _REDIRECT_BODY_CAP)


class _BudgetProtocol(ProtocolWrapper):
    """
    Counts the bytes received since the client last wrote (a new request on a
    kept-alive connection); past the budget, aborts the connection and reports
    :class:`ResponseTooLarge` as the reason.
    """

    factory: _BudgetFactory

    def __init__(self, factory: _BudgetFactory, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self._received = 0
        self._exceeded = False

    def write(self, data: bytes) -> None:
        self._received = 0
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self._received = 0
        super().writeSequence(data)

    def dataReceived(self, data: bytes) -> None:
        if self._exceeded:
            return
        self._received += len(data)
        if self._received > self.factory.budget:
            self._exceeded = True
            transport: Any = self.transport
            transport.abortConnection()
            return
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self._exceeded:
            reason = Failure(ResponseTooLarge(self.factory.budget))
        super().connectionLost(reason)


class _BudgetFactory(WrappingFactory[_BudgetProtocol]):
    protocol = _BudgetProtocol
    #: No "Starting factory" lines per worker connection in the log.
    noisy = False

    def __init__(self, wrappedFactory: Any, budget: int) -> None:
        super().__init__(wrappedFactory)
        # The pool's per-connection client factory would log each connection too.
        wrappedFactory.noisy = False
        self.budget = budget


@implementer(IStreamClientEndpoint)
class _BudgetEndpoint:
    """
    An endpoint whose connections count received bytes (:class:`_BudgetProtocol`);
    ``connect`` fires with the wrapped protocol, as the connection pool expects.

    The endpoint that connects (``hosts.endpoint``) is built only when a
    connection is made: the pool asks for an endpoint with every request but
    uses it only when it has no kept connection, and building one (then a
    ``HostnameEndpoint``, with its IDNA step) cost more than the rest of the
    request's routing. Its ``repr``, which the pool asks for at each new
    connection (for its logs), names the URL's scheme, host and port.
    """

    def __init__(
        self, hosts: HostEndpoints, scheme: bytes, netloc: bytes, port: int, budget: int
    ) -> None:
        self._hosts = hosts
        self._scheme = scheme
        self._netloc = netloc
        self._port = port
        self._budget = budget

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        wrapping = _BudgetFactory(protocolFactory, self._budget)
        try:
            endpoint = self._hosts.endpoint(self._scheme, self._netloc, self._port)
        except Exception:
            return fail()
        connected: Deferred[Any] = endpoint.connect(wrapping)
        return connected.addCallback(lambda wrapper: wrapper.wrappedProtocol)

    def __repr__(self) -> str:
        scheme, host = self._scheme.decode(), self._netloc.decode("ascii", "replace")
        return f"<worker endpoint {scheme}://{host}:{self._port}>"


@implementer(IAgentEndpointFactory)
class WorkerEndpoints:
    """
    The endpoints of the agent's connections to workers
    (:class:`hq.connect.HostEndpoints`: an address directly, a name's
    addresses in turn, ``guard`` asked about each, TLS checked by
    ``BrowserLikePolicyForHTTPS``, a 30 s connect timeout), whose connections
    allow each response at most ``budget`` bytes.
    """

    def __init__(self, reactor: Any, budget: int, guard: NetworkGuard | None = None) -> None:
        self._hosts = HostEndpoints(reactor, guard)
        self._budget = budget

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        # Refuses a bad host or scheme here, with the request, not at connect time.
        checked_host(uri.scheme, uri.host)
        return _BudgetEndpoint(self._hosts, uri.scheme, uri.host, uri.port, self._budget)


#: Parsed request URIs :class:`WorkerAgent` keeps (all are dropped when it is full).
URI_CACHE_SIZE = 1024


class WorkerAgent(Agent):
    """
    Twisted's ``Agent`` over an endpoint factory, which keeps the URIs it
    parsed: jobs go to few URLs, and parsing each request's URI again
    (``URI.fromBytes``) was a visible part of a delivery's CPU. Parsed URIs
    are not changed by a request, so one serves many.
    """

    _uris: dict[bytes, URI]

    @classmethod
    def for_workers(
        cls, reactor: Any, endpoints: IAgentEndpointFactory, pool: HTTPConnectionPool
    ) -> WorkerAgent:
        """
        Return an agent connecting through ``endpoints`` with ``pool``.
        """
        agent = cls.usingEndpointFactory(reactor, endpoints, pool=pool)
        agent._uris = {}
        return agent

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        """
        As ``Agent.request``, with the parsed ``uri`` taken from the cache.
        """
        parsed = self._uris.get(uri)
        if parsed is None:
            parsed = URI.fromBytes(_ensureValidURI(uri.strip()))
            if len(self._uris) >= URI_CACHE_SIZE:
                self._uris.clear()
            self._uris[uri] = parsed
        try:
            endpoint = self._getEndpoint(parsed)
        except SchemeNotSupported:
            return fail()
        key = (parsed.scheme, parsed.host, parsed.port)
        return self._requestWithEndpoint(
            key, endpoint, method, parsed, headers, bodyProducer, parsed.originForm
        )


def keeps_alive(version: tuple[bytes, int, int], connection: Sequence[bytes]) -> bool:
    """
    Return whether a response of HTTP ``version`` (``(b"HTTP", 1, 0)``) whose
    ``Connection`` header values are ``connection`` leaves the connection
    open for another request (RFC 9112, section 9.3).

    HTTP/1.1 and later: yes, unless ``close`` is among the header's tokens.
    HTTP/1.0: only with the ``keep-alive`` token; a plain HTTP/1.0 server
    (Python's ``http.server`` by default) closes the connection after each
    answer. Tokens are compared without case.
    """
    tokens = {token.strip().lower() for value in connection for token in value.split(b",")}
    if b"close" in tokens:
        return False
    if version[1:] >= (1, 1):
        return True
    return b"keep-alive" in tokens


class _WorkerConnection(HTTP11ClientProtocol):
    """
    One connection to a worker: Twisted's HTTP/1.1 client protocol that
    counts the requests sent on it and goes back to the pool after a response
    only when :func:`keeps_alive` says the worker keeps the connection open;
    otherwise it closes it.

    Twisted alone honours ``Connection: close`` (in lower case) but not
    HTTP/1.0: it pools the connection an HTTP/1.0 worker is closing, and the
    next request written on it is lost.
    """

    def __init__(self, quiescentCallback: Callable[[HTTP11ClientProtocol], None]) -> None:
        super().__init__(self._response_ended)
        self._to_pool = quiescentCallback
        #: Requests sent so far: more than 0 means the connection is reused.
        self.requests_sent = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        settle_per_turn(self.transport)

    def request(self, request: Request) -> Deferred[IResponse]:
        self.requests_sent += 1
        return super().request(request)

    def _response_ended(self, connection: HTTP11ClientProtocol) -> None:
        # Twisted calls this when a response has been read in full, while its
        # parser (with the connection headers it does not give the response)
        # is still there.
        parser: Any = getattr(self, "_parser", None)
        response = getattr(parser, "response", None)
        if response is not None and keeps_alive(
            response.version, parser.connHeaders.getRawHeaders(b"connection", [])
        ):
            self._to_pool(connection)
        elif self.transport is not None:
            self.transport.loseConnection()


class _WorkerConnectionFactory(_HTTP11ClientFactory):
    """
    Builds :class:`_WorkerConnection` for :class:`WorkerConnectionPool`.

    Twisted has no public hook to choose the pool's protocol, so this extends
    its private factory (``HTTPConnectionPool._factory``), as the pool's own
    tests do.
    """

    noisy = False

    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return _WorkerConnection(self._quiescentCallback)


def never_answered(error: BaseException) -> bool:
    """
    Return whether ``error`` says a request failed before the worker answered
    a single byte, and not because HQ aborted it (a stop, a timeout): the
    request was not sent (``RequestNotSent``) or the connection ended without
    a byte of response (``ResponseNeverReceived``).
    """
    if isinstance(error, RequestNotSent):
        return True
    if isinstance(error, ResponseNeverReceived):
        return not any(reason.check(CancelledError) for reason in error.reasons)
    return False


class _ReusedConnection:
    """
    A connection taken from the pool. A request that fails on it before the
    worker answered anything (:func:`never_answered`) is sent once more on a
    new connection: the worker closed the idle connection as HQ was writing
    to it, so it did not see the request. A failure on the new connection is
    the request's outcome.
    """

    log = Logger()

    def __init__(
        self, connection: HTTP11ClientProtocol, connect: Callable[[], Deferred[Any]]
    ) -> None:
        self._connection = connection
        self._connect = connect

    def request(self, request: Request) -> Deferred[IResponse]:
        """
        Send ``request``; return a Deferred of the response, as
        ``HTTP11ClientProtocol.request``. Cancelling it aborts the request
        (and it is not sent again).
        """
        sent = self._connection.request(request)

        def failed(reason: Failure) -> Any:
            if reason.value is None or not never_answered(reason.value):
                return reason
            self.log.debug(
                "A kept connection was closed before any answer: sending the request "
                "again on a new connection ({error})",
                error=type(reason.value).__name__,
            )
            return self._connect().addCallback(lambda fresh: fresh.request(request))

        return sent.addErrback(failed)


class WorkerConnectionPool(HTTPConnectionPool):
    """
    The pool of keep-alive connections to workers.

    Unlike Twisted's ``HTTPConnectionPool``, it keeps a connection only when
    the worker keeps it open (:func:`keeps_alive`), and it sends any request
    (a ``POST`` too, with its body) that failed on a kept connection before
    the worker answered anything once more, on a new connection. Twisted's
    own retry (``retryAutomatically``, idempotent methods without body only)
    is off. A request that fails on a new connection, or is aborted, is not
    sent again.
    """

    _factory = _WorkerConnectionFactory
    retryAutomatically = False
    maxPersistentPerHost = MAX_PERSISTENT_PER_HOST

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor, persistent=True)

    def getConnection(self, key: Hashable, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        """
        Return a Deferred of a connection for one request to ``endpoint``: a
        kept one (wrapped in :class:`_ReusedConnection`) or a new one. It
        fails as connecting does.
        """

        def chosen(connection: HTTP11ClientProtocol) -> Any:
            if getattr(connection, "requests_sent", 0) == 0:
                return connection
            return _ReusedConnection(connection, lambda: self._newConnection(key, endpoint))

        return super().getConnection(key, endpoint).addCallback(chosen)


class _AsciiURL(EncodedURL):
    """
    A URL already in ASCII, sent as it is: treq turns every URL into a URI
    with hyperlink's ``to_uri()``, whose IDNA step refuses IPv6 literal hosts
    (``http://[::1]:8000/``); an ASCII URL needs no such step. Its text is
    made once (treq asks for it with every request).
    """

    _text: str | None = None

    def to_uri(self, *args: Any, **kwargs: Any) -> EncodedURL:
        return self

    def to_text(self, with_password: bool = False) -> str:
        if with_password:
            return super().to_text(with_password)
        if self._text is None:
            self._text = super().to_text()
        return self._text


@functools.lru_cache(maxsize=URI_CACHE_SIZE)
def request_url(url: str) -> str | EncodedURL:
    """
    Return ``url`` in the form to hand to treq: as it is for an ASCII URL (an
    IPv6 literal host included), else the text (treq makes it a URI). The
    last ones are kept: jobs go to few URLs, and the URL objects do not change.
    """
    if url.isascii():
        try:
            return _AsciiURL.from_text(url)
        except ValueError:
            return url
    return url


def make_http_client(
    reactor: Any,
    pool: HTTPConnectionPool | None = None,
    max_output_bytes: int = 1_048_576,
    guard: NetworkGuard | None = None,
) -> HTTPClient:
    """
    Return the production client: one :class:`WorkerConnectionPool` (keep-alive
    to workers while they keep connections open; pass ``pool`` to own it, e.g.
    to close it: a plain ``HTTPConnectionPool`` loses requests to HTTP/1.0
    workers), TLS verified by Twisted's default policy, no cookie jar, and at
    most ``response_budget(max_output_bytes)`` bytes read per response; with a
    ``guard``, only to addresses it allows (:mod:`hq.guard`).
    """
    if pool is None:
        pool = WorkerConnectionPool(reactor)
    endpoints = WorkerEndpoints(reactor, response_budget(max_output_bytes), guard)
    return http_client_for(WorkerAgent.for_workers(reactor, endpoints, pool))


def worker_client(
    reactor: Any,
    user_agent: str,
    max_output_bytes: int,
    deny: Sequence[str],
    allow: Sequence[str],
    signing_secrets: Sequence[str],
) -> WorkerClient:
    """
    Return the production :class:`WorkerClient` for the server's settings
    (:func:`hq.tap.client_settings`, which the sender process gets as they are):
    :func:`make_http_client` behind the outbound guard of ``deny`` and
    ``allow``, signing with ``signing_secrets`` when there are any.
    """
    guard = NetworkGuard.from_config(deny, allow)
    return WorkerClient(
        make_http_client(reactor, max_output_bytes=max_output_bytes, guard=guard),
        reactor,
        user_agent,
        max_output_bytes,
        signer=signer_for(signing_secrets),
    )


# -- One exchange with a worker --------------------------------------------------


class TimedOut(Exception):
    """
    The job's timeout ended the exchange.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _on_timeout(result: object, seconds: float) -> object:
    if isinstance(result, Failure):
        return Failure(TimedOut(seconds))
    return result


class ExchangeFailed(Exception):
    """
    An exchange ended early, as another process reported it
    (:mod:`hq.sender`): ``reason`` is the job's ``err``, and
    ``unusual`` says whether it is worth logging (:attr:`Exchange.unusual_error`).
    """

    def __init__(self, reason: str, unusual: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unusual = unusual


@attrs.define
class Exchange:
    """
    What one exchange with a worker learned (kept when it ends early).

    ``url`` is the last URL requested (after redirects); ``status_code`` and
    ``phrase`` are those of the last response; ``err`` is set when the
    exchange ended without a usable response (too many redirects, a bad
    ``Location``); ``error`` is the exception that ended it early (a
    transport error, :class:`TimedOut`, or a cancellation), ``None`` when a
    response was read.
    """

    url: str
    status_code: int | None = None
    phrase: bytes = b""
    err: str = ""
    chunks: list[bytes] = attrs.Factory(list)
    truncated: bool = False
    error: Exception | None = None
    #: The last response's ``Retry-After`` header, as sent (:func:`hq.policy.retry_after_seconds`).
    retry_after: str | None = None
    #: The body as decoded by the process that read it (:mod:`hq.sender`).
    reported_output: str | None = None

    @property
    def success(self) -> bool:
        """
        Whether a 2xx response was read (whole, or up to the cap).
        """
        code = self.status_code
        return self.error is None and not self.err and code is not None and 200 <= code < 300

    @property
    def unusual_error(self) -> bool:
        """
        Whether ``error`` is worth logging in full: not a timeout, nor a
        connection that failed or closed around the response.
        """
        if isinstance(self.error, ExchangeFailed):
            return self.error.unusual
        return self.error is not None and not isinstance(
            self.error, TimedOut | ResponseFailed | ResponseNeverReceived
        )

    def reason(self) -> str:
        """
        Return the job's ``err``: empty for a success; else why it failed,
        for a person (the timeout, :func:`describe_error` of ``error``, the
        ``err`` set during the exchange, or the status code's reason phrase).
        """
        if self.error is not None:
            if isinstance(self.error, TimedOut):
                return f"timed out after {self.error.seconds} s"
            if isinstance(self.error, ExchangeFailed):
                return self.error.reason
            return describe_error(self.error, self.url)
        if self.success or self.err or self.status_code is None:
            return self.err
        return reason_phrase(self.status_code, self.phrase)

    def output(self) -> str:
        """
        Return the body read, decoded as UTF-8 (invalid bytes replaced).
        """
        if self.reported_output is not None:
            return self.reported_output
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        # A cut body may end inside a character: leave that part out.
        return decoder.decode(b"".join(self.chunks), final=not self.truncated)


class Sender(typing.Protocol):
    """
    What runs the exchanges with workers: :class:`WorkerClient` in this
    process, or :class:`hq.sender.SenderProcess` in a child.
    """

    def post(self, job: Job) -> Deferred[Exchange]:
        """
        POST ``job``; see :meth:`WorkerClient.post`.
        """


class WorkerClient:
    """
    Run exchanges with workers over one treq client.

    :param http: the treq client (:func:`make_http_client` in production); it
        must keep no cookies.
    :param clock: the clock for the jobs' timeouts.
    :param user_agent: the ``User-Agent`` sent to workers.
    :param max_output_bytes: response body bytes kept (the rest is not read).
    :param signer: signs each request with the Standard Webhooks headers
        (:mod:`hq.signing`); ``None`` sends none.
    """

    log = Logger()

    def __init__(
        self,
        http: HTTPClient,
        clock: IReactorTime,
        user_agent: str,
        max_output_bytes: int,
        signer: Signer | None = None,
    ) -> None:
        self._http = http
        self._clock = clock
        self._user_agent = user_agent
        self._max_output_bytes = max(0, max_output_bytes)
        self._signer = signer

    def post(self, job: Job) -> Deferred[Exchange]:
        """
        POST ``job`` to its URL, following redirects, and read the answer,
        within the job's timeout (none when it is 0).

        Return a Deferred of the :class:`Exchange`. It does not fail: an error
        that ends the exchange early is kept in ``Exchange.error``. Cancelling
        it aborts the request (its reason is then "request aborted").
        """
        state = Exchange(url=job.url)
        exchange = Deferred.fromCoroutine(self._exchange(job, state))
        if job.timeout > 0:
            exchange.addTimeout(job.timeout, self._clock, onTimeoutCancel=_on_timeout)

        def ended(result: object) -> Exchange | Failure:
            if isinstance(result, Failure):
                if not isinstance(result.value, Exception):
                    return result
                state.error = result.value
            return state

        return exchange.addBoth(ended)

    def _request_headers(self, job: Job) -> Headers:
        """
        Return HQ's headers for ``job`` with the job's own added (but for
        :data:`PROTECTED_HEADERS`; its ``Content-Type`` replaces HQ's).
        """
        headers = Headers()
        headers.addRawHeader(b"Content-Type", b"application/json")
        headers.addRawHeader(b"User-Agent", self._user_agent.encode("utf-8"))
        headers.addRawHeader(b"X-Hq-Job-Id", str(job.id).encode("ascii"))
        if self._signer is not None:
            body = b"" if job.payload is None else job.payload.encode("utf-8")
            timestamp = int(self._clock.seconds())
            for header, signed in self._signer.headers(str(job.id), timestamp, body):
                headers.addRawHeader(header, signed)
        content_type_replaced = False
        for name, value in (job.headers or {}).items():
            lowered = name.lower()
            if lowered in PROTECTED_HEADERS:
                continue
            if self._signer is not None and lowered in SIGNATURE_HEADERS:
                continue
            if lowered == "content-type" and not content_type_replaced:
                headers.setRawHeaders(name, [value])
                content_type_replaced = True
            else:
                headers.addRawHeader(name, value)
        return headers

    async def _exchange(self, job: Job, state: Exchange) -> None:
        """
        POST ``job`` and read the answer into ``state``, following redirects.
        """
        method = "POST"
        body = None if job.payload is None else job.payload.encode("utf-8")
        headers = self._request_headers(job)
        url = job.url
        for hop in range(MAX_REDIRECTS + 1):
            state.url = url
            response = await self._http.request(
                method,
                request_url(url),
                headers=headers.copy(),
                data=body,
                allow_redirects=False,
                unbuffered=True,
            )
            if not MIN_STATUS_CODE <= response.code <= MAX_STATUS_CODE:
                # Twisted takes any integer; such a code is no HTTP answer
                # (and a huge one would not fit the store's INTEGER column).
                state.status_code = None
                state.phrase = b""
                state.err = invalid_status_text(response.code)
                _drop_body(response)
                return
            state.status_code = response.code
            state.phrase = response.phrase or b""
            state.retry_after = _header(response, b"retry-after")
            location = response.headers.getRawHeaders(b"location")
            redirect = response.code in _REDIRECT_TO_GET or response.code in _REDIRECT_SAME
            if not (redirect and location):
                state.truncated = await read_capped(response, self._max_output_bytes, state.chunks)
                return
            # Drain the redirect's body so the connection can be reused.
            await read_capped(response, _REDIRECT_BODY_CAP, [])
            if hop == MAX_REDIRECTS:
                state.err = f"stopped after {MAX_REDIRECTS} redirects"
                return
            where = location[0].decode("latin-1").strip()
            try:
                target = EncodedURL.from_text(url).click(where).to_text()
            except Exception:
                state.err = f"invalid redirect location {where!r}"[:300]
                return
            self.log.debug(
                "Job {jobID}: {code} redirect to {url}",
                jobID=job.id,
                code=response.code,
                url=target,
            )
            if response.code in _REDIRECT_TO_GET and method != "HEAD":
                method = "GET"
                body = None
                headers.removeHeader(b"content-type")
            if _host(target) != _host(url) and not _host(target).endswith("." + _host(url)):
                for name in _CREDENTIAL_HEADERS:
                    headers.removeHeader(name)
            url = target


class _CappedBody(Protocol):
    """
    Collect a response body into ``chunks`` up to ``cap`` bytes; beyond that,
    close the connection and report the cut (tahoe-lafs ``limited_content``).
    """

    def __init__(self, cap: int, chunks: list[bytes], done: Deferred[bool]) -> None:
        self._room = cap
        self._chunks = chunks
        self._done: Deferred[bool] | None = done

    def dataReceived(self, data: bytes) -> None:
        if self._done is None:
            return
        if len(data) <= self._room:
            self._chunks.append(data)
            self._room -= len(data)
            return
        if self._room > 0:
            self._chunks.append(data[: self._room])
        self._room = 0
        done, self._done = self._done, None
        self.stop()
        done.callback(True)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self._done is None:
            return
        done, self._done = self._done, None
        if reason.check(ResponseDone, PotentialDataLoss):
            done.callback(False)
        else:
            done.errback(reason)

    def stop(self) -> None:
        """
        Read no further: close the connection (used on the cap and on cancel).
        """
        self._done = None
        if self.transport is not None:
            self.transport.loseConnection()


def _drop_body(response: IResponse) -> None:
    """
    Read nothing of ``response``'s body: close its connection (it is not reused).
    """
    collector = _CappedBody(0, [], Deferred())
    response.deliverBody(collector)
    collector.stop()


def read_capped(response: IResponse, cap: int, chunks: list[bytes]) -> Deferred[bool]:
    """
    Read ``response``'s body into ``chunks``, at most ``cap`` bytes.

    Return a Deferred of whether the body was cut; it fails as the body read
    does (``ResponseFailed`` when the connection drops), and cancelling it
    closes the connection.
    """
    collector: _CappedBody | None = None

    def cancel(d: Deferred[bool]) -> None:
        if collector is not None:
            collector.stop()

    done: Deferred[bool] = Deferred(cancel)
    collector = _CappedBody(cap, chunks, done)
    response.deliverBody(collector)
    return done


# -- Describing what went wrong ---------------------------------------------------


def _header(response: IResponse, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[-1].decode("latin-1") if values else None


def _host(url: str) -> str:
    try:
        return EncodedURL.from_text(url).host.lower()
    except Exception:
        return ""


def _tls_error(reasons: list[Failure]) -> str | None:
    for reason in reasons:
        if reason.value is not None and _is_tls(reason.value):
            return _tls_text(reason.value)
    return None


def _is_tls(error: BaseException) -> bool:
    module = type(error).__module__
    return module.startswith(("OpenSSL", "service_identity", "ssl")) or (
        "Verification" in type(error).__name__
    )


def _tls_text(error: BaseException) -> str:
    args = error.args[0] if error.args else None
    if isinstance(args, list) and args and all(isinstance(a, tuple) for a in args):
        # pyOpenSSL: [(library, function, reason), ...]
        return "TLS error: " + "; ".join(str(a[-1]) for a in args)
    return f"TLS error: {error}"[:300]


def describe_error(error: BaseException, url: str) -> str:
    """
    Return a short text for a person about why the request to ``url`` failed.
    """
    host = _host(url)
    if isinstance(error, ResponseTooLarge):
        return str(error)
    if isinstance(error, ResponseNeverReceived | ResponseFailed | RequestTransmissionFailed):
        for reason in error.reasons:
            if reason.check(ResponseTooLarge):
                return str(reason.value)
        tls = _tls_error(error.reasons)
        if tls is not None:
            return tls
        if any(reason.check(CancelledError) for reason in error.reasons):
            return "request aborted"
        for reason in error.reasons:
            # twisted.web._newclient.ParseError (and BadResponseVersion): not HTTP.
            if any(cls.__name__ == "ParseError" for cls in type(reason.value).__mro__):
                return "invalid HTTP response from the worker"
        if isinstance(error, ResponseNeverReceived):
            return "connection closed before a response was received"
        if isinstance(error, RequestTransmissionFailed):
            return "connection lost while sending the request"
        return "connection lost before the response was complete"
    if isinstance(error, RequestNotSent):
        return "connection lost before the request was sent"
    if isinstance(error, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, net_error.DNSLookupError):
        return f"could not resolve host {host}"
    if isinstance(error, net_error.TimeoutError):
        return f"connecting to {host} timed out"
    if isinstance(error, net_error.NoRouteError):
        return f"no route to host {host}"
    if isinstance(error, net_error.ConnectionLost | net_error.ConnectionDone):
        return "connection lost before the response was complete"
    if isinstance(error, net_error.ConnectError):
        detail = error.args[0] if error.args and error.args[0] else error.osError
        return f"could not connect to {host}" + (f": {detail}" if detail else "")
    if isinstance(error, SchemeNotSupported):
        scheme = url.partition(":")[0] if ":" in url else ""
        return f"unsupported URL scheme {scheme!r}: only http and https can be delivered to"
    if isinstance(error, InvalidHeaderName):
        name = error.args[0] if error.args else b""
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        return f"invalid header name {name!r}"
    if isinstance(error, CancelledError):
        return "request aborted"
    if _is_tls(error):
        return _tls_text(error)
    if isinstance(error, ValueError | UnicodeError):
        return f"invalid request: {error}"[:300]
    return f"request failed: {type(error).__name__}: {error}"[:300]


def invalid_status_text(code: int) -> str:
    """
    Return the ``err`` for a response whose status code ``code`` is outside
    100-599 (a long number is cut).
    """
    shown = str(code)
    if len(shown) > _STATUS_DIGITS_SHOWN:
        shown = shown[:_STATUS_DIGITS_SHOWN] + "..."
    return f"invalid HTTP response from the worker: status code {shown}"


def reason_phrase(code: int, phrase: bytes) -> str:
    """
    Return the standard reason phrase of ``code``, else the response's own phrase.
    """
    standard = RESPONSES.get(code)
    text = (standard or phrase).decode("latin-1").strip()
    return text or f"HTTP {code}"
