"""
What follows an attempt: the one pure function that decides it.

:func:`after_attempt` takes what an attempt learned (:class:`AttemptResult`)
and returns the :class:`Decision`: the outcome to record when the job is done.
Retry and backoff rules (SPEC §11) belong here and nowhere else, so the
delivery engine only carries decisions out. Pure: no I/O, no clock (``now``
is passed in), no randomness (jitter is passed in).
"""

from __future__ import annotations

import attrs

from hq.model import STOPPED, Job, Outcome


@attrs.frozen
class AttemptResult:
    """
    How one attempt to deliver a job ended, as the worker client saw it.

    ``success``: a 2xx response was read. ``stopped``: a stop aborted it.
    ``err`` is the reason for a person (empty for a success).
    """

    success: bool
    status_code: int | None = None
    err: str = ""
    output: str = ""
    output_truncated: bool = False
    stopped: bool = False


@attrs.frozen
class Finish:
    """
    The job is done: record ``outcome``.
    """

    outcome: Outcome


#: What to do after an attempt (later: also "try again at time T").
Decision = Finish


def after_attempt(job: Job, result: AttemptResult, now: int) -> Decision:
    """
    Decide what follows ``result``, the end of an attempt of ``job`` at ``now``.

    A stop ends the job ``canceled``; a 2xx a ``success``; anything else a
    ``failure`` with the attempt's reason, status code and output.
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
    return Finish(
        Outcome(
            finished_at=now,
            success=result.success,
            failure=not result.success,
            status_code=result.status_code,
            err=result.err,
            output=result.output,
            output_truncated=result.output_truncated,
        )
    )


def stopped_outcome(now: int) -> Outcome:
    """
    Return the outcome of a job stopped before its request was sent.
    """
    return Outcome(finished_at=now, canceled=True, err=STOPPED)
