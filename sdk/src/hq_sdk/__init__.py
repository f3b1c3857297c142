"""
The HQ SDK: clients for applications that push jobs, and a receiver for the workers that
get them (docs/sdk.md). Distributed alone as ``hq-sdk`` (``pip install ./sdk``: ``httpx``
and ``attrs``, no Twisted) and inside ``hq-server``, which re-exports it as ``hq.sdk``.

- :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), over ``httpx``, with the
  methods, results and errors of the Twisted ``hq.client.HQClient`` (in ``hq-server``);
- :mod:`hq_sdk.receiver` verifies a delivery's Standard Webhooks signature and gives the
  job; :mod:`hq_sdk.dedup` does each job once; :mod:`hq_sdk.wsgi` and :mod:`hq_sdk.asgi`
  serve a worker function (standard library only: no ``httpx``, no framework).

``Client`` and ``AsyncClient`` are imported when first used, so the receiver and the
models work without ``httpx`` installed (as in an ``hq-server`` install without its ``sdk``
extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hq_sdk.models import (
    Attempt,
    BatchPushError,
    Flow,
    FlowLimitChange,
    HQError,
    JobList,
    RemoteJob,
    Schedule,
    ServerInfo,
    Stats,
)
from hq_sdk.version import __version__

if TYPE_CHECKING:
    from hq_sdk.aio import AsyncClient
    from hq_sdk.blocking import Client

__all__ = [
    "AsyncClient",
    "Attempt",
    "BatchPushError",
    "Client",
    "Flow",
    "FlowLimitChange",
    "HQError",
    "JobList",
    "RemoteJob",
    "Schedule",
    "ServerInfo",
    "Stats",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from hq_sdk.blocking import Client

        return Client
    if name == "AsyncClient":
        from hq_sdk.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'hq_sdk' has no attribute {name!r}")
