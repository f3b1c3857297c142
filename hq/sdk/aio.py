"""``hq.sdk.aio`` is :mod:`hq_sdk.aio` (the code lives in sdk/src/hq_sdk)."""

from hq_sdk.aio import *  # noqa: F403
