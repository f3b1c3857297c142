"""
What follows an attempt: the one pure function that decides it.

:func:`after_attempt` takes what an attempt learned (:class:`AttemptResult`)
and returns the :class:`Decision`: :class:`Finish` with the outcome to record,
or :class:`Retry` at a later time (SPEC §11). Every retry and backoff rule
lives here, so the delivery engine only carries decisions out. Pure: no I/O,
no clock (``now`` is passed in), no randomness (``jitter`` is passed in).
"""

from __future__ import annotations

import email.utils
import math

import attrs

from hq.model import STOPPED, Job, Outcome

#: Status codes whose ``Retry-After`` is honoured (SPEC §11).
RETRY_AFTER_CODES = frozenset({429, 503})


@attrs.frozen
class RetryRules:
    """
    The backoff settings (config ``retry_min_backoff``, ``retry_max_backoff``; seconds).
    """

    min_backoff: float = 1.0
    max_backoff: float = 3600.0


@attrs.frozen
class AttemptResult:
    """
    How one attempt to deliver a job ended, as the worker client saw it.

    ``success``: a 2xx response was read. ``stopped``: a stop aborted it.
    ``err`` is the reason for a person (empty for a success);
    ``retry_after`` the response's ``Retry-After`` header, as sent.
    """

    success: bool
    status_code: int | None = None
    err: str = ""
    output: str = ""
    output_truncated: bool = False
    stopped: bool = False
    retry_after: str | None = None


@attrs.frozen
class Finish:
    """
    The job is done: record ``outcome``.
    """

    outcome: Outcome


@attrs.frozen
class Retry:
    """
    The attempt failed and attempts remain: the job waits until ``at`` (ms),
    showing ``last`` (the failed attempt's outcome) meanwhile.
    """

    at: int
    last: Outcome


Decision = Finish | Retry


def backoff_seconds(attempt: int, rules: RetryRules, jitter: float) -> float:
    """
    Return the wait before attempt ``attempt + 1`` after attempt ``attempt``
    (numbered from 1) failed: ``min(max_backoff, min_backoff * 2^(attempt-1))``,
    jittered to between half and all of it (``jitter`` in [0, 1]: 0 gives half).
    """
    exponent = min(max(attempt - 1, 0), 64)
    full = min(rules.max_backoff, rules.min_backoff * math.pow(2, exponent))
    return full * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


def retry_after_seconds(value: str | None, now: int) -> float | None:
    """
    Return the wait that a ``Retry-After`` header asks for, in seconds from
    ``now`` (ms): delta-seconds (``120``) or an HTTP date. ``None`` for no
    header or one that is neither (garbage is ignored, never an error).
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now / 1000)


def after_attempt(
    job: Job, result: AttemptResult, now: int, rules: RetryRules, jitter: float
) -> Decision:
    """
    Decide what follows ``result``, the end of attempt ``job.attempts`` of
    ``job`` at ``now`` (ms).

    A stop ends the job ``canceled``; a 2xx a ``success``. Any other failure
    (a non-2xx answer, a transport error, a timeout) is retried while
    attempts remain (``job.retries`` extra ones), after
    :func:`backoff_seconds`, or at least what a 429 or 503 asked for in
    ``Retry-After`` (capped at ``max_backoff``); after the last attempt the job
    ends ``failure``.
    """
    if result.stopped:
        return Finish(
            Outcome(
                finished_at=now,
                canceled=True,
                status_code=result.status_code,
                err=STOPPED,
                output=result.output,
                output_truncated=result.output_truncated,
            )
        )
    outcome = Outcome(
        finished_at=now,
        success=result.success,
        failure=not result.success,
        status_code=result.status_code,
        err=result.err,
        output=result.output,
        output_truncated=result.output_truncated,
    )
    if result.success or job.attempts > job.retries:
        return Finish(outcome)
    wait = backoff_seconds(job.attempts, rules, jitter)
    if result.status_code in RETRY_AFTER_CODES:
        asked = retry_after_seconds(result.retry_after, now)
        if asked is not None:
            wait = max(wait, min(asked, rules.max_backoff))
    return Retry(at=now + math.ceil(wait * 1000), last=outcome)


def stopped_outcome(now: int) -> Outcome:
    """
    Return the outcome of a job stopped before its request was sent.
    """
    return Outcome(finished_at=now, canceled=True, err=STOPPED)
