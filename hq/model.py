"""
The job: its fields, its status rules and its JSON shape.

Pure values and functions: no I/O and no clock (callers pass times in).
"""

from __future__ import annotations

import enum
import functools
import json
import operator
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import attrs
import re2

from hq.ids import id_to_ms

DEFAULT_JOB_NAME = "default"


class JobState(enum.IntEnum):
    """
    Where a job is in its life; stored, and the source of ``waiting``/``running``.
    """

    WAITING = 0
    RUNNING = 1
    FINISHED = 2


#: The ``err`` of a job that a stop ended.
STOPPED = "stopped"


class JobRuleError(Exception):
    """
    A job's state forbids what was asked; the message is for a person.
    """

    def __init__(self, job_id: int, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobBusy(JobRuleError):
    """
    The job is running or waiting: it cannot be deleted or restarted now.
    """

    def __init__(self, job_id: int, doing: str) -> None:
        super().__init__(job_id, f"The job {job_id} is {doing} now")


class JobInactive(JobRuleError):
    """
    The job is finished: there is nothing to stop.
    """

    def __init__(self, job_id: int) -> None:
        super().__init__(job_id, f"The job {job_id} is not active")


def derive_status(
    state: JobState, canceled: bool, success: bool, failure: bool, finished_at: int | None
) -> str:
    """
    Return a job's ``status`` from its fields, in the precedence of the Go
    server (SPEC §2): running or waiting (``canceling`` once a stop was asked),
    then failure, success, canceled; ``unfinished`` for a job never finished.
    """
    if state is JobState.RUNNING:
        return "canceling" if canceled else "running"
    if state is JobState.WAITING:
        return "canceling" if canceled else "waiting"
    if failure:
        return "failure"
    if success:
        return "success"
    if canceled:
        return "canceled"
    if finished_at is None:
        return "unfinished"
    return "unknown"


#: Every value ``status`` can take.
STATUSES = (
    "waiting",
    "scheduled",
    "running",
    "canceling",
    "success",
    "failure",
    "canceled",
    "unfinished",
    "unknown",
)


@attrs.frozen
class Outcome:
    """
    How one delivery ended; written to the job when it finishes.
    """

    finished_at: int
    success: bool = False
    failure: bool = False
    canceled: bool = False
    status_code: int | None = None
    err: str = ""
    output: str = ""
    output_truncated: bool = False

    @property
    def status(self) -> str:
        """
        The status of a job finished with this outcome (as :attr:`Job.status`).
        """
        return derive_status(
            JobState.FINISHED, self.canceled, self.success, self.failure, self.finished_at
        )


@attrs.frozen
class Job:
    """
    One job, as stored. Times are integers, milliseconds since the Unix epoch.

    ``payload`` is the payload as compact JSON text (``None`` for no payload);
    it is sent to the worker as the request body.
    """

    id: int
    url: str
    name: str = DEFAULT_JOB_NAME
    comment: str = ""
    payload: str | None = None
    headers: dict[str, str] | None = None
    timeout: int = 0
    state: JobState = JobState.WAITING
    started_at: int | None = None
    finished_at: int | None = None
    success: bool = False
    failure: bool = False
    canceled: bool = False
    status_code: int | None = None
    err: str = ""
    output: str = ""
    output_truncated: bool = False
    #: How many attempts were started.
    attempts: int = 0
    #: Extra attempts after a failed one (SPEC §11).
    retries: int = 0
    #: When the job is next due, ms; ``None``: due at its creation.
    run_at: int | None = None
    idempotency_key: str | None = None
    #: The schedule whose fire created the job (SPEC §14), or ``None``.
    schedule_id: int | None = None
    #: The flow key its limits are counted under (SPEC §16); empty: the URL's ``host:port``.
    flow_key: str = ""
    #: Where a job is pushed when this one succeeds / fails for the last time (SPEC §16).
    callback_url: str | None = None
    failure_callback_url: str | None = None
    #: The callback job this one's end pushed, or ``None``.
    callback_job_id: int | None = None

    def __attrs_post_init__(self) -> None:
        if not self.flow_key:
            object.__setattr__(self, "flow_key", default_flow_key(self.url))

    @property
    def created_at(self) -> int:
        """
        The creation time, taken from the id.
        """
        return id_to_ms(self.id)

    @property
    def due_at(self) -> int:
        """
        When the job is due (``run_at``, or its creation time): jobs start in
        order of due time, then id.
        """
        return self.created_at if self.run_at is None else self.run_at

    def scheduled(self, now: int) -> bool:
        """
        Whether the job waits for a due time after ``now`` (a delay or a retry).
        """
        return self.state is JobState.WAITING and not self.canceled and self.due_at > now

    def status_at(self, now: int) -> str:
        """
        The status as a client sees it at ``now``: :attr:`status`, but
        ``scheduled`` while the job waits for a due time after ``now``.
        """
        return "scheduled" if self.scheduled(now) else self.status

    @property
    def waiting(self) -> bool:
        return self.state is JobState.WAITING

    @property
    def running(self) -> bool:
        return self.state is JobState.RUNNING

    @property
    def status(self) -> str:
        """
        The derived status (:func:`derive_status`).
        """
        return derive_status(
            self.state, self.canceled, self.success, self.failure, self.finished_at
        )

    def started(self, now: int) -> Job | None:
        """
        Return this job marked running at ``now`` (one more attempt), or ``None``
        when it must not be sent: it is not waiting, or a stop was asked.
        """
        if self.state is not JobState.WAITING or self.canceled:
            return None
        return _evolve_job(self, state=JobState.RUNNING, started_at=now, attempts=self.attempts + 1)

    def marked_running(self, now: int, attempts: int) -> Job:
        """
        Return this waiting job as a store marked it running at ``now``, its
        ``attempts`` counted there (:meth:`started`, done by the store).
        """
        return _evolve_job(self, state=JobState.RUNNING, started_at=now, attempts=attempts)

    def stopped(self, now: int) -> Job:
        """
        Return this job after a stop at ``now``: a waiting job finishes
        ``canceled``; a running one is marked ``canceled`` and finishes when its
        request ends.

        :raises JobInactive: when the job is finished.
        """
        if self.state is JobState.WAITING:
            return self.finished(Outcome(finished_at=now, canceled=True))
        if self.state is JobState.RUNNING:
            return _evolve_job(self, canceled=True)
        raise JobInactive(self.id)

    def recovered(self, now: int) -> Job:
        """
        Return this job as a new process takes it over from one that died
        while it ran: finished ``canceled`` at ``now`` if a stop was asked,
        waiting again otherwise (the attempt that was running counts).
        """
        if self.state is not JobState.RUNNING:
            return self
        if self.canceled:
            return self.finished(Outcome(finished_at=now, canceled=True))
        return _evolve_job(self, state=JobState.WAITING, started_at=None)

    def check_settled(self) -> None:
        """
        Check that the job may be deleted or restarted: it is neither running nor waiting.

        :raises JobBusy: naming what it is doing now.
        """
        if self.state is JobState.RUNNING:
            raise JobBusy(self.id, "running")
        if self.state is JobState.WAITING:
            raise JobBusy(self.id, "waiting")

    def finished(self, outcome: Outcome) -> Job:
        """
        Return this job with ``outcome`` applied.
        """
        return _evolve_job(
            self,
            state=JobState.FINISHED,
            finished_at=outcome.finished_at,
            success=outcome.success,
            failure=outcome.failure,
            canceled=outcome.canceled,
            status_code=outcome.status_code,
            err=outcome.err,
            output=outcome.output,
            output_truncated=outcome.output_truncated,
        )

    def retried(self, at: int, last: Outcome) -> Job:
        """
        Return this job waiting for its next attempt, due at ``at``; its
        ``status_code``, ``err`` and ``output`` show ``last``, the attempt that failed.
        A job whose stop was asked while it ran finishes ``canceled`` instead.
        """
        if self.canceled:
            return self.finished(
                attrs.evolve(last, success=False, failure=False, canceled=True, err=STOPPED)
            )
        return _evolve_job(
            self,
            state=JobState.WAITING,
            run_at=at,
            finished_at=None,
            success=False,
            failure=False,
            canceled=False,
            status_code=last.status_code,
            err=last.err,
            output=last.output,
            output_truncated=last.output_truncated,
        )

    def same_request(self, other: Job) -> bool:
        """
        Whether ``other`` asks for the same work: the same ``url``, ``name``
        and ``payload`` (compared as JSON values). Idempotent pushes must.
        """
        if (self.url, self.name) != (other.url, other.name):
            return False
        if self.payload == other.payload:
            return True
        if self.payload is None or other.payload is None:
            return False
        return bool(json.loads(self.payload) == json.loads(other.payload))

    def reset(self) -> Job:
        """
        Return this job made ready to run again: outcome fields cleared,
        waiting, due now, no attempts, no callback job yet (the history is
        the store's to clear); its flow key and callback URLs stay.
        """
        return _evolve_job(
            self,
            state=JobState.WAITING,
            attempts=0,
            run_at=None,
            started_at=None,
            finished_at=None,
            success=False,
            failure=False,
            canceled=False,
            status_code=None,
            err="",
            output="",
            output_truncated=False,
            callback_job_id=None,
        )

    def callback_for(self, outcome: Outcome) -> str | None:
        """
        Return the URL a job is pushed to once this job ends with ``outcome``:
        ``callback_url`` after a success, ``failure_callback_url`` after a
        failure (the last attempt's); ``None`` otherwise (a stop, no URL).
        """
        if outcome.success:
            return self.callback_url
        if outcome.failure:
            return self.failure_callback_url
        return None

    def callback_job(self, job_id: int, url: str, now: int) -> Job:
        """
        Return the callback job (id ``job_id``) this finished job pushes to
        ``url`` at ``now``: its payload is this job as ``GET /job/{id}`` shows
        it, with the header ``X-Hq-Callback-For`` and this job's ``retries``.
        """
        return Job(
            id=job_id,
            url=url,
            name=self.name,
            comment=f"callback for job {self.id} ({self.status})",
            payload=job_json(self, now),
            headers={CALLBACK_HEADER: str(self.id)},
            timeout=self.timeout,
            retries=self.retries,
        )


def _copier(cls: Any) -> Callable[..., Any]:
    """
    Return ``copy(instance, **changes)`` for the attrs class ``cls``: what
    ``attrs.evolve(instance, **changes)`` returns, in about half the time.
    ``evolve`` walks the fields and passes each by keyword on every copy;
    this reads them all at once (``operator.attrgetter``) and passes them
    by position. So every field must be an ``__init__`` argument that may be
    given by position. An unknown field name raises ``TypeError``, as with
    ``evolve``.
    """
    fields = attrs.fields(cls)
    for field in fields:
        if not field.init or field.kw_only:
            raise TypeError(f"{cls.__name__}.{field.name} is no positional argument")
    names = [field.name for field in fields]
    positions = {name: position for position, name in enumerate(names)}
    read_all = operator.attrgetter(*names)

    def copy(instance: Any, **changes: Any) -> Any:
        values = list(read_all(instance))
        for name, value in changes.items():
            try:
                values[positions[name]] = value
            except KeyError:
                raise TypeError(f"{cls.__name__} has no field {name!r}") from None
        return cls(*values)

    return copy


#: ``attrs.evolve`` for a :class:`Job` (see :func:`_copier`): a delivered job
#: is copied twice on its way through the store (started, finished).
_evolve_job: Callable[..., Job] = _copier(Job)


#: The header a callback job carries: the id of the job it reports on.
CALLBACK_HEADER = "X-Hq-Callback-For"
#: The longest flow key, characters.
MAX_FLOW_KEY_LENGTH = 255


@functools.lru_cache(maxsize=4096)
def default_flow_key(url: str) -> str:
    """
    Return the flow key of a job to ``url`` that gives none: the URL's
    ``host:port`` (the port the scheme implies when absent; an IPv6 host in
    brackets), lower case.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return url[:MAX_FLOW_KEY_LENGTH]
    if port is None:
        port = 443 if parts.scheme.lower() == "https" else 80
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"[:MAX_FLOW_KEY_LENGTH]


@attrs.frozen
class FlowLimits:
    """
    The limits set for one flow key (``PUT /flow/{key}``, SPEC §16).

    ``parallelism``: jobs running at once at most, 0 = no limit. ``rate``:
    jobs started per ``period`` seconds at most (a sliding window), 0 = no
    limit. ``paused``: no job of the key starts.
    """

    key: str
    parallelism: int = 0
    rate: int = 0
    period: float = 1.0
    paused: bool = False


#: The ``err`` of an attempt that the server's stop or crash cut short.
INTERRUPTED = "interrupted: HQ stopped during the attempt (it is delivered again)"

#: Bytes of a worker's answer kept in each attempt of the history.
ATTEMPT_OUTPUT_BYTES = 4096


@attrs.frozen
class Attempt:
    """
    One attempt of a job, as the attempt history keeps it (``GET /job/{id}/attempts``).
    """

    job_id: int
    attempt: int
    started_at: int | None
    finished_at: int
    status_code: int | None = None
    err: str = ""
    output: str = ""

    @classmethod
    def of(cls, job: Job, outcome: Outcome) -> Attempt:
        """
        Return the attempt ``job`` (as started) made, ended by ``outcome``
        (its output cut to :data:`ATTEMPT_OUTPUT_BYTES`).
        """
        output = outcome.output.encode("utf-8")[:ATTEMPT_OUTPUT_BYTES]
        return cls(
            job_id=job.id,
            attempt=job.attempts,
            started_at=job.started_at,
            finished_at=outcome.finished_at,
            status_code=outcome.status_code,
            err=outcome.err,
            output=output.decode("utf-8", "ignore"),
        )

    @classmethod
    def interrupted(cls, job: Job, now: int) -> Attempt:
        """
        Return the attempt ``job`` was making when the server stopped without
        recording it (a crash, a shutdown that aborted it): it counts, and the
        job is delivered again.
        """
        return cls(
            job_id=job.id,
            attempt=job.attempts,
            started_at=job.started_at,
            finished_at=now,
            err=INTERRUPTED,
        )

    def to_json(self) -> str:
        """
        Return ``{"attempt", "startedAt", "finishedAt", "statusCode", "err", "output"}``.
        """
        return (
            f'{{"attempt":{self.attempt},"err":{_encode(self.err)},'
            f'"finishedAt":{_time_json(self.finished_at)},"output":{_encode(self.output)},'
            f'"startedAt":{_time_json(self.started_at)},'
            f'"statusCode":{"null" if self.status_code is None else self.status_code}}}'
        )


#: The last second :func:`format_time` can format fast (9999-12-31T23:59:59Z).
_LAST_FAST_SECOND = 253_402_300_799


@functools.lru_cache(maxsize=4096)
def _second_stamp(seconds: int) -> str:
    if 0 <= seconds <= _LAST_FAST_SECOND:
        t = time.gmtime(seconds)
        return "%04d-%02d-%02dT%02d:%02d:%02d" % t[:6]  # noqa: UP031 -- the fastest here
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def format_time(unix_ms: int | None) -> str | None:
    """
    Format ``unix_ms`` as RFC 3339 UTC with milliseconds, or ``None``.
    """
    if unix_ms is None:
        return None
    seconds, ms = divmod(unix_ms, 1000)
    # Listings format many times from the same seconds: the cache makes those free.
    return f"{_second_stamp(seconds)}.{ms:03d}Z"


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
#: What ``_encode`` does for a ``str``, without its dispatch on the type.
_string = json.encoder.encode_basestring


def _time_json(unix_ms: int | None) -> str:
    return "null" if unix_ms is None else f'"{format_time(unix_ms)}"'


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _or_null(text: str | None) -> str:
    return "null" if text is None else text


def _id_or_null(job_id: int | None) -> str:
    return "null" if job_id is None else f'"{job_id}"'


def _run_at_json(job: Job, now: int) -> str:
    # Shown only while the job waits for a later time; null when due or finished.
    return _time_json(job.run_at) if job.scheduled(now) else "null"


def _text(value: str | None) -> str:
    return "null" if value is None else _string(value)


def job_json(job: Job, now: int) -> str:
    """
    Return the job's JSON text at ``now`` (ms; it decides ``scheduled`` and
    ``runAt``): compact, keys in alphabetical order (as the Go server).

    One f-string: a push answers with it and a listing writes a hundred, and
    a table of a function per field took three times as long (7.5 µs a job).
    ``tests/test_model.py`` checks it against ``json.dumps`` of each field.
    """
    return (
        f'{{"attempts":{job.attempts},"callbackJobId":{_id_or_null(job.callback_job_id)},'
        f'"callbackUrl":{_text(job.callback_url)},"canceled":{_bool(job.canceled)},'
        f'"comment":{_text(job.comment)},"createdAt":{_time_json(job.created_at)},'
        f'"err":{_text(job.err)},"failure":{_bool(job.failure)},'
        f'"failureCallbackUrl":{_text(job.failure_callback_url)},'
        f'"finishedAt":{_time_json(job.finished_at)},"flowKey":{_text(job.flow_key)},'
        f'"headers":{"null" if job.headers is None else _encode(job.headers)},'
        f'"id":"{job.id}","idempotencyKey":{_text(job.idempotency_key)},'
        f'"name":{_text(job.name)},"output":{_text(job.output)},'
        f'"outputTruncated":{_bool(job.output_truncated)},'
        # The payload is stored as compact JSON text: embedded without a parse.
        f'"payload":{_or_null(job.payload)},"retries":{job.retries},'
        f'"runAt":{_run_at_json(job, now)},"running":{_bool(job.running)},'
        f'"scheduleId":{_id_or_null(job.schedule_id)},"startedAt":{_time_json(job.started_at)},'
        f'"status":"{job.status_at(now)}",'
        f'"statusCode":{"null" if job.status_code is None else job.status_code},'
        f'"success":{_bool(job.success)},"timeout":{job.timeout},"url":{_text(job.url)},'
        f'"waiting":{_bool(job.waiting)}}}'
    )


def job_dict(job: Job, now: int) -> dict[str, Any]:
    """
    Return the job as the JSON object a client sees at ``now`` (for tests and the CLI).
    """
    result: dict[str, Any] = json.loads(job_json(job, now))
    return result


@attrs.frozen
class JobPage:
    """
    One page of a job listing.

    ``next_id`` is the id of the next matching job after this page, if any.
    """

    jobs: list[Job]
    next_id: int | None

    def to_json(self, now: int) -> str:
        """
        Return ``{"jobs", "hasNext", "next", "count"}`` as JSON text at ``now``.
        """
        jobs = ",".join(job_json(job, now) for job in self.jobs)
        if self.next_id is None:
            tail = '"hasNext":false'
        else:
            tail = f'"hasNext":true,"next":"{self.next_id}"'
        return f'{{"jobs":[{jobs}],{tail},"count":{len(self.jobs)}}}'


@attrs.frozen
class ListQuery:
    """
    What ``GET /job`` asks for. Regexps are RE2, searched (not anchored).

    ``limit`` is the page size; ``None`` means no limit.
    """

    name: str | None = None
    term: str | None = None
    status: str | None = None
    begin: int | None = None
    reverse: bool = False
    limit: int | None = None
    #: The time the query is answered at, ms: it tells ``scheduled`` from
    #: ``waiting`` (``None``: no job counts as scheduled).
    now: int | None = None
    _name_re: Any = attrs.field(init=False, default=None, eq=False, repr=False)
    _term_re: Any = attrs.field(init=False, default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # Compiled once per query, not once per job; raises re2.error when invalid.
        object.__setattr__(self, "_name_re", _compile(self.name))
        object.__setattr__(self, "_term_re", _compile(self.term))

    @property
    def filters_text(self) -> bool:
        """
        True when the query has a regexp filter (which needs every row looked at).
        """
        return self._name_re is not None or self._term_re is not None

    def _status(self, job: Job) -> str:
        return job.status if self.now is None else job.status_at(self.now)

    def matches(self, job: Job) -> bool:
        """
        Return whether ``job`` passes every filter of this query.
        """
        if self._term_re is not None:
            term = self._term_re
            if not (
                term.search(job.name)
                or term.search(str(job.id))
                or term.search(job.comment)
                or term.search(job.url)
                or term.search(self._status(job))
            ):
                return False
        if self._name_re is not None and not self._name_re.search(job.name):
            return False
        if self.status is not None and self._status(job) != self.status:
            return False
        return True


def _compile(pattern: str | None) -> Any:
    if not pattern:
        return None
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def check_regexp(pattern: str) -> str | None:
    """
    Return why ``pattern`` is not a valid RE2 regexp, or ``None`` if it is.
    """
    try:
        _compile(pattern)
    except re2.error as e:
        reason = e.args[0] if e.args else b""
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        return str(reason) or "invalid regexp"
    return None


def json_type_name(value: object) -> str:
    """
    Name the JSON type of a decoded value for an error message (``"a string"``...).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# -- Schedules (SPEC §14) -----------------------------------------------------


@attrs.frozen
class JobTemplate:
    """
    The job a schedule pushes at each fire: the fields of a push (checked as
    a push is) with the defaults already applied.
    """

    url: str
    name: str
    comment: str = ""
    #: Compact JSON text, or ``None`` for no payload.
    payload: str | None = None
    headers: dict[str, str] | None = None
    timeout: int = 0
    retries: int = 0
    #: SPEC §16: empty = the URL's ``host:port``.
    flow_key: str = ""
    callback_url: str | None = None
    failure_callback_url: str | None = None

    def to_json(self) -> str:
        """
        Return the template as the JSON object a client sees.
        """
        return (
            f'{{"url":{_encode(self.url)},"name":{_encode(self.name)},'
            f'"comment":{_encode(self.comment)},"payload":{_or_null(self.payload)},'
            f'"headers":{"null" if self.headers is None else _encode(self.headers)},'
            f'"timeout":{self.timeout},"retries":{self.retries},'
            f'"flowKey":{_encode(self.flow_key or default_flow_key(self.url))},'
            f'"callbackUrl":{_encode(self.callback_url)},'
            f'"failureCallbackUrl":{_encode(self.failure_callback_url)}}}'
        )

    def to_storage(self) -> str:
        """
        Return the template as stored (the payload kept as its JSON text).
        """
        return _encode(attrs.asdict(self))

    @classmethod
    def from_storage(cls, text: str) -> JobTemplate:
        """
        Return the template stored as ``text`` (:meth:`to_storage`).
        """
        return cls(**json.loads(text))


@attrs.frozen
class Schedule:
    """
    A recurring job: a cron expression in a time zone, and the job each fire
    pushes. Times are ms since the Unix epoch; ``next_run_at`` is ``None``
    while paused (or when the expression never fires again).
    """

    id: int
    name: str
    cron: str
    timezone: str
    job: JobTemplate
    paused: bool = False
    next_run_at: int | None = None
    last_run_at: int | None = None
    last_job_id: int | None = None

    def job_for(self, job_id: int) -> Job:
        """
        Return the waiting job a fire of this schedule creates, with id ``job_id``.
        """
        template = self.job
        return Job(
            id=job_id,
            url=template.url,
            name=template.name,
            comment=template.comment,
            payload=template.payload,
            headers=template.headers,
            timeout=template.timeout,
            retries=template.retries,
            schedule_id=self.id,
            flow_key=template.flow_key,
            callback_url=template.callback_url,
            failure_callback_url=template.failure_callback_url,
        )

    def to_json(self) -> str:
        """
        Return ``{"id", "name", "cron", "timezone", "job", "paused",
        "nextRunAt", "lastRunAt", "lastJobId"}`` as compact JSON text.
        """
        last_job = "null" if self.last_job_id is None else f'"{self.last_job_id}"'
        return (
            f'{{"id":"{self.id}","name":{_encode(self.name)},"cron":{_encode(self.cron)},'
            f'"timezone":{_encode(self.timezone)},"job":{self.job.to_json()},'
            f'"paused":{_bool(self.paused)},"nextRunAt":{_time_json(self.next_run_at)},'
            f'"lastRunAt":{_time_json(self.last_run_at)},"lastJobId":{last_job}}}'
        )
