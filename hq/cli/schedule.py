"""
``hq schedule add|list|show|delete|pause|resume``: recurring jobs (SPEC §14,
docs/schedules.md) through :mod:`hq.client`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import click

from hq.cli.jobinput import loads_json
from hq.cli.table import relative_time, render_table
from hq.cli.terminal import Output
from hq.client import HQClient, HQError


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def schedule_rows(schedules: Sequence[dict[str, Any]], now: datetime) -> list[list[str]]:
    """
    Return the table rows of ``schedules``: ID NAME CRON TIMEZONE NEXT RUN LAST RUN
    LAST JOB STATUS.
    """
    return [
        [
            str(s.get("id")),
            str(s.get("name")),
            str(s.get("cron")),
            str(s.get("timezone")),
            relative_time(_parse_time(s.get("nextRunAt")), now),
            relative_time(_parse_time(s.get("lastRunAt")), now),
            str(s.get("lastJobId") or ""),
            "paused" if s.get("paused") else "active",
        ]
        for s in schedules
    ]


HEADER = ["ID", "NAME", "CRON", "TIMEZONE", "NEXT RUN", "LAST RUN", "LAST JOB", "STATUS"]


async def add_schedule(client: HQClient, body: dict[str, Any], output: Output) -> int:
    """
    Add the schedule ``body``; print its id. Returns the exit status.
    """
    try:
        schedule = await client.add_schedule(
            body["cron"],
            body["job"],
            name=body.get("name"),
            timezone=body.get("timezone"),
            paused=bool(body.get("paused")),
        )
    except HQError as e:
        output.error(e.message)
        return 1
    output.line(schedule.id)
    return 0


async def list_schedules(
    client: HQClient, output: Output, now: datetime, quiet: bool, as_json: bool
) -> int:
    """
    Print every schedule as a table (ids only with ``quiet``, the server's JSON with
    ``as_json``). Returns the exit status.
    """
    try:
        schedules = [s.raw for s in await client.schedules()]
    except HQError as e:
        output.error(e.message)
        return 1
    if as_json:
        output.line(_pretty({"schedules": schedules}))
    elif quiet:
        for schedule in schedules:
            output.line(str(schedule["id"]))
    else:
        for text in render_table(HEADER, schedule_rows(schedules, now), colour=output.colour):
            output.line(text)
    return 0


async def show_schedule(client: HQClient, schedule_id: str, output: Output) -> int:
    """
    Print one schedule as indented JSON. Returns the exit status.
    """
    try:
        schedule = (await client.schedule(schedule_id)).raw
    except HQError as e:
        output.error(e.message)
        return 1
    output.line(_pretty(schedule))
    return 0


async def act_on_schedules(
    client: HQClient, action: str, ids: Sequence[str], output: Output
) -> int:
    """
    Delete, pause or resume (``action``) each schedule of ``ids``, printing each id when
    done; at the first error print it and say which ids were not tried. Returns the exit
    status.
    """
    calls: dict[str, Callable[[str], Awaitable[Any]]] = {
        "delete": client.delete_schedule,
        "pause": client.pause_schedule,
        "resume": client.resume_schedule,
    }
    call = calls[action]
    for index, schedule_id in enumerate(ids):
        try:
            await call(schedule_id)
        except HQError as e:
            output.error(e.message)
            rest = ids[index + 1 :]
            if rest:
                output.note(f"not tried: {' '.join(rest)}")
            return 1
        output.line(schedule_id)
    return 0


def parse_headers(values: Sequence[str]) -> dict[str, str] | None:
    """
    Return the ``NAME:VALUE`` options as a headers object (``None`` for none).

    :raises click.BadParameter: for a value without ``:``.
    """
    if not values:
        return None
    headers: dict[str, str] = {}
    for value in values:
        name, colon, text = value.partition(":")
        if not colon or not name.strip():
            raise click.BadParameter(f"{value!r} is not NAME:VALUE", param_hint="'--header'")
        headers[name.strip()] = text.strip()
    return headers


def parse_payload(value: str | None) -> Any:
    """
    Return the ``--payload`` JSON value.

    :raises click.BadParameter: when it is not JSON.
    """
    if value is None:
        return None
    try:
        return loads_json(value)
    except ValueError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="'--payload'") from None
