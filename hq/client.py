"""
An HTTP client for the HQ API, usable from any Twisted program (the ``hq`` CLI uses it).

Every method of :class:`HQClient` returns a :class:`~twisted.internet.defer.Deferred`, so it
can be awaited in ``async def`` code or used with callbacks. Results are frozen attrs values
(:class:`RemoteJob`, :class:`JobList`, :class:`Attempt`, :class:`Stats`, :class:`ServerInfo`)
that also keep the JSON object the server sent, as ``raw``. Every failure is one exception type,
:class:`HQError`: it carries the HTTP status (``None`` when no answer came) and a message for
a person, the server's own ``error`` text when there is one.

Example::

    from twisted.internet.task import react
    from hq.client import HQClient, HQError

    async def main(reactor):
        client = HQClient("http://127.0.0.1:19900")
        try:
            job = await client.push({"url": "http://127.0.0.1:8000/work", "payload": {"n": 1}})
            print(job.id, job.status)
        except HQError as e:
            print("error:", e.message)
        finally:
            await client.close()

    react(main)
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any, ParamSpec, Protocol, TypeVar

import attrs
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported

from hq import __version__

#: Where ``hq`` and :class:`HQClient` look for the server unless told otherwise.
DEFAULT_ADDRESS = "http://127.0.0.1:19900"

#: The ``User-Agent`` the client sends.
USER_AGENT = f"HQ-Client/{__version__}"

#: The most jobs :meth:`HQClient.push_many` sends in one ``POST /jobs`` (the server's
#: default ``max_batch_jobs``).
MAX_BATCH_JOBS = 10_000

#: The most bytes :meth:`HQClient.push_many` sends in one ``POST /jobs`` (the server's
#: default ``max_body_bytes``, 4 MiB).
MAX_BATCH_BYTES = 4 * 1024 * 1024

_P = ParamSpec("_P")
_T = TypeVar("_T")


class HQError(Exception):
    """
    A request to HQ failed.

    ``status`` is the HTTP status of the answer, or ``None`` when no answer came (the server
    could not be reached, the connection was lost). ``message`` is for a person: the server's
    ``error`` text (``The job '5' is not found``) or what went wrong on the way
    (``cannot reach HQ at http://127.0.0.1:19900: connection refused``).
    """

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _as_bytes(values: list[Any]) -> list[bytes]:
    return [v.lower() if isinstance(v, bytes) else str(v).lower().encode() for v in values]


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@attrs.frozen
class RemoteJob:
    """
    A job as the server reported it.

    Attributes are the wire fields in snake_case. ``id`` is a **string** (as on the wire:
    ids are 64-bit and must not lose digits anywhere). Times are timezone-aware UTC
    :class:`~datetime.datetime` values, or ``None``. ``payload`` is the decoded JSON value.
    ``raw`` is the JSON object exactly as received (key order kept).

    ``attempts`` counts the attempts started so far, ``retries`` the extra attempts allowed
    after a failed one; ``run_at`` is when a ``scheduled`` job is next due (``None`` when it
    is due now or finished). ``replayed`` is true when a push with an idempotency key was
    answered with the job stored before (``Idempotent-Replayed: true``); it is not part of
    equality.
    """

    id: str
    name: str
    comment: str
    url: str
    payload: Any
    headers: dict[str, str] | None
    timeout: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    success: bool
    failure: bool
    canceled: bool
    waiting: bool
    running: bool
    status_code: int | None
    err: str
    output: str
    output_truncated: bool
    status: str
    attempts: int
    retries: int
    run_at: datetime | None
    idempotency_key: str | None
    raw: dict[str, Any] = attrs.field(eq=False, repr=False)
    replayed: bool = attrs.field(default=False, eq=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], replayed: bool = False) -> RemoteJob:
        """
        Return the job described by the wire object ``data``; missing keys take defaults
        (a server older than retries says nothing of ``attempts``, ``retries``, ``runAt``
        and ``idempotencyKey``: 0, 0, ``None``, ``None``). ``replayed`` says the server
        answered an idempotent push with a job it had already stored.
        """
        job_id = data.get("id")
        headers = data.get("headers")
        return cls(
            id=str(job_id) if isinstance(job_id, str | int) else "",
            name=_str(data.get("name")),
            comment=_str(data.get("comment")),
            url=_str(data.get("url")),
            payload=data.get("payload"),
            headers=headers if isinstance(headers, dict) else None,
            timeout=_int(data.get("timeout")),
            created_at=_parse_time(data.get("createdAt")),
            started_at=_parse_time(data.get("startedAt")),
            finished_at=_parse_time(data.get("finishedAt")),
            success=data.get("success") is True,
            failure=data.get("failure") is True,
            canceled=data.get("canceled") is True,
            waiting=data.get("waiting") is True,
            running=data.get("running") is True,
            status_code=_opt_int(data.get("statusCode")),
            err=_str(data.get("err")),
            output=_str(data.get("output")),
            output_truncated=data.get("outputTruncated") is True,
            status=_str(data.get("status"), "unknown"),
            attempts=_int(data.get("attempts")),
            retries=_int(data.get("retries")),
            run_at=_parse_time(data.get("runAt")),
            idempotency_key=_opt_str(data.get("idempotencyKey")),
            raw=data,
            replayed=replayed,
        )

    @property
    def duration(self) -> timedelta | None:
        """
        How long the delivery took (``finished_at - started_at``), or ``None`` if unknown.
        """
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@attrs.frozen
class JobList:
    """
    One page of ``GET /job``.

    ``next`` is the id (a string) to pass as ``begin`` for the next page; it is ``None``
    when ``has_next`` is false.
    """

    jobs: tuple[RemoteJob, ...]
    has_next: bool
    next: str | None
    count: int
    raw: dict[str, Any] = attrs.field(eq=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobList:
        """
        Return the page described by the wire object ``data``.
        """
        jobs = data.get("jobs")
        if not isinstance(jobs, list):
            jobs = []
        next_id = data.get("next")
        return cls(
            jobs=tuple(RemoteJob.from_dict(j) for j in jobs if isinstance(j, dict)),
            has_next=data.get("hasNext") is True,
            next=str(next_id) if isinstance(next_id, str | int) else None,
            count=_int(data.get("count"), len(jobs)),
            raw=data,
        )


@attrs.frozen
class Stats:
    """
    The server's counters (``GET /stats``); ``raw`` keeps every key, new ones included.
    """

    queues: int
    dispatchers: int
    max_workers: int
    num_workers: int
    num_jobs_in_queue: int
    num_jobs_waiting: int
    num_jobs_running: int
    num_stored_jobs: int
    num_jobs_in_last_minute: int
    num_jobs_scheduled: int
    raw: dict[str, Any] = attrs.field(eq=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        """
        Return the counters in the wire object ``data``; missing ones are 0.
        """
        return cls(
            queues=_int(data.get("queues")),
            dispatchers=_int(data.get("dispatchers")),
            max_workers=_int(data.get("maxWorkers")),
            num_workers=_int(data.get("numWorkers")),
            num_jobs_in_queue=_int(data.get("numJobsInQueue")),
            num_jobs_waiting=_int(data.get("numJobsWaiting")),
            num_jobs_running=_int(data.get("numJobsRunning")),
            num_stored_jobs=_int(data.get("numStoredJobs")),
            num_jobs_in_last_minute=_int(data.get("numJobsInLastMinute")),
            num_jobs_scheduled=_int(data.get("numJobsScheduled")),
            raw=data,
        )


@attrs.frozen
class Attempt:
    """
    One attempt to deliver a job, as ``GET /job/{id}/attempts`` reports it.

    ``attempt`` is numbered from 1; ``status_code`` is the worker's HTTP status (``None``
    when no answer came); ``err`` says why the attempt failed (``""`` if it did not);
    ``output`` is the start of the worker's answer (at most 4 KiB). Times are UTC
    :class:`~datetime.datetime` values or ``None``; ``raw`` is the JSON object as received.
    """

    attempt: int
    started_at: datetime | None
    finished_at: datetime | None
    status_code: int | None
    err: str
    output: str
    raw: dict[str, Any] = attrs.field(eq=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attempt:
        """
        Return the attempt described by the wire object ``data``; missing keys take defaults.
        """
        return cls(
            attempt=_int(data.get("attempt")),
            started_at=_parse_time(data.get("startedAt")),
            finished_at=_parse_time(data.get("finishedAt")),
            status_code=_opt_int(data.get("statusCode")),
            err=_str(data.get("err")),
            output=_str(data.get("output")),
            raw=data,
        )

    @property
    def duration(self) -> timedelta | None:
        """
        How long the attempt took (``finished_at - started_at``), or ``None`` if unknown.
        """
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@attrs.frozen
class ServerInfo:
    """
    What ``GET /`` says about the server.
    """

    version: str
    commit_hash: str
    raw: dict[str, Any] = attrs.field(eq=False, repr=False)


class HTTPRequester(Protocol):
    """
    What :class:`HQClient` needs from its HTTP client: ``treq.client.HTTPClient`` or
    ``treq.testing.StubTreq``.
    """

    def request(
        self,
        method: str,
        url: str,
        *,
        params: list[tuple[str, str]] | None = None,
        headers: dict[bytes | str, list[bytes | str]] | None = None,
        data: bytes | None = None,
    ) -> Deferred[Any]: ...


def _deferred(
    method: Callable[_P, Coroutine[Deferred[Any], Any, _T]],
) -> Callable[_P, Deferred[_T]]:
    """
    Make the coroutine method ``method`` return a Deferred (awaitable, or usable with
    callbacks).
    """

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        return Deferred.fromCoroutine(method(*args, **kwargs))

    return wrapper


# Why a request got no answer, in words, by the Twisted exception that says so; the flag
# tells whether the server was reached at all.
_TRANSPORT_REASONS: tuple[tuple[type[BaseException], str, bool], ...] = (
    (net_error.ConnectionRefusedError, "connection refused", False),
    (net_error.DNSLookupError, "host not found", False),
    (net_error.TCPTimedOutError, "connection timed out", False),
    (net_error.TimeoutError, "connection timed out", False),
    (net_error.NoRouteError, "no route to host", False),
    (net_error.ConnectError, "cannot connect", False),
    (SchemeNotSupported, "unsupported address scheme", False),
    (ResponseNeverReceived, "the connection closed before an answer came", True),
    (RequestTransmissionFailed, "the connection was lost while sending the request", True),
    (ResponseFailed, "the connection was lost while reading the answer", True),
    (net_error.ConnectionLost, "the connection was lost", True),
    (CancelledError, "the request was canceled", True),
)
_TRANSPORT_ERRORS = tuple(kind for kind, _, _ in _TRANSPORT_REASONS)


def _transport_message(address: str, exc: BaseException) -> str:
    for kind, reason, reached in _TRANSPORT_REASONS:
        if isinstance(exc, kind):
            os_error = getattr(exc, "osError", None)
            if kind is net_error.ConnectError and os_error:
                reason = str(os_error)
            if reached:
                return f"no answer from HQ at {address}: {reason}"
            return f"cannot reach HQ at {address}: {reason}"
    return f"cannot reach HQ at {address}: {exc}"  # pragma: no cover


class BatchPushError(HQError):
    """
    A batch of :meth:`HQClient.push_many` was refused or not answered.

    The batches before it are stored: ``ids`` are their jobs' ids, in input order, and
    ``start`` is the index (in the whole input) of the first job of the refused batch:
    nothing from there on was stored. When the server named the job at fault
    (``job 3: 'url' is required``), ``job_index`` is that job's index in the whole input
    and ``reason`` the message without the ``job N:`` prefix; otherwise ``job_index`` is
    ``None`` and ``reason`` is ``message``.
    """

    def __init__(self, error: HQError, ids: list[str], start: int) -> None:
        super().__init__(error.status, error.message)
        self.ids = ids
        self.start = start
        self.job_index: int | None = None
        self.reason = error.message
        match = _JOB_INDEX.match(error.message) if error.status is not None else None
        if match is not None:
            self.job_index = start + int(match.group(1))
            self.reason = error.message[match.end() :]


_JOB_INDEX = re.compile(r"job (\d+)(?: \(line \d+\))?: ")


def format_time(when: datetime) -> str:
    """
    Return the timezone-aware ``when`` as the server writes times: RFC 3339 in UTC with
    milliseconds (``2024-05-01T09:30:00.000Z``). Raises ``ValueError`` for a naive datetime
    (its time zone would be a guess).
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"run_at must be timezone-aware, not the naive {when.isoformat()}")
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def with_options(
    job: dict[str, Any],
    *,
    retries: int | None = None,
    run_at: datetime | str | None = None,
    delay: float | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """
    Return a copy of the push object ``job`` with the options that are not ``None`` set:
    ``retries``, ``runAt`` (a datetime is written with :func:`format_time`; a string is
    sent as is and checked by the server), ``delay`` (seconds) and ``idempotencyKey``.

    An option replaces the same key of ``job``; ``run_at`` also drops a ``delay`` of
    ``job``, and ``delay`` a ``runAt``, since a job has one due time. Raises ``ValueError``
    when both ``run_at`` and ``delay`` are given, or for a naive ``run_at``.
    """
    if run_at is not None and delay is not None:
        raise ValueError("run_at and delay cannot be given together: give one")
    out = dict(job)
    if retries is not None:
        out["retries"] = retries
    if run_at is not None:
        out.pop("delay", None)
        out["runAt"] = run_at if isinstance(run_at, str) else format_time(run_at)
    if delay is not None:
        out.pop("runAt", None)
        out["delay"] = delay
    if idempotency_key is not None:
        out["idempotencyKey"] = idempotency_key
    return out


def _filter_params(
    name: str | None,
    term: str | None,
    status: str | None,
    begin: str | int | None,
    reverse: bool,
    limit: int | None,
) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    if name is not None:
        params.append(("name", name))
    if term is not None:
        params.append(("term", term))
    if status is not None:
        params.append(("status", status))
    if begin is not None:
        params.append(("begin", str(begin)))
    if reverse:
        params.append(("reverse", "true"))
    if limit is not None:
        params.append(("limit", str(limit)))
    return params


def check_address(address: str) -> str:
    """
    Return ``address`` without one trailing ``/``; raise ``ValueError`` unless it is an
    ``http://`` or ``https://`` URL with a host.
    """
    base = address[:-1] if address.endswith("/") else address
    scheme, sep, rest = base.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or rest[0] in "/?#":
        raise ValueError(
            f"invalid address {address!r}: it must look like http://HOST:PORT, "
            f"for example {DEFAULT_ADDRESS}"
        )
    return base


class HQClient:
    """
    A client for one HQ server.

    ``address`` is the server's base URL (``http://HOST:PORT``, optionally with a path
    prefix); one trailing ``/`` is ignored. ``http`` is the ``treq.client.HTTPClient`` (or
    ``treq.testing.StubTreq``) to send requests with; when it is ``None`` the client makes its
    own, over a persistent connection pool on ``reactor`` (the global reactor when that is
    ``None`` too), which :meth:`close` closes.

    Every request carries ``User-Agent: HQ-Client/<version>`` and
    ``Content-Type: application/json``; with a ``token`` (the server's ``[[tokens]]``),
    also ``Authorization: Bearer <token>`` (a 401 or 403 is an :class:`HQError` saying
    why). Every method returns a Deferred; it fails with
    :class:`HQError` on any non-2xx answer (with the server's ``error`` text) and when no
    answer comes (``status`` ``None``). Job ids are strings or ints; an id that is not a
    decimal number is refused without a request, with the 404 and message the server
    would give.

    Raises ``ValueError`` if ``address`` is not an http(s) URL.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        http: HTTPRequester | None = None,
        reactor: IReactorTime | None = None,
        token: str | None = None,
    ) -> None:
        self._address = check_address(address)
        self._token: str | None = token
        self._pool: HTTPConnectionPool | None = None
        self._http: HTTPRequester
        if http is None:
            from treq.client import HTTPClient

            if reactor is None:
                from twisted.internet import reactor as global_reactor

                reactor = global_reactor  # type: ignore[assignment]
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            http = HTTPClient(Agent(reactor, pool=self._pool))
        self._http = http

    def use_token(self, token: str | None) -> HQClient:
        """
        Send ``token`` as ``Authorization: Bearer <token>`` from now on (``None``:
        none); return this client.
        """
        self._token = token or None
        return self

    @property
    def address(self) -> str:
        """
        The server's base URL, without a trailing ``/``.
        """
        return self._address

    def close(self) -> Deferred[None]:
        """
        Close the connections this client opened itself; a Deferred that fires when they are.
        """
        if self._pool is None:
            return succeed(None)
        pool, self._pool = self._pool, None
        return pool.closeCachedConnections()

    def _job_path(self, job_id: str | int, action: str = "") -> str:
        raw = str(job_id)
        if not (raw.isascii() and raw.isdigit()):
            # Refused here with the server's own answer: the server decodes the path
            # before routing, so "1/stop" would otherwise reach another endpoint.
            raise HQError(404, f"The job id must be a number but '{raw}'")
        return "/job/" + raw + action

    async def _call(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]] | None = None,
        body: Any = None,
        data: bytes | None = None,
    ) -> Any:
        """
        Send one request (with ``body`` as JSON, or ``data``, JSON already encoded) and
        return its decoded JSON answer; raise HQError.
        """
        decoded, _ = await self._exchange(method, path, params, body, data)
        return decoded

    async def _exchange(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]] | None = None,
        body: Any = None,
        data: bytes | None = None,
    ) -> tuple[Any, Any]:
        """
        Send one request and return its decoded JSON answer and the response (for its
        headers); raise HQError.
        """
        url = self._address + path
        headers: dict[bytes | str, list[bytes | str]] = {
            "User-Agent": [USER_AGENT],
            "Content-Type": ["application/json"],
            "Accept": ["application/json"],
        }
        if self._token is not None:
            headers["Authorization"] = [f"Bearer {self._token}"]
        if body is not None:
            data = _encode(body)
        try:
            response = await self._http.request(
                method, url, params=params, headers=headers, data=data
            )
            content: bytes = await response.content()
        except _TRANSPORT_ERRORS as e:
            raise HQError(None, _transport_message(self._address, e)) from e
        status: int = response.code
        try:
            decoded = json.loads(content.decode("utf-8"))
        except ValueError:
            decoded = None
        if not 200 <= status < 300:
            if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
                raise HQError(status, decoded["error"])
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Error"
            raise HQError(status, f"{status} {phrase} from {url}")
        if decoded is None:
            raise HQError(status, f"the answer from {url} is not JSON; is this an HQ server?")
        return decoded, response

    async def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        decoded = await self._call(method, path, **kwargs)
        if not isinstance(decoded, dict):
            raise HQError(None, f"the answer from {self._address}{path} is not a JSON object")
        return decoded

    @_deferred
    async def info(self) -> ServerInfo:
        """
        ``GET /``: a Deferred firing with the server's :class:`ServerInfo`; fails with HQError.
        """
        data = await self._object("GET", "/")
        return ServerInfo(
            version=_str(data.get("version")), commit_hash=_str(data.get("commitHash")), raw=data
        )

    @_deferred
    async def stats(self) -> Stats:
        """
        ``GET /stats``: a Deferred firing with :class:`Stats`; fails with HQError.
        """
        return Stats.from_dict(await self._object("GET", "/stats"))

    @_deferred
    async def push(
        self,
        job: dict[str, Any],
        *,
        retries: int | None = None,
        run_at: datetime | str | None = None,
        delay: float | None = None,
        idempotency_key: str | None = None,
    ) -> RemoteJob:
        """
        ``POST /job``: push ``job`` (the wire object: ``url`` required; ``name``,
        ``comment``, ``payload``, ``headers``, ``timeout``, ``retries``, ``runAt``,
        ``delay``, ``idempotencyKey``). The keyword options, when not ``None``, set those
        keys as :func:`with_options` says: ``retries`` (0-1000 extra attempts after a
        failure), ``run_at`` (not delivered before: an aware datetime or an RFC 3339
        string), ``delay`` (seconds from now), ``idempotency_key`` (a second push with the
        same key answers the job stored the first time, with ``replayed`` true).

        A Deferred firing with the new (or replayed) :class:`RemoteJob`; fails with
        ValueError for ``run_at`` with ``delay`` or a naive ``run_at``, and with HQError
        (422 ``'url' is required``, 400 for a field of the wrong type, 409 for an
        idempotency key already used with another url, name or payload, ...).
        """
        body = with_options(
            job, retries=retries, run_at=run_at, delay=delay, idempotency_key=idempotency_key
        )
        data, response = await self._exchange("POST", "/job", body=body)
        if not isinstance(data, dict):
            raise HQError(None, f"the answer from {self._address}/job is not a JSON object")
        replayed = response.headers.getRawHeaders("Idempotent-Replayed", [])
        return RemoteJob.from_dict(data, replayed=[b"true"] == _as_bytes(replayed))

    @_deferred
    async def push_many(
        self,
        jobs: Iterable[dict[str, Any]],
        *,
        batch_size: int = MAX_BATCH_JOBS,
        batch_bytes: int = MAX_BATCH_BYTES,
        on_batch: Callable[[list[str]], object] | None = None,
    ) -> list[str]:
        """
        ``POST /jobs``: push ``jobs`` (wire objects, as for :meth:`push`) in batches of at
        most ``batch_size`` jobs and ``batch_bytes`` bytes of JSON (one request and one
        commit each; each batch is stored whole or not at all; a job larger than
        ``batch_bytes`` goes alone). ``on_batch``, if given, is called with each batch's
        ids as soon as it is stored.

        A Deferred firing with the ids of all the jobs, in input order (for a job with an
        idempotency key seen before, the id of the job stored then). Fails with
        :class:`BatchPushError` (an HQError: 422 naming the job's index, 413 for a batch
        over the server's ``max_batch_jobs`` or ``max_body_bytes``, ...) saying which
        batches were stored; with ValueError for a ``batch_size`` below 1 or a job that is
        not JSON (NaN, for example).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be 1 or more, not {batch_size}")
        ids: list[str] = []
        batch: list[bytes] = []
        size = 2  # the brackets
        for job in jobs:
            encoded = _encode(job)
            if batch and (len(batch) == batch_size or size + len(encoded) + 1 > batch_bytes):
                await self._push_batch(batch, ids, on_batch)
                batch, size = [], 2
            batch.append(encoded)
            size += len(encoded) + 1
        if batch:
            await self._push_batch(batch, ids, on_batch)
        return ids

    async def _push_batch(
        self,
        batch: list[bytes],
        ids: list[str],
        on_batch: Callable[[list[str]], object] | None,
    ) -> None:
        body = b"[" + b",".join(batch) + b"]"
        try:
            data = await self._object("POST", "/jobs", data=body)
        except HQError as e:
            raise BatchPushError(e, list(ids), len(ids)) from e
        got = data.get("ids")
        if not isinstance(got, list) or len(got) != len(batch):
            error = HQError(None, f"the answer from {self._address}/jobs has no list of ids")
            raise BatchPushError(error, list(ids), len(ids))
        new = [str(job_id) for job_id in got]
        ids.extend(new)
        if on_batch is not None:
            on_batch(new)

    @_deferred
    async def get(self, job_id: str | int) -> RemoteJob:
        """
        ``GET /job/{id}``: a Deferred firing with the :class:`RemoteJob`; fails with HQError
        (404 when there is no such job).
        """
        return RemoteJob.from_dict(await self._object("GET", self._job_path(job_id)))

    @_deferred
    async def list_jobs(
        self,
        name: str | None = None,
        term: str | None = None,
        status: str | None = None,
        begin: str | int | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> JobList:
        """
        ``GET /job``: a Deferred firing with one :class:`JobList` page; fails with HQError
        (400 for an invalid regexp).

        ``name`` is a regexp searched in the name; ``term`` a regexp searched in the name,
        id, comment, URL and status; ``status`` an exact status; ``begin`` the id to start
        from (inclusive; pass the previous page's ``next``); ``reverse`` lists newest first;
        ``limit`` is the page size (``None`` or 0: the server's default; negative: no limit).
        Arguments left ``None`` are not sent.
        """
        params = _filter_params(name, term, status, begin, reverse, limit)
        return JobList.from_dict(await self._object("GET", "/job", params=params))

    @_deferred
    async def attempts(self, job_id: str | int) -> list[Attempt]:
        """
        ``GET /job/{id}/attempts``: a Deferred firing with the job's attempts, oldest first
        (empty before the first attempt); fails with HQError (404 when there is no such
        job).
        """
        data = await self._object("GET", self._job_path(job_id, "/attempts"))
        attempts = data.get("attempts")
        if not isinstance(attempts, list):
            return []
        return [Attempt.from_dict(a) for a in attempts if isinstance(a, dict)]

    async def _bulk(self, action: str, params: list[tuple[str, str]]) -> int:
        data = await self._object("POST", "/jobs/" + action, params=params)
        return _int(data.get("count"))

    @_deferred
    async def restart_matching(
        self,
        name: str | None = None,
        term: str | None = None,
        status: str | None = None,
        begin: str | int | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> int:
        """
        ``POST /jobs/restart``: restart in place every finished job that the filters match
        (the filters of :meth:`list_jobs`; at least one of ``name``, ``term``, ``status``
        is needed; without ``limit`` every match is restarted). A Deferred firing with how
        many were restarted; fails with HQError (400 without name, term or status, or for
        an invalid regexp).
        """
        params = _filter_params(name, term, status, begin, reverse, limit)
        return await self._bulk("restart", params)

    @_deferred
    async def stop_matching(
        self,
        name: str | None = None,
        term: str | None = None,
        status: str | None = None,
        begin: str | int | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> int:
        """
        ``POST /jobs/stop``: stop every active (waiting, scheduled or running) job that the
        filters match, as :meth:`restart_matching` takes them. A Deferred firing with how
        many were stopped; fails with HQError as :meth:`restart_matching`.
        """
        params = _filter_params(name, term, status, begin, reverse, limit)
        return await self._bulk("stop", params)

    @_deferred
    async def delete_matching(
        self,
        name: str | None = None,
        term: str | None = None,
        status: str | None = None,
        begin: str | int | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> int:
        """
        ``POST /jobs/delete``: delete every finished job that the filters match, as
        :meth:`restart_matching` takes them. A Deferred firing with how many were deleted;
        fails with HQError as :meth:`restart_matching`.
        """
        params = _filter_params(name, term, status, begin, reverse, limit)
        return await self._bulk("delete", params)

    @_deferred
    async def delete(self, job_id: str | int) -> str:
        """
        ``DELETE /job/{id}``: a Deferred firing with the deleted job's id (a string); fails
        with HQError (404 unknown, 409 when the job is waiting or running).
        """
        data = await self._object("DELETE", self._job_path(job_id))
        return str(data.get("id", job_id))

    @_deferred
    async def stop(self, job_id: str | int) -> str:
        """
        ``POST /job/{id}/stop``: cancel a waiting or running job. A Deferred firing with its
        id (a string); fails with HQError (404 unknown, 409 when the job is not active).
        """
        data = await self._object("POST", self._job_path(job_id, "/stop"))
        return str(data.get("id", job_id))

    @_deferred
    async def restart(self, job_id: str | int, copy: bool = False) -> RemoteJob:
        """
        ``POST /job/{id}/restart``: run a finished job again, in place (same id) or, with
        ``copy``, as a new job. A Deferred firing with the restarted (or new)
        :class:`RemoteJob`; fails with HQError (404 unknown, 409 when waiting or running).
        """
        data = await self._object("POST", self._job_path(job_id, "/restart"), body={"copy": copy})
        return RemoteJob.from_dict(data)

    # -- schedules (SPEC §14)

    @staticmethod
    def _schedule_path(schedule_id: str | int, action: str = "") -> str:
        raw = str(schedule_id)
        if not (raw.isascii() and raw.isdigit()):
            raise HQError(404, f"The schedule '{raw}' is not found")
        return "/schedule/" + raw + action

    @_deferred
    async def add_schedule(self, schedule: dict[str, Any]) -> dict[str, Any]:
        """
        ``POST /schedule`` with ``schedule`` (``name``, ``cron``, ``timezone``, ``job``,
        ``paused``): a Deferred firing with the new schedule as the server sent it (a dict,
        keys as on the wire); fails with HQError (422 naming a bad field).
        """
        return await self._object("POST", "/schedule", body=schedule)

    @_deferred
    async def list_schedules(self) -> list[dict[str, Any]]:
        """
        ``GET /schedule``: a Deferred firing with every schedule, in id order.
        """
        data = await self._object("GET", "/schedule")
        schedules = data.get("schedules")
        if not isinstance(schedules, list):
            raise HQError(None, f"the answer from {self._address}/schedule has no schedule list")
        return schedules

    @_deferred
    async def get_schedule(self, schedule_id: str | int) -> dict[str, Any]:
        """
        ``GET /schedule/{id}``: a Deferred firing with the schedule; fails with HQError (404).
        """
        return await self._object("GET", self._schedule_path(schedule_id))

    @_deferred
    async def delete_schedule(self, schedule_id: str | int) -> str:
        """
        ``DELETE /schedule/{id}``: a Deferred firing with the deleted schedule's id; fails
        with HQError (404).
        """
        data = await self._object("DELETE", self._schedule_path(schedule_id))
        return str(data.get("id", schedule_id))

    @_deferred
    async def pause_schedule(self, schedule_id: str | int) -> dict[str, Any]:
        """
        ``POST /schedule/{id}/pause`` (idempotent): a Deferred firing with the schedule.
        """
        return await self._object("POST", self._schedule_path(schedule_id, "/pause"))

    @_deferred
    async def resume_schedule(self, schedule_id: str | int) -> dict[str, Any]:
        """
        ``POST /schedule/{id}/resume`` (idempotent): a Deferred firing with the schedule.
        """
        return await self._object("POST", self._schedule_path(schedule_id, "/resume"))
