"""
``hq.sdk`` is :mod:`hq_sdk`, the Python SDK (docs/sdk.md), under the name it had before it
became its own distribution (``hq-sdk``, in sdk/ of this repository). ``hq-server`` ships
``hq_sdk`` too; each ``hq.sdk.<module>`` re-exports ``hq_sdk.<module>``.

``Client`` and ``AsyncClient`` are imported when first used, as in :mod:`hq_sdk`, so the
models and the receiver work without ``httpx``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import hq_sdk
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
    if name in ("Client", "AsyncClient"):
        return getattr(hq_sdk, name)
    raise AttributeError(f"module 'hq.sdk' has no attribute {name!r}")
