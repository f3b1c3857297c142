"""
What every SQL engine shares: the job's columns, the row mapping, and the
statements that carry the job rules of :mod:`hq.model` into SQL.

The statements use ``?`` placeholders and only SQL that SQLite and
PostgreSQL both run (``UPDATE ... RETURNING``, ``INSERT ... ON CONFLICT``); an
engine whose driver wants another placeholder style converts them once
(:func:`placeholders`). The job rules themselves live in :mod:`hq.model`: a
statement here is the same rule written for the database, checked against the
model by the store contract tests (tests/test_store.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import attrs

from hq.ids import id_to_ms
from hq.model import (
    Attempt,
    FlowLimits,
    Job,
    JobPage,
    JobState,
    JobTemplate,
    ListQuery,
    Outcome,
    Schedule,
    default_flow_key,
)
from hq.store import FlowCounts

COLUMNS = (
    "id, name, comment, url, payload, headers, timeout, state, status, started_at, "
    "finished_at, success, failure, canceled, status_code, err, output, output_truncated, "
    "attempts, retries, run_after, idempotency_key, schedule_id, flow_key, callback_url, "
    "failure_callback_url, callback_job_id"
)
_NAMES = [name.strip() for name in COLUMNS.split(",")]

INSERT = f"INSERT INTO jobs ({COLUMNS}) VALUES ({', '.join('?' * len(_NAMES))})"
#: Write every column of a job read and changed by a model rule (``?`` = the row, then the id).
UPDATE = "UPDATE jobs SET " + ", ".join(f"{name} = ?" for name in _NAMES[1:]) + " WHERE id = ?"
SELECT = f"SELECT {COLUMNS} FROM jobs"
#: Remember the greatest id created (see ``IJobStore.max_id``).
RAISE_MAX_ID = (
    "INSERT INTO meta (key, value) VALUES ('max_id', ?) ON CONFLICT (key) DO UPDATE "
    "SET value = excluded.value "
    "WHERE CAST(meta.value AS BIGINT) < CAST(excluded.value AS BIGINT)"
)
#: :meth:`hq.model.Job.started` in one statement: mark a waiting, not canceled
#: job running; returns it (no row: not startable). It runs once per delivery.
START = (
    "UPDATE jobs SET state = 1, status = 'running', started_at = ?, attempts = attempts + 1"
    f" WHERE id = ? AND state = 0 AND canceled = 0 RETURNING {COLUMNS}"
)


def start_many(rows: int) -> str:
    """
    Return :data:`START_KNOWN` for ``rows`` jobs at once, each row ``(id,
    now, attempts)`` (given flat). Returns nothing: the caller compares the
    rows changed (``rowcount``) with ``rows``.
    """
    return (
        "UPDATE jobs SET state = 1, status = 'running', started_at = v.column2,"
        f" attempts = attempts + 1 FROM (VALUES {values_rows(rows, 3)}) AS v"
        " WHERE jobs.id = v.column1 AND jobs.state = 0 AND jobs.canceled = 0"
        " AND jobs.attempts = v.column3"
    )


def finish_many(rows: int) -> str:
    """
    Return the statement that finishes ``rows`` running jobs (:data:`FINISH`
    on state 1), each row ``(id, status, finished_at, success, failure,
    canceled, status_code, err, output, output_truncated)``. Returns nothing:
    the caller compares the rows changed (``rowcount``) with ``rows``.
    """
    return (
        "UPDATE jobs SET state = 2, status = v.column2, finished_at = v.column3,"
        " success = v.column4, failure = v.column5, canceled = v.column6,"
        " status_code = v.column7, err = v.column8, output = v.column9,"
        f" output_truncated = v.column10 FROM (VALUES {values_rows(rows, 10)}) AS v"
        " WHERE jobs.id = v.column1 AND jobs.state = 1"
    )


def insert_attempts_many(rows: int) -> str:
    """
    Return :data:`INSERT_ATTEMPT` for ``rows`` attempts (of different jobs).
    """
    head, _, tail = INSERT_ATTEMPT.partition(" VALUES (?, ?, ?, ?, ?, ?, ?)")
    return f"{head} VALUES {values_rows(rows, 7)}{tail}"


def insert_many(rows: int) -> str:
    """
    Return :data:`INSERT` for ``rows`` jobs, their :func:`job_row` values given flat.
    """
    return f"INSERT INTO jobs ({COLUMNS}) VALUES {values_rows(rows, len(_NAMES))}"


def values_rows(rows: int, width: int) -> str:
    """
    Return ``rows`` placeholder rows of ``width`` values for a ``VALUES`` list.
    """
    row = "(" + ", ".join("?" * width) + ")"
    return ", ".join([row] * rows)


#: :data:`START` returning only the attempt count (the caller has the rest of the job).
START_ATTEMPTS = START[: START.index(" RETURNING ")] + " RETURNING attempts"
#: :data:`START` of a job whose attempt count the caller knows (the last
#: parameter): returns nothing, the caller reads ``rowcount``. A statement
#: that returns rows costs one more step per row, and every step of the
#: ``sqlite3`` module lets the reactor thread take the interpreter lock.
START_KNOWN = START[: START.index(" RETURNING ")] + " AND attempts = ?"
#: :meth:`hq.model.Job.finished` on a job in the given state; returns it.
FINISH = (
    "UPDATE jobs SET state = 2, status = ?, finished_at = ?, success = ?, failure = ?,"
    " canceled = ?, status_code = ?, err = ?, output = ?, output_truncated = ?"
    f" WHERE id = ? AND state = ? RETURNING {COLUMNS}"
)
#: :data:`FINISH` returning nothing (the caller has the running job, and
#: reads ``rowcount``; see :data:`START_KNOWN`).
FINISH_KNOWN = FINISH[: FINISH.index(" RETURNING ")]
#: The due waiting jobs the feed may load after a ``(due, id)`` key, in that
#: order (``run_after`` is the due time: ``hq.model.Job.due_at``).
WAITING = (
    f"{SELECT} WHERE state = 0 AND canceled = 0 AND run_after >= ? AND (run_after, id) > (?, ?)"
    " AND run_after <= ? ORDER BY run_after, id LIMIT ?"
)
#: :data:`WAITING` of one flow key, served by the ``jobs_flow`` index
#: ``(flow_key, run_after, id) WHERE state = 0`` (key, due, due, id, now, n).
WAITING_OF = (
    f"{SELECT} WHERE state = 0 AND canceled = 0 AND flow_key = ? AND run_after >= ?"
    " AND (run_after, id) > (?, ?) AND run_after <= ? ORDER BY run_after, id LIMIT ?"
)
#: Set the callback job a finished job pushed (callback id, job id).
SET_CALLBACK_JOB = "UPDATE jobs SET callback_job_id = ? WHERE id = ?"
#: The earliest due time after a time of a waiting job.
NEXT_DUE = (
    "SELECT run_after FROM jobs WHERE state = 0 AND run_after > ? AND canceled = 0"
    " ORDER BY run_after LIMIT 1"
)
#: Waiting jobs due at a time, counted up to a cap (a LIMIT in a sub-query).
COUNT_DUE_CAPPED = (
    "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 0 AND run_after <= ? LIMIT ?)"
)
#: Waiting jobs due after a time (``numJobsScheduled``).
COUNT_SCHEDULED = "SELECT count(*) FROM jobs WHERE state = 0 AND run_after > ?"
#: One attempt into the history (``hq.model.Attempt``).
INSERT_ATTEMPT = (
    "INSERT INTO attempts (job_id, attempt, started_at, finished_at, status_code, err, output)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, attempt) DO UPDATE SET"
    " started_at = excluded.started_at, finished_at = excluded.finished_at,"
    " status_code = excluded.status_code, err = excluded.err, output = excluded.output"
)
SELECT_ATTEMPTS = (
    "SELECT job_id, attempt, started_at, finished_at, status_code, err, output FROM attempts"
    " WHERE job_id = ? ORDER BY attempt"
)
DELETE_ATTEMPTS = "DELETE FROM attempts WHERE job_id = ?"
#: The job holding an idempotency key, and since when.
SELECT_KEY = "SELECT job_id, created_at FROM idempotency_keys WHERE key = ?"
TAKE_KEY = (
    "INSERT INTO idempotency_keys (key, job_id, created_at) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET job_id = excluded.job_id, created_at = excluded.created_at"
)
DELETE_KEYS = "DELETE FROM idempotency_keys WHERE job_id = ?"
#: Take an idempotency key for a new job unless a job pushed at or after a time
#: (the last ``?``) holds it. Returns a row when the key was taken; no row: the
#: holder is recent (:data:`SELECT_KEY` names it). The key is the table's
#: primary key, so a concurrent claim on another connection waits for the
#: first one's transaction and then finds the key held: one job per key.
CLAIM_KEY = (
    "INSERT INTO idempotency_keys (key, job_id, created_at) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET job_id = excluded.job_id, created_at = excluded.created_at"
    " WHERE idempotency_keys.created_at < ? RETURNING job_id"
)
#: Ids of one batch of expired jobs, found through the expiry index.
EXPIRED = "SELECT id FROM jobs WHERE state = 2 AND finished_at < ? LIMIT ?"
#: Jobs a dead process left running (``hq.model.Job.recovered`` decides what becomes of them).
RUNNING = f"{SELECT} WHERE state = 1"

# -- Flow control (SPEC §16) -------------------------------------------------

FLOW_COLUMNS = "key, parallelism, rate, period, paused"
SELECT_FLOWS = f"SELECT {FLOW_COLUMNS} FROM flows ORDER BY key"
PUT_FLOW = (
    f"INSERT INTO flows ({FLOW_COLUMNS}) VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
    " parallelism = excluded.parallelism, rate = excluded.rate, period = excluded.period,"
    " paused = excluded.paused"
)
DELETE_FLOW = "DELETE FROM flows WHERE key = ? RETURNING key"
#: Active jobs per flow key: (key, waiting, running) rows, a key twice when it
#: has both. Each half reads only its state's partial index and rows, never
#: the finished jobs.
FLOW_COUNTS = (
    "SELECT flow_key, count(*), 0 FROM jobs WHERE state = 0 AND canceled = 0 GROUP BY flow_key"
    " UNION ALL SELECT flow_key, 0, count(*) FROM jobs WHERE state = 1 GROUP BY flow_key"
)
#: Active jobs a schema upgrade gives a flow key, one batch after a ``(due, id)``
#: of the waiting ones (through ``jobs_due``), and after an id of the running ones.
WAITING_URLS = (
    "SELECT run_after, id, url FROM jobs WHERE state = 0 AND (run_after, id) > (?, ?)"
    " ORDER BY run_after, id LIMIT ?"
)
RUNNING_URLS = "SELECT id, id, url FROM jobs WHERE state = 1 AND id > ? ORDER BY id LIMIT ?"
#: Rows per batch of :func:`flow_key_batches`.
FILL_BATCH = 5000


def flow_key_batches(
    fetch: Callable[[str, tuple[Any, ...]], list[Any]],
) -> Iterator[list[tuple[str, int]]]:
    """
    Yield the ``(flow key, id)`` pairs of the waiting and running jobs in
    batches, each the URL's :func:`hq.model.default_flow_key`, for a schema
    upgrade that adds the column: ``fetch(statement, args)`` runs one of
    :data:`WAITING_URLS` / :data:`RUNNING_URLS` (``?`` placeholders) and
    returns its rows. The caller writes each batch before asking for the next.
    """
    after: tuple[Any, ...] = (-1, -1)
    while rows := fetch(WAITING_URLS, (*after, FILL_BATCH)):
        yield [(default_flow_key(url), job_id) for _, job_id, url in rows]
        after = (rows[-1][0], rows[-1][1])
    last = -1
    while rows := fetch(RUNNING_URLS, (last, FILL_BATCH)):
        yield [(default_flow_key(url), job_id) for _, job_id, url in rows]
        last = rows[-1][0]


def callback_of(finished: Job, outcome: Outcome, callback_id: int | None) -> Job | None:
    """
    Return the callback job that ``finished`` (just finished with
    ``outcome``) pushes, id ``callback_id``, or ``None`` when there is none
    (no id given, no URL for the outcome: :meth:`hq.model.Job.callback_for`).

    Its payload is ``finished`` as ``GET /job/{id}`` shows it once the finish
    is stored: with ``callbackJobId`` set to ``callback_id``.
    """
    url = None if callback_id is None else finished.callback_for(outcome)
    if callback_id is None or url is None:
        return None
    shown = attrs.evolve(finished, callback_job_id=callback_id)
    return shown.callback_job(callback_id, url, outcome.finished_at)


def flow_row(limits: FlowLimits) -> tuple[Any, ...]:
    """
    Return ``limits`` as the values of :data:`FLOW_COLUMNS`.
    """
    return (limits.key, limits.parallelism, limits.rate, limits.period, int(limits.paused))


def row_flow(row: tuple[Any, ...] | Any) -> FlowLimits:
    """
    Return the limits of a row of :data:`FLOW_COLUMNS`.
    """
    return FlowLimits(
        key=row[0], parallelism=row[1], rate=row[2], period=float(row[3]), paused=bool(row[4])
    )


def flow_counts(rows: Iterable[Any]) -> dict[str, FlowCounts]:
    """
    Return the counts per key of the rows of :data:`FLOW_COUNTS`.
    """
    found: dict[str, list[int]] = {}
    for key, waiting, running in rows:
        counts = found.setdefault(key, [0, 0])
        counts[0] += waiting
        counts[1] += running
    return {key: FlowCounts(waiting=w, running=r) for key, (w, r) in sorted(found.items())}


# -- Schedules (SPEC §14) ------------------------------------------------------

SCHEDULE_COLUMNS = "id, name, cron, timezone, job, paused, next_run_at, last_run_at, last_job_id"
INSERT_SCHEDULE = f"INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
SELECT_SCHEDULE = f"SELECT {SCHEDULE_COLUMNS} FROM schedules"
SELECT_ONE_SCHEDULE = f"{SELECT_SCHEDULE} WHERE id = ?"
ALL_SCHEDULES = f"{SELECT_SCHEDULE} ORDER BY id"
#: The schedules due at a time, earliest first.
DUE_SCHEDULES = (
    f"{SELECT_SCHEDULE} WHERE paused = 0 AND next_run_at <= ? ORDER BY next_run_at, id LIMIT ?"
)
#: The earliest next fire of any schedule that runs.
NEXT_FIRE = "SELECT min(next_run_at) FROM schedules WHERE paused = 0"
#: The schedule half of a fire: move a running schedule on from the fire time it
#: still has (no row: another fire, node or pause came first, so nothing fires).
#: Under PostgreSQL a concurrent fire waits for the row and then finds it moved on.
ADVANCE_SCHEDULE = (
    "UPDATE schedules SET next_run_at = ?, last_run_at = ?, last_job_id = ?"
    " WHERE id = ? AND paused = 0 AND next_run_at = ? RETURNING id"
)
#: Mark the job of a fire with its fire time: ``jobs_fires`` makes (schedule, time) unique.
MARK_FIRE = "UPDATE jobs SET fire_at = ? WHERE id = ?"
#: Whether a job of a (schedule, fire time) is stored.
FIRED = "SELECT id FROM jobs WHERE schedule_id = ? AND fire_at = ?"
PAUSE_SCHEDULE = (
    f"UPDATE schedules SET paused = 1, next_run_at = NULL WHERE id = ? RETURNING {SCHEDULE_COLUMNS}"
)
#: Resume a paused schedule (no row: it was not paused, or is gone).
RESUME_SCHEDULE = (
    f"UPDATE schedules SET paused = 0, next_run_at = ? WHERE id = ? AND paused = 1"
    f" RETURNING {SCHEDULE_COLUMNS}"
)
DELETE_SCHEDULE = "DELETE FROM schedules WHERE id = ? RETURNING id"


def placeholders(statement: str, style: str = "%s") -> str:
    """
    Return ``statement`` with each ``?`` placeholder written as ``style``
    (the statements here hold no ``?`` inside string literals).
    """
    return statement.replace("?", style)


def job_row(job: Job) -> tuple[Any, ...]:
    """
    Return ``job`` as the values of :data:`COLUMNS`.
    """
    return (
        job.id,
        job.name,
        job.comment,
        job.url,
        job.payload,
        None if job.headers is None else json.dumps(job.headers, separators=(",", ":")),
        job.timeout,
        int(job.state),
        job.status,
        job.started_at,
        job.finished_at,
        int(job.success),
        int(job.failure),
        int(job.canceled),
        job.status_code,
        job.err,
        job.output,
        int(job.output_truncated),
        job.attempts,
        job.retries,
        job.due_at,
        job.idempotency_key,
        job.schedule_id,
        job.flow_key,
        job.callback_url,
        job.failure_callback_url,
        job.callback_job_id,
    )


def update_args(job: Job) -> tuple[Any, ...]:
    """
    Return the arguments of :data:`UPDATE` for ``job``.
    """
    row = job_row(job)
    return (*row[1:], row[0])


def row_job(row: tuple[Any, ...] | Any) -> Job:
    """
    Return the job of a row of :data:`COLUMNS`.
    """
    return Job(
        id=row[0],
        name=row[1],
        comment=row[2],
        url=row[3],
        payload=row[4],
        headers=None if row[5] is None else json.loads(row[5]),
        timeout=row[6],
        state=JobState(row[7]),
        started_at=row[9],
        finished_at=row[10],
        success=bool(row[11]),
        failure=bool(row[12]),
        canceled=bool(row[13]),
        status_code=row[14],
        err=row[15],
        output=row[16],
        output_truncated=bool(row[17]),
        attempts=row[18],
        retries=row[19],
        # The due time is stored always; a job due at its creation shows none.
        run_at=row[20] if row[20] > id_to_ms(row[0]) else None,
        idempotency_key=row[21],
        schedule_id=row[22],
        # NULL in the rows of jobs finished before flow keys: the URL's.
        flow_key=row[23] or "",
        callback_url=row[24],
        failure_callback_url=row[25],
        callback_job_id=row[26],
    )


#: Rows per statement of a grouped write (well under SQLite's 32,766 variables
#: and PostgreSQL's 65,535 parameters).
GROUP_ROWS = 500

T = TypeVar("T")


def chunks(items: list[T]) -> list[list[T]]:
    """
    Return ``items`` in lists of at most :data:`GROUP_ROWS`.
    """
    return [items[start : start + GROUP_ROWS] for start in range(0, len(items), GROUP_ROWS)]


def finish_values(job_id: int, outcome: Outcome) -> tuple[Any, ...]:
    """
    Return ``outcome`` as the values of :data:`FINISH` (before the state), the id last.
    """
    return (
        outcome.status,
        outcome.finished_at,
        int(outcome.success),
        int(outcome.failure),
        int(outcome.canceled),
        outcome.status_code,
        outcome.err,
        outcome.output,
        int(outcome.output_truncated),
        job_id,
    )


def known_running(job_id: int, known: Job | None) -> Job | None:
    """
    Return ``known``, the job a finish's caller has, when it is job
    ``job_id`` and running (a finish then need not read it back); else ``None``.
    """
    if known is None or known.id != job_id or not known.running:
        return None
    return known


def groupable_finish(
    job_id: int, outcome: Outcome, callback_id: int | None, known: Job | None
) -> Job | None:
    """
    Return the running job the caller has for a finish of ``job_id`` that
    may run grouped, nothing read back: :func:`known_running`'s job when the
    finish pushes no callback; else ``None``.
    """
    running = known_running(job_id, known)
    if running is None:
        return None
    if callback_id is not None and running.callback_for(outcome) is not None:
        return None
    return running


def jobs_in_due_order(rows: Iterable[Any]) -> list[Job]:
    """
    Return the jobs of ``rows`` (claimed, say) in the order they are due.
    """
    return sorted(map(row_job, rows), key=lambda job: (job.due_at, job.id))


def attempt_row(attempt: Attempt) -> tuple[Any, ...]:
    """
    Return ``attempt`` as the values of :data:`INSERT_ATTEMPT`.
    """
    return (
        attempt.job_id,
        attempt.attempt,
        attempt.started_at,
        attempt.finished_at,
        attempt.status_code,
        attempt.err,
        attempt.output,
    )


def row_attempt(row: tuple[Any, ...] | Any) -> Attempt:
    """
    Return the attempt of a row of :data:`SELECT_ATTEMPTS`.
    """
    return Attempt(
        job_id=row[0],
        attempt=row[1],
        started_at=row[2],
        finished_at=row[3],
        status_code=row[4],
        err=row[5],
        output=row[6],
    )


#: Regexp syntax beyond plain characters and ``.`` (see :func:`plain_pattern`).
_REGEXP_SYNTAX = frozenset("^$|?*+()[]{}")
#: GLOB's own wildcards, matched literally inside brackets.
_GLOB_ESCAPES = {"*": "[*]", "?": "[?]", "[": "[[]"}
#: LIKE's own wildcards and its escape character (the default ``\``).
_LIKE_ESCAPES = {"%": "\\%", "_": "\\_", "\\": "\\\\"}


def plain_pattern(pattern: str, any_run: str, any_char: str, escapes: dict[str, str]) -> str | None:
    """
    Return a pattern of the engine's matching operator (``any_run`` and
    ``any_char`` its wildcards, ``escapes`` how to write its own wildcards
    literally) that every text in which the RE2 regexp ``pattern`` finds a
    match also matches, or ``None`` when the regexp is more than plain
    characters, ``.`` (any character) and ``\\`` before punctuation.

    Most searches are plain words, hosts or ids: for them the database drops
    the rows that cannot match before Python sees them; the regexp decides.
    """
    parts = [any_run]
    escaped = False
    for char in pattern:
        if escaped:
            if not (char.isascii() and not char.isalnum() and char.isprintable()):
                return None  # \d, \w, \pL...: a class, not a character
            parts.append(escapes.get(char, char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ".":
            parts.append(any_char)
        elif char in _REGEXP_SYNTAX or char == "\x00":
            return None
        else:
            parts.append(escapes.get(char, char))
    if escaped or len(parts) == 1:
        return None
    parts.append(any_run)
    return "".join(parts)


def glob_prefilter(pattern: str) -> str | None:
    """
    :func:`plain_pattern` for SQLite's ``GLOB``.
    """
    return plain_pattern(pattern, "*", "?", _GLOB_ESCAPES)


def like_prefilter(pattern: str) -> str | None:
    """
    :func:`plain_pattern` for ``LIKE`` (PostgreSQL's, escape character ``\\``).
    """
    return plain_pattern(pattern, "%", "_", _LIKE_ESCAPES)


def list_statement(
    query: ListQuery, match: str, prefilter: Callable[[str], str | None]
) -> tuple[str, list[Any]]:
    """
    Return the statement and arguments that read the rows a listing may
    show, in id order: ``begin`` and ``status`` are applied in SQL, and a
    ``term``/``name`` regexp that is a plain string is narrowed by the engine's
    pattern operator ``match`` (``GLOB``, ``LIKE``) with the pattern
    ``prefilter`` gives; the regexps themselves are applied by :func:`page_of`.
    Without a regexp and with a limit, one row more than the page is read.
    """
    where, args = list_filters(query, match, prefilter)
    statement = SELECT
    if where:
        statement += " WHERE " + " AND ".join(where)
    statement += " ORDER BY id DESC" if query.reverse else " ORDER BY id"
    if not query.filters_text and query.limit is not None:
        statement += " LIMIT ?"
        args.append(query.limit + 1)
    return statement, args


def list_filters(
    query: ListQuery, match: str, prefilter: Callable[[str], str | None]
) -> tuple[list[str], list[Any]]:
    """
    Return the conditions (to be joined with ``AND``) and their arguments
    that :func:`list_statement` applies in SQL.
    """
    where: list[str] = []
    args: list[Any] = []
    if query.begin is not None:
        where.append("id <= ?" if query.reverse else "id >= ?")
        args.append(query.begin)
    if query.status == "scheduled" and query.now is not None:
        where.append("status = 'waiting' AND run_after > ?")
        args.append(query.now)
    elif query.status == "waiting" and query.now is not None:
        where.append("status = 'waiting' AND run_after <= ?")
        args.append(query.now)
    elif query.status is not None:
        where.append("status = ?")
        args.append(query.status)
    term = None if query.term is None else prefilter(query.term)
    if term is not None:
        columns = ("name", "CAST(id AS TEXT)", "comment", "url", "status")
        tests = [f"{column} {match} ?" for column in columns]
        # A waiting job shows as scheduled while it waits for a later time.
        tests.append(f"(status = 'waiting' AND 'scheduled' {match} ?)")
        where.append("(" + " OR ".join(tests) + ")")
        args.extend([term] * len(tests))
    name = None if query.name is None else prefilter(query.name)
    if name is not None:
        where.append(f"name {match} ?")
        args.append(name)
    return where, args


def page_of(query: ListQuery, rows: Iterable[Any]) -> JobPage:
    """
    Return the page of ``query`` from the rows of :func:`list_statement`
    (read lazily: it stops at the first match after the page).
    """
    jobs: list[Job] = []
    for row in rows:
        job = row_job(row)
        if not query.matches(job):
            continue
        if query.limit is not None and len(jobs) >= query.limit:
            return JobPage(jobs=jobs, next_id=job.id)
        jobs.append(job)
    return JobPage(jobs=jobs, next_id=None)


def schedule_row(schedule: Schedule) -> tuple[Any, ...]:
    """
    Return ``schedule`` as the values of :data:`SCHEDULE_COLUMNS`.
    """
    return (
        schedule.id,
        schedule.name,
        schedule.cron,
        schedule.timezone,
        schedule.job.to_storage(),
        int(schedule.paused),
        schedule.next_run_at,
        schedule.last_run_at,
        schedule.last_job_id,
    )


def row_schedule(row: tuple[Any, ...] | Any) -> Schedule:
    """
    Return the schedule of a row of :data:`SCHEDULE_COLUMNS`.
    """
    return Schedule(
        id=row[0],
        name=row[1],
        cron=row[2],
        timezone=row[3],
        job=JobTemplate.from_storage(row[4]),
        paused=bool(row[5]),
        next_run_at=row[6],
        last_run_at=row[7],
        last_job_id=row[8],
    )
