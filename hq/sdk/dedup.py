"""``hq.sdk.dedup`` is :mod:`hq_sdk.dedup` (the code lives in sdk/src/hq_sdk)."""

from hq_sdk.dedup import *  # noqa: F403
