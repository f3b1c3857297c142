"""
A stand-in for the flow routes of the HQ API (``/flow``, SPEC §16, as
shared-notes/flow-api.md describes them), kept in memory, for the client tests: as a
Twisted resource (for StubTreq) and as an ``httpx`` handler (for MockTransport).

It reads the key from the raw path and decodes it itself, so a client that does not
percent-encode ``/`` in a key reaches the wrong route here, as it would on a server.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import attrs
import httpx
from twisted.web.resource import Resource
from twisted.web.server import Request

_FIELDS = ("parallelism", "rate", "period", "paused")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@attrs.define
class FlowTable:
    """
    The flow limits of each key, and every request seen as ``(method, raw path)``.
    ``jobs`` gives a key running and waiting counts without limits of its own; while
    ``refusal`` is set (a status and an error message), every request gets it.
    """

    limits: dict[str, dict[str, Any]] = attrs.Factory(dict)
    jobs: dict[str, tuple[int, int]] = attrs.Factory(dict)
    requests: list[tuple[str, str]] = attrs.Factory(list)
    refusal: tuple[int, str] | None = None

    def flow(self, key: str) -> dict[str, Any]:
        """Return the flow JSON of ``key``."""
        limits = self.limits.get(key)
        running, waiting = self.jobs.get(key, (0, 0))
        parallelism = limits["parallelism"] if limits else 0
        return {
            "key": key,
            "parallelism": parallelism,
            "rate": limits["rate"] if limits else 0,
            "period": limits["period"] if limits else 1,
            "paused": limits["paused"] if limits else False,
            "configured": limits is not None,
            "running": running,
            "waiting": waiting,
            "limit": parallelism,
            "limitHistory": [],
        }

    def answer(self, method: str, raw_path: str, body: bytes) -> tuple[int, Any]:
        """Return the status and JSON answer to one request."""
        self.requests.append((method, raw_path))
        if self.refusal is not None:
            return self.refusal[0], {"error": self.refusal[1]}
        parts = raw_path.split("?")[0].split("/")
        if parts[:2] != ["", "flow"]:
            return 404, {"error": "Not Found"}
        if len(parts) == 2:
            if method != "GET":
                return 405, {"error": "Method Not Allowed"}
            listed = sorted(set(self.limits) | set(self.jobs))
            return 200, {"flows": [self.flow(key) for key in listed]}
        key = unquote(parts[2])
        action = "/".join(parts[3:])
        if len(key) > 255:
            return 422, {"error": f"a flow key is at most 255 characters, not {len(key)}"}
        if action == "" and method == "GET":
            return 200, self.flow(key)
        if action == "" and method == "PUT":
            return self._put(key, body)
        if action == "" and method == "DELETE":
            self.limits.pop(key, None)
            return 200, self.flow(key)
        if action in ("pause", "resume") and method == "POST":
            limits = self.limits.setdefault(
                key, {"parallelism": 0, "rate": 0, "period": 1, "paused": False}
            )
            limits["paused"] = action == "pause"
            return 200, self.flow(key)
        return 404, {"error": "Not Found"}

    def _put(self, key: str, body: bytes) -> tuple[int, Any]:
        try:
            values = json.loads(body or b"{}")
        except ValueError:
            return 400, {"error": "the body is not JSON"}
        if not isinstance(values, dict):
            return 400, {"error": "the body must be a JSON object"}
        for name in values:
            if name not in _FIELDS:
                return 422, {"error": f"unknown field '{name}'"}
        for name in ("parallelism", "rate"):
            if name in values and not (_is_int(values[name]) and values[name] >= 0):
                return 422, {"error": f"'{name}' must be an integer 0 or more"}
        period = values.get("period", 1)
        if isinstance(period, bool) or not isinstance(period, int | float) or period <= 0:
            return 422, {"error": "'period' must be a number of seconds more than 0"}
        if "paused" in values and not isinstance(values["paused"], bool):
            return 422, {"error": "'paused' must be true or false"}
        old = self.limits.get(key, {})
        self.limits[key] = {
            "parallelism": values.get("parallelism", 0),
            "rate": values.get("rate", 0),
            "period": period,
            "paused": values.get("paused", old.get("paused", False)),
        }
        return 200, self.flow(key)

    def httpx_handler(self, request: httpx.Request) -> httpx.Response:
        """Answer an ``httpx`` request (for ``httpx.MockTransport``)."""
        status, answer = self.answer(request.method, request.url.raw_path.decode(), request.content)
        return httpx.Response(status, json=answer)


class FlowResource(Resource):
    """
    The flow routes of ``table`` as a Twisted resource (for ``treq.testing.StubTreq``).
    """

    isLeaf = True

    def __init__(self, table: FlowTable) -> None:
        super().__init__()
        self.table = table

    def render(self, request: Request) -> bytes:
        assert request.method is not None and request.uri is not None
        assert request.content is not None
        status, answer = self.table.answer(
            request.method.decode(), request.uri.decode(), request.content.read()
        )
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(answer).encode() + b"\n"
