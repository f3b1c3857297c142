"""
``hq flow list|show|set|pause|resume|delete``: the flow limits of flow keys (SPEC §16,
docs/cli.md) through :mod:`hq.client`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hq.cli.table import render_table
from hq.cli.terminal import Output
from hq.client import Flow, HQClient, HQError

#: The columns of ``hq flow list``. LIMIT is the parallelism in force now.
HEADER = ("KEY", "RUNNING", "WAITING", "LIMIT", "PARALLELISM", "RATE", "PAUSED")

#: How a limit of 0 (none) is shown.
NO_LIMIT = "-"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _number(value: float) -> str:
    return f"{value:g}"


def rate_text(flow: Flow) -> str:
    """
    Return the rate of ``flow`` as ``N/PERIODs`` (``10/1s``, ``100/60s``, ``5/0.5s``), or
    :data:`NO_LIMIT` when it has none.
    """
    if flow.rate <= 0:
        return NO_LIMIT
    return f"{flow.rate}/{_number(flow.period)}s"


def _limit(value: int) -> str:
    return str(value) if value > 0 else NO_LIMIT


def flow_row(flow: Flow) -> list[str]:
    """
    Return the cells of ``flow``'s row, for :data:`HEADER`: a limit of 0 (none) is
    :data:`NO_LIMIT`, PAUSED is ``yes`` or ``no``.
    """
    return [
        # A key is the client's text: keep a control character from breaking the table.
        "".join(c if c.isprintable() else "?" for c in flow.key),
        str(flow.running),
        str(flow.waiting),
        _limit(flow.limit),
        _limit(flow.parallelism),
        rate_text(flow),
        "yes" if flow.paused else "no",
    ]


def _print_flows(flows: Sequence[Flow], output: Output) -> None:
    for text in render_table(HEADER, [flow_row(f) for f in flows]):
        output.line(text)


async def list_flows(client: HQClient, output: Output, quiet: bool, as_json: bool) -> int:
    """
    Print every listed flow key as a table (keys only with ``quiet``, the server's JSON
    with ``as_json``). Returns the exit status.
    """
    try:
        flows = await client.list_flows()
    except HQError as e:
        output.error(e.message)
        return 1
    if as_json:
        output.line(_pretty({"flows": [f.raw for f in flows]}))
    elif quiet:
        for flow in flows:
            output.line(flow.key)
    else:
        _print_flows(flows, output)
    return 0


async def show_flow(client: HQClient, key: str, output: Output) -> int:
    """
    Print the flow of ``key`` as indented JSON, as the server sends it. Returns the exit
    status.
    """
    try:
        flow = await client.get_flow(key)
    except HQError as e:
        output.error(e.message)
        return 1
    output.line(_pretty(flow.raw))
    return 0


async def change_flow(call: Callable[[], Awaitable[Flow]], output: Output, as_json: bool) -> int:
    """
    Run ``call`` (a set, pause, resume or delete of one key) and print the flow it
    answers: a one-row table, or the server's JSON with ``as_json``. Returns the exit
    status.
    """
    try:
        flow = await call()
    except HQError as e:
        output.error(e.message)
        return 1
    if as_json:
        output.line(_pretty(flow.raw))
    else:
        _print_flows([flow], output)
    return 0
