"""``hq.sdk.blocking`` is :mod:`hq_sdk.blocking` (the code lives in sdk/src/hq_sdk)."""

from hq_sdk.blocking import *  # noqa: F403
