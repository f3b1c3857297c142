"""
The requests of the HQ API as values, without I/O: what the blocking and the asyncio
clients send for each method, how they read the answer, and whether a request may be sent
again after it went out and no answer came.

Each builder returns a :class:`Call`; a client sends it (``method``, ``path``, ``params``,
``content``) and gives the decoded JSON and the answer's headers to ``call.read``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

import attrs

from hq_sdk.models import (
    Attempt,
    Flow,
    JobList,
    RemoteJob,
    Schedule,
    ServerInfo,
    Stats,
    as_object,
    attempt_list,
    batch_body,
    batch_is_keyed,
    count_of,
    encode_json,
    filter_params,
    flow_body,
    flow_list,
    flow_path,
    id_of,
    job_path,
    push_body,
    schedule_body,
    schedule_list,
    schedule_path,
    server_info,
)

_T = TypeVar("_T")

#: Reads an answer: the decoded JSON, the headers (lower-case names), the URL asked.
Reader = Callable[[Any, Mapping[str, str], str], _T]


@attrs.frozen
class Call(Generic[_T]):
    """
    One request to HQ and how to read its answer.

    ``resendable`` says the request may be sent again when it went out and no answer came
    (a read timeout, a dropped connection, a 502/503/504): true for reads (``GET``) and for
    pushes that carry idempotency keys, false for everything else (delete, stop, restart,
    bulk actions, pushes without keys), whose second sending could act twice or answer an
    error for what the first did.
    """

    method: str
    path: str
    read: Reader[_T]
    params: list[tuple[str, str]] = attrs.field(factory=list)
    content: bytes | None = None
    resendable: bool = False


def _object(read: Callable[[dict[str, Any]], _T]) -> Reader[_T]:
    def reader(decoded: Any, headers: Mapping[str, str], url: str) -> _T:
        return read(as_object(decoded, url))

    return reader


def info() -> Call[ServerInfo]:
    """``GET /``."""
    return Call("GET", "/", _object(server_info), resendable=True)


def stats() -> Call[Stats]:
    """``GET /stats``."""
    return Call("GET", "/stats", _object(Stats.from_dict), resendable=True)


def _read_pushed(decoded: Any, headers: Mapping[str, str], url: str) -> RemoteJob:
    replayed = headers.get("idempotent-replayed", "").strip().lower() == "true"
    return RemoteJob.from_dict(as_object(decoded, url), replayed=replayed)


def push(
    job: dict[str, Any],
    *,
    retries: int | None = None,
    run_at: datetime | str | None = None,
    delay: float | None = None,
    idempotency_key: str | None = None,
    flow_key: str | None = None,
    callback_url: str | None = None,
    failure_callback_url: str | None = None,
    auto_key: bool = True,
) -> Call[RemoteJob]:
    """``POST /job``; resendable when the job has an idempotency key (see ``push_body``)."""
    body = push_body(
        job,
        retries=retries,
        run_at=run_at,
        delay=delay,
        idempotency_key=idempotency_key,
        flow_key=flow_key,
        callback_url=callback_url,
        failure_callback_url=failure_callback_url,
        auto_key=auto_key,
    )
    return Call(
        "POST",
        "/job",
        _read_pushed,
        content=encode_json(body),
        resendable=isinstance(body.get("idempotencyKey"), str),
    )


def push_batch(batch: list[bytes]) -> Call[dict[str, Any]]:
    """``POST /jobs`` for encoded jobs; resendable when every job has an idempotency key."""
    return Call(
        "POST",
        "/jobs",
        _object(lambda data: data),
        content=batch_body(batch),
        resendable=batch_is_keyed(batch),
    )


def get(job_id: str | int) -> Call[RemoteJob]:
    """``GET /job/{id}``."""
    return Call("GET", job_path(job_id), _object(RemoteJob.from_dict), resendable=True)


def list_jobs(
    name: str | None,
    term: str | None,
    status: str | None,
    begin: str | int | None,
    reverse: bool,
    limit: int | None,
) -> Call[JobList]:
    """``GET /job``."""
    params = filter_params(name, term, status, begin, reverse, limit)
    return Call("GET", "/job", _object(JobList.from_dict), params=params, resendable=True)


def attempts(job_id: str | int) -> Call[list[Attempt]]:
    """``GET /job/{id}/attempts``."""
    return Call("GET", job_path(job_id, "/attempts"), _object(attempt_list), resendable=True)


def bulk(
    action: str,
    name: str | None,
    term: str | None,
    status: str | None,
    begin: str | int | None,
    reverse: bool,
    limit: int | None,
) -> Call[int]:
    """``POST /jobs/{action}`` (restart, stop, delete): never resent."""
    params = filter_params(name, term, status, begin, reverse, limit)
    return Call("POST", "/jobs/" + action, _object(count_of), params=params)


def delete(job_id: str | int) -> Call[str]:
    """``DELETE /job/{id}``: never resent (a second one answers 404 for the first's work)."""
    return Call("DELETE", job_path(job_id), _object(lambda data: id_of(data, job_id)))


def stop(job_id: str | int) -> Call[str]:
    """``POST /job/{id}/stop``: never resent (a second one answers 409 once stopped)."""
    return Call("POST", job_path(job_id, "/stop"), _object(lambda data: id_of(data, job_id)))


def restart(job_id: str | int, copy: bool) -> Call[RemoteJob]:
    """``POST /job/{id}/restart``: never resent (a copy twice is two jobs)."""
    return Call(
        "POST",
        job_path(job_id, "/restart"),
        _object(RemoteJob.from_dict),
        content=encode_json({"copy": copy}),
    )


def add_schedule(
    cron: str,
    job: dict[str, Any],
    name: str | None,
    timezone: str | None,
    paused: bool,
) -> Call[Schedule]:
    """``POST /schedule``: never resent (a second one is a second schedule)."""
    body = schedule_body(cron, job, name=name, timezone=timezone, paused=paused)
    return Call("POST", "/schedule", _object(Schedule.from_dict), content=encode_json(body))


def _read_schedules(decoded: Any, headers: Mapping[str, str], url: str) -> list[Schedule]:
    return schedule_list(as_object(decoded, url), url)


def schedules() -> Call[list[Schedule]]:
    """``GET /schedule``."""
    return Call("GET", "/schedule", _read_schedules, resendable=True)


def schedule(schedule_id: str | int) -> Call[Schedule]:
    """``GET /schedule/{id}``."""
    return Call("GET", schedule_path(schedule_id), _object(Schedule.from_dict), resendable=True)


def delete_schedule(schedule_id: str | int) -> Call[str]:
    """``DELETE /schedule/{id}``: never resent (a second one answers 404)."""
    return Call(
        "DELETE",
        schedule_path(schedule_id),
        _object(lambda data: id_of(data, schedule_id)),
    )


def pause_schedule(schedule_id: str | int) -> Call[Schedule]:
    """``POST /schedule/{id}/pause``: resendable (pausing twice is pausing once)."""
    return Call(
        "POST",
        schedule_path(schedule_id, "/pause"),
        _object(Schedule.from_dict),
        resendable=True,
    )


def resume_schedule(schedule_id: str | int) -> Call[Schedule]:
    """``POST /schedule/{id}/resume``: resendable (resuming twice is resuming once)."""
    return Call(
        "POST",
        schedule_path(schedule_id, "/resume"),
        _object(Schedule.from_dict),
        resendable=True,
    )


def _read_flows(decoded: Any, headers: Mapping[str, str], url: str) -> list[Flow]:
    return flow_list(as_object(decoded, url), url)


def list_flows() -> Call[list[Flow]]:
    """``GET /flow``."""
    return Call("GET", "/flow", _read_flows, resendable=True)


def get_flow(key: str) -> Call[Flow]:
    """``GET /flow/{key}``."""
    return Call("GET", flow_path(key), _object(Flow.from_dict), resendable=True)


def set_flow(
    key: str,
    parallelism: int | None,
    rate: int | None,
    period: float | None,
    paused: bool | None,
) -> Call[Flow]:
    """``PUT /flow/{key}``: resendable (it replaces the limits: twice is once)."""
    body = flow_body(parallelism, rate, period, paused)
    return Call(
        "PUT",
        flow_path(key),
        _object(Flow.from_dict),
        content=encode_json(body),
        resendable=True,
    )


def pause_flow(key: str) -> Call[Flow]:
    """``POST /flow/{key}/pause``: resendable (pausing twice is pausing once)."""
    return Call("POST", flow_path(key, "/pause"), _object(Flow.from_dict), resendable=True)


def resume_flow(key: str) -> Call[Flow]:
    """``POST /flow/{key}/resume``: resendable (resuming twice is resuming once)."""
    return Call("POST", flow_path(key, "/resume"), _object(Flow.from_dict), resendable=True)


def delete_flow(key: str) -> Call[Flow]:
    """
    ``DELETE /flow/{key}``: resendable (removing the limits twice is once; a key without
    limits answers 200, not 404).
    """
    return Call("DELETE", flow_path(key), _object(Flow.from_dict), resendable=True)
