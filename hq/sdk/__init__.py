"""
The HQ SDK: clients for applications that push jobs, and a receiver for the workers that
get them (docs/sdk.md).

- :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), over ``httpx``
  (``pip install hq-server[sdk]``), with the methods, results and errors of the Twisted
  :class:`hq.client.HQClient`;
- :mod:`hq.sdk.receiver` verifies a delivery's Standard Webhooks signature and gives the
  job; :mod:`hq.sdk.dedup` does each job once; :mod:`hq.sdk.wsgi` and :mod:`hq.sdk.asgi`
  serve a worker function (standard library only: no ``httpx``, no framework).

``Client`` and ``AsyncClient`` are imported when first used, so the receiver and the
models work without ``httpx`` installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hq.sdk.models import (
    Attempt,
    BatchPushError,
    HQError,
    JobList,
    RemoteJob,
    ServerInfo,
    Stats,
)

if TYPE_CHECKING:
    from hq.sdk.aio import AsyncClient
    from hq.sdk.blocking import Client

__all__ = [
    "AsyncClient",
    "Attempt",
    "BatchPushError",
    "Client",
    "HQError",
    "JobList",
    "RemoteJob",
    "ServerInfo",
    "Stats",
]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from hq.sdk.blocking import Client

        return Client
    if name == "AsyncClient":
        from hq.sdk.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'hq.sdk' has no attribute {name!r}")
