"""``hq.sdk.transport`` is :mod:`hq_sdk.transport` (the code lives in sdk/src/hq_sdk)."""

from hq_sdk.transport import *  # noqa: F403
