"""
Reading jobs to push from files or stdin: one JSON object, or JSON lines (one per line).

Everything is read and checked before anything is sent, so invalid input never leaves
some jobs pushed and others not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from hq.model import json_type_name

#: The name stdin goes by in messages.
STDIN_NAME = "<stdin>"


class JobInputError(Exception):
    """
    The input is not a job or a list of jobs; the message names the file (and line).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@attrs.frozen
class JobSource:
    """
    One job to push, and where it was read (``jobs.jsonl:3``, ``job.json``, ``<stdin>``).
    """

    job: dict[str, Any]
    origin: str


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and the server) does not.
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses as infinity, which JSON cannot carry either.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text} is too large")
    return value


def loads_json(text: str) -> Any:
    """
    Decode JSON as the server would accept it: no NaN or Infinity, no number
    too large for a float. Raises ValueError naming the problem.
    """
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


_loads = loads_json


def _not_object(origin: str, value: Any) -> JobInputError:
    hint = " (to push many, write one job per line)" if isinstance(value, list) else ""
    return JobInputError(
        f"{origin}: a job must be a JSON object, not {json_type_name(value)}{hint}"
    )


def parse_jobs(name: str, data: bytes) -> list[JobSource]:
    """
    Return the jobs in ``data``, read from ``name``: one JSON object (which may span lines),
    or JSON lines, one object per line (blank lines are skipped).

    Raises JobInputError naming ``name`` and the line for invalid JSON, non-object values,
    text that is not UTF-8 and empty input.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise JobInputError(f"{name}: not UTF-8 text (byte {e.start})") from e
    if not text.strip():
        raise JobInputError(f"{name}: no job in it (the input is empty)")
    try:
        value = _loads(text)
    except json.JSONDecodeError as e:
        if e.msg != "Extra data":
            raise JobInputError(
                f"{name}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})"
            ) from e
        # The first value parsed and more follows: JSON lines.
        return _parse_lines(name, text)
    except ValueError as e:
        raise JobInputError(f"{name}: invalid JSON: {e}") from e
    if not isinstance(value, dict):
        raise _not_object(name, value)
    return [JobSource(value, name)]


def _parse_lines(name: str, text: str) -> list[JobSource]:
    sources = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        origin = f"{name}:{number}"
        try:
            value = _loads(line)
        except json.JSONDecodeError as e:
            raise JobInputError(
                f"{origin}: invalid JSON: {e.msg} (column {e.colno}); "
                "in JSON lines each job must be on one line"
            ) from e
        except ValueError as e:
            raise JobInputError(f"{origin}: invalid JSON: {e}") from e
        if not isinstance(value, dict):
            raise _not_object(origin, value)
        sources.append(JobSource(value, origin))
    return sources


def read_jobs(paths: Sequence[str], read_stdin: Callable[[], bytes]) -> list[JobSource]:
    """
    Return every job in ``paths``, in order; ``-`` reads stdin through ``read_stdin``.

    Raises JobInputError for a file that cannot be read, ``-`` given twice, or any
    invalid input (see :func:`parse_jobs`).
    """
    sources: list[JobSource] = []
    stdin_read = False
    for path in paths:
        if path == "-":
            if stdin_read:
                raise JobInputError("'-' (stdin) can be given only once")
            stdin_read = True
            sources.extend(parse_jobs(STDIN_NAME, read_stdin()))
            continue
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise JobInputError(f"cannot read {path}: {e.strerror or e}") from e
        sources.extend(parse_jobs(path, data))
    return sources
