"""
What each client command of ``hq`` does, given an :class:`~hq.client.HQClient` and an
:class:`~hq.cli.terminal.Output`. Each returns the exit status (0 or 1).

These are plain coroutines so that tests drive them with ``StubTreq`` and no reactor; the
argv side lives in :mod:`hq.cli`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import attrs

from hq.cli.jobinput import JobSource
from hq.cli.table import DETAIL_HEADER, HEADER, job_row, render_table
from hq.cli.terminal import Output, ProgressBar
from hq.client import HQClient, HQError, JobList, RemoteJob

#: From this many jobs on, ``push`` draws a progress bar (when stderr is a terminal).
PROGRESS_MIN_JOBS = 100


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _not_done(sources: Sequence[JobSource], index: int) -> str:
    rest = len(sources) - index - 1
    if rest == 0:
        return f"{sources[index].origin} was not pushed"
    more = "job" if rest == 1 else "jobs"
    return f"{sources[index].origin} and the {rest} {more} after it were not pushed"


async def push_jobs(client: HQClient, sources: Sequence[JobSource], output: Output) -> int:
    """
    Push ``sources`` in order, printing each new id as soon as it is known.

    Stops at the first error: prints ``error: <where>: <message>`` and, when there was
    more than one job, how many were pushed and which were not. Returns the exit status.
    """
    progress = None
    if output.err_is_tty and len(sources) >= PROGRESS_MIN_JOBS:
        progress = ProgressBar(output, len(sources))
        progress.start()
    try:
        for index, source in enumerate(sources):
            try:
                job = await client.push(source.job)
            except HQError as e:
                if progress is not None:
                    progress.finish()
                    progress = None
                where = f"{source.origin}: " if e.status is not None else ""
                output.error(f"{where}{e.message}")
                if len(sources) > 1:
                    output.note(
                        f"{index} of {len(sources)} jobs were pushed (ids above); "
                        f"{_not_done(sources, index)}"
                    )
                return 1
            if progress is not None:
                progress.line(job.id)
            else:
                output.line(job.id)
    finally:
        if progress is not None:
            progress.finish()
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
