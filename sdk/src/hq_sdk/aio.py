"""
The asyncio HQ client, for applications on asyncio: FastAPI and Starlette apps, aiohttp
services, scripts under ``asyncio.run``.

Same methods, arguments, results and errors as the Twisted :class:`hq.client.HQClient`
and the blocking :class:`hq_sdk.blocking.Client` (docs/sdk.md lists them once); every
method is a coroutine. Over ``httpx`` (``pip install hq-sdk``): one connection pool
per client, a timeout on every request, and requests sent again only when that cannot act
twice (see :mod:`hq_sdk.transport`).

Example::

    from hq_sdk import AsyncClient

    async with AsyncClient("http://127.0.0.1:19900") as hq:
        job = await hq.push({"url": "http://127.0.0.1:8000/work", "payload": {"n": 1}})
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx

from hq_sdk import calls
from hq_sdk.models import (
    DEFAULT_ADDRESS,
    MAX_BATCH_BYTES,
    MAX_BATCH_JOBS,
    Attempt,
    BatchPushError,
    Flow,
    HQError,
    JobList,
    RemoteJob,
    Schedule,
    ServerInfo,
    Stats,
    batch_ids,
    batches,
    check_address,
    decode_answer,
)
from hq_sdk.transport import (
    DEFAULT_TIMEOUT,
    RetryPolicy,
    may_resend_after_answer,
    may_resend_after_error,
    request_headers,
    retry_after,
    transport_message,
)

_T = TypeVar("_T")


class AsyncClient:
    """
    An asyncio client for one HQ server at ``address`` (``http://HOST:PORT``).

    ``token`` is sent as ``Authorization: Bearer``; ``timeout`` (seconds) bounds each
    connect, send and read; ``retry`` says how often a request that may be sent again is
    (:class:`~hq_sdk.transport.RetryPolicy`; ``NO_RETRIES`` for none);
    ``auto_idempotency_key`` gives each push without a key a random one. ``transport`` is
    an ``httpx`` transport to send through (tests give ``httpx.MockTransport``); ``sleep``
    waits between sends.

    Use it as an async context manager, or await :meth:`close`. Use it from one event loop.
    Raises ``ValueError`` if ``address`` is not an http(s) URL.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        auto_idempotency_key: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._address = check_address(address)
        self._token = token or None
        self._retry = retry or RetryPolicy()
        self._auto_key = auto_idempotency_key
        self._sleep = sleep
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def address(self) -> str:
        """The server's base URL, without a trailing ``/``."""
        return self._address

    def use_token(self, token: str | None) -> AsyncClient:
        """Send ``token`` from now on (``None``: none); return this client."""
        self._token = token or None
        return self

    async def close(self) -> None:
        """Close the client's connections."""
        await self._http.aclose()

    async def _run(self, call: calls.Call[_T]) -> _T:
        """
        Send ``call`` (again, as :mod:`hq_sdk.transport` allows) and return its result;
        raise :class:`HQError`.
        """
        url = self._address + call.path
        sent = 0
        while True:
            sent += 1
            last = sent >= self._retry.attempts
            try:
                response = await self._http.request(
                    call.method,
                    url,
                    params=tuple(call.params) or None,
                    content=call.content,
                    headers=request_headers(self._token),
                )
            except httpx.TransportError as e:
                if last or not may_resend_after_error(call, e):
                    raise HQError(None, transport_message(self._address, e)) from e
                await self._sleep(self._retry.wait(sent))
                continue
            if not last and may_resend_after_answer(call, response.status_code):
                await self._sleep(self._retry.wait(sent, retry_after(response.headers)))
                continue
            decoded = decode_answer(response.status_code, response.content, url)
            return call.read(decoded, response.headers, url)

    async def info(self) -> ServerInfo:
        """``GET /``: the server's version."""
        return await self._run(calls.info())

    async def stats(self) -> Stats:
        """``GET /stats``: the server's counters."""
        return await self._run(calls.stats())

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
        """``POST /job``: push one job; see :meth:`hq.client.HQClient.push`."""
        return await self._run(
            calls.push(
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
        )

    async def push_many(
        self,
        jobs: Iterable[dict[str, Any]],
        *,
        batch_size: int = MAX_BATCH_JOBS,
        batch_bytes: int = MAX_BATCH_BYTES,
        on_batch: Callable[[list[str]], object] | None = None,
    ) -> list[str]:
        """``POST /jobs`` in batches; see :meth:`hq.client.HQClient.push_many`."""
        ids: list[str] = []
        for batch in batches(jobs, batch_size, batch_bytes):
            try:
                data = await self._run(calls.push_batch(batch))
                new = batch_ids(data, len(batch), self._address + "/jobs")
            except HQError as e:
                raise BatchPushError(e, list(ids), len(ids)) from e
            ids.extend(new)
            if on_batch is not None:
                on_batch(new)
        return ids

    async def get(self, job_id: str | int) -> RemoteJob:
        """``GET /job/{id}``: one job."""
        return await self._run(calls.get(job_id))

    async def list_jobs(
        self,
        name: str | None = None,
        term: str | None = None,
        status: str | None = None,
        begin: str | int | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> JobList:
        """``GET /job``: one page; see :meth:`hq.client.HQClient.list_jobs`."""
        return await self._run(calls.list_jobs(name, term, status, begin, reverse, limit))

    async def attempts(self, job_id: str | int) -> list[Attempt]:
        """``GET /job/{id}/attempts``: the job's attempts, oldest first."""
        return await self._run(calls.attempts(job_id))

    async def restart_matching(
        self,
        name: str | None = None,
        term: str | None = None,
        status: str | None = None,
        begin: str | int | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> int:
        """``POST /jobs/restart``: how many finished jobs were restarted in place."""
        return await self._run(calls.bulk("restart", name, term, status, begin, reverse, limit))

    async def stop_matching(
        self,
        name: str | None = None,
        term: str | None = None,
        status: str | None = None,
        begin: str | int | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> int:
        """``POST /jobs/stop``: how many active jobs were stopped."""
        return await self._run(calls.bulk("stop", name, term, status, begin, reverse, limit))

    async def delete_matching(
        self,
        name: str | None = None,
        term: str | None = None,
        status: str | None = None,
        begin: str | int | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> int:
        """``POST /jobs/delete``: how many finished jobs were deleted."""
        return await self._run(calls.bulk("delete", name, term, status, begin, reverse, limit))

    async def delete(self, job_id: str | int) -> str:
        """``DELETE /job/{id}``: the deleted job's id."""
        return await self._run(calls.delete(job_id))

    async def stop(self, job_id: str | int) -> str:
        """``POST /job/{id}/stop``: the stopped job's id."""
        return await self._run(calls.stop(job_id))

    async def restart(self, job_id: str | int, copy: bool = False) -> RemoteJob:
        """``POST /job/{id}/restart``: the restarted job (a new one with ``copy``)."""
        return await self._run(calls.restart(job_id, copy))

    # -- schedules (SPEC §14)

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
        ``POST /schedule``: a schedule pushing ``job`` (the wire object, ``url`` required)
        at each time ``cron`` names in ``timezone`` (default UTC); see
        :meth:`hq.client.HQClient.add_schedule`.
        """
        return await self._run(calls.add_schedule(cron, job, name, timezone, paused))

    async def schedules(self) -> list[Schedule]:
        """``GET /schedule``: every schedule, in id order."""
        return await self._run(calls.schedules())

    async def schedule(self, schedule_id: str | int) -> Schedule:
        """``GET /schedule/{id}``: one schedule."""
        return await self._run(calls.schedule(schedule_id))

    async def delete_schedule(self, schedule_id: str | int) -> str:
        """``DELETE /schedule/{id}``: the deleted schedule's id (its jobs stay)."""
        return await self._run(calls.delete_schedule(schedule_id))

    async def pause_schedule(self, schedule_id: str | int) -> Schedule:
        """``POST /schedule/{id}/pause``: the paused schedule (pausing twice is fine)."""
        return await self._run(calls.pause_schedule(schedule_id))

    async def resume_schedule(self, schedule_id: str | int) -> Schedule:
        """``POST /schedule/{id}/resume``: the schedule, next fire counted from now."""
        return await self._run(calls.resume_schedule(schedule_id))

    # -- flow control (SPEC §16)

    async def list_flows(self) -> list[Flow]:
        """``GET /flow``: the keys with limits, jobs or an adaptive limit, in key order."""
        return await self._run(calls.list_flows())

    async def get_flow(self, key: str) -> Flow:
        """``GET /flow/{key}``: one key's limits and load (defaults for a key never seen)."""
        return await self._run(calls.get_flow(key))

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
        ``PUT /flow/{key}``: replace the key's limits; see
        :meth:`hq.client.HQClient.set_flow`.
        """
        return await self._run(calls.set_flow(key, parallelism, rate, period, paused))

    async def pause_flow(self, key: str) -> Flow:
        """``POST /flow/{key}/pause``: the paused flow (pausing twice is fine)."""
        return await self._run(calls.pause_flow(key))

    async def resume_flow(self, key: str) -> Flow:
        """``POST /flow/{key}/resume``: the resumed flow (resuming twice is fine)."""
        return await self._run(calls.resume_flow(key))

    async def delete_flow(self, key: str) -> Flow:
        """``DELETE /flow/{key}``: the flow with its limits removed (and not paused)."""
        return await self._run(calls.delete_flow(key))
