"""
The job table of ``hq list``: relative times, durations, columns and status colours.

Times are shown as the Go tool shows them (go-humanize: ``3 minutes ago``) and durations as
Go durations (``296ms``, ``1.5s``, ``2m3.5s``); columns are padded like Go's tabwriter
(two spaces between columns).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta

import click

from hq.client import Attempt, RemoteJob

_SECOND = timedelta(seconds=1)
_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_WEEK = 7 * _DAY
_MONTH = 30 * _DAY
_YEAR = 12 * _MONTH

# (below this age, format, unit to divide by or None): go-humanize's default magnitudes.
_MAGNITUDES: tuple[tuple[timedelta | None, str, timedelta | None], ...] = (
    (_SECOND, "now", None),
    (2 * _SECOND, "1 second {label}", None),
    (_MINUTE, "{n} seconds {label}", _SECOND),
    (2 * _MINUTE, "1 minute {label}", None),
    (_HOUR, "{n} minutes {label}", _MINUTE),
    (2 * _HOUR, "1 hour {label}", None),
    (_DAY, "{n} hours {label}", _HOUR),
    (2 * _DAY, "1 day {label}", None),
    (_WEEK, "{n} days {label}", _DAY),
    (2 * _WEEK, "1 week {label}", None),
    (_MONTH, "{n} weeks {label}", _WEEK),
    (2 * _MONTH, "1 month {label}", None),
    (_YEAR, "{n} months {label}", _MONTH),
    (18 * _MONTH, "1 year {label}", None),
    (2 * _YEAR, "2 years {label}", None),
    (37 * _YEAR, "{n} years {label}", _YEAR),
    (None, "a long while {label}", None),
)

#: Colour of each status on a terminal, as the Go tool (waiting stays plain; scheduled is
#: ours).
STATUS_STYLES: dict[str, dict[str, object]] = {
    "failure": {"fg": "red"},
    "success": {"fg": "green"},
    "running": {"fg": "cyan"},
    "scheduled": {"fg": "blue"},
    "canceled": {"fg": "bright_black"},
    "canceling": {"fg": "bright_black"},
    "unfinished": {"dim": True},
    "unknown": {"fg": "yellow"},
}

HEADER = ("ID", "NAME", "CREATED", "DURATION", "STATUS")
DETAIL_HEADER = (
    "ID",
    "NAME",
    "COMMENT",
    "URL",
    "CREATED",
    "RUN AT",
    "STARTED",
    "FINISHED",
    "DURATION",
    "STATUS",
)

#: The columns of ``hq attempts``; STATUS is the worker's HTTP status.
ATTEMPT_HEADER = ("ATTEMPT", "STARTED", "DURATION", "STATUS", "ERR")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def relative_time(when: datetime | None, now: datetime) -> str:
    """
    Return ``when`` relative to ``now`` in words (``now``, ``3 minutes ago``,
    ``1 hour from now``), or ``""`` for ``None``.
    """
    if when is None:
        return ""
    label = "ago"
    age = now - when
    if age < timedelta(0):
        label = "from now"
        age = -age
    for below, text, unit in _MAGNITUDES:
        if below is None or age < below:
            n = age // unit if unit is not None else 0
            return text.format(n=n, label=label)
    raise AssertionError("unreachable")  # pragma: no cover


def go_duration(duration: timedelta | None) -> str:
    """
    Return ``duration`` written as Go writes durations (``296ms``, ``1.234s``, ``2m3.5s``,
    ``1h0m5s``), or ``""`` for ``None``.
    """
    if duration is None:
        return ""
    us = duration // timedelta(microseconds=1)
    if us == 0:
        return "0s"
    sign = "-" if us < 0 else ""
    us = abs(us)
    if us < 1000:
        return f"{sign}{us}µs"
    if us < 1_000_000:
        return f"{sign}{_decimal(us, 1000)}ms"
    seconds, fraction = divmod(us, 1_000_000)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = _decimal(seconds * 1_000_000 + fraction, 1_000_000) + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def _decimal(value: int, unit: int) -> str:
    whole, fraction = divmod(value, unit)
    if not fraction:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{fraction:0{digits}d}".rstrip("0")


def _cell(text: str) -> str:
    # A newline or tab inside a cell would break the table.
    return _CONTROL.sub(" ", text)


def job_row(job: RemoteJob, now: datetime, detail: bool = False) -> list[str]:
    """
    Return the cells of ``job``'s row (without colour), for :data:`HEADER` or, with
    ``detail``, :data:`DETAIL_HEADER`.
    """
    if detail:
        cells = [
            job.id,
            job.name,
            job.comment,
            job.url,
            relative_time(job.created_at, now),
            relative_time(job.run_at, now),
            relative_time(job.started_at, now),
            relative_time(job.finished_at, now),
            go_duration(job.duration),
            job.status,
        ]
    else:
        cells = [
            job.id,
            job.name,
            relative_time(job.created_at, now),
            go_duration(job.duration),
            job.status,
        ]
    return [_cell(c) for c in cells]


def attempt_row(attempt: Attempt, now: datetime) -> list[str]:
    """
    Return the cells of ``attempt``'s row, for :data:`ATTEMPT_HEADER`.
    """
    cells = [
        str(attempt.attempt),
        relative_time(attempt.started_at, now),
        go_duration(attempt.duration),
        "" if attempt.status_code is None else str(attempt.status_code),
        attempt.err,
    ]
    return [_cell(c) for c in cells]


def style_status(status: str) -> str:
    """
    Return ``status`` with its terminal colour (ANSI escapes).
    """
    style = STATUS_STYLES.get(status)
    if style is None:
        return status
    return click.style(status, **style)  # type: ignore[arg-type]


def render_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], colour: bool = False
) -> list[str]:
    """
    Return the lines of a table: columns padded to their widest cell plus two spaces, the
    last column (the status) unpadded and, with ``colour``, coloured.
    """
    widths = [len(h) for h in header[:-1]]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str], last: str) -> str:
        padded = "".join(cell.ljust(width + 2) for cell, width in zip(cells, widths, strict=False))
        return padded + last

    lines = [line(header[:-1], header[-1])]
    for row in rows:
        lines.append(line(row[:-1], style_status(row[-1]) if colour else row[-1]))
    return lines
