"""
The values and errors every HQ client shares: the Twisted :class:`~hq.client.HQClient`,
the blocking :class:`~hq_sdk.blocking.Client` and the asyncio :class:`~hq_sdk.aio.AsyncClient`.

Results are frozen attrs values (:class:`RemoteJob`, :class:`JobList`, :class:`Attempt`,
:class:`Stats`, :class:`ServerInfo`, :class:`Schedule`, :class:`Flow`) that also keep the
JSON object the server sent, as ``raw``. Every failure is one exception type,
:class:`HQError` (and its :class:`BatchPushError`). The helpers below build request
bodies and read answers without any I/O, so the three clients send the same requests and
raise the same errors.

Pure: no I/O, no network library imported here.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import attrs

from hq_sdk.version import __version__

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


def encode_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def as_bytes(values: list[Any]) -> list[bytes]:
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

    ``flow_key`` is the key the job's flow limits are counted under (SPEC §16: by default
    the URL's ``host:port``); ``callback_url`` and ``failure_callback_url`` are where its
    end is reported (``None``: nowhere), and ``callback_job_id`` the id (a string) of the
    callback job its end pushed (``None`` until then). A server from before flow control
    sends none of them: ``""`` and ``None``.
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
    flow_key: str = ""
    callback_url: str | None = None
    failure_callback_url: str | None = None
    callback_job_id: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], replayed: bool = False) -> RemoteJob:
        """
        Return the job described by the wire object ``data``; missing keys take defaults
        (a server older than retries says nothing of ``attempts``, ``retries``, ``runAt``
        and ``idempotencyKey``: 0, 0, ``None``, ``None``; one older than flow control
        nothing of ``flowKey``, ``callbackUrl``, ``failureCallbackUrl`` and
        ``callbackJobId``: ``""`` and ``None``). ``replayed`` says the server answered an
        idempotent push with a job it had already stored.
        """
        job_id = data.get("id")
        headers = data.get("headers")
        callback_job_id = data.get("callbackJobId")
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
            flow_key=_str(data.get("flowKey")),
            callback_url=_opt_str(data.get("callbackUrl")),
            failure_callback_url=_opt_str(data.get("failureCallbackUrl")),
            callback_job_id=(
                str(callback_job_id) if isinstance(callback_job_id, str | int) else None
            ),
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


@attrs.frozen
class Schedule:
    """
    A schedule (a recurring job, SPEC §14) as the server reported it.

    ``id`` is a string, like job ids. ``cron`` is the expression (5 fields, or 6 with
    seconds first) read in ``timezone`` (an IANA name). ``job`` is the job pushed at each
    fire, as the wire object (``url``, ``name``, ``comment``, ``payload``, ``headers``,
    ``timeout``, ``retries``). ``next_run_at`` is the next fire (``None`` while paused),
    ``last_run_at`` and ``last_job_id`` the last fire and the job it pushed (``None``
    before the first). Times are timezone-aware UTC. ``raw`` is the JSON object as received.
    """

    id: str
    name: str
    cron: str
    timezone: str
    job: dict[str, Any]
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_job_id: str | None
    raw: dict[str, Any] = attrs.field(eq=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        """
        Return the schedule described by the wire object ``data`` (missing keys: defaults).
        """
        schedule_id = data.get("id")
        job = data.get("job")
        last_job_id = data.get("lastJobId")
        return cls(
            id=str(schedule_id) if isinstance(schedule_id, str | int) else "",
            name=_str(data.get("name")),
            cron=_str(data.get("cron")),
            timezone=_str(data.get("timezone"), "UTC"),
            job=job if isinstance(job, dict) else {},
            paused=data.get("paused") is True,
            next_run_at=_parse_time(data.get("nextRunAt")),
            last_run_at=_parse_time(data.get("lastRunAt")),
            last_job_id=str(last_job_id) if isinstance(last_job_id, str | int) else None,
            raw=data,
        )


@attrs.frozen
class FlowLimitChange:
    """
    One change of a flow key's limit in force: ``at`` (timezone-aware UTC, ``None`` if
    the server sent no time) it became ``limit`` (0: no limit).
    """

    at: datetime | None
    limit: int


@attrs.frozen
class Flow:
    """
    The flow limits and load of one flow key (SPEC §16), as the server reported it.

    ``parallelism`` is the configured most jobs of the key delivered at once, ``rate`` the
    most started per ``period`` seconds (a sliding window); 0 is no limit of its own.
    ``paused`` keys deliver nothing. ``configured`` is true when limits were set with
    ``set_flow`` (false: the key is listed for its jobs, or for the server's
    ``host_parallelism``). ``running`` and ``waiting`` count the key's jobs in the store
    (every node of a cluster). ``limit`` is the parallelism in force now (adaptive flow
    control may hold it below ``parallelism``; 0: none), ``limit_history`` its last
    changes, oldest first. ``raw`` is the JSON object as received.
    """

    key: str
    parallelism: int
    rate: int
    period: float
    paused: bool
    configured: bool
    running: int
    waiting: int
    limit: int
    limit_history: tuple[FlowLimitChange, ...]
    raw: dict[str, Any] = attrs.field(eq=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Flow:
        """
        Return the flow described by the wire object ``data`` (missing keys: no limits,
        period 1, not paused, no jobs).
        """
        period = data.get("period")
        history = data.get("limitHistory")
        changes = tuple(
            FlowLimitChange(at=_parse_time(item.get("at")), limit=_int(item.get("limit")))
            for item in (history if isinstance(history, list) else [])
            if isinstance(item, dict)
        )
        return cls(
            key=_str(data.get("key")),
            parallelism=_int(data.get("parallelism")),
            rate=_int(data.get("rate")),
            period=(
                period if isinstance(period, int | float) and not isinstance(period, bool) else 1
            ),
            paused=data.get("paused") is True,
            configured=data.get("configured") is True,
            running=_int(data.get("running")),
            waiting=_int(data.get("waiting")),
            limit=_int(data.get("limit")),
            limit_history=changes,
            raw=data,
        )


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
    flow_key: str | None = None,
    callback_url: str | None = None,
    failure_callback_url: str | None = None,
) -> dict[str, Any]:
    """
    Return a copy of the push object ``job`` with the options that are not ``None`` set:
    ``retries``, ``runAt`` (a datetime is written with :func:`format_time`; a string is
    sent as is and checked by the server), ``delay`` (seconds), ``idempotencyKey``,
    ``flowKey`` (the key its flow limits count it under; default the URL's
    ``host:port``), ``callbackUrl`` and ``failureCallbackUrl`` (where HQ pushes the
    finished job after a success, after the last failure).

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
    if flow_key is not None:
        out["flowKey"] = flow_key
    if callback_url is not None:
        out["callbackUrl"] = callback_url
    if failure_callback_url is not None:
        out["failureCallbackUrl"] = failure_callback_url
    return out


def filter_params(
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


def new_idempotency_key() -> str:
    """
    Return a fresh idempotency key (a random UUID4, as text) for a push that has none.
    """
    return str(uuid.uuid4())


def push_body(
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
) -> dict[str, Any]:
    """
    Return the ``POST /job`` body for ``job`` with the options set (see
    :func:`with_options`). With ``auto_key``, a job with no idempotency key (neither the
    ``idempotency_key`` argument nor an ``idempotencyKey`` field) gets a new one from
    :func:`new_idempotency_key`: a push resent after a lost answer then makes no second
    job. Raises ``ValueError`` as :func:`with_options` does.
    """
    body = with_options(
        job,
        retries=retries,
        run_at=run_at,
        delay=delay,
        idempotency_key=idempotency_key,
        flow_key=flow_key,
        callback_url=callback_url,
        failure_callback_url=failure_callback_url,
    )
    if auto_key and "idempotencyKey" not in body:
        body["idempotencyKey"] = new_idempotency_key()
    return body


def job_path(job_id: str | int, action: str = "") -> str:
    """
    Return the API path of the job ``job_id`` (``/job/{id}`` + ``action``).

    Raises :class:`HQError` (404, the server's own answer) for an id that is not a decimal
    number, without a request: the server decodes the path before routing, so ``1/stop``
    would otherwise reach another endpoint.
    """
    raw = str(job_id)
    if not (raw.isascii() and raw.isdigit()):
        raise HQError(404, f"The job id must be a number but '{raw}'")
    return "/job/" + raw + action


def schedule_path(schedule_id: str | int, action: str = "") -> str:
    """
    Return the API path of the schedule ``schedule_id`` (``/schedule/{id}`` + ``action``).

    Raises :class:`HQError` (404, as the server answers) for an id that is not a decimal
    number, without a request.
    """
    raw = str(schedule_id)
    if not (raw.isascii() and raw.isdigit()):
        raise HQError(404, f"The schedule '{raw}' is not found")
    return "/schedule/" + raw + action


def schedule_body(
    cron: str,
    job: dict[str, Any],
    *,
    name: str | None = None,
    timezone: str | None = None,
    paused: bool = False,
) -> dict[str, Any]:
    """
    Return the ``POST /schedule`` body: ``cron``, ``job``, ``paused`` and, when given,
    ``name`` and ``timezone`` (the server's defaults: ``default`` and ``UTC``; the job's
    ``name`` defaults to the schedule's).
    """
    body: dict[str, Any] = {"cron": cron, "job": job, "paused": paused}
    if name is not None:
        body["name"] = name
    if timezone is not None:
        body["timezone"] = timezone
    return body


def schedule_list(data: dict[str, Any], url: str) -> list[Schedule]:
    """
    Return the schedules in the ``GET /schedule`` answer ``data``, in id order; raise
    :class:`HQError` when it has no list.
    """
    schedules = data.get("schedules")
    if not isinstance(schedules, list):
        raise HQError(None, f"the answer from {url} has no schedule list")
    return [Schedule.from_dict(s) for s in schedules if isinstance(s, dict)]


#: The longest flow key, in characters (SPEC §16).
MAX_FLOW_KEY = 255


def flow_path(key: str, action: str = "") -> str:
    """
    Return the API path of the flow key ``key`` (``/flow/{key}`` + ``action``), the key
    percent-encoded whole (``/`` included: a key is one path segment).

    Raises ``ValueError`` for an empty key, without a request (``/flow/`` would be the
    list).
    """
    if not isinstance(key, str) or not key:
        raise ValueError("a flow key must be 1 to 255 characters, not empty")
    return "/flow/" + quote(key, safe="") + action


def flow_body(
    parallelism: int | None = None,
    rate: int | None = None,
    period: float | None = None,
    paused: bool | None = None,
) -> dict[str, Any]:
    """
    Return the ``PUT /flow/{key}`` body: the arguments that are not ``None``. The server
    replaces the key's limits with it: an absent ``parallelism`` or ``rate`` is 0 (no
    limit), an absent ``period`` 1 second, an absent ``paused`` leaves it as it is.

    Raises ``ValueError`` for a period that is not a finite number (JSON cannot carry it);
    the server checks the rest (422 naming the field).
    """
    body: dict[str, Any] = {}
    if parallelism is not None:
        body["parallelism"] = parallelism
    if rate is not None:
        body["rate"] = rate
    if period is not None:
        if isinstance(period, float) and not math.isfinite(period):
            raise ValueError(f"period must be a finite number of seconds, not {period}")
        body["period"] = period
    if paused is not None:
        body["paused"] = paused
    return body


def flow_list(data: dict[str, Any], url: str) -> list[Flow]:
    """
    Return the flows in the ``GET /flow`` answer ``data``, in key order; raise
    :class:`HQError` when it has no list.
    """
    flows = data.get("flows")
    if not isinstance(flows, list):
        raise HQError(None, f"the answer from {url} has no flow list")
    return [Flow.from_dict(f) for f in flows if isinstance(f, dict)]


def answer_error(status: int, content: bytes, url: str) -> HQError:
    """
    Return the :class:`HQError` for a non-2xx answer: the server's ``error`` text when the
    body has one, else ``"<status> <phrase> from <url>"``.
    """
    try:
        decoded = json.loads(content.decode("utf-8"))
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        return HQError(status, decoded["error"])
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return HQError(status, f"{status} {phrase} from {url}")


def decode_answer(status: int, content: bytes, url: str) -> Any:
    """
    Return the decoded JSON of an answer with ``status`` and body ``content`` from ``url``;
    raise :meth:`answer_error`'s error for a non-2xx one, and :class:`HQError` when a 2xx
    answer is not JSON.
    """
    if not 200 <= status < 300:
        raise answer_error(status, content, url)
    try:
        return json.loads(content.decode("utf-8"))
    except ValueError:
        raise HQError(status, f"the answer from {url} is not JSON; is this an HQ server?") from None


def as_object(decoded: Any, url: str) -> dict[str, Any]:
    """
    Return ``decoded`` if it is a JSON object; raise :class:`HQError` otherwise.
    """
    if not isinstance(decoded, dict):
        raise HQError(None, f"the answer from {url} is not a JSON object")
    return decoded


def server_info(data: dict[str, Any]) -> ServerInfo:
    """
    Return the :class:`ServerInfo` in the ``GET /`` answer ``data``.
    """
    return ServerInfo(
        version=_str(data.get("version")), commit_hash=_str(data.get("commitHash")), raw=data
    )


def attempt_list(data: dict[str, Any]) -> list[Attempt]:
    """
    Return the attempts in the ``GET /job/{id}/attempts`` answer ``data``, oldest first.
    """
    attempts = data.get("attempts")
    if not isinstance(attempts, list):
        return []
    return [Attempt.from_dict(a) for a in attempts if isinstance(a, dict)]


def count_of(data: dict[str, Any]) -> int:
    """
    Return the ``count`` of a bulk action's answer (0 if absent).
    """
    return _int(data.get("count"))


def id_of(data: dict[str, Any], job_id: str | int) -> str:
    """
    Return the ``id`` of a delete or stop answer (``job_id`` if absent), as a string.
    """
    return str(data.get("id", job_id))


def batches(
    jobs: Iterable[dict[str, Any]], batch_size: int, batch_bytes: int
) -> Iterator[list[bytes]]:
    """
    Yield ``jobs`` encoded as JSON, in lists of at most ``batch_size`` jobs and
    ``batch_bytes`` bytes of ``[...]`` (a job larger than that goes alone).

    Raises ``ValueError`` for a ``batch_size`` below 1 or a job that is not JSON.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be 1 or more, not {batch_size}")
    batch: list[bytes] = []
    size = 2  # the brackets
    for job in jobs:
        encoded = encode_json(job)
        if batch and (len(batch) == batch_size or size + len(encoded) + 1 > batch_bytes):
            yield batch
            batch, size = [], 2
        batch.append(encoded)
        size += len(encoded) + 1
    if batch:
        yield batch


def batch_body(batch: list[bytes]) -> bytes:
    """
    Return the ``POST /jobs`` body for the encoded jobs ``batch``.
    """
    return b"[" + b",".join(batch) + b"]"


def batch_is_keyed(batch: list[bytes]) -> bool:
    """
    Return whether every job of the encoded ``batch`` carries an ``idempotencyKey``, so
    resending the batch stores nothing twice.
    """
    for encoded in batch:
        job = json.loads(encoded)
        if not (isinstance(job, dict) and isinstance(job.get("idempotencyKey"), str)):
            return False
    return True


def batch_ids(data: dict[str, Any], size: int, url: str) -> list[str]:
    """
    Return the ids in a ``POST /jobs`` answer for a batch of ``size`` jobs; raise
    :class:`HQError` when the answer has no list of that many ids.
    """
    got = data.get("ids")
    if not isinstance(got, list) or len(got) != size:
        raise HQError(None, f"the answer from {url} has no list of ids")
    return [str(job_id) for job_id in got]
