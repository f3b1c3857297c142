"""
The binding of schedule requests (SPEC §14): ``POST /schedule`` bodies and
schedule ids in paths, checked at the edge like every request
(:mod:`hq.binding`). The schedule's ``job`` is checked exactly as a push is,
its fields named ``job.url``, ``job.timeout``...
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs
from twisted.web.iweb import IRequest

from hq.binding import (
    _PUSH_FIELDS,
    APIError,
    Kind,
    _json_fields,
    bind,
    parse_job_id,
    push_request,
)
from hq.cron import CronError, CronRule
from hq.model import DEFAULT_JOB_NAME, JobTemplate, Schedule, json_type_name

_SCHEDULE_FIELDS = {
    "name": Kind.STR,
    "cron": Kind.STR,
    "timezone": Kind.STR,
    "job": Kind.JSON,
    "paused": Kind.BOOL,
}
#: The push fields a schedule's job may have (a due time or an idempotency key
#: would make no sense on a job pushed again and again).
_JOB_FIELDS = {
    key: _PUSH_FIELDS[key]
    for key in (
        "url",
        "name",
        "comment",
        "payload",
        "headers",
        "timeout",
        "retries",
        "flowKey",
        "callbackUrl",
        "failureCallbackUrl",
    )
}
#: A push's message starts with the field it is about: ``'url' is required``.
_FIELD_RE = re.compile(r"'(" + "|".join(_JOB_FIELDS) + r")'")


@attrs.frozen
class ScheduleRequest:
    """
    A checked ``POST /schedule``.
    """

    name: str
    rule: CronRule
    job: JobTemplate
    paused: bool

    def schedule(self, schedule_id: int, now: int) -> Schedule:
        """
        Return the new schedule with id ``schedule_id``, made at ``now`` (ms).
        """
        return Schedule(
            id=schedule_id,
            name=self.name,
            cron=self.rule.expression,
            timezone=self.rule.timezone,
            job=self.job,
            paused=self.paused,
            next_run_at=None if self.paused else self.rule.next_after(now),
        )


def _job_error(error: APIError) -> APIError:
    # Name the field as the schedule has it: 'job.url', not 'url'.
    return APIError(error.status, _FIELD_RE.sub(r"'job.\1'", error.message, count=1))


def job_template(value: Any, schedule_name: str, now: int, default_retries: int) -> JobTemplate:
    """
    Return the job template of a schedule body's ``job`` value, checked as a
    push; its ``name`` defaults to ``schedule_name``.

    :raises APIError: 422 when ``value`` is not an object or a field is
        missing or out of range, 400 for a field of the wrong type, as a
        push, the field named ``job.<field>``.
    """
    if not isinstance(value, dict):
        raise APIError(
            422, f"'job' must be a JSON object (the job to push), not {json_type_name(value)}"
        )
    try:
        push = push_request(_json_fields(value, _JOB_FIELDS), now, default_retries)
    except APIError as e:
        raise _job_error(e) from None
    name = push.name if value.get("name") else schedule_name
    return JobTemplate(
        url=push.url,
        name=name,
        comment=push.comment,
        payload=push.payload,
        headers=push.headers,
        timeout=push.timeout,
        retries=push.retries,
        flow_key=push.flow_key,
        callback_url=push.callback_url,
        failure_callback_url=push.failure_callback_url,
    )


def bind_schedule(
    request: IRequest, max_body_bytes: int, now: int, default_retries: int
) -> ScheduleRequest:
    """
    Return the checked body of ``POST /schedule`` received at ``now`` (ms).

    :raises APIError: as :func:`hq.binding.bind`; 422 for a missing or bad
        ``cron``, an unknown ``timezone``, a ``job`` that is missing, not an
        object or not a valid push (``'job.url' is required``), or an
        expression that never fires.
    """
    values = bind(request, _SCHEDULE_FIELDS, max_body_bytes)
    cron = values.get("cron")
    if not cron:
        raise APIError(422, "'cron' is required (5 fields, or 6 with seconds first)")
    if "job" not in values:
        raise APIError(422, "'job' is required (the job to push at each fire, with its 'url')")
    try:
        rule = CronRule.parse(cron, values.get("timezone") or "UTC")
    except CronError as e:
        raise APIError(422, e.message) from None
    name = values.get("name") or DEFAULT_JOB_NAME
    job = job_template(json.loads(values["job"]), name, now, default_retries)
    if rule.next_after(now) is None:
        raise APIError(422, f"'cron' never fires: {rule.expression!r} matches no date to come")
    return ScheduleRequest(name=name, rule=rule, job=job, paused=values.get("paused", False))


def parse_schedule_id(raw: str) -> int:
    """
    Return the schedule id in a path.

    :raises APIError: 404 when ``raw`` is not a number an id can be.
    """
    try:
        return parse_job_id(raw)
    except APIError:
        raise APIError(404, f"The schedule '{raw[:40]}' is not found") from None
