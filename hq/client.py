"""
An HTTP client for the HQ API, usable from any Twisted program (the ``hq`` CLI uses it).

Every method of :class:`HQClient` returns a :class:`~twisted.internet.defer.Deferred`, so it
can be awaited in ``async def`` code or used with callbacks. Results are frozen attrs values
(:class:`RemoteJob`, :class:`JobList`, :class:`Attempt`, :class:`Stats`, :class:`ServerInfo`,
:class:`Schedule`, :class:`Flow`)
that also keep the JSON object the server sent, as ``raw``; they and the errors live in
:mod:`hq_sdk.models`, shared with the blocking and asyncio clients of :mod:`hq_sdk`.
Every failure is one exception type, :class:`HQError`: it carries the HTTP status (``None``
when no answer came) and a message for a person, the server's own ``error`` text when there
is one.

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
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from typing import Any, ParamSpec, Protocol, TypeVar

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

from hq_sdk.models import (
    DEFAULT_ADDRESS,
    MAX_BATCH_BYTES,
    MAX_BATCH_JOBS,
    USER_AGENT,
    Attempt,
    BatchPushError,
    Flow,
    FlowLimitChange,
    HQError,
    JobList,
    RemoteJob,
    Schedule,
    ServerInfo,
    Stats,
    as_bytes,
    as_object,
    attempt_list,
    batch_body,
    batch_ids,
    batches,
    check_address,
    count_of,
    decode_answer,
    encode_json,
    filter_params,
    flow_body,
    flow_list,
    flow_path,
    format_time,
    id_of,
    job_path,
    push_body,
    schedule_body,
    schedule_list,
    schedule_path,
    server_info,
    with_options,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_JOBS",
    "USER_AGENT",
    "Attempt",
    "BatchPushError",
    "Flow",
    "FlowLimitChange",
    "HQClient",
    "HQError",
    "JobList",
    "RemoteJob",
    "Schedule",
    "ServerInfo",
    "Stats",
    "check_address",
    "format_time",
    "with_options",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")


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


class HQClient:
    """
    A client for one HQ server: one method per API endpoint (hence its length;
    the request building and the models are in :mod:`hq.sdk.models`).

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

    :meth:`push` gives a job without an idempotency key a random one
    (``auto_idempotency_key``, on by default), as the clients of :mod:`hq_sdk` do.

    Raises ``ValueError`` if ``address`` is not an http(s) URL.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        http: HTTPRequester | None = None,
        reactor: IReactorTime | None = None,
        token: str | None = None,
        auto_idempotency_key: bool = True,
    ) -> None:
        self._address = check_address(address)
        self._auto_key = auto_idempotency_key
        self._token: str | None = token
        self._pool: HTTPConnectionPool | None = None
        self._http: HTTPRequester
        if http is None:
            from treq.client import HTTPClient

            if reactor is None:
                from twisted.internet import reactor as global_reactor

                reactor = global_reactor  # type: ignore[assignment]
            from hq.connect import HostEndpoints

            self._pool = HTTPConnectionPool(reactor, persistent=True)
            # HQ's endpoints, not Agent's own (HostnameEndpoint): a server on
            # 0.0.0.0 named ``localhost``, which resolves to ::1 first on many
            # systems, is reached at once, not after 0.3 s (hq.connect).
            endpoints = HostEndpoints(reactor)
            http = HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=self._pool))
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
            data = encode_json(body)
        try:
            response = await self._http.request(
                method, url, params=params, headers=headers, data=data
            )
            content: bytes = await response.content()
        except _TRANSPORT_ERRORS as e:
            raise HQError(None, _transport_message(self._address, e)) from e
        decoded = decode_answer(response.code, content, url)
        return decoded, response

    async def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return as_object(await self._call(method, path, **kwargs), self._address + path)

    @_deferred
    async def info(self) -> ServerInfo:
        """
        ``GET /``: a Deferred firing with the server's :class:`ServerInfo`; fails with HQError.
        """
        return server_info(await self._object("GET", "/"))

    @_deferred
    async def stats(self) -> Stats:
        """
        ``GET /stats``: a Deferred firing with :class:`Stats`; fails with HQError.
        """
        return Stats.from_dict(await self._object("GET", "/stats"))

    @_deferred
    async def nodes(self) -> list[dict[str, Any]]:
        """
        ``GET /nodes``: a Deferred firing with the live nodes of the cluster
        (``serverId``, ``address``, ``startedAt``, ``heartbeatAt``); fails with HQError.
        """
        nodes = (await self._object("GET", "/nodes")).get("nodes")
        return [node for node in nodes if isinstance(node, dict)] if isinstance(nodes, list) else []

    @_deferred
    async def push(
        self,
        job: dict[str, Any],
        *,
        retries: int | None = None,
        run_at: datetime | str | None = None,
        delay: float | None = None,
        idempotency_key: str | None = None,
        flow_key: str | None = None,
        callback_url: str | None = None,
        failure_callback_url: str | None = None,
    ) -> RemoteJob:
        """
        ``POST /job``: push ``job`` (the wire object: ``url`` required; ``name``,
        ``comment``, ``payload``, ``headers``, ``timeout``, ``retries``, ``runAt``,
        ``delay``, ``idempotencyKey``, ``flowKey``, ``callbackUrl``,
        ``failureCallbackUrl``). The keyword options, when not ``None``, set those
        keys as :func:`with_options` says: ``retries`` (0-1000 extra attempts after a
        failure), ``run_at`` (not delivered before: an aware datetime or an RFC 3339
        string), ``delay`` (seconds from now), ``idempotency_key`` (a second push with the
        same key answers the job stored the first time, with ``replayed`` true),
        ``flow_key`` (1-255 characters: the key whose flow limits the job counts under;
        default the URL's ``host:port``), ``callback_url`` and ``failure_callback_url``
        (absolute http(s) URLs: after the job succeeds, or fails for the last time, HQ
        pushes a job there whose payload is the finished job).

        A Deferred firing with the new (or replayed) :class:`RemoteJob`; fails with
        ValueError for ``run_at`` with ``delay`` or a naive ``run_at``, and with HQError
        (422 ``'url' is required`` or naming a bad ``flowKey`` or callback URL, 400 for a
        field of the wrong type, 409 for an idempotency key already used with another url,
        name or payload, ...).

        A job with no idempotency key (neither ``idempotency_key`` nor an
        ``idempotencyKey`` field) is sent with a new random one (a UUID4) unless the client
        was made with ``auto_idempotency_key=False``: a push sent again after a lost answer
        then answers the first job instead of making a second.
        """
        body = push_body(
            job,
            retries=retries,
            run_at=run_at,
            delay=delay,
            idempotency_key=idempotency_key,
            flow_key=flow_key,
            callback_url=callback_url,
            failure_callback_url=failure_callback_url,
            auto_key=self._auto_key,
        )
        data, response = await self._exchange("POST", "/job", body=body)
        data = as_object(data, self._address + "/job")
        replayed = response.headers.getRawHeaders("Idempotent-Replayed", [])
        return RemoteJob.from_dict(data, replayed=[b"true"] == as_bytes(replayed))

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
        ids: list[str] = []
        for batch in batches(jobs, batch_size, batch_bytes):
            await self._push_batch(batch, ids, on_batch)
        return ids

    async def _push_batch(
        self,
        batch: list[bytes],
        ids: list[str],
        on_batch: Callable[[list[str]], object] | None,
    ) -> None:
        try:
            data = await self._object("POST", "/jobs", data=batch_body(batch))
            new = batch_ids(data, len(batch), self._address + "/jobs")
        except HQError as e:
            raise BatchPushError(e, list(ids), len(ids)) from e
        ids.extend(new)
        if on_batch is not None:
            on_batch(new)

    @_deferred
    async def get(self, job_id: str | int) -> RemoteJob:
        """
        ``GET /job/{id}``: a Deferred firing with the :class:`RemoteJob`; fails with HQError
        (404 when there is no such job).
        """
        return RemoteJob.from_dict(await self._object("GET", job_path(job_id)))

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
        params = filter_params(name, term, status, begin, reverse, limit)
        return JobList.from_dict(await self._object("GET", "/job", params=params))

    @_deferred
    async def attempts(self, job_id: str | int) -> list[Attempt]:
        """
        ``GET /job/{id}/attempts``: a Deferred firing with the job's attempts, oldest first
        (empty before the first attempt); fails with HQError (404 when there is no such
        job).
        """
        data = await self._object("GET", job_path(job_id, "/attempts"))
        return attempt_list(data)

    async def _bulk(self, action: str, params: list[tuple[str, str]]) -> int:
        data = await self._object("POST", "/jobs/" + action, params=params)
        return count_of(data)

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
        params = filter_params(name, term, status, begin, reverse, limit)
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
        params = filter_params(name, term, status, begin, reverse, limit)
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
        params = filter_params(name, term, status, begin, reverse, limit)
        return await self._bulk("delete", params)

    @_deferred
    async def delete(self, job_id: str | int) -> str:
        """
        ``DELETE /job/{id}``: a Deferred firing with the deleted job's id (a string); fails
        with HQError (404 unknown, 409 when the job is waiting or running).
        """
        data = await self._object("DELETE", job_path(job_id))
        return id_of(data, job_id)

    @_deferred
    async def stop(self, job_id: str | int) -> str:
        """
        ``POST /job/{id}/stop``: cancel a waiting or running job. A Deferred firing with its
        id (a string); fails with HQError (404 unknown, 409 when the job is not active).
        """
        data = await self._object("POST", job_path(job_id, "/stop"))
        return id_of(data, job_id)

    @_deferred
    async def restart(self, job_id: str | int, copy: bool = False) -> RemoteJob:
        """
        ``POST /job/{id}/restart``: run a finished job again, in place (same id) or, with
        ``copy``, as a new job. A Deferred firing with the restarted (or new)
        :class:`RemoteJob`; fails with HQError (404 unknown, 409 when waiting or running).
        """
        data = await self._object("POST", job_path(job_id, "/restart"), body={"copy": copy})
        return RemoteJob.from_dict(data)

    # -- schedules (SPEC §14)

    @_deferred
    async def add_schedule(
        self,
        cron: str,
        job: dict[str, Any],
        *,
        name: str | None = None,
        timezone: str | None = None,
        paused: bool = False,
    ) -> Schedule:
        """
        ``POST /schedule``: a schedule that pushes ``job`` (the wire object: ``url``
        required; ``name``, default the schedule's, ``comment``, ``payload``, ``headers``,
        ``timeout``, ``retries``) at each time ``cron`` names (5 fields, or 6 with seconds
        first) in ``timezone`` (an IANA name; default UTC); ``name`` is the schedule's
        (default ``default``); ``paused`` adds it paused. A Deferred firing with the new
        :class:`Schedule`; fails with HQError (422 naming a bad field: ``cron``,
        ``timezone``, ``job.url``...).
        """
        body = schedule_body(cron, job, name=name, timezone=timezone, paused=paused)
        return Schedule.from_dict(await self._object("POST", "/schedule", body=body))

    @_deferred
    async def schedules(self) -> list[Schedule]:
        """
        ``GET /schedule``: a Deferred firing with every :class:`Schedule`, in id order.
        """
        data = await self._object("GET", "/schedule")
        return schedule_list(data, self._address + "/schedule")

    @_deferred
    async def schedule(self, schedule_id: str | int) -> Schedule:
        """
        ``GET /schedule/{id}``: a Deferred firing with the :class:`Schedule`; fails with
        HQError (404).
        """
        return Schedule.from_dict(await self._object("GET", schedule_path(schedule_id)))

    @_deferred
    async def delete_schedule(self, schedule_id: str | int) -> str:
        """
        ``DELETE /schedule/{id}``: a Deferred firing with the deleted schedule's id (the
        jobs it pushed stay); fails with HQError (404).
        """
        data = await self._object("DELETE", schedule_path(schedule_id))
        return id_of(data, schedule_id)

    @_deferred
    async def pause_schedule(self, schedule_id: str | int) -> Schedule:
        """
        ``POST /schedule/{id}/pause`` (idempotent): a Deferred firing with the paused
        :class:`Schedule` (``next_run_at`` ``None``); fails with HQError (404).
        """
        return Schedule.from_dict(await self._object("POST", schedule_path(schedule_id, "/pause")))

    @_deferred
    async def resume_schedule(self, schedule_id: str | int) -> Schedule:
        """
        ``POST /schedule/{id}/resume`` (idempotent): a Deferred firing with the
        :class:`Schedule`, its next fire counted from now (missed fires are not made up);
        fails with HQError (404; 422 when its time zone is gone).
        """
        return Schedule.from_dict(await self._object("POST", schedule_path(schedule_id, "/resume")))

    # -- flow control (SPEC §16)

    @_deferred
    async def list_flows(self) -> list[Flow]:
        """
        ``GET /flow``: a Deferred firing with the :class:`Flow` of every key that has
        limits set, waiting or running jobs, or an adaptive limit in force, in key order;
        fails with HQError.
        """
        data = await self._object("GET", "/flow")
        return flow_list(data, self._address + "/flow")

    @_deferred
    async def get_flow(self, key: str) -> Flow:
        """
        ``GET /flow/{key}``: a Deferred firing with the key's :class:`Flow` (no limits and
        no jobs for a key never seen); fails with HQError. The key is percent-encoded
        whole, so it may hold ``:``, ``/``, ``[`` and ``]``; an empty key raises
        ValueError without a request.
        """
        return Flow.from_dict(await self._object("GET", flow_path(key)))

    @_deferred
    async def set_flow(
        self,
        key: str,
        *,
        parallelism: int | None = None,
        rate: int | None = None,
        period: float | None = None,
        paused: bool | None = None,
    ) -> Flow:
        """
        ``PUT /flow/{key}``: replace the limits of ``key``: at most ``parallelism`` of
        its jobs delivered at once, at most ``rate`` started per ``period`` seconds
        (a sliding window). Limits left ``None`` are not sent, and the server takes them
        as none: ``parallelism`` and ``rate`` 0 (no limit), ``period`` 1; ``paused``
        left ``None`` stays as it was. Limits survive restarts and hold across a cluster.

        A Deferred firing with the key's new :class:`Flow`; fails with HQError (422 naming
        the field: a negative or non-integer ``parallelism`` or ``rate``, a ``period`` of
        0 or less, a key over 255 characters), with ValueError for an empty key or a
        period that is not finite.
        """
        body = flow_body(parallelism, rate, period, paused)
        return Flow.from_dict(await self._object("PUT", flow_path(key), body=body))

    @_deferred
    async def pause_flow(self, key: str) -> Flow:
        """
        ``POST /flow/{key}/pause`` (idempotent): deliver none of the key's jobs until
        resumed (running ones finish). A Deferred firing with the :class:`Flow`
        (``paused`` true); fails with HQError.
        """
        return Flow.from_dict(await self._object("POST", flow_path(key, "/pause")))

    @_deferred
    async def resume_flow(self, key: str) -> Flow:
        """
        ``POST /flow/{key}/resume`` (idempotent): a Deferred firing with the
        :class:`Flow` (``paused`` false); fails with HQError.
        """
        return Flow.from_dict(await self._object("POST", flow_path(key, "/resume")))

    @_deferred
    async def delete_flow(self, key: str) -> Flow:
        """
        ``DELETE /flow/{key}``: remove the key's limits (and resume it); its jobs are
        not touched. A Deferred firing with the :class:`Flow` as it is then; fails with
        HQError.
        """
        return Flow.from_dict(await self._object("DELETE", flow_path(key)))
