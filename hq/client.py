"""
An HTTP client for the HQ API, usable from any Twisted program (the ``hq`` CLI uses it).

Every method of :class:`HQClient` returns a :class:`~twisted.internet.defer.Deferred`, so it
can be awaited in ``async def`` code or used with callbacks. Results are frozen attrs values
(:class:`RemoteJob`, :class:`JobList`, :class:`Stats`, :class:`ServerInfo`) that also keep
the JSON object the server sent, as ``raw``. Every failure is one exception type,
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
from collections.abc import Callable, Coroutine
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
    raw: dict[str, Any] = attrs.field(eq=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RemoteJob:
        """
        Return the job described by the wire object ``data``; missing keys take defaults.
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
            raw=data,
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
            raw=data,
        )


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
    ) -> Any:
        """
        Send one request and return its decoded JSON answer; raise HQError.
        """
        url = self._address + path
        headers: dict[bytes | str, list[bytes | str]] = {
            "User-Agent": [USER_AGENT],
            "Content-Type": ["application/json"],
            "Accept": ["application/json"],
        }
        if self._token is not None:
            headers["Authorization"] = [f"Bearer {self._token}"]
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        try:
            response = await self._http.request(
                method,
                url,
                params=params,
                headers=headers,
                data=None if data is None else data.encode("utf-8"),
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
        return decoded

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
    async def push(self, job: dict[str, Any]) -> RemoteJob:
        """
        ``POST /job``: push ``job`` (the wire object: ``url`` required; ``name``,
        ``comment``, ``payload``, ``headers``, ``timeout``). A Deferred firing with the new
        :class:`RemoteJob`; fails with HQError (422 ``'url' is required``, 400 for a field of
        the wrong type, ...).
        """
        return RemoteJob.from_dict(await self._object("POST", "/job", body=job))

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
        return JobList.from_dict(await self._object("GET", "/job", params=params))

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
