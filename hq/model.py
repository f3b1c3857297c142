"""
The job: its fields, its status rules and its JSON shape.

Pure values and functions: no I/O and no clock (callers pass times in).
"""

from __future__ import annotations

import enum
import functools
import json
import time
from datetime import UTC, datetime
from typing import Any

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


#: Every value ``status`` can take.
STATUSES = (
    "waiting",
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
        if self.failure:
            return "failure"
        if self.success:
            return "success"
        if self.canceled:
            return "canceled"
        return "unknown"


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
    #: How many deliveries were started (room for retries).
    attempts: int = 0

    @property
    def created_at(self) -> int:
        """
        The creation time, taken from the id.
        """
        return id_to_ms(self.id)

    @property
    def waiting(self) -> bool:
        return self.state is JobState.WAITING

    @property
    def running(self) -> bool:
        return self.state is JobState.RUNNING

    @property
    def status(self) -> str:
        """
        The derived status, in the precedence of the Go server.
        """
        if self.state is JobState.RUNNING:
            return "canceling" if self.canceled else "running"
        if self.state is JobState.WAITING:
            return "canceling" if self.canceled else "waiting"
        if self.failure:
            return "failure"
        if self.success:
            return "success"
        if self.canceled:
            return "canceled"
        if self.finished_at is None:
            return "unfinished"
        return "unknown"

    def finished(self, outcome: Outcome) -> Job:
        """
        Return this job with ``outcome`` applied.
        """
        return attrs.evolve(
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

    def reset(self) -> Job:
        """
        Return this job made ready to run again: outcome fields cleared, waiting.
        """
        return attrs.evolve(
            self,
            state=JobState.WAITING,
            started_at=None,
            finished_at=None,
            success=False,
            failure=False,
            canceled=False,
            status_code=None,
            err="",
            output="",
            output_truncated=False,
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


def _time_json(unix_ms: int | None) -> str:
    return "null" if unix_ms is None else f'"{format_time(unix_ms)}"'


def _bool(value: bool) -> str:
    return "true" if value else "false"


def job_json(job: Job) -> str:
    """
    Return the job's JSON text: compact, keys in alphabetical order (as the Go server).

    The payload is embedded as stored, without a parse and re-encode.
    """
    return "".join(
        (
            '{"canceled":',
            _bool(job.canceled),
            ',"comment":',
            _encode(job.comment),
            ',"createdAt":',
            _time_json(job.created_at),
            ',"err":',
            _encode(job.err),
            ',"failure":',
            _bool(job.failure),
            ',"finishedAt":',
            _time_json(job.finished_at),
            ',"headers":',
            "null" if job.headers is None else _encode(job.headers),
            ',"id":"',
            str(job.id),
            '","name":',
            _encode(job.name),
            ',"output":',
            _encode(job.output),
            ',"outputTruncated":',
            _bool(job.output_truncated),
            ',"payload":',
            "null" if job.payload is None else job.payload,
            ',"running":',
            _bool(job.running),
            ',"startedAt":',
            _time_json(job.started_at),
            ',"status":"',
            job.status,
            '","statusCode":',
            "null" if job.status_code is None else str(job.status_code),
            ',"success":',
            _bool(job.success),
            ',"timeout":',
            str(job.timeout),
            ',"url":',
            _encode(job.url),
            ',"waiting":',
            _bool(job.waiting),
            "}",
        )
    )


def job_dict(job: Job) -> dict[str, Any]:
    """
    Return the job as the JSON object a client sees (for tests and the CLI).
    """
    result: dict[str, Any] = json.loads(job_json(job))
    return result


@attrs.frozen
class JobPage:
    """
    One page of a job listing.

    ``next_id`` is the id of the next matching job after this page, if any.
    """

    jobs: list[Job]
    next_id: int | None

    def to_json(self) -> str:
        """
        Return ``{"jobs", "hasNext", "next", "count"}`` as JSON text.
        """
        jobs = ",".join(job_json(job) for job in self.jobs)
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
                or term.search(job.status)
            ):
                return False
        if self._name_re is not None and not self._name_re.search(job.name):
            return False
        if self.status is not None and job.status != self.status:
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
