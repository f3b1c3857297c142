"""
Delivery: the in-memory queue, the dispatcher loops and the request to workers.

:class:`Dispatch` is a service. It keeps at most ``queue_size`` waiting jobs in
memory, in id order, and feeds more from the store as room frees up (the
backlog stays on disk). ``dispatchers`` loops take jobs from that queue, each
running at most ``workers_per_dispatcher`` at a time under its own
``DeferredSemaphore``. Running a job means: mark it running in the store, POST
it to its URL with treq (redirects, timeout and body cap handled here), record
the outcome in the store, and tell the observers.

The store is the source of truth: a job the store will not start (stopped or
deleted meanwhile) is skipped, and a job that was running when the process
stopped is re-queued by ``store.recover()`` at the next start.
"""

from __future__ import annotations

import codecs
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from http.cookiejar import Cookie
from typing import Any, TypeVar

import attrs
from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.application.service import Service
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import RESPONSES, PotentialDataLoss
from twisted.web.http_headers import Headers, InvalidHeaderName
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from hq.model import Job, JobState, Outcome
from hq.store import IJobStore, StoreUnavailable

T = TypeVar("T")

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
#: Seconds before a failed store read or write is tried again.
STORE_RETRY_SECONDS = 1.0
#: Attempts to record an outcome after an unexpected store error before the job is
#: left running (recovered at next start). While the storage is unavailable
#: (``StoreUnavailable``), recording is tried again without limit.
FINISH_ATTEMPTS = 4
#: Longest wait between two attempts to record an outcome.
FINISH_RETRY_MAX_SECONDS = 10.0
#: Bytes a response may take beyond 8 times its kept body (see :func:`response_budget`).
RESPONSE_OVERHEAD_BYTES = 1024 * 1024
#: Idle keep-alive connections kept per worker host (Twisted's default is 2).
MAX_PERSISTENT_PER_HOST = 16
#: Width of one throughput bucket, and how many are kept (the last 10 minutes).
BUCKET_MS = 10_000
BUCKETS = 60
_HISTORY_COLUMNS = {"success": 0, "failure": 1, "canceled": 2}


@attrs.frozen
class HistoryBucket:
    """
    Jobs that finished in one interval of :data:`BUCKET_MS` starting at ``start``
    (ms since the Unix epoch).
    """

    start: int
    success: int = 0
    failure: int = 0
    canceled: int = 0


class _History:
    """
    A ring of :data:`BUCKETS` counters: O(1) per finished job, fixed memory.
    """

    def __init__(self) -> None:
        self._bucket = [-1] * BUCKETS
        self._counts = [[0, 0, 0] for _ in range(BUCKETS)]

    def add(self, at_ms: int, status: str) -> None:
        column = _HISTORY_COLUMNS.get(status)
        if column is None:
            return
        bucket = at_ms // BUCKET_MS
        slot = bucket % BUCKETS
        if self._bucket[slot] != bucket:
            if bucket < self._bucket[slot]:
                return  # older than the window this slot holds now
            self._bucket[slot] = bucket
            self._counts[slot] = [0, 0, 0]
        self._counts[slot][column] += 1

    def buckets(self, now_ms: int) -> list[HistoryBucket]:
        last = now_ms // BUCKET_MS
        result = []
        for bucket in range(last - BUCKETS + 1, last + 1):
            slot = bucket % BUCKETS
            if self._bucket[slot] == bucket:
                success, failure, canceled = self._counts[slot]
                result.append(HistoryBucket(bucket * BUCKET_MS, success, failure, canceled))
            else:
                result.append(HistoryBucket(bucket * BUCKET_MS))
        return result


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
    Return the treq client :class:`Dispatch` needs over ``agent``: no cookies
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

    def __init__(self, wrappedFactory: Any, budget: int) -> None:
        super().__init__(wrappedFactory)
        self.budget = budget


@implementer(IStreamClientEndpoint)
class _BudgetEndpoint:
    """
    An endpoint whose connections count received bytes (:class:`_BudgetProtocol`);
    ``connect`` fires with the wrapped protocol, as the connection pool expects.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, budget: int) -> None:
        self._endpoint = endpoint
        self._budget = budget

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        wrapping = _BudgetFactory(protocolFactory, self._budget)
        connected: Deferred[Any] = self._endpoint.connect(wrapping)
        return connected.addCallback(lambda wrapper: wrapper.wrappedProtocol)

    def __repr__(self) -> str:
        return repr(self._endpoint)


@implementer(IAgentEndpointFactory)
class WorkerEndpoints:
    """
    The endpoints of Twisted's standard ``Agent`` (``HostnameEndpoint``, TLS
    checked by ``BrowserLikePolicyForHTTPS``, 30 s connect timeout) whose
    connections allow each response at most ``budget`` bytes.
    """

    def __init__(self, reactor: Any, budget: int) -> None:
        self._reactor = reactor
        self._budget = budget
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host {uri.host!r} is not ASCII") from None
        endpoint: IStreamClientEndpoint = HostnameEndpoint(self._reactor, host, uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        elif uri.scheme != b"http":
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        return _BudgetEndpoint(endpoint, self._budget)


def make_http_client(
    reactor: Any,
    pool: HTTPConnectionPool | None = None,
    max_output_bytes: int = 1_048_576,
) -> HTTPClient:
    """
    Return the production client: one persistent ``HTTPConnectionPool`` (keep-alive
    to workers; pass ``pool`` to own it, e.g. to close it), TLS verified by
    Twisted's default policy, no cookie jar, and at most
    ``response_budget(max_output_bytes)`` bytes read per response.
    """
    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
    endpoints = WorkerEndpoints(reactor, response_budget(max_output_bytes))
    return http_client_for(Agent.usingEndpointFactory(reactor, endpoints, pool=pool))


# -- One exchange with a worker --------------------------------------------------


class _TimedOut(Exception):
    """
    The job's timeout ended the exchange.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _on_timeout(result: object, seconds: float) -> object:
    if isinstance(result, Failure):
        return Failure(_TimedOut(seconds))
    return result


@attrs.define
class _Exchange:
    """
    What one delivery learned so far (kept when it ends early).
    """

    url: str
    status_code: int | None = None
    phrase: bytes = b""
    err: str = ""
    chunks: list[bytes] = attrs.Factory(list)
    truncated: bool = False

    def output(self) -> str:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        # A cut body may end inside a character: leave that part out.
        return decoder.decode(b"".join(self.chunks), final=not self.truncated)


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


def reason_phrase(code: int, phrase: bytes) -> str:
    """
    Return the standard reason phrase of ``code``, else the response's own phrase.
    """
    standard = RESPONSES.get(code)
    text = (standard or phrase).decode("latin-1").strip()
    return text or f"HTTP {code}"


# -- The service ------------------------------------------------------------------


class Dispatch(Service):
    """
    Deliver waiting jobs to their workers.

    :param store: the job store.
    :param http: the treq client (:func:`make_http_client` in production); it
        must keep no cookies.
    :param clock: the clock for timeouts, retries and finish times.
    :param dispatchers: how many dispatch loops.
    :param workers_per_dispatcher: jobs one loop runs at a time.
    :param queue_size: jobs kept in memory at most (the rest stays in the store).
    :param max_output_bytes: response bytes kept in ``output``.
    :param shutdown_timeout: seconds :meth:`stopService` waits for running jobs.
    :param user_agent: the ``User-Agent`` sent to workers.
    """

    log = Logger()

    def __init__(
        self,
        store: IJobStore,
        http: HTTPClient,
        clock: IReactorTime,
        dispatchers: int,
        workers_per_dispatcher: int,
        queue_size: int,
        max_output_bytes: int,
        shutdown_timeout: float,
        user_agent: str,
    ) -> None:
        self._store = store
        self._http = http
        self._clock = clock
        self._dispatchers = max(1, dispatchers)
        self._workers_per_dispatcher = max(1, workers_per_dispatcher)
        self._queue_size = max(1, queue_size)
        self._max_output_bytes = max(0, max_output_bytes)
        self._shutdown_timeout = max(0.0, shutdown_timeout)
        self._user_agent = user_agent

        #: Waiting jobs in memory, in the order they will start.
        self._queue: OrderedDict[int, Job] = OrderedDict()
        #: Ids in the queue or handed to a dispatcher and not yet ended.
        self._known: set[int] = set()
        #: Highest id the feed has looked at; waiting jobs above it may be in the store only.
        self._watermark = 0
        #: True when waiting jobs may be in the store and not in memory.
        self._backlog = True
        self._feeding = False
        self._missed_while_feeding = False
        self._feed_retry: IDelayedCall | None = None
        #: Dispatchers waiting for a job.
        self._idle: deque[Deferred[Job | None]] = deque()
        #: Everything a loop waits on, cancelled at stop.
        self._parked: set[Deferred[Any]] = set()
        #: Job id -> the Deferred of its exchange with the worker.
        self._exchanges: dict[int, Deferred[None]] = {}
        #: Job id -> a wait before retrying ``store.start`` / ``store.finish``.
        self._start_waits: dict[int, Deferred[None]] = {}
        self._finish_waits: dict[int, Deferred[None]] = {}
        self._stop_asked: set[int] = set()
        #: Jobs queued again (restart) while their previous run was ending.
        self._requeue: dict[int, Job] = {}
        self._runs = 0
        self._num_workers = 0
        self._observers: list[Callable[[Job], None]] = []
        self._history = _History()
        self._stopping = False
        self._aborting = False
        self._abort_call: IDelayedCall | None = None
        self._stopped: list[Deferred[None]] = []

    # -- public API

    @property
    def num_workers(self) -> int:
        """
        Requests to workers in flight, all dispatchers together.
        """
        return self._num_workers

    @property
    def in_queue(self) -> int:
        """
        Jobs in the in-memory queue (not yet handed to a dispatcher).
        """
        return len(self._queue)

    def add_observer(self, callback: Callable[[Job], None]) -> None:
        """
        Call ``callback`` with every job that finished, once the store recorded it.
        """
        self._observers.append(callback)

    def history(self, now_ms: int) -> list[HistoryBucket]:
        """
        Return the finished-job counts of the :data:`BUCKETS` intervals up to
        ``now_ms``, oldest first.
        """
        return self._history.buckets(now_ms)

    def enqueue(self, job: Job) -> None:
        """
        Queue ``job``, a waiting job that was just stored. Never blocks or fails:
        a job that does not fit in memory stays in the store and is fed in later.
        """
        try:
            self._enqueue(job)
        except Exception:
            self.log.failure("Could not queue job {jobID}", jobID=job.id)

    def cancel(self, job_id: int, stopped: Job | None = None) -> None:
        """
        Forget or abort the delivery of ``job_id``, which the store just stopped:
        drop it from the queue, keep it from being sent, or abort its request
        (the job then finishes ``canceled``).

        ``stopped`` is the job as the store's stop returned it: when the stop
        finished it (it was waiting), it is counted and told to the observers
        like any other finished job.
        """
        try:
            self._cancel(job_id)
            if stopped is not None and stopped.state is JobState.FINISHED:
                self._finished(stopped)
        except Exception:
            self.log.failure("Could not cancel job {jobID}", jobID=job_id)

    def startService(self) -> None:
        """
        Start the dispatch loops and load the waiting jobs from the store.
        """
        super().startService()
        self._stopping = self._aborting = False
        self._backlog = True
        self._watermark = 0
        for index in range(self._dispatchers):
            self._background(self._dispatch_loop(index), "Dispatcher {index} stopped", index=index)
        self._maybe_feed()

    def stopService(self) -> Deferred[None]:
        """
        Take no more jobs; wait up to ``shutdown_timeout`` seconds for running
        ones, then abort the rest without recording an outcome (they stay
        running in the store and ``store.recover()`` queues them again at the
        next start). Return a Deferred that fires when every delivery has ended.
        """
        super().stopService()
        self._stopping = True
        if self._feed_retry is not None and self._feed_retry.active():
            self._feed_retry.cancel()
        self._feed_retry = None
        for waiting in [*self._parked, *self._start_waits.values()]:
            waiting.cancel()
        # Queued jobs stay waiting in the store; the next start loads them again.
        self._known.difference_update(self._queue)
        self._queue.clear()
        if self._all_ended():
            return succeed(None)
        if self._runs:
            self.log.info(
                "Waiting up to {timeout} s for {count} running jobs",
                timeout=self._shutdown_timeout,
                count=self._runs,
            )
        done: Deferred[None] = Deferred()
        self._stopped.append(done)
        self._abort_call = self._clock.callLater(self._shutdown_timeout, self._abort_all)
        return done

    # -- queue and feed

    def _enqueue(self, job: Job) -> None:
        if not self.running or self._stopping:
            # Still waiting in the store: the start-up feed will load it.
            return
        if job.id in self._known:
            if job.id not in self._queue:
                # Its previous run is still ending; queue it once that is done.
                self._requeue[job.id] = job
            return
        if self._idle:
            if not self._backlog:
                self._watermark = max(self._watermark, job.id)
            self._hand_out(job)
        elif not self._backlog and len(self._queue) < self._queue_size:
            self._watermark = max(self._watermark, job.id)
            self._append(job)
        else:
            self._backlog = True
            if self._feeding:
                self._missed_while_feeding = True
            if job.id <= self._watermark:
                # An old id (a restart): let the feed look from there again.
                self._watermark = job.id - 1
            self._maybe_feed()

    def _append(self, job: Job) -> None:
        self._known.add(job.id)
        self._queue[job.id] = job

    def _hand_out(self, job: Job) -> None:
        self._known.add(job.id)
        self._idle.popleft().callback(job)

    def _take(self) -> Deferred[Job | None]:
        """
        Return the next job for a dispatcher, waiting until there is one;
        ``None`` when the service stops.
        """
        if self._stopping:
            return succeed(None)
        if self._queue:
            _, job = self._queue.popitem(last=False)
            self._maybe_feed()
            return succeed(job)
        waiting: Deferred[Job | None] = Deferred(self._forget_idle)
        self._idle.append(waiting)
        self._maybe_feed()
        return waiting

    def _forget_idle(self, waiting: Deferred[Job | None]) -> None:
        if waiting in self._idle:
            self._idle.remove(waiting)

    def _cancel(self, job_id: int) -> None:
        if job_id in self._queue:
            del self._queue[job_id]
            self._known.discard(job_id)
            self._maybe_feed()
            return
        if self._requeue.pop(job_id, None) is not None:
            return
        if job_id in self._known:
            self._stop_asked.add(job_id)
            exchange = self._exchanges.get(job_id)
            if exchange is not None:
                exchange.cancel()

    def _maybe_feed(self) -> None:
        if (
            not self.running
            or self._stopping
            or not self._backlog
            or self._feeding
            or self._feed_retry is not None
            # Load in batches: wait until half the queue is free.
            or len(self._queue) > self._queue_size // 2
        ):
            return
        self._feeding = True
        self._missed_while_feeding = False
        room = self._queue_size - len(self._queue)
        self._background(self._feed(room), "Feeding the queue failed")

    async def _feed(self, room: int) -> None:
        after = self._watermark
        try:
            batch = await self._store.waiting_jobs(after_id=after, limit=room)
        except Exception:
            self._feeding = False
            self.log.failure(
                "Could not read waiting jobs from the store; trying again in {delay} s",
                delay=STORE_RETRY_SECONDS,
            )
            if not self._stopping:
                self._feed_retry = self._clock.callLater(STORE_RETRY_SECONDS, self._retry_feed)
            self._check_stopped()
            return
        try:
            if self._stopping:
                return
            if batch and self._watermark == after:
                self._watermark = max(after, batch[-1].id)
            for job in batch:
                if job.id in self._known or self._stopping:
                    continue
                if self._idle:
                    self._hand_out(job)
                else:
                    self._append(job)
            if len(batch) < room and not self._missed_while_feeding:
                self._backlog = False
        finally:
            self._feeding = False
            self._check_stopped()
        self._maybe_feed()

    def _retry_feed(self) -> None:
        self._feed_retry = None
        self._maybe_feed()

    # -- dispatcher loops

    def _background(
        self, coroutine: Coroutine[Any, Any, None], message: str, **fields: Any
    ) -> None:
        d = Deferred.fromCoroutine(coroutine)
        d.addErrback(lambda failure: self.log.failure(message, failure, **fields))

    def _park(self, waiting: Deferred[T]) -> Deferred[T]:
        self._parked.add(waiting)

        def unpark(result: object) -> object:
            self._parked.discard(waiting)
            return result

        waiting.addBoth(unpark)
        return waiting

    async def _dispatch_loop(self, index: int) -> None:
        semaphore = DeferredSemaphore(self._workers_per_dispatcher)
        while not self._stopping:
            try:
                await self._park(semaphore.acquire())
            except CancelledError:
                return
            try:
                job = await self._park(self._take())
            except CancelledError:
                return
            except Exception:
                semaphore.release()
                self.log.failure("Dispatcher {index} could not take a job", index=index)
                continue
            if job is None:
                semaphore.release()
                return
            self._launch(job, semaphore)

    def _launch(self, job: Job, semaphore: DeferredSemaphore) -> None:
        self._runs += 1
        run = Deferred.fromCoroutine(self._run(job))
        run.addErrback(
            lambda failure: self.log.failure(
                "Job {jobID}: delivery failed unexpectedly", failure, jobID=job.id
            )
        )
        run.addBoth(lambda _: self._run_ended(job.id, semaphore))

    def _run_ended(self, job_id: int, semaphore: DeferredSemaphore) -> None:
        self._runs -= 1
        self._known.discard(job_id)
        self._stop_asked.discard(job_id)
        requeue = self._requeue.pop(job_id, None)
        semaphore.release()
        if requeue is not None:
            self.enqueue(requeue)
        self._check_stopped()

    # -- one job

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def _run(self, job: Job) -> None:
        started = await self._start(job)
        if started is None:
            self.log.debug("Job {jobID} is no longer waiting: skipped", jobID=job.id)
            return
        if self._stopping:
            # Shutting down: leave it running in the store; recover() re-queues it.
            return
        if job.id in self._stop_asked or started.canceled:
            outcome: Outcome | None = Outcome(
                finished_at=self._now_ms(), canceled=True, err="stopped"
            )
        else:
            outcome = await self._deliver(started)
        if outcome is None:
            return
        finished = await self._finish(job.id, outcome)
        if finished is not None:
            self._finished(finished)

    def _finished(self, finished: Job) -> None:
        """
        Count a finished job in the history, log it and tell the observers.
        """
        self._history.add(finished.finished_at or 0, finished.status)
        if finished.failure:
            self.log.info(
                "Job {jobID} failed: {err} (status code {statusCode})",
                jobID=finished.id,
                err=finished.err,
                statusCode=finished.status_code,
            )
        else:
            self.log.debug(
                "Job {jobID} finished: {status}", jobID=finished.id, status=finished.status
            )
        for observer in list(self._observers):
            try:
                observer(finished)
            except Exception:
                self.log.failure("Job observer failed for job {jobID}", jobID=finished.id)

    async def _start(self, job: Job) -> Job | None:
        """
        Mark ``job`` running in the store; return it, or ``None`` when it must
        not run (no longer waiting, or the service stops).

        While the store fails, try again every :data:`STORE_RETRY_SECONDS`,
        keeping this dispatcher slot (so a broken store is not hammered).
        """
        attempt = 0
        while not self._stopping:
            attempt += 1
            try:
                return await self._store.start(job.id, self._now_ms())
            except Exception:
                if attempt == 1:
                    self.log.failure(
                        "Could not start job {jobID}; trying again every {delay} s",
                        jobID=job.id,
                        delay=STORE_RETRY_SECONDS,
                    )
                elif attempt % 60 == 0:
                    self.log.warn(
                        "Still cannot start job {jobID} after {attempt} attempts",
                        jobID=job.id,
                        attempt=attempt,
                    )
            if not await self._sleep(job.id, STORE_RETRY_SECONDS, self._start_waits):
                return None
        return None

    async def _sleep(self, job_id: int, seconds: float, waits: dict[int, Deferred[None]]) -> bool:
        """
        Wait ``seconds`` on the clock; return False if the wait was cancelled.
        """
        sleep: Deferred[None] = deferLater(self._clock, seconds)
        waits[job_id] = sleep
        try:
            await sleep
        except CancelledError:
            return False
        finally:
            waits.pop(job_id, None)
        return True

    async def _finish(self, job_id: int, outcome: Outcome) -> Job | None:
        """
        Record ``outcome``. While the storage is unavailable (disk full, file
        unwritable) try again, waiting a little longer each time (at most
        :data:`FINISH_RETRY_MAX_SECONDS`), keeping the job's slot, until it is
        recorded or the shutdown aborts it; after any other error give up after
        :data:`FINISH_ATTEMPTS` tries. A job given up stays running in the store
        and is delivered again after a restart.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._store.finish(job_id, outcome)
            except StoreUnavailable as e:
                if self._aborting:
                    self._gave_up(job_id, attempt)
                    return None
                if attempt == 1:
                    self.log.failure(
                        "Could not record the outcome of job {jobID}: {error}; "
                        "trying again until the storage is back",
                        jobID=job_id,
                        error=str(e),
                    )
                elif attempt % 10 == 0:
                    self.log.warn(
                        "Still cannot record the outcome of job {jobID} "
                        "after {attempt} attempts: {error}",
                        jobID=job_id,
                        attempt=attempt,
                        error=str(e),
                    )
            except Exception:
                self.log.failure(
                    "Could not record the outcome of job {jobID} (attempt {attempt})",
                    jobID=job_id,
                    attempt=attempt,
                )
                if attempt >= FINISH_ATTEMPTS or self._aborting:
                    self._gave_up(job_id, attempt)
                    return None
            delay = min(STORE_RETRY_SECONDS * attempt, FINISH_RETRY_MAX_SECONDS)
            if not await self._sleep(job_id, delay, self._finish_waits):
                self._gave_up(job_id, attempt)
                return None

    def _gave_up(self, job_id: int, attempts: int) -> None:
        self.log.warn(
            "Gave up recording the outcome of job {jobID} after {attempts} attempts; "
            "it stays running and is delivered again after a restart",
            jobID=job_id,
            attempts=attempts,
        )

    async def _deliver(self, job: Job) -> Outcome | None:
        """
        Send ``job`` to its worker; return the outcome, or ``None`` when the
        shutdown aborted it (nothing is recorded then).
        """
        state = _Exchange(url=job.url)
        self.log.debug("Job {jobID} started: POST {url}", jobID=job.id, url=job.url)
        exchange = Deferred.fromCoroutine(self._exchange(job, state))
        if job.timeout > 0:
            exchange.addTimeout(job.timeout, self._clock, onTimeoutCancel=_on_timeout)
        self._exchanges[job.id] = exchange
        self._num_workers += 1
        error: BaseException | None = None
        try:
            await exchange
        except Exception as e:
            error = e
        finally:
            self._num_workers -= 1
            self._exchanges.pop(job.id, None)
        now = self._now_ms()
        output = state.output()
        if error is None:
            code = state.status_code
            success = not state.err and code is not None and 200 <= code < 300
            err = state.err
            if not success and not err and code is not None:
                err = reason_phrase(code, state.phrase)
            return Outcome(
                finished_at=now,
                success=success,
                failure=not success,
                status_code=code,
                err=err,
                output=output,
                output_truncated=state.truncated,
            )
        if job.id in self._stop_asked:
            err = "stopped"
            canceled = True
        elif self._aborting:
            return None
        else:
            canceled = False
            if isinstance(error, _TimedOut):
                err = f"timed out after {job.timeout} s"
            else:
                err = describe_error(error, state.url)
                if not isinstance(error, ResponseFailed | ResponseNeverReceived):
                    self.log.debug(
                        "Job {jobID}: request error {error!r}", jobID=job.id, error=error
                    )
        return Outcome(
            finished_at=now,
            canceled=canceled,
            failure=not canceled,
            status_code=state.status_code,
            err=err,
            output=output,
            output_truncated=state.truncated,
        )

    def _request_headers(self, job: Job) -> Headers:
        headers = Headers()
        headers.addRawHeader(b"Content-Type", b"application/json")
        headers.addRawHeader(b"User-Agent", self._user_agent.encode("utf-8"))
        headers.addRawHeader(b"X-Hq-Job-Id", str(job.id).encode("ascii"))
        content_type_replaced = False
        for name, value in (job.headers or {}).items():
            lowered = name.lower()
            if lowered in PROTECTED_HEADERS:
                continue
            if lowered == "content-type" and not content_type_replaced:
                headers.setRawHeaders(name, [value])
                content_type_replaced = True
            else:
                headers.addRawHeader(name, value)
        return headers

    async def _exchange(self, job: Job, state: _Exchange) -> None:
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
                url,
                headers=headers.copy(),
                data=body,
                allow_redirects=False,
                unbuffered=True,
            )
            state.status_code = response.code
            state.phrase = response.phrase or b""
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

    # -- stopping

    def _all_ended(self) -> bool:
        return self._runs == 0 and not self._feeding

    def _check_stopped(self) -> None:
        if not self._stopping or not self._all_ended():
            return
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        waiters, self._stopped = self._stopped, []
        for waiter in waiters:
            waiter.callback(None)

    def _abort_all(self) -> None:
        self._abort_call = None
        self._aborting = True
        if self._exchanges:
            self.log.info(
                "Shutdown timeout: aborting {count} running jobs; "
                "they will be delivered again after the next start",
                count=len(self._exchanges),
            )
        for exchange in list(self._exchanges.values()):
            exchange.cancel()
        for waiting in list(self._finish_waits.values()):
            waiting.cancel()
