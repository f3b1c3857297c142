"""
What the blocking and asyncio clients share over ``httpx``: the request headers, when a
request is sent again, how long to wait before, and the words for a request that got no
answer.

When a request is sent again (:func:`may_resend`):

- it could not connect at all (``ConnectError``, ``ConnectTimeout``, ``PoolTimeout``):
  nothing was sent, so any request is sent again;
- it went out and no answer came (read or write timeout, dropped connection), or the answer
  was 502, 503 or 504 (a proxy or a restarting server): only a resendable
  :class:`~hq_sdk.calls.Call` (reads, and pushes with idempotency keys) is sent again.
  Delete, stop, restart and bulk actions are not: their error reaches the caller, who can
  look (``get``) before acting again.

A 4xx, 429 included, is never sent again: it is the server's answer.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from hq_sdk.calls import Call
from hq_sdk.models import USER_AGENT

#: The answers after which a resendable request is sent again.
RESEND_STATUSES = frozenset({502, 503, 504})

#: Seconds for connecting, sending, each read and getting a pooled connection.
DEFAULT_TIMEOUT = 30.0

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@attrs.frozen
class RetryPolicy:
    """
    How many times a request is sent at most (``attempts``, 1 = never again) and the wait
    before sending again: ``backoff * 2 ** (n - 1)`` seconds before send n+1, at most
    ``max_backoff``, jittered to between half and all of it; a ``Retry-After`` of a 503
    waits at least that long (capped at ``max_backoff``).
    """

    attempts: int = 3
    backoff: float = 0.2
    max_backoff: float = 5.0

    def wait(self, sent: int, retry_after: float | None = None) -> float:
        """
        Return the seconds to wait after send number ``sent`` (from 1).
        """
        full = min(self.max_backoff, self.backoff * 2 ** (sent - 1))
        wait = random.uniform(full / 2, full)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff))
        return wait


#: Sends each request once.
NO_RETRIES = RetryPolicy(attempts=1)


def request_headers(token: str | None) -> dict[str, str]:
    """
    Return the headers of every request (``Authorization`` with a ``token``).
    """
    headers = {
        "User-Agent": USER_AGENT,
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def may_resend_after_error(call: Call[Any], error: httpx.TransportError) -> bool:
    """
    Return whether ``call`` may be sent again after it failed with ``error``.
    """
    return isinstance(error, _NOT_SENT) or call.resendable


def may_resend_after_answer(call: Call[Any], status: int) -> bool:
    """
    Return whether ``call`` may be sent again after an answer with ``status``.
    """
    return call.resendable and status in RESEND_STATUSES


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """
    Return the seconds a ``Retry-After`` header asks for (a number or an HTTP date), or
    ``None`` without one.
    """
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


_REASONS: tuple[tuple[type[httpx.TransportError], str, bool], ...] = (
    (httpx.ConnectTimeout, "connection timed out", False),
    (httpx.PoolTimeout, "no free connection in time", False),
    (httpx.ConnectError, "cannot connect", False),
    (httpx.ReadTimeout, "timed out waiting for the answer", True),
    (httpx.WriteTimeout, "timed out sending the request", True),
    (httpx.RemoteProtocolError, "the connection closed before an answer came", True),
    (httpx.ReadError, "the connection was lost while reading the answer", True),
    (httpx.WriteError, "the connection was lost while sending the request", True),
)


def transport_message(address: str, error: httpx.TransportError) -> str:
    """
    Return the :class:`~hq_sdk.models.HQError` message for a request to ``address`` that
    failed with ``error``: ``cannot reach HQ at ...: connection refused`` when nothing
    reached the server, ``no answer from HQ at ...: ...`` otherwise.
    """
    for kind, reason, reached in _REASONS:
        if isinstance(error, kind):
            if kind is httpx.ConnectError and "refused" in str(error).lower():
                reason = "connection refused"
            elif kind is httpx.ConnectError and str(error):
                reason = str(error)
            where = "no answer from" if reached else "cannot reach"
            return f"{where} HQ at {address}: {reason}"
    return f"cannot reach HQ at {address}: {error or type(error).__name__}"
