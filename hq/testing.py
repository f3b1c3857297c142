"""
Public fakes for testing HQ and code built on it: no sockets, no threads.

- :class:`FakeWorker`: a worker web application (a ``Resource``) that records
  every request and answers as told, or hangs until released.
- :class:`WorkerStub`: a treq client over any ``Resource``, configured like the
  production client (no cookies kept), for :class:`hq.worker.WorkerClient`.
- :class:`FailingHTTP`: a client whose every request fails with a given error
  (connection refused, DNS failure, ...).

Typical use, with :class:`hq.store.memory.MemoryStore` and a ``Clock``::

    worker = FakeWorker(Reply(code=200, body=b"done"))
    stub = WorkerStub(worker)
    worker_client = WorkerClient(stub.http, clock, "HQ/test", 1024)
    delivery = Delivery(store=store, worker=worker_client, clock=clock, ...)
    worker.reply = Reply(hang=True)   # later requests wait ...
    worker.release(Reply(code=500))   # ... until released
    stub.flush()                      # deliver what the worker wrote
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from hq.history import HistoryBucket
from hq.model import Job
from hq.worker import http_client_for


@attrs.frozen
class Reply:
    """
    What :class:`FakeWorker` answers.

    ``hang``: send nothing until :meth:`FakeWorker.release`.
    ``hold_body``: send the status, headers and body at once, but end the
    response only at :meth:`FakeWorker.release` (a body that never ends).
    """

    code: int = 200
    body: bytes = b"ok"
    headers: Mapping[str, str] = attrs.field(factory=dict)
    hang: bool = False
    hold_body: bool = False


@attrs.frozen
class ReceivedRequest:
    """
    One request as the worker saw it. Header names are lower case; ``peer``
    is the client's ``host:port`` (the same for requests on one connection).
    """

    method: str
    path: str
    headers: Mapping[str, list[str]]
    body: bytes
    peer: str = ""

    def header(self, name: str) -> str | None:
        """
        Return the first value of header ``name`` (any case), or ``None``.
        """
        values = self.headers.get(name.lower())
        return values[0] if values else None


@attrs.define
class _Held:
    request: Request
    received: ReceivedRequest
    reply: Reply


class FakeWorker(Resource):
    """
    A worker that records each request (:attr:`requests`) and answers with
    :attr:`reply`, or with the :class:`Reply` routed to the request's path.

    Requests whose reply hangs or holds its body are in :attr:`held` until
    :meth:`release`; those the client closed first (timeout, stop, shutdown)
    move to :attr:`lost`.
    """

    isLeaf = True

    def __init__(self, reply: Reply | None = None) -> None:
        super().__init__()
        self.reply = reply if reply is not None else Reply()
        self.routes: dict[str, Reply] = {}
        self.requests: list[ReceivedRequest] = []
        self.held: list[_Held] = []
        self.lost: list[ReceivedRequest] = []

    def route(self, path: str, reply: Reply) -> None:
        """
        Answer requests for ``path`` (query string excluded) with ``reply``.
        """
        self.routes[path] = reply

    @property
    def held_count(self) -> int:
        """
        How many requests are waiting for :meth:`release`.
        """
        return len(self.held)

    def render(self, request: Request) -> bytes | int:
        path = (request.path or b"/").decode("latin-1")
        received = ReceivedRequest(
            method=(request.method or b"").decode("latin-1"),
            path=(request.uri or b"/").decode("latin-1"),
            headers={
                name.decode("latin-1").lower(): [v.decode("latin-1") for v in values]
                for name, values in request.requestHeaders.getAllRawHeaders()
            },
            body=request.content.read() if request.content is not None else b"",
            peer=_peer(request),
        )
        self.requests.append(received)
        reply = self.routes.get(path, self.reply)
        if not (reply.hang or reply.hold_body):
            self._start(request, reply)
            return reply.body
        held = _Held(request, received, reply)
        self.held.append(held)
        request.notifyFinish().addErrback(self._lost, held)
        if reply.hold_body:
            self._start(request, reply)
            request.write(reply.body)
        return NOT_DONE_YET

    def _start(self, request: Request, reply: Reply) -> None:
        request.setResponseCode(reply.code)
        for name, value in reply.headers.items():
            request.setHeader(name, value)

    def _lost(self, reason: Failure, held: _Held) -> None:
        if held in self.held:
            self.held.remove(held)
        self.lost.append(held.received)

    def release(self, reply: Reply | None = None, count: int | None = None) -> int:
        """
        Answer the held requests, oldest first (at most ``count``), with ``reply``
        (default: the reply each was held with, no longer hanging); a request
        holding its body just ends. Return how many were answered.

        With :class:`WorkerStub`, call ``flush()`` afterwards.
        """
        batch = self.held[:count] if count is not None else list(self.held)
        for held in batch:
            self.held.remove(held)
            if not held.reply.hold_body:
                answer = reply if reply is not None else held.reply
                self._start(held.request, answer)
                held.request.write(answer.body)
            held.request.finish()
        return len(batch)


def _peer(request: Request) -> str:
    address = request.getClientAddress()
    host, port = getattr(address, "host", ""), getattr(address, "port", "")
    return f"{host}:{port}"


class WorkerStub:
    """
    An :class:`~treq.client.HTTPClient` that serves requests from ``resource``
    in memory (treq's ``RequestTraversalAgent``), built by
    :func:`hq.worker.http_client_for` like the production client.

    Every host and port reaches ``resource``. Call :meth:`flush` after a
    resource that returned ``NOT_DONE_YET`` writes (or after an abort) so the
    client sees it.
    """

    def __init__(self, resource: Resource) -> None:
        self.agent = RequestTraversalAgent(resource)
        self.http: HTTPClient = http_client_for(self.agent)

    def flush(self) -> None:
        """
        Move all pending bytes between client and resource.
        """
        self.agent.flush()


class FailingHTTP:
    """
    A stand-in for the treq client: every request fails with ``error``
    (e.g. ``ConnectionRefusedError()``), and is recorded in :attr:`calls`
    as ``(method, url, kwargs)``.
    """

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        """
        Record the call and return a failed Deferred.
        """
        self.calls.append((method, url, kwargs))
        return fail(self.error)


@attrs.define
class RecordingDispatch:
    """
    A dispatcher fake for API tests: records what it is asked, delivers nothing.

    ``num_workers``, ``in_queue`` and ``buckets`` (the answer of
    :meth:`history`) can be set by the test.
    """

    enqueued: list[Job] = attrs.Factory(list)
    canceled: list[int] = attrs.Factory(list)
    history_asked: list[int] = attrs.Factory(list)
    buckets: list[HistoryBucket] = attrs.Factory(list)
    num_workers: int = 0
    in_queue: int = 0

    def enqueue(self, job: Job) -> None:
        """
        Record ``job`` as queued.
        """
        self.enqueued.append(job)

    def cancel(self, job_id: int, stopped: Job | None = None) -> None:
        """
        Record a cancel of ``job_id``.
        """
        self.canceled.append(job_id)

    def reserve(self, job: Job) -> None:
        """
        Take no dispatcher: every push is stored waiting and enqueued.
        """
        return None

    def claim_with_push(self, jobs: Sequence[Job]) -> int | None:
        """
        Claim nothing with a push (as on the embedded store): every new job
        is enqueued once stored.
        """
        return None

    def deliver(self, reservation: object) -> None:
        raise AssertionError("nothing was reserved")

    def unreserve(self, reservation: object) -> None:
        raise AssertionError("nothing was reserved")

    def history(self, now_ms: int) -> list[HistoryBucket]:
        """
        Record the time asked for and return :attr:`buckets`.
        """
        self.history_asked.append(now_ms)
        return list(self.buckets)
