"""
What each client command of ``hq`` does, given an :class:`~hq.client.HQClient` and an
:class:`~hq.cli.terminal.Output`. Each returns the exit status (0 or 1).

These are plain coroutines so that tests drive them with ``StubTreq`` and no reactor; the
argv side lives in :mod:`hq.cli`.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import attrs

from hq.cli.jobinput import JobSource
from hq.cli.table import (
    ATTEMPT_HEADER,
    DETAIL_HEADER,
    HEADER,
    attempt_row,
    job_row,
    render_table,
)
from hq.cli.terminal import Output, ProgressBar
from hq.client import (
    MAX_BATCH_JOBS,
    BatchPushError,
    HQClient,
    HQError,
    JobList,
    RemoteJob,
    with_options,
)

#: From this many jobs on, ``push`` draws a progress bar (when stderr is a terminal).
PROGRESS_MIN_JOBS = 100


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"


@attrs.frozen
class PushOptions:
    """
    What ``hq push`` sets on every job it reads (``None``: leave the job's own field), and
    how many jobs go in one ``POST /jobs``.
    """

    retries: int | None = None
    run_at: datetime | None = None
    delay: float | None = None
    idempotency_key: str | None = None
    flow_key: str | None = None
    callback_url: str | None = None
    failure_callback_url: str | None = None
    batch_size: int = MAX_BATCH_JOBS

    def apply(self, job: dict[str, Any]) -> dict[str, Any]:
        """
        Return ``job`` with the options set (see :func:`hq.client.with_options`).
        """
        return with_options(
            job,
            retries=self.retries,
            run_at=self.run_at,
            delay=self.delay,
            idempotency_key=self.idempotency_key,
            flow_key=self.flow_key,
            callback_url=self.callback_url,
            failure_callback_url=self.failure_callback_url,
        )


def _not_done(sources: Sequence[JobSource], index: int, unknown: bool = False) -> str:
    rest = len(sources) - index - 1
    origin = sources[index].origin
    if rest == 0:
        return f"{origin} {'may not have been pushed' if unknown else 'was not pushed'}"
    verb = "may not have been pushed" if unknown else "were not pushed"
    return f"{origin} and the {_jobs(rest)} after it {verb}"


async def push_jobs(
    client: HQClient,
    sources: Sequence[JobSource],
    output: Output,
    options: PushOptions | None = None,
) -> int:
    """
    Push ``sources`` with ``options`` set on each, printing each new id on its own line.

    One job goes through ``POST /job``; several through ``POST /jobs`` in batches of
    ``options.batch_size`` (each stored whole or not at all), their ids printed as each
    batch is stored. A server without ``POST /jobs`` (an older HQ) gets them one by one.

    At the first refused batch: prints ``error: <file:line>: <message>`` (the job the
    server named) and what was pushed and what not. Returns the exit status.
    """
    options = options or PushOptions()
    jobs = [options.apply(source.job) for source in sources]
    if len(jobs) == 1:
        return await _push_one(client, sources[0], jobs[0], output)
    progress = None
    if output.err_is_tty and len(sources) >= PROGRESS_MIN_JOBS:
        progress = ProgressBar(output, len(sources))
        progress.start()

    def printed(ids: list[str]) -> None:
        for job_id in ids:
            if progress is not None:
                progress.line(job_id)
            else:
                output.line(job_id)

    try:
        try:
            await client.push_many(jobs, batch_size=options.batch_size, on_batch=printed)
        except BatchPushError as e:
            if e.status in (404, 405) and e.start == 0 and e.job_index is None:
                # A server from before batches (Go HQ): push them one by one.
                return await _push_each(client, sources, jobs, output, printed)
            if progress is not None:
                progress.finish()
                progress = None
            _batch_error(e, sources, output)
            return 1
    finally:
        if progress is not None:
            progress.finish()
    return 0


def _batch_error(e: BatchPushError, sources: Sequence[JobSource], output: Output) -> None:
    if e.job_index is not None and e.job_index < len(sources):
        output.error(f"{sources[e.job_index].origin}: {e.reason}")
    else:
        output.error(e.message)
    if e.status is None:
        # No answer: the batch may have been stored all the same.
        done = f"{e.start} of {len(sources)} jobs were pushed (ids above)"
        output.note(f"{done}; {_not_done(sources, e.start, unknown=True)}")
    elif e.start == 0:
        output.note("no job was pushed (a batch is stored whole or not at all)")
    else:
        output.note(
            f"{e.start} of {len(sources)} jobs were pushed (ids above); "
            f"{_not_done(sources, e.start)}"
        )
    if e.status == 413:
        output.note("the batch is too large for this server: try a smaller --batch-size")


async def _push_one(
    client: HQClient, source: JobSource, job: dict[str, Any], output: Output
) -> int:
    try:
        pushed = await client.push(job)
    except HQError as e:
        where = f"{source.origin}: " if e.status is not None else ""
        output.error(f"{where}{e.message}")
        return 1
    output.line(pushed.id)
    if pushed.replayed:
        output.note(
            f"the idempotency key {pushed.idempotency_key!r} was used before: "
            f"nothing new was pushed; {pushed.id} is the job pushed then"
        )
    return 0


async def _push_each(
    client: HQClient,
    sources: Sequence[JobSource],
    jobs: Sequence[dict[str, Any]],
    output: Output,
    printed: Callable[[list[str]], None],
) -> int:
    for index, (source, job) in enumerate(zip(sources, jobs, strict=True)):
        try:
            pushed = await client.push(job)
        except HQError as e:
            where = f"{source.origin}: " if e.status is not None else ""
            output.error(f"{where}{e.message}")
            output.note(
                f"{index} of {len(sources)} jobs were pushed (ids above); "
                f"{_not_done(sources, index)}"
            )
            return 1
        printed([pushed.id])
    return 0


async def show_job(client: HQClient, job_id: str, output: Output) -> int:
    """
    Print one job as indented JSON (keys as the server sent them). Returns the exit status.
    """
    try:
        job = await client.get(job_id)
    except HQError as e:
        output.error(e.message)
        return 1
    output.line(_pretty(job.raw))
    return 0


async def show_stats(client: HQClient, output: Output) -> int:
    """
    Print the server's counters as indented JSON. Returns the exit status.
    """
    try:
        stats = await client.stats()
    except HQError as e:
        output.error(e.message)
        return 1
    output.line(_pretty(stats.raw))
    return 0


async def show_nodes(client: HQClient, output: Output) -> int:
    """
    Print the live nodes of the cluster as indented JSON. Returns the exit status.
    """
    try:
        nodes = await client.nodes()
    except HQError as e:
        output.error(e.message)
        return 1
    output.line(_pretty({"nodes": nodes}))
    return 0


@attrs.frozen
class ListOptions:
    """
    What ``hq list`` was asked for: filters for the API, and how to print.
    """

    ids: tuple[str, ...] = ()
    name: str | None = None
    term: str | None = None
    status: str | None = None
    begin: str | None = None
    reverse: bool = False
    limit: int | None = None
    quiet: bool = False
    detail: bool = False
    json: bool = False

    @property
    def filters(self) -> list[str]:
        """
        The filter flags that were given (they cannot be combined with ids).
        """
        given = [
            ("--name", self.name is not None),
            ("--term", self.term is not None),
            ("--status", self.status is not None),
            ("--begin", self.begin is not None),
            ("--reverse", self.reverse),
            ("--limit", self.limit is not None),
        ]
        return [flag for flag, on in given if on]


async def list_jobs(
    client: HQClient, options: ListOptions, output: Output, now: Callable[[], datetime]
) -> int:
    """
    Print jobs: a table (``ID NAME CREATED DURATION STATUS``; more columns with
    ``detail``), only ids (``quiet``) or the raw JSON list (``json``).

    With ``options.ids`` those jobs are fetched one by one; otherwise one page of
    ``GET /job`` with the filters. When more jobs follow, a hint to page on goes to stderr.
    Returns the exit status.
    """
    try:
        if options.ids:
            jobs = []
            for job_id in options.ids:
                jobs.append(await client.get(job_id))
            page = JobList(
                jobs=tuple(jobs),
                has_next=False,
                next=None,
                count=len(jobs),
                raw={"jobs": [j.raw for j in jobs], "hasNext": False, "count": len(jobs)},
            )
        else:
            page = await client.list_jobs(
                name=options.name,
                term=options.term,
                status=options.status,
                begin=options.begin,
                reverse=options.reverse,
                limit=options.limit,
            )
    except HQError as e:
        output.error(e.message)
        return 1
    if options.json:
        output.line(_pretty(page.raw))
        return 0
    if options.quiet:
        for job in page.jobs:
            output.line(job.id)
    else:
        at = now()
        rows = [job_row(job, at, options.detail) for job in page.jobs]
        header = DETAIL_HEADER if options.detail else HEADER
        for text in render_table(header, rows, colour=output.colour):
            output.line(text)
    if page.has_next and page.next is not None:
        output.note(f"more jobs follow: add --begin {page.next} to see the next page")
    return 0


#: The verb for each multi-id action, as said in the summary after an error.
_DONE_WORDS = {"delete": "deleted", "stop": "stopped", "restart": "restarted"}


async def act_on_jobs(
    client: HQClient, action: str, ids: Sequence[str], output: Output, copy: bool = False
) -> int:
    """
    Delete, stop or restart (``action``) each job of ``ids`` in turn, printing each id as
    soon as it is done (``restart`` with ``copy`` prints the new ids).

    At the first error: prints ``error: <server message>`` and, when several ids were
    given, which were done before and which were not tried. Returns the exit status.
    """
    call: Callable[[str], Awaitable[str | RemoteJob]]
    if action == "delete":
        call = client.delete
    elif action == "stop":
        call = client.stop
    elif action == "restart":

        def call(job_id: str) -> Awaitable[RemoteJob]:
            return client.restart(job_id, copy=copy)

    else:
        raise ValueError(f"unknown action {action!r}")
    done: list[str] = []
    for index, job_id in enumerate(ids):
        try:
            result = await call(job_id)
        except HQError as e:
            output.error(e.message)
            if len(ids) > 1:
                output.note(_summary(action, ids, index, done, copy))
            return 1
        new_id = result.id if isinstance(result, RemoteJob) else result
        done.append(new_id)
        output.line(new_id)
    return 0


def _summary(action: str, ids: Sequence[str], index: int, done: list[str], copy: bool) -> str:
    word = _DONE_WORDS[action]
    if copy:
        pairs = ", ".join(f"{old} as {new}" for old, new in zip(ids, done, strict=False))
        before = f"restarted as copies: {pairs or 'none'}"
    else:
        before = f"{word}: {' '.join(done) or 'none'}"
    text = f"{len(done)} of {len(ids)} jobs done before job {ids[index]} failed ({before})"
    rest = ids[index + 1 :]
    if rest:
        text += f"; not tried: {' '.join(rest)}"
    return text


async def show_attempts(
    client: HQClient, job_id: str, output: Output, as_json: bool, now: Callable[[], datetime]
) -> int:
    """
    Print the attempts of ``job_id``: a table (``ATTEMPT STARTED DURATION STATUS ERR``,
    STATUS being the worker's HTTP status) or, with ``as_json``, the server's object
    indented. Returns the exit status.
    """
    try:
        attempts = await client.attempts(job_id)
    except HQError as e:
        output.error(e.message)
        return 1
    if as_json:
        output.line(_pretty({"attempts": [a.raw for a in attempts]}))
        return 0
    at = now()
    rows = [attempt_row(attempt, at) for attempt in attempts]
    for text in render_table(ATTEMPT_HEADER, rows):
        output.line(text)
    return 0


@attrs.frozen
class Filters:
    """
    The list filters a bulk ``delete``, ``stop`` or ``restart`` acts on.
    """

    name: str | None = None
    term: str | None = None
    status: str | None = None
    begin: str | None = None
    reverse: bool = False
    limit: int | None = None

    @property
    def given(self) -> list[str]:
        """
        The filter flags that were given.
        """
        flags = [
            ("--name", self.name is not None),
            ("--term", self.term is not None),
            ("--status", self.status is not None),
            ("--begin", self.begin is not None),
            ("--reverse", self.reverse),
            ("--limit", self.limit is not None),
        ]
        return [flag for flag, on in flags if on]

    @property
    def selects(self) -> bool:
        """
        Whether a filter that selects jobs (name, term or status) was given: the server
        refuses a bulk action without one.
        """
        return self.name is not None or self.term is not None or self.status is not None

    def describe(self) -> str:
        """
        Return the filters as flags a shell would take back (``--status failure
        --name '^mail$'``).
        """
        words = []
        for flag, value in (
            ("--name", self.name),
            ("--term", self.term),
            ("--status", self.status),
            ("--begin", self.begin),
        ):
            if value is not None:
                words.append(f"{flag} {shlex.quote(value)}")
        if self.reverse:
            words.append("--reverse")
        return " ".join(words)


#: Per bulk action: which jobs it acts on, and the word for done.
BULK_ACTIONS = {
    "delete": ("finished", "deleted"),
    "stop": ("active", "stopped"),
    "restart": ("finished", "restarted"),
}


def bulk_question(action: str, filters: Filters) -> str:
    """
    Return the confirmation question of a bulk action
    (``Restart all finished jobs matching --status failure?``).
    """
    which, _ = BULK_ACTIONS[action]
    if filters.limit is not None and filters.limit > 0:
        how_many = f"up to {filters.limit} {which} job{'' if filters.limit == 1 else 's'}"
    else:
        how_many = f"all {which} jobs"
    return f"{action.capitalize()} {how_many} matching {filters.describe()}?"


async def act_on_matching(client: HQClient, action: str, filters: Filters, output: Output) -> int:
    """
    Delete, stop or restart (``action``) every job matching ``filters`` in one request
    (``POST /jobs/<action>``) and print ``<done> N jobs``. Returns the exit status.
    """
    call = {
        "delete": client.delete_matching,
        "stop": client.stop_matching,
        "restart": client.restart_matching,
    }[action]
    try:
        count = await call(
            name=filters.name,
            term=filters.term,
            status=filters.status,
            begin=filters.begin,
            reverse=filters.reverse,
            limit=filters.limit,
        )
    except HQError as e:
        output.error(e.message)
        return 1
    output.line(f"{BULK_ACTIONS[action][1]} {_jobs(count)}")
    return 0
